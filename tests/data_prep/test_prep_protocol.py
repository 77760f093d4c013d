"""The chronological CTR protocol: unit cases, a naive oracle, and ml100k-ctr-v1 on the real data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_prep.ml100k import read_ml100k
from data_prep.protocol import chronological_split, split_counts


def naive_history(users, items, ts, row: int, max_history: int) -> list:
    """Reference: the user's items strictly earlier than ``row``, by (timestamp, item), last ``max_history``."""
    earlier = [(ts[j], items[j]) for j in range(len(users)) if users[j] == users[row] and ts[j] < ts[row]]
    return [item for _, item in sorted(earlier)][-max_history:] if max_history else []


def test_history_excludes_same_timestamp_and_later_and_is_capped():
    users = [1, 1, 1, 1, 1, 2]
    items = [10, 11, 12, 13, 14, 10]
    ts = [100, 200, 200, 300, 50, 100]
    s = chronological_split(users, items, ts, [5, 1, 4, 3, 4, 2], counts=(6, 0, 0), max_history=2)
    table = s.table(np.arange(6))
    rows = {(r["user_id"], r["item_id"]): r for r in table.to_pylist()}
    assert rows[(1, 14)]["hist_item_ids"] == []
    assert rows[(1, 10)]["hist_item_ids"] == [14]
    assert rows[(1, 11)]["hist_item_ids"] == [14, 10]  # 12 shares the timestamp: not history
    assert rows[(1, 12)]["hist_item_ids"] == [14, 10]
    assert rows[(1, 13)]["hist_item_ids"] == [11, 12]  # most recent 2, oldest first
    assert rows[(2, 10)]["hist_item_ids"] == []
    assert table.column("label").to_pylist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # by (ts, user, item)
    assert table.column("timestamp").to_pylist() == [50, 100, 100, 200, 200, 300]


def test_matches_naive_oracle_on_random_data():
    rng = np.random.default_rng(0)
    n = 600
    users, items = rng.integers(0, 15, n), rng.integers(0, 40, n)
    ts = rng.integers(0, 60, n)  # many ties
    s = chronological_split(users, items, ts, rng.integers(1, 6, n), max_history=5)
    hist = s.history(np.arange(n)).to_pylist()
    for pos in range(n):
        row = s.order[pos]
        assert hist[pos] == naive_history(users, items, ts, row, 5)


def test_split_counts_and_errors():
    assert split_counts(100_000) == (80_000, 10_000, 10_000)
    assert split_counts(7) == (6, 1, 0)
    with pytest.raises(ValueError, match="summing to 1"):
        split_counts(10, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="sum to the 3 interactions"):
        chronological_split([1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], counts=(1, 1, 2))


# --- ml100k-ctr-v1 on the real MovieLens-100K (no encoder involved) ---


@pytest.fixture(scope="module")
def raw():
    return read_ml100k()


@pytest.fixture(scope="module")
def tables(ml100k):
    return {s: pa.concat_tables(list(ml100k.tables(s))) for s in ("train", "valid", "test")}


def test_ml100k_counts(raw, ml100k, tables):
    assert raw.ratings.num_rows == 100_000
    assert ml100k.user_vocab.size - 1 == 943 and ml100k.item_vocab.size - 1 == 1682
    assert {s: t.num_rows for s, t in tables.items()} == {"train": 80_000, "valid": 10_000, "test": 10_000}
    positives = sum(pc.sum(t.column("label")).as_py() for t in tables.values())
    assert positives == pc.sum(pc.greater_equal(raw.ratings.column("rating"), 4)).as_py() == 55_375


def test_ml100k_split_boundaries_follow_sort_key(tables):
    def keys(t):
        return list(
            zip(t.column("timestamp").to_pylist(), t.column("user_id").to_pylist(), t.column("item_id").to_pylist())
        )

    k = {s: keys(t) for s, t in tables.items()}
    for s in k:
        assert k[s] == sorted(k[s]), f"{s} not in (timestamp, user_id, item_id) order"
    assert max(k["train"]) < min(k["valid"]) and max(k["valid"]) < min(k["test"])


