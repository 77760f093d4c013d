"""Tiny synthetic datasets and a naive per-row reading of splits and batches (the test oracle)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import SyntheticConfig, generate
from em3rec.data.batch import Batch
from em3rec.data.schema import DatasetMeta

ROWS = 3001  # odd on purpose: uneven rank shards and a partial last batch


def make_dataset(out: Path, **overrides: object) -> Path:
    cfg = dict(
        out=out,
        rows=ROWS,
        items=200,
        users=80,
        history_mean=8.0,
        history_max=30,
        modalities=("title", "meta"),
        tokens=(3, 5),
        width=(8, 4),
        chunk_rows=700,
        row_group_rows=250,
        seed=7,
    )
    cfg.update(overrides)
    generate(SyntheticConfig(**cfg))
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only: 3001 rows over 5 files per split, 250-row row groups, 2 modalities."""
    return make_dataset(tmp_path_factory.mktemp("tiny") / "syn")


@pytest.fixture
def dataset_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may corrupt."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))


def rewrite_split(folder: Path, split: str, fn: Callable[[pa.Table], pa.Table], **write_kwargs: object) -> None:
    """Replace the split's files by one file holding ``fn(all rows)``."""
    files = sorted((folder / split).glob("*.parquet"))
    table = fn(pa.concat_tables([pq.read_table(f) for f in files]))
    for f in files:
        f.unlink()
    pq.write_table(table, folder / split / "part-00000.parquet", **write_kwargs)


def reference_rows(folder: Path, split: str) -> list[dict]:
    """Every row of a split as a dict of its index columns and label, in file order."""
    files = sorted((folder / split).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def expected_row(row: dict, meta: DatasetMeta, max_history: int) -> tuple:
    """What the loader must emit for one reference row (history cut to the most recent)."""
    hist = meta.features_of("history")[0]
    values = [row["label"], row[meta.features_of("item")[0].column], tuple(row[hist.column][-max_history:])]
    for f in meta.features_of("user", "single", "multi"):
        v = row[f.column]
        values.append(tuple(v) if isinstance(v, list) else (v,))
    return tuple(values)


def batch_rows(batch: Batch, meta: DatasetMeta, real_only: bool = True) -> list[tuple]:
    """Per-row reading of a batch's KJTs and labels in the same layout as ``expected_row``."""
    sparse = {k: jt.to_dense() for k, jt in batch.sparse_features.to_dict().items()}  # per-row tensors
    sequence = {k: jt.to_dense() for k, jt in batch.sequence_features.to_dict().items()}
    item, hist = meta.features_of("item")[0].name, meta.features_of("history")[0].name
    rows = []
    for i in range(batch.batch_size):
        if real_only and batch.weights[i] == 0:
            continue
        (target,) = sequence[item][i].tolist()
        values = [float(batch.labels[i]), target, tuple(sequence[hist][i].tolist())]
        for f in meta.features_of("user", "single", "multi"):
            values.append(tuple(sparse[f.name][i].tolist()))
        rows.append(tuple(values))
    return rows


def as_counter(rows: list[tuple]) -> Counter:
    return Counter(rows)
