"""Bad input through the trainer: every case fails at start-up with its exact message (or works,
where it must), in one process and in seconds.

The loader's own unit tests (tests/data/test_validation.py) cover each check in more variants:
missing columns (test_missing_column), wrong types (test_wrong_type), ids beyond the table
(test_ids_out_of_range_*), labels (test_bad_labels*), nulls and long lists, meta.json mismatches
(test_meta_rows_disagree_with_files, test_modality_mismatch_with_meta,
test_num_items_disagrees_with_vocab_or_items_table). Here the question is what the *trainer* does:
it validates every split and the item arrays before building the model, so a bad test split stops
the job in its first seconds instead of after hours of training. The multi-rank case (only one
rank reads the bad row) is in test_restarts.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from em3rec.config import ConfigError, load_config
from em3rec.data.loader import ImpressionLoader
from em3rec.factory import batch_options
from em3rec.data.schema import DatasetError
from tests.data.conftest import rewrite_split
from tests.reliability.conftest import (
    copy_dataset,
    in_process_recipe,
    items_without_content,
    split_table,
)


@pytest.fixture
def data(reliable_data: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset to corrupt."""
    return copy_dataset(reliable_data, tmp_path / "data")


def _set(table: pa.Table, name: str, values: list) -> pa.Table:  # noqa: ANN001
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


def _edit(table: pa.Table, name: str, row: int, value: object) -> pa.Table:
    values = table.column(name).to_pylist()
    values[row] = value
    return _set(table, name, values)


def _edit_meta(folder: Path, fn) -> None:  # noqa: ANN001 - fn edits the parsed JSON in place
    raw = json.loads((folder / "meta.json").read_text())
    fn(raw)
    (folder / "meta.json").write_text(json.dumps(raw))


def _starts(data: Path, tmp_path: Path, *extra: str):  # noqa: ANN202
    return in_process_recipe(data, tmp_path / "runs", *extra)


def _only_file(data: Path, split: str) -> Path:
    (file,) = sorted((data / split).glob("*.parquet"))
    return file


# ---------------------------------------------------------------------------- refused at start-up


def test_truncated_parquet_in_the_test_split_fails_at_start_up(data: Path, tmp_path: Path) -> None:
    file = _only_file(data, "test")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(
        DatasetError, match=rf"{data}/test: cannot open as Parquet \(.*Parquet magic bytes not found in footer"
    ):
        _starts(data, tmp_path)


