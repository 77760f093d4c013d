"""The Amazon-reviews importer on a tiny dump written here, with one real picture."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from em3rec.data.schema import DatasetError, DatasetMeta

from data_prep.amazon import prepare, read_amazon, read_records

ITEMS = {
    "B000CAT": {
        "title": "Cat bed",
        "description": "<b>Soft</b> bed for cats &amp; kittens",
        "brand": "Purry",
        "categories": [["Pet Supplies", "Cats"], ["Pet Supplies", "Beds"]],
        "image_path": "images/cat.png",
    },
    "B000URL": {
        "title": "Espresso cup",
        "description": ["Porcelain.", "Dishwasher safe."],
        "brand": "Cuppa",
        "categories": [["Kitchen"]],
        "imUrl": "http://example.invalid/cup.jpg",
    },
    "B000GONE": {"title": "Rocket toy", "category": ["Toys", "Space"], "image": ["images/missing.jpg"]},
    "B000NONE": {"title": "Plain box"},
}


@pytest.fixture
def dump(tmp_path, skimage_data):
    root = tmp_path / "amazon"
    (root / "images").mkdir(parents=True)
    shutil.copy(skimage_data / "chelsea.png", root / "images/cat.png")
    lines = []
    for k, (asin, fields) in enumerate(ITEMS.items()):
        record = {"asin": asin, **fields}
        # The 2014 metadata files hold Python literals, not JSON; mix both.
        lines.append(repr(record) if k % 2 else json.dumps(record))
    (root / "meta.json").write_text("\n".join(lines) + "\n")
    reviews, day = [], 1_400_000_000
    for u in range(5):
        for k, asin in enumerate(ITEMS):
            reviews.append(
                {
                    "reviewerID": f"U{u}",
                    "asin": asin,
                    "overall": float(1 + (u + k) % 5),
                    "unixReviewTime": day + 86_400 * (k + u),
                    "reviewText": "...",
                }
            )
    with gzip.open(root / "reviews.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews))
    return root


def test_read_amazon(dump):
    t = read_amazon(dump / "reviews.json.gz", dump / "meta.json")
    assert t.ratings.num_rows == 20
    items = t.items.to_pylist()
    assert items[0]["description"] == "Soft bed for cats & kittens"
    assert items[1]["description"] == "Porcelain. Dishwasher safe."
    assert items[0]["categories"] == ["Pet Supplies", "Cats", "Beds"]
    assert items[2]["categories"] == ["Toys", "Space"]
    assert [i["image_path"] for i in items] == ["images/cat.png", None, None, None]
    assert t.image_refs.remote_only == 1 and t.image_refs.missing_files == ["images/missing.jpg"]


def test_prepare_with_image(dump, tmp_path, text_cache):
    out = tmp_path / "prepared"
    meta = prepare(
        read_amazon(dump / "reviews.json.gz", dump / "meta.json"),
        out,
        max_title_tokens=8,
        max_description_tokens=16,
        text_cache_dir=text_cache,
        image_cache_dir=tmp_path / "img",
        progress=False,
    )
    assert DatasetMeta.load(out) == meta
    assert meta.protocol == "amazon-chrono-ctr-v1"
    assert {s: v.rows for s, v in meta.splits.items()} == {"train": 16, "valid": 2, "test": 2}
    assert [f.name for f in meta.features] == ["user_id", "item_id", "hist_item_ids", "brand", "categories"]
    assert [(m.name, m.tokens, m.width) for m in meta.modalities] == [
        ("title", 8, 384),
        ("description", 16, 384),
        ("image", 49, 1280),
    ]
    assert meta.extra["items_with_image"] == 1 and meta.extra["items_remote_image_only"] == 1

    items = pq.read_table(out / "items/items.parquet").to_pylist()
    row = {r["item_id"]: r["item_idx"] for r in items[1:]}
    image_mask = np.load(out / "items/image.mask.npy")
    # Only the item that references a local picture has image tokens; no picture is invented.
    assert image_mask.any(axis=1).tolist() == [r["item_id"] == "B000CAT" for r in items]
    tokens = np.load(out / "items/image.tokens.npy")
    assert tokens.shape == (5, 49, 1280) and (tokens[row["B000CAT"]] != 0).any()
    description_mask = np.load(out / "items/description.mask.npy")
    assert not description_mask[row["B000NONE"]].any() and description_mask[row["B000CAT"]].any()

    train = pq.read_table(out / "train").to_pylist()
    for r in train:
        assert r["label"] in (0.0, 1.0) and len(r["hist_item_ids"]) <= 50
        assert r["item_idx"] == row[r["item_id"]]
        assert r["hist_item_idx"] == [row[i] for i in r["hist_item_ids"]]


def test_bad_lines_are_named(tmp_path):
    bad = tmp_path / "reviews.json"
    bad.write_text('{"reviewerID": "U", "asin": "A", "overall": 5}\n')
    with pytest.raises(DatasetError, match=r"reviews.json:1: review fields \['unixReviewTime'\] missing"):
        read_amazon(bad, bad)
    bad.write_text("not json\n")
    with pytest.raises(DatasetError, match="reviews.json:1: neither JSON nor a Python literal"):
        list(read_records(bad))
