"""Write a prepared dataset folder exactly as ``em3rec/data/schema.py`` documents it.

Every importer (ml100k, movielens, amazon) ends here, so the contract is checked in one
place: impression columns and index ranges, item table alignment, modality array shapes. The folder
is written next to its destination and renamed into place, so a crash never leaves half a dataset
that a loader would accept.

Layout written::

    meta.json
    train/part-00000.parquet ...  valid/...  test/...
    items/items.parquet
    items/<modality>.tokens.npy   (num_items, T, W) float16
    items/<modality>.mask.npy     (num_items, T) bool
    items/<modality>.pooled.npy   (num_items, W) float16, masked mean of the tokens
    vocabs/<feature>.parquet      index -> raw value (optional; for inspection and serving)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from em3rec.data.schema import SPLITS, DatasetError, DatasetMeta, FeatureSpec, ModalitySpec, SplitSpec

from data_prep.vocab import Vocab

logger = logging.getLogger(__name__)

IMPRESSION_COLUMNS: tuple[str, ...] = ("label", "user_id", "item_id", "timestamp", "hist_item_ids")
ROW_GROUP_SIZE = 65_536
ITEM_BLOCK_ROWS = 8_192  # items per block when writing the modality arrays


@dataclass
class ModalityArrays:
    """Frozen token features of one item modality; row ``i`` belongs to item index ``i``.

    Args:
        name: modality name (``"title"``, ``"meta"``, ``"image"``).
        tokens: ``(num_items, T, W)`` token features (stored as float16).
        mask: ``(num_items, T)`` bool, True = real token; a row of all False = missing modality.
        encoder: name of the frozen encoder that produced the tokens.
        encoder_version: versions that pin the encoder (library, weights package).
    """

    name: str
    tokens: np.ndarray
    mask: np.ndarray
    encoder: str
    encoder_version: str = ""

    def spec(self) -> ModalitySpec:
        return ModalitySpec(
            name=self.name,
            tokens=int(self.tokens.shape[1]),
            width=int(self.tokens.shape[2]),
            encoder=self.encoder,
            encoder_version=self.encoder_version,
        )


def masked_mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(N, T, W)`` tokens, ``(N, T)`` mask -> ``(N, W)`` float16 mean of real tokens (0 if none)."""
    m = mask.astype(np.float32)  # (N, T)
    total = np.einsum("ntw,nt->nw", tokens.astype(np.float32), m)  # (N, W)
    count = np.maximum(m.sum(axis=1, keepdims=True), 1.0)  # (N, 1)
    return (total / count).astype(np.float16)


def _save_modality(folder: Path, mod: ModalityArrays) -> None:
    """``<name>.tokens.npy`` (masked-out tokens zeroed), ``.mask.npy`` and ``.pooled.npy``, written
    ``ITEM_BLOCK_ROWS`` items at a time so large item sets need no full-size temporaries."""
    n, t, w = mod.tokens.shape
    block_rows = ITEM_BLOCK_ROWS
    tokens = np.lib.format.open_memmap(folder / f"{mod.name}.tokens.npy", mode="w+", dtype=np.float16, shape=(n, t, w))
    pooled = np.lib.format.open_memmap(folder / f"{mod.name}.pooled.npy", mode="w+", dtype=np.float16, shape=(n, w))
    for lo in range(0, n, block_rows):
        rows = slice(lo, min(lo + block_rows, n))
        block = np.where(mod.mask[rows, :, None], mod.tokens[rows], 0).astype(np.float16)  # (b, T, W)
        tokens[rows] = block
        pooled[rows] = masked_mean(block, mod.mask[rows])
    tokens.flush()
    pooled.flush()
    del tokens, pooled
    np.save(folder / f"{mod.name}.mask.npy", mod.mask)


