"""The output contract writer: round trip through DatasetMeta.load, arrays, and contract errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em3rec.data.schema import DatasetError, DatasetMeta, FeatureSpec

from data_prep import writer
from data_prep.vocab import Vocab
from data_prep.writer import ModalityArrays, masked_mean, write_prepared

FEATURES = [
    FeatureSpec("user_id", "user_idx", "user", 3, "user"),
    FeatureSpec("item_id", "item_idx", "item", 4, "item"),
    FeatureSpec("hist_item_ids", "hist_item_idx", "history", 4, "item", max_length=50),
    FeatureSpec("genres", "genres_idx", "multi", 3, "genres", max_length=2),
]


def impressions(labels, users, items, hists, genres) -> pa.Table:
    return pa.table(
        {
            "label": pa.array(labels, pa.float32()),
            "user_id": pa.array([u * 10 for u in users]),
            "item_id": pa.array([i * 100 for i in items]),
            "timestamp": pa.array(range(len(labels)), pa.int64()),
            "hist_item_ids": pa.array([[h * 100 for h in hs] for hs in hists], pa.list_(pa.int64())),
            "user_idx": pa.array(users, pa.int64()),
            "item_idx": pa.array(items, pa.int64()),
            "hist_item_idx": pa.array(hists, pa.list_(pa.int64())),
            "genres_idx": pa.array(genres, pa.list_(pa.int64())),
        }
    )


def item_table() -> pa.Table:
    return pa.table(
        {
            "item_idx": pa.array(range(4), pa.int64()),
            "item_id": pa.array([None, 100, 200, 300], pa.int64()),
            "title_text": ["", "a", "b", None],
        }
    )


def modality(rng) -> ModalityArrays:
    tokens = rng.normal(size=(4, 3, 8)).astype(np.float32)
    mask = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    return ModalityArrays("title", tokens, mask, "test-encoder", "v0")


def splits():
    return {
        "train": [
            impressions([1, 0], [1, 2], [1, 2], [[], [1]], [[1], [1, 2]]),
            impressions([1], [1], [3], [[1, 2]], [[]]),
        ],
        "valid": impressions([0], [2], [3], [[2]], [[2]]),
        "test": impressions([1, 1], [1, 2], [2, 1], [[1, 2, 3], []], [[1], [2]]),
    }


@pytest.mark.parametrize("block_rows", [8192, 3])  # the item arrays are written in blocks of items
def test_round_trip(tmp_path, monkeypatch, block_rows):
    monkeypatch.setattr(writer, "ITEM_BLOCK_ROWS", block_rows)
    rng = np.random.default_rng(0)
    mod = modality(rng)
    out = tmp_path / "ds"
    meta = write_prepared(
        out,
        name="tiny",
        protocol="p",
        features=FEATURES,
        splits=splits(),
        items=item_table(),
        modalities=[mod],
        vocabs={"item_id": Vocab.build("item_id", [100, 200, 300])},
        extra={"note": 1},
    )
    loaded = DatasetMeta.load(out)
    assert loaded == meta
    assert loaded.num_items == 4 and loaded.num_users == 3 and loaded.max_history == 50
    assert loaded.splits["train"].rows == 3 and loaded.splits["train"].positive_rate == pytest.approx(2 / 3)
    assert loaded.modalities[0].tokens == 3 and loaded.modalities[0].width == 8
    assert sorted(p.name for p in (out / "train").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(out / "train").num_rows == 3

    tokens = np.load(out / "items/title.tokens.npy")
    mask = np.load(out / "items/title.mask.npy")
    pooled = np.load(out / "items/title.pooled.npy")
    assert tokens.dtype == np.float16 and tokens.shape == (4, 3, 8)
    assert mask.dtype == np.bool_ and mask.shape == (4, 3)
    assert pooled.dtype == np.float16 and pooled.shape == (4, 8)
    assert (tokens[~mask] == 0).all()  # masked positions are zeroed
    np.testing.assert_allclose(pooled[1], mod.tokens[1, :2].mean(0), atol=2e-3)
    np.testing.assert_allclose(pooled[2], mod.tokens[2, 0], atol=2e-3)
    assert (pooled[0] == 0).all() and (pooled[3] == 0).all()  # missing modality -> zeros
    assert pq.read_table(out / "items/items.parquet").column("item_idx").to_pylist() == [0, 1, 2, 3]
    assert pq.read_table(out / "vocabs/item_id.parquet").to_pylist()[0] == {"index": 1, "value": 100}
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_masked_mean():
    tokens = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_allclose(masked_mean(tokens, np.array([[True, False, True]])), [[4, 5, 6, 7]])


def test_rewrite_replaces_a_prepared_folder_but_not_others(tmp_path):
    kw = dict(name="tiny", protocol="p", features=FEATURES, items=item_table())
    write_prepared(tmp_path / "ds", splits=splits(), **kw)
    meta = write_prepared(tmp_path / "ds", splits=splits(), extra={"second": True}, **kw)
    assert json.loads((tmp_path / "ds/meta.json").read_text())["extra"] == {"second": True} == meta.extra
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious/notes.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not a prepared dataset folder"):
        write_prepared(tmp_path / "precious", splits=splits(), **kw)
    assert (tmp_path / "precious/notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda s: s["test"].drop_columns(["hist_item_idx"]),
            r"test/part-00000.parquet: columns \['hist_item_idx'\] missing",
        ),
        (lambda s: s["test"].set_column(0, "label", pa.array([1.0, 2.0], pa.float32())), "label.*only 0.0 and 1.0"),
        (
            lambda s: s["test"].set_column(0, "label", pa.array([1.0, 0.0], pa.float64())),
            "'label' is double; expected float32",
        ),
        (
            lambda s: s["test"].set_column(6, "item_idx", pa.array([1, 4], pa.int64())),
            r"item_idx.*\[1, 4\]; expected \[0, 4\)",
        ),
        (
            lambda s: s["test"].set_column(7, "hist_item_idx", pa.array([[1] * 51, []], pa.list_(pa.int64()))),
            "row of 51 values",
        ),
        (
            lambda s: s["test"].set_column(6, "item_idx", pa.array([1, 2], pa.int32())),
            "item_idx' is int32; expected int64",
        ),
    ],
)
def test_impression_contract_errors(tmp_path, mutate, message):
    s = splits()
    s["test"] = mutate(s)
    with pytest.raises(DatasetError, match=message):
        write_prepared(tmp_path / "ds", name="t", protocol="p", features=FEATURES, splits=s, items=item_table())
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.tmp-*"))


def test_item_and_modality_contract_errors(tmp_path):
    rng = np.random.default_rng(0)
    kw = dict(name="t", protocol="p", features=FEATURES, splits=splits())
    with pytest.raises(DatasetError, match="vocab_size 4 != 3 rows"):
        write_prepared(tmp_path / "a", items=item_table().slice(0, 3), **kw)
    bad = modality(rng)
    bad.tokens = bad.tokens[:3]
    with pytest.raises(DatasetError, match=r"tokens \(3, 3, 8\) and mask \(4, 3\) disagree"):
        write_prepared(tmp_path / "b", items=item_table(), modalities=[bad], **kw)
    bad = modality(rng)
    bad.mask[0, 0] = True
    with pytest.raises(DatasetError, match="row 0 is the reserved"):
        write_prepared(tmp_path / "c", items=item_table(), modalities=[bad], **kw)
    with pytest.raises(DatasetError, match="splits must be exactly"):
        write_prepared(
            tmp_path / "d", name="t", protocol="p", features=FEATURES, splits={"train": []}, items=item_table()
        )
