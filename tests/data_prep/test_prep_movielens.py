"""The ml-1m and ml-20m importers on tiny dumps written here in the real formats."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from em3rec.data.schema import DatasetMeta

from data_prep.movielens import age_bucket, prepare, read_dump, read_ml1m, read_ml20m

MOVIES = [  # (id, title, genres): real titles, so some match Wikidata
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "Usual Suspects, The (1995)", "Crime|Thriller"),
    (3, "Cérémonie, La (1995)", "Drama"),
    (4, "Heat (1995)", "Action|Crime|Thriller"),
    (5, "Some Unknown Film", "(no genres listed)"),
]


def ratings(n_users: int = 4) -> list[tuple[int, int, float, int]]:
    rows, t = [], 978_300_000
    for u in range(1, n_users + 1):
        for k, item in enumerate([1, 2, 3, 4, 5]):
            rows.append((u, item, float(1 + (u + k) % 5), t + 10 * k + u))  # distinct times per user
    return rows


@pytest.fixture
def ml1m(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(
        "".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in ratings()).encode("latin-1")
    )
    (folder / "users.dat").write_bytes(
        "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::F::45::7::02460\n".encode("latin-1")
    )
    (folder / "movies.dat").write_bytes("".join(f"{i}::{t}::{g}\n" for i, t, g in MOVIES).encode("latin-1"))
    return folder


@pytest.fixture
def ml20m(tmp_path):
    folder = tmp_path / "ml-20m"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"{u},{i},{r - 0.5 if u % 2 else r},{t}\n" for u, i, r, t in ratings())
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f'{i},"{t}",{g}\n' if "," in t else f"{i},{t},{g}\n" for i, t, g in MOVIES),
        encoding="utf-8",
    )
    return folder


def test_read_ml1m(ml1m):
    t = read_ml1m(ml1m)
    assert t.ratings.num_rows == 20 and t.ratings.column("user_id").to_pylist()[:5] == [1] * 5
    assert t.users.column("occupation").to_pylist() == [
        "K-12 student",
        "self-employed",
        "scientist",
        "executive/managerial",
    ]
    assert t.items.column("title").to_pylist()[2] == "Cérémonie, La"  # Latin-1 decoded
    assert t.items.column("year").to_pylist() == [1995, 1995, 1995, 1995, None]
    assert t.items.column("genres").to_pylist()[0] == ["Animation", "Children's", "Comedy"]
    assert age_bucket(t.users.column("age")).to_pylist() == ["<18", "56+", "25-34", "45-49"]


def test_read_ml20m(ml20m):
    t = read_ml20m(ml20m)
    assert t.users is None
    assert t.ratings.column("rating").to_pylist()[:2] == [1.5, 2.5]
    assert t.items.column("title").to_pylist()[1] == "Usual Suspects, The"  # quoted CSV title with a comma
    assert t.items.column("genres").to_pylist()[4] == ["(no genres listed)"]


@pytest.mark.parametrize("dump", ["ml1m", "ml20m"])
def test_prepare(dump, request, tmp_path, text_cache):
    folder = request.getfixturevalue(dump)
    out = tmp_path / "prepared"
    meta = prepare(
        read_dump(folder),
        out,
        name=dump,
        protocol="movielens-chrono-ctr-v1",
        max_title_tokens=8,
        max_meta_tokens=24,
        cache_dir=text_cache,
        progress=False,
    )
    assert DatasetMeta.load(out) == meta
    assert {s: v.rows for s, v in meta.splits.items()} == {"train": 16, "valid": 2, "test": 2}
    assert meta.num_items == 6 and meta.num_users == 5
    names = [f.name for f in meta.features]
    side = ["age_bucket", "gender", "occupation", "zip_prefix"] if dump == "ml1m" else []
    assert names == ["user_id", "item_id", "hist_item_ids", *side, "release_year", "genres"]
    assert [(m.name, m.tokens, m.width) for m in meta.modalities] == [("title", 8, 384), ("meta", 24, 384)]

    train = pq.read_table(out / "train")
    assert train.column("timestamp").to_pylist() == sorted(train.column("timestamp").to_pylist())
    ratings_by_key = {(u, i): r for u, i, r, _ in ratings()}
    for row in train.to_pylist():
        rating = ratings_by_key[(row["user_id"], row["item_id"])] - (
            0.5 if dump == "ml20m" and row["user_id"] % 2 else 0
        )
        assert row["label"] == float(rating >= 4)
        assert row["hist_item_idx"] == row["hist_item_ids"]  # ids 1..5 are dense and sorted

    items = pq.read_table(out / "items/items.parquet").to_pylist()
    assert items[1]["title_text"] == "Toy Story"
    assert items[2]["title_text"] == "The Usual Suspects"
    assert "Director: John Lasseter" in items[1]["meta_text"]  # Wikidata enrichment
    assert items[5]["meta_text"] is None  # no genre, year or facts: a missing modality
    mask = np.load(out / "items/meta.mask.npy")
    assert not mask[0].any() and not mask[5].any() and mask[1:5].any(axis=1).all()
    assert meta.extra["wikidata_matches"] >= 3
    # Every user rates item 5 last, so it only occurs in valid and test: one cold test item.
    assert (meta.extra["cold_test_items"], meta.extra["cold_test_rows"]) == (1, 2)
    assert meta.extra["unmapped_values"] == {"release_year": {"unknown": 0, "missing": 4}}


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither ratings.dat"):
        read_dump(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::1::5::1\n")
    with pytest.raises(FileNotFoundError, match="users.dat: missing"):
        read_ml1m(tmp_path)