def test_empty_parquet_file(data: Path, tmp_path: Path) -> None:
    _only_file(data, "valid").write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{data}/valid: cannot open as Parquet \(.*Parquet file size is 0 bytes"):
        _starts(data, tmp_path)


def test_missing_column(data: Path, tmp_path: Path) -> None:
    rewrite_split(data, "valid", lambda t: t.drop_columns(["item_category_idx"]))
    with pytest.raises(
        DatasetError, match=r"valid/part-00000.parquet: missing column\(s\) \['item_category_idx'\]; have \["
    ):
        _starts(data, tmp_path)


@pytest.mark.parametrize(
    "column, dtype, message",
    [
        (
            "item_id_idx",
            pa.int32(),
            r"column 'item_id_idx' \(feature 'item_id', kind item\) has type int32; expected int64",
        ),
        ("label", pa.float64(), r"column 'label' has type double; expected float32"),
        (
            "hist_item_ids_idx",
            pa.list_(pa.int32()),
            r"column 'hist_item_ids_idx' \(feature 'hist_item_ids', kind history\) has type list<element: int32>; expected list<int64>",
        ),
    ],
)
def test_wrong_dtype(data: Path, tmp_path: Path, column: str, dtype: pa.DataType, message: str) -> None:
    rewrite_split(
        data, "train", lambda t: t.set_column(t.schema.get_field_index(column), column, t.column(column).cast(dtype))
    )
    with pytest.raises(DatasetError, match=message):
        _starts(data, tmp_path)


@pytest.mark.parametrize(
    "value, message",
    [
        (float("nan"), r"\(row group 0\): column 'label' has 1 NaN value\(s\); expected 0 or 1"),
        (2.0, r"\(row group 0\): column 'label' holds values in \[-?0.0, 2.0\]; expected 0 or 1"),
        (-1.0, r"\(row group 0\): column 'label' holds values in \[-1.0, 1.0\]; expected 0 or 1"),
        (0.5, r"\(row group 0\): column 'label' holds 0.5; expected 0 or 1"),
    ],
)
def test_bad_label(data: Path, tmp_path: Path, value: float, message: str) -> None:
    rewrite_split(data, "test", lambda t: _edit(t, "label", 7, value))
    with pytest.raises(DatasetError, match=message):
        _starts(data, tmp_path)


@pytest.mark.parametrize(
    "column, value, message",
    [
        (
            "item_id_idx",
            301,
            r"column 'item_id_idx' holds ids in \[\d+, 301\]; expected 0 <= id < vocab_size 301 \(meta.json feature 'item_id'\)",
        ),
        ("user_id_idx", -3, r"column 'user_id_idx' holds ids in \[-3, \d+\]; expected 0 <= id < vocab_size 101"),
        (
            "hist_item_ids_idx",
            [5, 999],
            r"column 'hist_item_ids_idx' holds ids in \[\d+, 999\]; expected 0 <= id < vocab_size 301",
        ),
    ],
)
def test_id_beyond_the_table(data: Path, tmp_path: Path, column: str, value: object, message: str) -> None:
    rewrite_split(data, "valid", lambda t: _edit(t, column, 11, value))
    with pytest.raises(DatasetError, match=message):
        _starts(data, tmp_path)


def test_meta_json_row_count_disagrees_with_the_files(data: Path, tmp_path: Path) -> None:
    _edit_meta(data, lambda m: m["splits"]["test"].update(rows=600))
    with pytest.raises(DatasetError, match=rf"{data}/test: files hold 601 rows but meta.json splits.test.rows = 600"):
        _starts(data, tmp_path)


def test_meta_json_modality_shape_disagrees_with_the_item_arrays(data: Path, tmp_path: Path) -> None:
    _edit_meta(data, lambda m: m["modalities"][0].update(tokens=5))
    with pytest.raises(
        DatasetError,
        match=r"items/title.tokens.npy: shape \(301, 4, 16\) float16; expected \(301, 5, 16\) float16 "
        r"from meta.json \(modality 'title': tokens=5, width=16; item vocab_size=301\)",
    ):
        _starts(data, tmp_path)


def test_meta_json_vocabulary_disagrees_with_num_items(data: Path, tmp_path: Path) -> None:
    _edit_meta(data, lambda m: m.update(num_items=300))
    with pytest.raises(DatasetError, match=r"meta.json: num_items = 300 but item feature vocab_size = 301"):
        _starts(data, tmp_path)


def test_truncated_item_array(data: Path, tmp_path: Path) -> None:
    path = data / "items" / "meta.tokens.npy"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"items/meta.tokens.npy: not a readable .npy array"):
        _starts(data, tmp_path)


# -------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nan_polcy=skip", r"train: unknown key\(s\) \['nan_polcy'\]; known: \["),
        ("trian.epochs=1", r"unknown key\(s\) \['trian'\]; known: \['data', 'model', 'optim', 'sharding', 'train'\]"),
        ("train.nan_policy=ignore", r"train.nan_policy = 'ignore'; expected one of \('stop', 'skip'\)"),
        ("train.log_every=0", r"train.log_every = 0; expected >= 1"),
        ("train.keep_checkpoints=0", r"train.keep_checkpoints = 0; expected >= 1"),
        ("data.token_window=0", r"data.token_window = 0; expected >= 1"),
        ("train.epochs=two", r"train.epochs: expected int, got 'two'"),
        ('sharding.types=["diagonal"]', r"sharding.types: 'diagonal' is not one of \('data_parallel', "),
        ("model.cic.temperature=0", r"model.cic.temperature = 0.0 and model.cic.num_negatives = 16; expected"),
        ("model.cic.num_negatives=-3", r"model.cic.num_negatives = -3; expected a temperature > 0 and num_neg"),
    ],
)
def test_bad_config_is_refused_before_anything_runs(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("din_em3", [override])


def test_unknown_key_in_a_config_file(tmp_path: Path) -> None:
    file = tmp_path / "typo.toml"
    file.write_text('include = "din_em3"\n[train]\nepochs = 1\ncheckpoint_evry = 100\n')
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['checkpoint_evry'\]"):
        load_config(file)


@pytest.mark.parametrize("types", ['["row_wise"]', '["table_wise", "table_row_wise"]'])
def test_sharding_type_the_device_cannot_run(reliable_data: Path, tmp_path: Path, types: str) -> None:
    with pytest.raises(
        ConfigError,
        match=r"sharding.types \[.*row_wise'\] cannot run on cpu; cpu supports "
        r"\['data_parallel', 'table_wise', 'column_wise', 'table_column_wise'\]",
    ):
        _starts(reliable_data, tmp_path, f"sharding.types={types}")


# ---------------------------------------------------------------------------------- must work


def _all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters() if p.device.type != "meta")


