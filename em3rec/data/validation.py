"""Checks that a prepared dataset folder matches its contract (``em3rec/data/schema.py``).

Checks are split by cost so that opening a large dataset stays cheap:

* **structure** (always, at open): split folders and files exist, every needed column is present
  with the contract's type, ``meta.json`` row counts (split rows, ``num_items``) agree with the
  Parquet footers and the item vocabulary, no split is empty, and the item arrays' shapes/dtypes
  agree with ``meta.json`` (array headers only).
* **statistics** (always, at open): id ranges (``0 <= id < vocab_size``) and label range from the
  Parquet row-group min/max statistics, so no data page is read.
* **values** (:func:`check_record_batch`): NaN/null labels, labels not in {0, 1}, nulls, id ranges
  where statistics are missing, and list lengths above ``max_length``. Small splits are scanned at
  open; large ones are checked per record batch as the loader reads them.

Every error is a :class:`~em3rec.data.schema.DatasetError` naming the file, column and expectation.
Run ``python -m em3rec.data.validation DIR`` to check a folder by hand.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from em3rec.cli import user_errors
from em3rec.data.schema import SPLITS, DatasetError, DatasetMeta, FeatureSpec

logger = logging.getLogger(__name__)

LABEL = "label"
LIST_KINDS = ("history", "multi")
ITEM_ARRAYS = ("tokens", "mask", "pooled")


def is_list_feature(spec: FeatureSpec) -> bool:
    """History and multi-valued features are ``list<int64>`` columns; the others ``int64``."""
    return spec.kind in LIST_KINDS


def expected_type(spec: FeatureSpec) -> str:
    return "list<int64>" if is_list_feature(spec) else "int64"


def _type_ok(spec: FeatureSpec, dtype: pa.DataType) -> bool:
    if is_list_feature(spec):
        return (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and pa.types.is_int64(dtype.value_type)
    return pa.types.is_int64(dtype)


# ---------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of a split: ``rows`` rows starting at global row ``start``."""

    fragment: ds.ParquetFileFragment
    index: int  # row-group id inside its file
    start: int
    rows: int

    @property
    def where(self) -> str:
        return f"{self.fragment.path} (row group {self.index})"