def _check_modality(mod: ModalityArrays, num_items: int) -> None:
    where = f"modality {mod.name!r}"
    if mod.tokens.ndim != 3 or mod.mask.ndim != 2:
        raise DatasetError(
            f"{where}: tokens must be (num_items, T, W) and mask (num_items, T); "
            f"got {mod.tokens.shape} and {mod.mask.shape}"
        )
    if mod.tokens.shape[:2] != mod.mask.shape:
        raise DatasetError(f"{where}: tokens {mod.tokens.shape} and mask {mod.mask.shape} disagree on (num_items, T)")
    if mod.tokens.shape[0] != num_items:
        raise DatasetError(
            f"{where}: {mod.tokens.shape[0]} rows; expected {num_items} (one per item index, row 0 reserved)"
        )
    if mod.mask.dtype != np.bool_:
        raise DatasetError(f"{where}: mask dtype {mod.mask.dtype}; expected bool")
    if mod.mask[0].any():
        raise DatasetError(f"{where}: row 0 is the reserved unknown/padding item and must be fully masked")
    for lo in range(0, num_items, ITEM_BLOCK_ROWS):  # blocks: no full-size temporaries
        block = mod.tokens[lo : lo + ITEM_BLOCK_ROWS]
        if not np.isfinite(block).all():
            raise DatasetError(f"{where}: tokens contain NaN or inf")
        if np.abs(block).max(initial=0.0) > np.finfo(np.float16).max:
            raise DatasetError(f"{where}: token values overflow float16")


def _check_items(items: pa.Table, num_items: int) -> None:
    for col in ("item_idx", "item_id"):
        if col not in items.column_names:
            raise DatasetError(f"items/items.parquet: column {col!r} missing; have {items.column_names}")
    idx = items.column("item_idx").to_numpy()
    if len(idx) != num_items or not np.array_equal(idx, np.arange(num_items)):
        raise DatasetError(
            f"items/items.parquet: item_idx must be 0..{num_items - 1} in order (row i = item index i), "
            f"got {len(idx)} rows"
        )


def _check_impressions(table: pa.Table, features: Sequence[FeatureSpec], where: str) -> None:
    missing = [c for c in IMPRESSION_COLUMNS + tuple(f.column for f in features) if c not in table.column_names]
    if missing:
        raise DatasetError(f"{where}: columns {missing} missing; have {table.column_names}")
    if table.schema.field("label").type != pa.float32():
        raise DatasetError(f"{where}: column 'label' is {table.schema.field('label').type}; expected float32")
    labels = table.column("label")
    if labels.null_count or not pc.all(pc.is_in(labels, pa.array([0.0, 1.0], pa.float32()))).as_py():
        raise DatasetError(f"{where}: column 'label' must hold only 0.0 and 1.0")
    for f in features:
        col = table.column(f.column)
        is_list = f.kind in ("history", "multi")
        expected = pa.list_(pa.int64()) if is_list else pa.int64()
        if col.type != expected:
            raise DatasetError(f"{where}: column {f.column!r} is {col.type}; expected {expected} for kind {f.kind!r}")
        if col.null_count:
            raise DatasetError(f"{where}: column {f.column!r} has {col.null_count} nulls; use index 0 for unknown")
        values = pc.list_flatten(col) if is_list else col
        if len(values):
            lo, hi = pc.min(values).as_py(), pc.max(values).as_py()
            if lo < 0 or hi >= f.vocab_size:
                raise DatasetError(
                    f"{where}: column {f.column!r} has indices in [{lo}, {hi}]; expected [0, {f.vocab_size})"
                )
        if is_list and len(col):
            longest = pc.max(pc.list_value_length(col)).as_py() or 0
            if longest > f.max_length:
                raise DatasetError(
                    f"{where}: column {f.column!r} has a row of {longest} values; max_length is {f.max_length}"
                )


def _replace_folder(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "meta.json").is_file()):
            raise DatasetError(f"{out}: exists and is not a prepared dataset folder; refusing to overwrite it")
        shutil.rmtree(out)
    os.replace(tmp, out)