def test_ml100k_labels_match_ratings(raw, tables):
    r = raw.ratings
    rating = dict(
        zip(zip(r.column("user_id").to_pylist(), r.column("item_id").to_pylist()), r.column("rating").to_pylist())
    )
    assert len(rating) == 100_000  # (user, item) is unique in ml-100k
    for t in tables.values():
        for u, i, label in zip(
            t.column("user_id").to_pylist(), t.column("item_id").to_pylist(), t.column("label").to_pylist()
        ):
            assert label == float(rating[(u, i)] >= 4)
    assert all(t.schema.field("label").type == pa.float32() for t in tables.values())


def test_ml100k_history_strictly_earlier_and_capped(raw, tables):
    r = raw.ratings
    key = r.column("user_id").to_numpy() * 10_000 + r.column("item_id").to_numpy()
    order = np.argsort(key)
    sorted_key, sorted_ts = key[order], r.column("timestamp").to_numpy()[order]
    for t in tables.values():
        hist = t.column("hist_item_ids").combine_chunks()
        lengths = pc.list_value_length(hist).to_numpy()
        assert lengths.max() <= 50
        parent = pc.list_parent_indices(hist).to_numpy()
        users = t.column("user_id").to_numpy()[parent]
        hist_ts = sorted_ts[np.searchsorted(sorted_key, users * 10_000 + pc.list_flatten(hist).to_numpy())]
        row_ts = t.column("timestamp").to_numpy()[parent]
        assert (hist_ts < row_ts).all(), "a history item has the same or a later timestamp"
        same_row = parent[1:] == parent[:-1]
        assert (hist_ts[1:][same_row] >= hist_ts[:-1][same_row]).all(), "history not chronological"


def test_ml100k_history_matches_oracle_on_a_sample(raw, ml100k):
    r = raw.ratings
    users, items, ts = (r.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))
    positions = np.random.default_rng(0).choice(100_000, 300, replace=False)
    hist = ml100k.split.history(positions).to_pylist()
    for pos, h in zip(positions, hist):
        row = ml100k.split.order[pos]
        mine = np.flatnonzero(users == users[row])  # the oracle only needs this user's rows
        assert h == naive_history(users[mine], items[mine], ts[mine], int(np.flatnonzero(mine == row)[0]), 50)


def test_ml100k_side_features(ml100k, tables):
    t = tables["train"]
    # ml-100k ids are 1..n, so the dense sorted indices equal the raw ids.
    assert t.column("item_idx").to_pylist() == t.column("item_id").to_pylist()
    assert t.column("user_idx").to_pylist() == t.column("user_id").to_pylist()
    assert t.column("hist_item_idx").to_pylist() == t.column("hist_item_ids").to_pylist()
    for age, bucket in zip(t.column("age").to_pylist()[:5000], t.column("age_bucket").to_pylist()[:5000]):
        lo, hi = {
            "<18": (0, 17),
            "18-24": (18, 24),
            "25-34": (25, 34),
            "35-44": (35, 44),
            "45-49": (45, 49),
            "50-55": (50, 55),
            "56+": (56, 200),
        }[bucket]
        assert lo <= age <= hi
    vocab = {f.name: f.vocab for f in ml100k.features}
    assert vocab["gender"].values.to_pylist() == ["F", "M"]
    assert vocab["age_bucket"].values.to_pylist() == sorted(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"])
    genres = t.column("genres").combine_chunks()
    assert pc.list_value_length(genres).equals(pc.list_value_length(t.column("genres_idx").combine_chunks()))
    assert pc.min(pc.list_flatten(t.column("genres_idx"))).as_py() >= 1
    names = [f.name for f in ml100k.features]
    assert names == [
        "user_id",
        "item_id",
        "hist_item_ids",
        "age_bucket",
        "gender",
        "occupation",
        "zip_prefix",
        "release_year",
        "genres",
    ]
    specs = {f.name: f.spec() for f in ml100k.features}
    assert specs["hist_item_ids"].max_length == 50 and specs["hist_item_ids"].table == "item"
    assert specs["gender"].vocab_size == 3 and specs["age_bucket"].vocab_size == 8
    assert specs["genres"].kind == "multi" and specs["genres"].max_length == 6


def test_ml100k_items_cleaned(ml100k):
    items = ml100k.items
    assert items.num_rows == 1683 and items.column("item_id")[0].as_py() is None
    assert items.column("title")[267].as_py() is None  # the "unkonwn" placeholder item
    assert items.column("release_year")[1412].as_py() == 1995  # year recovered from its title
    assert items.column("title")[1412].as_py() == "Land Before Time III: The Time of the Great Giving"
    assert items.column("title")[12].as_py() == "Usual Suspects, The"
