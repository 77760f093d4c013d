"""Each item's text of one modality, read from a prepared set's ``items/items.parquet``, and tokenised
again as data preparation tokenised it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


def item_texts(items_folder: Path, modality: str) -> list[str]:
    """Each item's ``<modality>_text`` from ``items.parquet``, by item index ("" where it has none)."""
    path = Path(items_folder) / "items.parquet"
    column = f"{modality}_text"
    names = pq.read_schema(path).names
    if column not in names:
        raise ValueError(f"{path}: no column {column!r} (the texts of modality {modality!r}); it has {names}")
    table = pq.read_table(path, columns=["item_idx", column])
    if not np.array_equal(table.column("item_idx").to_numpy(), np.arange(len(table))):
        raise ValueError(f"{path}: rows must be item_idx 0..{len(table) - 1} in order")
    return [t if t and t.strip() else "" for t in table.column(column).to_pylist()]


def tokenise_item_texts(
    items_folder: Path, modality: str, max_tokens: int, tokenizer: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item's ``<modality>_text`` tokenised to ``max_tokens`` as data preparation did: ``(I, T)``
    input ids and ``(I, T)`` int64 attention mask (all 0 for an item without text, as stored),
    checked against the stored ``<modality>.mask.npy`` (ValueError naming it where they differ)."""
    folder = Path(items_folder)
    texts = item_texts(folder, modality)
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    attention_mask = encoded["attention_mask"] * torch.tensor([bool(t) for t in texts]).unsqueeze(1)  # (I, T)
    if not torch.equal(attention_mask.bool(), torch.from_numpy(np.load(folder / f"{modality}.mask.npy"))):
        raise ValueError(
            f"{folder}/{modality}.mask.npy: tokenising items.parquet's {modality}_text to {max_tokens} tokens "
            "gives other token counts than the stored features; prepare the set again"
        )
    return encoded["input_ids"], attention_mask
