"""bx-ctr-v1 on a slice of the real Book-Crossing files (no encoder), and the full counts (slow)."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em3rec.data.schema import DatasetMeta

from data_prep.bx import (
    MIN_USER_ROWS,
    SPLIT_COUNTS,
    BXTables,
    bx_impressions,
    country,
    item_texts,
    prepare_bx,
    read_bx,
    read_bx_csv,
)
from data_prep.protocol import hashed_split

SPLIT_OF_BUCKET = {**{b: "train" for b in range(8)}, 8: "valid", 9: "test"}


def digest(user, isbn) -> str:
    return hashlib.md5(f"{user}|{isbn}".encode()).hexdigest()


@pytest.fixture(scope="module")
def tables() -> BXTables:
    return read_bx()


@pytest.fixture(scope="module")
def sliced(tables) -> BXTables:
    """Every rating of one user in 40 (by id): ~30k real rows with the real books and users."""
    r = tables.ratings
    keep = pa.array(r.column("user_id").to_numpy() % 40 == 0)
    return BXTables(ratings=r.filter(keep), books=tables.books, users=tables.users)


@pytest.fixture(scope="module")
def impressions(sliced):
    return bx_impressions(sliced)


@pytest.fixture(scope="module")
def rows(impressions) -> dict[str, list[dict]]:
    imp, _ = impressions
    return {s: pa.concat_tables(list(imp.tables(s))).to_pylist() for s in ("train", "valid", "test")}


def naive(sliced: BXTables) -> dict[tuple[int, str], tuple[str, int]]:
    """Reference: (user, isbn) -> (split, rating) by the rules as the README writes them."""
    books = set(sliced.books.column("item_id").to_pylist())
    explicit = [
        (u, i, r)
        for u, i, r in zip(*(sliced.ratings.column(c).to_pylist() for c in ("user_id", "item_id", "rating")))
        if 1 <= r <= 10 and i in books
    ]
    per_user = defaultdict(int)
    for u, _, _ in explicit:
        per_user[u] += 1
    return {
        (u, i): (SPLIT_OF_BUCKET[int(digest(u, i)[:8], 16) % 10], r)
        for u, i, r in explicit
        if per_user[u] >= MIN_USER_ROWS
    }


def test_filter_split_and_labels_match_the_rules(sliced, rows):
    expected = naive(sliced)
    got = {(r["user_id"], r["item_id"]): (split, r["label"]) for split, rs in rows.items() for r in rs}
    assert len(got) == sum(len(rs) for rs in rows.values())  # each (user, isbn) once
    assert got.keys() == expected.keys() and len(got) > 5_000
    for key, (split, rating) in expected.items():
        assert got[key] == (split, float(rating >= 8))
    per_user = defaultdict(int)
    for u, _ in got:
        per_user[u] += 1
    assert min(per_user.values()) >= MIN_USER_ROWS
    # The filter counts users' explicit rows with a book row, not their rows in the raw file.
    raw_users = set(sliced.ratings.column("user_id").to_pylist())
    assert len(raw_users - set(per_user)) > 0


def test_history_is_train_items_by_digest_without_the_row_itself(rows):
    train_by_user = defaultdict(list)
    for r in rows["train"]:
        train_by_user[r["user_id"]].append(r["item_id"])
    held_out = {(r["user_id"], r["item_id"]) for s in ("valid", "test") for r in rows[s]}
    checked = 0
    for rs in rows.values():
        for r in rs:
            user, own = r["user_id"], r["item_id"]
            expected = sorted((i for i in train_by_user[user] if i != own), key=lambda i: digest(user, i))[:50]
            assert r["hist_item_ids"] == expected
            assert own not in r["hist_item_ids"]
            assert not any((user, i) in held_out for i in r["hist_item_ids"])
            checked += len(expected) == 50
    assert checked > 100  # the cap of 50 is exercised


def test_side_features(impressions, rows):
    imp, counts = impressions
    assert (
        counts["ratings"]
        >= counts["explicit"]
        >= counts["with_book_row"]
        >= counts["kept"]
        == sum(len(r) for r in rows.values())
    )
    authors = {r["author"] for rs in rows.values() for r in rs if r["author"]}
    assert all(a == a.strip().lower() for a in authors) and len(authors) > 1_000
    years = [r["publication_year"] for rs in rows.values() for r in rs]
    assert all(y is None or 1000 <= y <= 2021 for y in years) and any(y is None for y in years)
    assert all(r["timestamp"] is None for r in rows["test"])  # Book-Crossing has no timestamps
    assert set(r["age_bucket"] for rs in rows.values() for r in rs) <= {
        None,
        "<18",
        "18-24",
        "25-34",
        "35-44",
        "45-49",
        "50-55",
        "56+",
    }
    assert country(pa.array(["nyc, new york, usa", "porto, v.n.gaia, Portugal ", "x, ,", "lonely"])).to_pylist() == [
        "usa",
        "portugal",
        None,
        "lonely",
    ]


def test_escaped_quotes_parse(tables):
    books = {r["item_id"]: r for r in tables.books.to_pylist() if r["item_id"] in ("0140292918", "0330482750")}
    assert books["0140292918"]["title"] == 'Of Mice and Men (Steinbeck "Essentials")'
    assert (
        books["0330482750"]["title"] == 'Three Novels: "A Strange and Sublime Address"; "Afternoon Raag";"Freedom Song"'
    )
    assert books["0330482750"]["author"] == "Amit Chaudhuri"
    assert tables.malformed == {"BX-Book-Ratings.csv": 0, "BX-Books.csv": 0, "BX-Users.csv": 0}
    assert tables.books.num_rows == 271_379


def test_malformed_rows_are_counted_not_dropped_silently(caplog):
    data = b'"User-ID";"Location";"Age"\n"1";"a, b";"20"\n"2";"c";"30";"extra"\n"3";"d \\"e\\"";NULL\n'
    table, bad = read_bx_csv(data, "BX-Users.csv")
    assert bad == 1 and table.column("Location").to_pylist() == ["a, b", 'd "e"']
    assert table.column("Age").to_pylist() == ["20", "NULL"]
    assert "1 malformed rows" in caplog.text


def test_item_texts(impressions):
    imp, _ = impressions
    texts = item_texts(imp.items)
    assert texts["title"][0] is None and texts["meta"][0] is None
    assert len(texts["title"]) == imp.items.num_rows
    assert all("&amp;" not in t for t in texts["meta"][1:] if t)
    assert sum(t is not None and t.startswith("Author: ") for t in texts["meta"]) > 0.9 * imp.items.num_rows


def test_hashed_split_small():
    s = hashed_split(["u"] * 12, [f"i{k}" for k in range(12)], [8, 1] * 6, label_threshold=8, max_history=3)
    table = s.table(np.arange(12)).to_pylist()
    train = sorted((r["item_id"] for r in table[: s.bounds["train"][1]]), key=lambda i: digest("u", i))
    for r in table:
        assert r["hist_item_ids"] == [i for i in train if i != r["item_id"]][:3]
    with pytest.raises(ValueError, match="more than once"):
        hashed_split([1, 1], ["a", "a"], [8, 8], label_threshold=8)


def test_prepare_a_slice_with_the_encoder(tables, tmp_path, text_cache):
    r = tables.ratings
    tiny = BXTables(
        ratings=r.filter(pa.array(r.column("user_id").to_numpy() % 3000 == 0)), books=tables.books, users=tables.users
    )
    meta = prepare_bx(tmp_path / "bx", cache_dir=text_cache, progress=False, tables=tiny)
    assert DatasetMeta.load(tmp_path / "bx") == meta and meta.protocol == "bx-ctr-v1"
    assert [(m.name, m.tokens, m.width) for m in meta.modalities] == [("title", 16, 384), ("meta", 24, 384)]
    assert sum(v.rows for v in meta.splits.values()) == meta.extra["row_filter"]["kept"] > 0
    assert {f.name for f in meta.features} >= {"author", "publisher", "publication_year", "age_bucket", "country"}
    items = pq.read_table(tmp_path / "bx/items/items.parquet")
    assert items.num_rows == meta.num_items and items.column("meta_text")[1].as_py().startswith("Author: ")
    mask = np.load(tmp_path / "bx/items/title.mask.npy")
    assert not mask[0].any() and mask[1:].any(axis=1).all()


@pytest.mark.slow
def test_full_bx_counts(tables):
    imp, counts = bx_impressions(tables)
    assert counts == {"ratings": 1_149_780, "explicit": 433_671, "with_book_row": 383_852, "kept": 302_227}
    extra = imp.extra()
    assert tuple(extra["split_rows"].values()) == SPLIT_COUNTS
    assert extra["num_real_items"] == 131_378 and extra["num_real_users"] == 12_787
    assert extra["cold_test_rows"] == 9_919 and extra["warm_test_rows"] == 30_330 - 9_919
    positives = {s: int(imp.split.labels[slice(*imp.split.bounds[s])].sum()) for s in ("train", "valid", "test")}
    assert positives == {"train": 143_255, "valid": 18_037, "test": 17_964}
