import logging

import numpy as np
import pyarrow as pa
import pytest

from data_prep.vocab import Feature, Vocab, add_index_columns, max_list_length


def test_dense_sorted_indices_from_one():
    v = Vocab.build("item_id", pa.array([30, 10, 20, 10]), [20, 40])
    assert v.size == 5
    assert v.values.to_pylist() == [10, 20, 30, 40]
    np.testing.assert_array_equal(v.encode([10, 20, 30, 40]), [1, 2, 3, 4])


def test_unknown_and_missing_go_to_zero_counted_and_logged(caplog):
    v = Vocab.build("gender", pa.array(["M", "F", None]))
    with caplog.at_level(logging.INFO, logger="data_prep.vocab"):
        idx = v.encode(pa.array(["F", "X", None, "M", "Y"]))
    np.testing.assert_array_equal(idx, [1, 0, 0, 2, 0])
    assert (v.unknown_count, v.missing_count) == (2, 1)
    assert any("2 of 5 values are not in the vocabulary" in r.getMessage() for r in caplog.records)
    assert len(idx) == 5  # never dropped


def test_lookup_does_not_count():
    v = Vocab.build("u", [1, 2])
    np.testing.assert_array_equal(v.lookup([2, 3]), [2, 0])
    assert v.unknown_count == 0


def test_lists_keep_lengths_and_order():
    v = Vocab.build("genres", pa.array([["Drama", "Comedy"], ["War"]]))
    out = v.encode_lists(pa.array([["War", "Drama"], [], None, ["Nope"]], pa.list_(pa.string())))
    assert out.type == pa.list_(pa.int64())
    assert out.to_pylist() == [[3, 2], [], [], [0]]
    assert v.unknown_count == 1


def test_type_mismatch_is_a_clear_error():
    v = Vocab.build("item_id", [1, 2])
    with pytest.raises(TypeError, match="item_id.*cannot look up"):
        v.encode(pa.array(["a"]))


def test_features_add_named_index_columns():
    items = Vocab.build("item_id", [5, 7])
    table = pa.table({"item_id": [7, 5, 9], "hist_item_ids": pa.array([[5], [], [7, 9]])})
    feats = [
        Feature("item_id", "item_id", "item_idx", "item", items),
        Feature("hist_item_ids", "hist_item_ids", "hist_item_idx", "history", items, max_length=50),
    ]
    out = add_index_columns(table, feats)
    assert out.column("item_idx").to_pylist() == [2, 1, 0]
    assert out.column("hist_item_idx").to_pylist() == [[1], [], [2, 0]]
    assert feats[1].spec().table == "item" and feats[1].spec().vocab_size == 3
    assert max_list_length(table.column("hist_item_ids")) == 2
