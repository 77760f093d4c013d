"""The item-cold-start variant: held-out items vanish from train targets and histories only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.cold_holdout import hold_out_items
from data_prep.synthetic import SyntheticConfig, generate
from em3rec.data.schema import DatasetMeta
from em3rec.evaluation import cold_item_mask


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cold") / "syn"
    generate(
        SyntheticConfig(
            out=out,
            rows=3000,
            items=80,
            users=40,
            history_mean=6.0,
            history_max=12,
            modalities=("title",),
            tokens=(3,),
            width=(8,),
            seed=5,
        )
    )
    return out


def _flat(table, column: str) -> np.ndarray:
    return table.column(column).combine_chunks().flatten().to_numpy()


def test_held_items_are_never_trained_and_the_rest_is_unchanged(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "cold"
    report = hold_out_items(prepared, out, fraction=0.25, seed=1)
    src_train, train = pq.read_table(prepared / "train"), pq.read_table(out / "train")
    meta = DatasetMeta.load(prepared)
    item, history = meta.features_of("item")[0], meta.features_of("history")[0]
    test_items = np.unique(pq.read_table(prepared / "test", columns=[item.column]).column(item.column).to_numpy())
    assert report["items_held_out"] == round(0.25 * len(test_items))
    cold = cold_item_mask(out, DatasetMeta.load(out)).numpy()
    held = np.flatnonzero(cold & np.isin(np.arange(len(cold)), test_items))
    held = held[~cold_item_mask(prepared, meta).numpy()[held]]  # newly cold items
    assert len(held) == report["items_held_out"]
    assert not np.isin(train.column(item.column).to_numpy(), held).any()
    assert not np.isin(_flat(train, history.column), held).any()
    # Every other train row survives, with its history minus the held items, in order.
    keep = ~np.isin(src_train.column(item.column).to_numpy(), held)
    assert train.num_rows == int(keep.sum()) == src_train.num_rows - report["train_rows_removed"]
    src_hist = src_train.column(history.column).to_pylist()
    expected = [[i for i in h if i not in set(held)] for h, k in zip(src_hist, keep) if k]
    assert train.column(history.column).to_pylist() == expected
    raw = train.column(history.name).to_pylist()  # the raw-id list loses the same positions
    assert [len(h) for h in raw] == [len(h) for h in expected]
    for split in ("valid", "test"):
        assert pq.read_table(out / split).equals(pq.read_table(prepared / split))
    meta = DatasetMeta.load(out)
    assert meta.splits["train"].rows == train.num_rows and meta.protocol.endswith("+cold-holdout")
    assert meta.extra["cold_holdout"]["cold_test_rows_from_held_items"] == report["cold_test_rows_from_held_items"] > 0


def test_fraction_must_be_a_share(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--fraction 1.0"):
        hold_out_items(prepared, tmp_path / "x", fraction=1.0)


def test_refuses_to_overwrite_its_source(prepared: Path) -> None:
    with pytest.raises(ValueError, match="is the source folder"):
        hold_out_items(prepared, prepared, fraction=0.2)
