"""Each item's text of one modality, read from a prepared set's ``items/items.parquet``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


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