def test_extra_columns_are_ignored(data: Path, tmp_path: Path) -> None:
    rewrite_split(data, "train", lambda t: t.append_column("debug_note", pa.array(["x"] * t.num_rows)))
    recipe = _starts(data, tmp_path)
    loss, _ = recipe._step(iter(recipe.loader("train")))
    assert math.isfinite(loss)


@pytest.mark.parametrize("softmax", [False, True], ids=["din_raw_weights", "din_softmax"])
def test_empty_histories_and_items_without_any_content_train(
    reliable_data: Path, tmp_path: Path, softmax: bool
) -> None:
    """Rows with no history, and items whose every modality is all padding (masked, never
    zero-filled into attention), give a finite loss and finite weights, in both DIN attention modes."""
    no_content = set(items_without_content(reliable_data).tolist())
    assert no_content, "the fixture must hold items with no token in any modality"
    recipe = _starts(reliable_data, tmp_path, f"model.attention_softmax={str(softmax).lower()}")
    loader = ImpressionLoader.from_config(
        recipe.config.data,
        "train",
        modalities=recipe.config.data.modalities,
        shuffle=False,
        prefetch=0,
        **batch_options(recipe.config.model, "train"),
    )
    batch = next(
        b for b in loader if (~b.history_mask.any(dim=1)).any() and no_content & set(b.content_item_ids.tolist())
    )
    empty_rows = int((~batch.history_mask.any(dim=1)).sum())
    assert empty_rows > 0
    for _ in range(3):  # the same batch, repeatedly: gradients through the masked paths stay finite
        loss, aux = recipe._step(iter([batch]))
        assert math.isfinite(loss) and all(math.isfinite(v) for v in aux.values()), (loss, aux)
    assert _all_finite(recipe.model)


def test_world_size_that_does_not_divide_the_data(reliable_data: Path) -> None:
    """4809 training rows on 2 ranks of 64-row batches: both ranks get 37 batches (73 rows dropped,
    logged); 601 valid rows are covered exactly once (301 + 300, padded to whole batches)."""
    ranks = [ImpressionLoader(reliable_data, "train", batch_size=64, rank=r, world_size=2, prefetch=0) for r in (0, 1)]
    assert [len(list(r)) for r in ranks] == [37, 37] and ranks[0].dropped_rows == 73
    valid = [ImpressionLoader(reliable_data, "valid", batch_size=64, rank=r, world_size=2, prefetch=0) for r in (0, 1)]
    real = [sum(int((b.weights > 0).sum()) for b in v) for v in valid]
    assert real == [300, 301] and [len(v) for v in valid] == [5, 5]
    assert split_table(reliable_data, "valid").num_rows == 601


# ------------------------------------------------------------------------- corrupt Parquet data


def _flip_bytes_inside_the_data(file: Path) -> None:
    """Corrupt compressed column data but keep the footer (metadata) intact."""
    data = bytearray(file.read_bytes())
    for i in range(2000, 6000):
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("scan_rows", [1_000_000, 0], ids=["scanned_at_open", "checked_when_read"])
def test_corrupt_data_page_names_the_file(data: Path, scan_rows: int) -> None:
    _flip_bytes_inside_the_data(_only_file(data, "train"))
    with pytest.raises(DatasetError, match=r"train/part-00000.parquet \(row group 0\): "):
        list(ImpressionLoader(data, "train", batch_size=64, prefetch=0, scan_rows=scan_rows))


def test_corrupt_second_file_of_a_split(data: Path) -> None:
    (data / "train" / "part-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match=r"train/part-00001.parquet: cannot open as Parquet"):
        ImpressionLoader(data, "train", batch_size=64, prefetch=0)