def open_split(folder: str | Path, split: str) -> tuple[ds.FileSystemDataset, list[RowGroup]]:
    """The split's Parquet files (sorted by name = row order) and their row groups in order."""
    split_dir = Path(folder) / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split folder missing; expected {split}/*.parquet (splits: {SPLITS})")
    files = sorted(str(p) for p in split_dir.glob("*.parquet"))
    if not files:
        raise DatasetError(f"{split_dir}: no *.parquet files")
    try:
        dataset = ds.dataset(files, format="parquet")
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{split_dir}: cannot open as Parquet ({e})") from e
    groups: list[RowGroup] = []
    start = 0
    for fragment in dataset.get_fragments():
        try:
            row_groups = fragment.row_groups  # reads this file's footer
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"{fragment.path}: cannot open as Parquet ({e})") from e
        for rg in row_groups:
            groups.append(RowGroup(fragment, rg.id, start, rg.num_rows))
            start += rg.num_rows
    return dataset, groups


def read_error(where: str, error: Exception) -> DatasetError:
    """A Parquet decode failure (corrupt page, truncated file) as an error naming the row group."""
    return DatasetError(f"{where}: cannot read ({type(error).__name__}: {error})")


def check_columns(schema: pa.Schema, features: Sequence[FeatureSpec], where: str) -> None:
    """Every feature's index column and ``label`` exist with the contract's types."""
    have = set(schema.names)
    needed = [LABEL] + [f.column for f in features]
    missing = [c for c in needed if c not in have]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; have {sorted(have)}")
    label_type = schema.field(LABEL).type
    if not pa.types.is_float32(label_type):
        raise DatasetError(f"{where}: column {LABEL!r} has type {label_type}; expected float32")
    for f in features:
        dtype = schema.field(f.column).type
        if not _type_ok(f, dtype):
            raise DatasetError(
                f"{where}: column {f.column!r} (feature {f.name!r}, kind {f.kind}) has type {dtype}; "
                f"expected {expected_type(f)}"
            )


def check_row_counts(meta: DatasetMeta, split: str, groups: Sequence[RowGroup], where: str) -> int:
    """``meta.json`` ``splits.<split>.rows`` equals the files' row count, and is not 0."""
    rows = sum(g.rows for g in groups)
    declared = meta.splits[split].rows
    if rows != declared:
        raise DatasetError(f"{where}: files hold {rows} rows but meta.json splits.{split}.rows = {declared}")
    if rows == 0:
        raise DatasetError(f"{where}: split {split!r} is empty (0 rows)")
    return rows


def _stats_by_column(group: RowGroup) -> dict[str, object]:
    rg = group.fragment.metadata.row_group(group.index)
    stats = {}
    for i in range(rg.num_columns):
        column = rg.column(i)
        stats[column.path_in_schema.split(".")[0]] = column.statistics
    return stats


def check_statistics(groups: Sequence[RowGroup], features: Sequence[FeatureSpec]) -> bool:
    """Id and label ranges from Parquet row-group statistics.

    Returns True if every needed column of every row group carried min/max statistics, i.e. the id
    ranges are fully verified and value checks need not repeat them.
    """
    complete = True
    for group in groups:
        if group.rows == 0:
            continue
        stats = _stats_by_column(group)
        label = stats.get(LABEL)
        if label is not None and label.has_min_max and (label.min < 0 or label.max > 1):
            raise DatasetError(
                f"{group.where}: column {LABEL!r} holds values in [{label.min}, {label.max}]; expected 0 or 1"
            )
        for f in features:
            s = stats.get(f.column)
            if s is None or not s.has_min_max:
                complete = False
                continue
            if s.min < 0 or s.max >= f.vocab_size:
                raise DatasetError(
                    f"{group.where}: column {f.column!r} holds ids in [{s.min}, {s.max}]; expected "
                    f"0 <= id < vocab_size {f.vocab_size} (meta.json feature {f.name!r})"
                )
    return complete


def check_record_batch(
    batch: pa.RecordBatch | pa.Table, features: Sequence[FeatureSpec], where: str, check_ids: bool = True
) -> None:
    """Value checks on rows the loader reads: labels, nulls, id ranges, list lengths."""
    labels = batch.column(LABEL)
    if labels.null_count:
        raise DatasetError(f"{where}: column {LABEL!r} has {labels.null_count} null value(s); expected 0 or 1")
    values = labels.to_numpy()
    bad = (values != 0) & (values != 1)  # NaN is also != 0 and != 1
    if bad.any():
        nan = int(np.isnan(values).sum())
        if nan:
            raise DatasetError(f"{where}: column {LABEL!r} has {nan} NaN value(s); expected 0 or 1")
        raise DatasetError(f"{where}: column {LABEL!r} holds {float(values[bad][0])}; expected 0 or 1")
    for f in features:
        column = batch.column(f.column)
        if column.null_count:
            raise DatasetError(f"{where}: column {f.column!r} has {column.null_count} null row(s)")
        ids = column
        if is_list_feature(f):
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            ids = column.flatten()
            if ids.null_count:
                raise DatasetError(f"{where}: column {f.column!r} has {ids.null_count} null list element(s)")
            longest = pc.max(pc.list_value_length(column)).as_py() or 0
            if longest > f.max_length:
                raise DatasetError(
                    f"{where}: column {f.column!r} has a list of {longest} values; meta.json feature "
                    f"{f.name!r} has max_length {f.max_length}"
                )
        if check_ids and len(ids):
            lo_hi = pc.min_max(ids)
            lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
            if lo < 0 or hi >= f.vocab_size:
                raise DatasetError(
                    f"{where}: column {f.column!r} holds ids in [{lo}, {hi}]; expected 0 <= id < vocab_size "
                    f"{f.vocab_size} (meta.json feature {f.name!r})"
                )


@dataclass(frozen=True)
class SplitInfo:
    """What opening a split established; the loader reads ``groups`` and finishes lazy checks."""

    dataset: ds.FileSystemDataset
    groups: list[RowGroup]
    rows: int
    stats_cover_ids: bool  # id ranges fully verified from Parquet statistics
    scanned: bool  # values already checked for every row


def validate_split(
    folder: str | Path,
    meta: DatasetMeta,
    split: str,
    features: Sequence[FeatureSpec] | None = None,
    scan_rows: int = 1_000_000,
) -> SplitInfo:
    """Structure and statistics checks for one split; value checks too if it has ``<= scan_rows`` rows.

    Args:
        features: the features whose columns are needed (default: all of ``meta.features``).
        scan_rows: splits up to this many rows are fully scanned now; larger ones are left to
            :func:`check_record_batch` as they are read (``SplitInfo.scanned`` is False).
    """
    if split not in meta.splits:
        raise DatasetError(f"{Path(folder) / 'meta.json'}: no split {split!r}; have {sorted(meta.splits)}")
    features = list(meta.features if features is None else features)
    dataset, groups = open_split(folder, split)
    where = str(Path(folder) / split)
    for fragment in dataset.get_fragments():
        check_columns(fragment.physical_schema, features, fragment.path)
    rows = check_row_counts(meta, split, groups, where)
    stats_cover_ids = check_statistics(groups, features)
    scanned = rows <= scan_rows
    if scanned:
        columns = [LABEL] + [f.column for f in features]
        for group in groups:
            try:
                table = group.fragment.subset(row_group_ids=[group.index]).to_table(columns=columns)
            except (pa.ArrowInvalid, OSError) as e:
                raise read_error(group.where, e) from e
            check_record_batch(table, features, group.where, check_ids=not stats_cover_ids)
    return SplitInfo(dataset, groups, rows, stats_cover_ids, scanned)


# ------------------------------------------------------------------------------------------ items


def check_meta_counts(folder: str | Path, meta: DatasetMeta) -> None:
    """``num_items`` (which counts the reserved index 0) agrees with the item vocabulary and
    ``items/items.parquet`` (footer only)."""
    where = Path(folder) / "meta.json"
    vocab = meta.features_of("item")[0].vocab_size
    if meta.num_items != vocab:
        raise DatasetError(
            f"{where}: num_items = {meta.num_items} but item feature vocab_size = {vocab}; both count every "
            f"item index including the reserved 0"
        )
    items = Path(folder) / "items" / "items.parquet"
    if items.is_file():
        rows = pq.ParquetFile(items).metadata.num_rows
        if rows != meta.num_items:
            raise DatasetError(
                f"{items}: {rows} rows but meta.json num_items = {meta.num_items} (row i = item index i)"
            )


def item_array_path(folder: str | Path, modality: str, kind: str) -> Path:
    """``items/<modality>.<kind>.npy`` with kind in tokens | mask | pooled."""
    return Path(folder) / "items" / f"{modality}.{kind}.npy"


def check_item_arrays(
    folder: str | Path, meta: DatasetMeta, modalities: Sequence[str] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Memory-map the item arrays of ``modalities`` and check them against ``meta.json``.

    Returns ``{modality: {"tokens": (V, T, W) float16, "mask": (V, T) bool, "pooled": (V, W) float16}}``
    read-only memory maps, ``V`` = the item vocabulary size (row ``i`` = item index ``i``).
    """
    specs = {m.name: m for m in meta.modalities}
    names = list(specs) if modalities is None else list(modalities)
    unknown = [m for m in names if m not in specs]
    if unknown:
        raise DatasetError(
            f"{Path(folder) / 'meta.json'}: modality {unknown} requested (data.modalities) but the dataset has "
            f"{sorted(specs)}"
        )
    rows = meta.features_of("item")[0].vocab_size
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        spec = specs[name]
        expected = {
            "tokens": ((rows, spec.tokens, spec.width), np.float16),
            "mask": ((rows, spec.tokens), np.bool_),
            "pooled": ((rows, spec.width), np.float16),
        }
        arrays[name] = {}
        for kind, (shape, dtype) in expected.items():
            path = item_array_path(folder, name, kind)
            if not path.is_file():
                raise DatasetError(f"{path}: missing; meta.json lists modality {name!r}")
            try:
                array = np.load(path, mmap_mode="r")
            except ValueError as e:
                raise DatasetError(f"{path}: not a readable .npy array ({e})") from e
            if array.shape != shape or array.dtype != dtype:
                raise DatasetError(
                    f"{path}: shape {array.shape} {array.dtype}; expected {shape} {np.dtype(dtype)} from meta.json "
                    f"(modality {name!r}: tokens={spec.tokens}, width={spec.width}; item vocab_size={rows})"
                )
            arrays[name][kind] = array
    return arrays


def validate_dataset(
    folder: str | Path, modalities: Sequence[str] | None = None, scan_rows: int = 1_000_000
) -> DatasetMeta:
    """Every check on every split and modality of a prepared folder; returns its meta."""
    meta = DatasetMeta.load(folder)
    check_meta_counts(folder, meta)
    for split in SPLITS:
        validate_split(folder, meta, split, scan_rows=scan_rows)
    check_item_arrays(folder, meta, modalities)
    return meta


@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check a prepared em3rec dataset folder against its contract.")
    parser.add_argument("folder")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a dataset error")
    parser.add_argument("--scan-rows", type=int, default=10_000_000, help="fully scan splits up to this many rows")
    args = parser.parse_args(argv)
    meta = validate_dataset(args.folder, scan_rows=args.scan_rows)
    rows = {s: meta.splits[s].rows for s in SPLITS}
    print(f"{args.folder}: OK ({meta.name}, protocol {meta.protocol}, rows {rows})")


if __name__ == "__main__":
    main()