def write_prepared(
    out: str | Path,
    *,
    name: str,
    protocol: str,
    features: Sequence[FeatureSpec],
    splits: Mapping[str, pa.Table | Iterable[pa.Table]],
    items: pa.Table,
    modalities: Sequence[ModalityArrays] = (),
    num_users: int | None = None,
    vocabs: Mapping[str, Vocab] | None = None,
    synthetic: bool = False,
    extra: dict | None = None,
) -> DatasetMeta:
    """Write a prepared dataset folder and return its ``DatasetMeta``.

    Args:
        out: destination folder; an existing prepared dataset there is replaced.
        name, protocol: recorded in ``meta.json`` (e.g. ``"ml100k"``, ``"ml100k-ctr-v1"``).
        features: every ID feature; each one's index column must be in the impressions.
        splits: ``train`` / ``valid`` / ``test`` -> impressions, one table or an iterable of chunks
            (each chunk becomes one Parquet file, so large splits stream).
        items: ``num_items`` rows with ``item_idx == 0..num_items-1`` and raw ``item_id`` (null on the
            reserved row 0) plus whatever each modality was made from.
        modalities: token arrays per modality, ``num_items`` rows each.
        num_users: defaults to the user feature's vocabulary size.
        vocabs: optional vocabularies written to ``vocabs/<name>.parquet``; the values they mapped
            to index 0 while the splits were written are recorded in ``extra["unmapped_values"]``.

    ``num_items`` / ``num_users`` count every index including the reserved 0, i.e. they are the row
    counts of the item content arrays and of the embedding tables.
    """
    out = Path(out)
    if set(splits) != set(SPLITS):
        raise DatasetError(f"{out}: splits must be exactly {SPLITS}, got {sorted(splits)}")
    features = tuple(features)
    item_feature = [f for f in features if f.kind == "item"]
    user_feature = [f for f in features if f.kind == "user"]
    if len(item_feature) != 1 or len(user_feature) != 1:
        raise DatasetError(
            f"{out}: expected exactly one 'item' and one 'user' feature, got {[f.name for f in features]}"
        )
    num_items = items.num_rows
    if item_feature[0].vocab_size != num_items:
        raise DatasetError(
            f"{out}: item feature vocab_size {item_feature[0].vocab_size} != {num_items} rows of items/items.parquet"
        )
    _check_items(items, num_items)
    for mod in modalities:
        _check_modality(mod, num_items)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        split_specs: dict[str, SplitSpec] = {}
        for split in SPLITS:
            chunks = splits[split]
            chunks = [chunks] if isinstance(chunks, pa.Table) else chunks
            (tmp / split).mkdir()
            rows, positives = 0, 0.0
            for i, chunk in enumerate(chunks):
                _check_impressions(chunk, features, f"{split}/part-{i:05d}.parquet")
                pq.write_table(chunk, tmp / split / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP_SIZE)
                rows += chunk.num_rows
                positives += float(pc.sum(chunk.column("label")).as_py() or 0.0)
            if rows == 0:
                logger.warning("%s: split %r is empty", out, split)
            split_specs[split] = SplitSpec(rows=rows, positive_rate=positives / rows if rows else 0.0)

        (tmp / "items").mkdir()
        pq.write_table(items, tmp / "items" / "items.parquet")
        for mod in modalities:
            _save_modality(tmp / "items", mod)

        if vocabs:
            (tmp / "vocabs").mkdir()
            for key, vocab in vocabs.items():
                pq.write_table(vocab.to_table(), tmp / "vocabs" / f"{key}.parquet")

        extra = dict(extra or {})
        unmapped = {
            key: {"unknown": v.unknown_count, "missing": v.missing_count}
            for key, v in (vocabs or {}).items()
            if v.unknown_count or v.missing_count
        }
        if unmapped:
            # Counted over every impression written (the history shares the item vocabulary).
            extra["unmapped_values"] = unmapped
            level = logging.WARNING if any(v["unknown"] for v in unmapped.values()) else logging.INFO
            logger.log(level, "%s: values mapped to index 0 (unknown / missing): %s", out, unmapped)
        meta = DatasetMeta(
            name=name,
            protocol=protocol,
            num_items=num_items,
            num_users=num_users if num_users is not None else user_feature[0].vocab_size,
            features=features,
            modalities=tuple(m.spec() for m in modalities),
            splits=split_specs,
            synthetic=synthetic,
            extra=extra,
        )
        meta.validate(tmp / "meta.json")
        meta.save(tmp)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s: %s", out, {k: v.rows for k, v in split_specs.items()})
    return meta
