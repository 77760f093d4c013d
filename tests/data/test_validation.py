"""Every contract violation fed to the loader / validator, with its error message checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import DatasetError
from em3rec.data.validation import validate_dataset
from tests.data.conftest import rewrite_split


def _open(folder: Path, split: str = "train", **kwargs: object) -> ImpressionLoader:
    return ImpressionLoader(folder, split, batch_size=64, **kwargs)


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _edit_meta(folder: Path, fn) -> None:  # noqa: ANN001 - fn edits the parsed JSON in place
    raw = json.loads((folder / "meta.json").read_text())
    fn(raw)
    (folder / "meta.json").write_text(json.dumps(raw))


def _replace_first(values: pa.Array, value: object) -> pa.Array:
    py = values.to_pylist()
    py[0] = value
    return pa.array(py, values.type)


def test_valid_dataset_passes(tiny_dataset: Path) -> None:
    assert validate_dataset(tiny_dataset).synthetic


def test_missing_column(dataset_copy: Path) -> None:
    rewrite_split(dataset_copy, "train", lambda t: t.drop_columns(["user_group_idx"]))
    with pytest.raises(DatasetError, match=r"part-00000.parquet: missing column\(s\) \['user_group_idx'\]"):
        _open(dataset_copy)


@pytest.mark.parametrize(
    "column, dtype, message",
    [
        ("user_id_idx", pa.int32(), "column 'user_id_idx' .* has type int32; expected int64"),
        ("label", pa.float64(), "column 'label' has type double; expected float32"),
        ("hist_item_ids_idx", pa.list_(pa.int32()), r"column 'hist_item_ids_idx' .* expected list<int64>"),
    ],
)
def test_wrong_type(dataset_copy: Path, column: str, dtype: pa.DataType, message: str) -> None:
    rewrite_split(dataset_copy, "valid", lambda t: _set_column(t, column, t.column(column).cast(dtype)))
    with pytest.raises(DatasetError, match=message):
        _open(dataset_copy, "valid")


@pytest.mark.parametrize("bad_id, column", [(201, "item_id_idx"), (-1, "user_id_idx"), (201, "hist_item_ids_idx")])
def test_ids_out_of_range_from_statistics(dataset_copy: Path, bad_id: int, column: str) -> None:
    def corrupt(t: pa.Table) -> pa.Table:
        values = t.column(column).combine_chunks()
        if pa.types.is_list(values.type):
            py = values.to_pylist()
            py[5] = [bad_id]
            return _set_column(t, column, pa.array(py, values.type))
        return _set_column(t, column, _replace_first(values, bad_id))

    rewrite_split(dataset_copy, "test", corrupt)
    with pytest.raises(
        DatasetError, match=rf"row group 0\): column '{column}' holds ids in \[.*\]; expected 0 <= id < vocab_size"
    ):
        _open(dataset_copy, "test")


def test_ids_out_of_range_without_statistics_scanned_or_lazy(dataset_copy: Path) -> None:
    def corrupt(t: pa.Table) -> pa.Table:
        return _set_column(t, "item_id_idx", _replace_first(t.column("item_id_idx").combine_chunks(), 500))

    rewrite_split(dataset_copy, "valid", corrupt, write_statistics=False, row_group_size=100)
    with pytest.raises(DatasetError, match=r"column 'item_id_idx' holds ids in \[\d+, 500\]"):
        _open(dataset_copy, "valid")  # 300 rows <= scan_rows: checked at open
    loader = _open(dataset_copy, "valid", scan_rows=0, prefetch=0)  # large-split mode: checked when read
    with pytest.raises(DatasetError, match=r"\(row group 0\): column 'item_id_idx' holds ids in \[\d+, 500\]"):
        list(loader)
    lazy_rank_1 = _open(dataset_copy, "valid", scan_rows=0, rank=1, world_size=2)
    assert len(list(lazy_rank_1)) == 3, "the bad row is in rank 0's shard only"


def test_empty_split(dataset_copy: Path) -> None:
    rewrite_split(dataset_copy, "valid", lambda t: t.slice(0, 0))
    _edit_meta(dataset_copy, lambda m: m["splits"]["valid"].update(rows=0))
    with pytest.raises(DatasetError, match="split 'valid' is empty"):
        _open(dataset_copy, "valid")


def test_meta_rows_disagree_with_files(dataset_copy: Path) -> None:
    _edit_meta(dataset_copy, lambda m: m["splits"]["test"].update(rows=299))
    with pytest.raises(DatasetError, match=r"files hold 300 rows but meta.json splits.test.rows = 299"):
        _open(dataset_copy, "test")


@pytest.mark.parametrize(
    "value, message",
    [
        (float("nan"), "column 'label' has 1 NaN value"),
        (0.5, r"column 'label' holds 0.5; expected 0 or 1"),
        (2.0, r"column 'label' holds values in \[-?0.0, 2.0\]; expected 0 or 1"),
        (None, "column 'label' has 1 null value"),
    ],
)
def test_bad_labels(dataset_copy: Path, value: float | None, message: str) -> None:
    rewrite_split(
        dataset_copy,
        "valid",
        lambda t: _set_column(t, "label", _replace_first(t.column("label").combine_chunks(), value)),
    )
    with pytest.raises(DatasetError, match=message):
        _open(dataset_copy, "valid")


def test_bad_labels_lazy(dataset_copy: Path) -> None:
    rewrite_split(
        dataset_copy,
        "valid",
        lambda t: _set_column(t, "label", _replace_first(t.column("label").combine_chunks(), float("nan"))),
    )
    loader = _open(dataset_copy, "valid", scan_rows=0)
    with pytest.raises(DatasetError, match="NaN"):
        list(loader)


def test_null_ids_and_too_long_lists(dataset_copy: Path) -> None:
    rewrite_split(
        dataset_copy,
        "valid",
        lambda t: _set_column(t, "user_group_idx", _replace_first(t.column("user_group_idx").combine_chunks(), None)),
    )
    with pytest.raises(DatasetError, match="column 'user_group_idx' has 1 null row"):
        _open(dataset_copy, "valid")

    def long_tags(t: pa.Table) -> pa.Table:
        return _set_column(t, "item_tags_idx", _replace_first(t.column("item_tags_idx").combine_chunks(), [1] * 5))

    rewrite_split(dataset_copy, "test", long_tags)
    with pytest.raises(
        DatasetError,
        match="column 'item_tags_idx' has a list of 5 values; meta.json feature 'item_tags' has max_length 4",
    ):
        _open(dataset_copy, "test")


def test_missing_split_folder_and_files(dataset_copy: Path) -> None:
    for f in (dataset_copy / "test").glob("*.parquet"):
        f.unlink()
    with pytest.raises(DatasetError, match=r"test: no \*.parquet files"):
        _open(dataset_copy, "test")
    (dataset_copy / "test").rmdir()
    with pytest.raises(DatasetError, match="test: split folder missing"):
        _open(dataset_copy, "test")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", 16, r"title.tokens.npy: shape \(201, 3, 8\) float16; expected \(201, 3, 16\) .*width=16"),
        ("tokens", 4, r"title.tokens.npy: shape \(201, 3, 8\) float16; expected \(201, 4, 8\) .*tokens=4"),
    ],
)
def test_modality_mismatch_with_meta(dataset_copy: Path, field: str, value: int, message: str) -> None:
    _edit_meta(dataset_copy, lambda m: m["modalities"][0].update({field: value}))
    with pytest.raises(DatasetError, match=message):
        _open(dataset_copy, modalities=["title"])
    with pytest.raises(DatasetError, match=message):
        ItemStore(dataset_copy)


def test_item_array_dtype_rows_and_missing_file(dataset_copy: Path) -> None:
    items = dataset_copy / "items"
    np.save(items / "meta.pooled.npy", np.load(items / "meta.pooled.npy").astype(np.float32))
    with pytest.raises(DatasetError, match=r"meta.pooled.npy: shape \(201, 4\) float32; expected \(201, 4\) float16"):
        ItemStore(dataset_copy, ["meta"])
    np.save(items / "meta.pooled.npy", np.zeros((150, 4), np.float16))
    with pytest.raises(DatasetError, match=r"meta.pooled.npy: shape \(150, 4\) .*item vocab_size=201"):
        ItemStore(dataset_copy, ["meta"])
    (items / "meta.mask.npy").unlink()
    with pytest.raises(DatasetError, match="meta.mask.npy: missing; meta.json lists modality 'meta'"):
        ItemStore(dataset_copy, ["meta"])


def test_unknown_modality(tiny_dataset: Path) -> None:
    with pytest.raises(
        DatasetError,
        match=r"modality \['image'\] requested \(data.modalities\) but the dataset has \['meta', 'title'\]",
    ):
        _open(tiny_dataset, modalities=["image"])


def test_item_store_gather_checks_ids(tiny_dataset: Path) -> None:
    store = ItemStore(tiny_dataset, ["title"])
    tokens, mask = store.gather(np.array([0, 5, 200]))
    assert tokens["title"].shape == (3, 3, 8) and mask["title"].shape == (3, 3)
    assert not mask["title"][0].any(), "item index 0 is the reserved item: no content"
    with pytest.raises(DatasetError, match=r"item ids in \[5, 201\] requested; the item arrays have 201 rows"):
        store.gather(np.array([5, 201]))
    with pytest.raises(DatasetError, match=r"item ids in \[-1, 5\]"):
        store.gather(np.array([-1, 5]))


def test_meta_json_problems(dataset_copy: Path) -> None:
    _edit_meta(dataset_copy, lambda m: m["splits"].pop("valid"))
    with pytest.raises(DatasetError, match="split 'valid' missing from 'splits'"):
        _open(dataset_copy)
    (dataset_copy / "meta.json").unlink()
    with pytest.raises(DatasetError, match="meta.json: missing"):
        _open(dataset_copy)


def test_labels_checked_with_compute(tiny_dataset: Path) -> None:
    """The fixture's labels really are 0/1 float32 (guards the generator, not just the checker)."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((tiny_dataset / "train").glob("*.parquet"))])
    assert table.schema.field("label").type == pa.float32()
    assert set(pc.unique(table.column("label")).to_pylist()) == {0.0, 1.0}


def test_num_items_disagrees_with_vocab_or_items_table(dataset_copy: Path) -> None:
    _edit_meta(dataset_copy, lambda m: m.update(num_items=200))
    with pytest.raises(DatasetError, match="num_items = 200 but item feature vocab_size = 201"):
        _open(dataset_copy)
    _edit_meta(dataset_copy, lambda m: m.update(num_items=201))
    table = pq.read_table(dataset_copy / "items" / "items.parquet")
    pq.write_table(table.slice(1), dataset_copy / "items" / "items.parquet")
    with pytest.raises(DatasetError, match=r"items.parquet: 200 rows but meta.json num_items = 201"):
        _open(dataset_copy)
