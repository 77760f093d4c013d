"""Amazon-reviews importer: ``python -m data_prep.amazon --reviews R.json --meta M.json --out DIR``.

Reads a dump the user already has (nothing is downloaded), in the public Amazon review formats:

- reviews, one object per line: ``reviewerID``, ``asin``, ``overall`` (1-5), ``unixReviewTime``;
- item metadata, one object per line: ``asin``, ``title``, ``description`` (string or list),
  ``brand``, ``categories`` (list of lists, 2014) or ``category`` (list, 2018), and image fields.

Lines may be JSON or Python literals (the 2014 metadata files are), optionally gzipped. Images: an
item gets the ``image`` modality only from an image field that names a local file relative to the
dump folder (``--root``, default the metadata file's folder); remote URLs are counted, never fetched,
and an item that references no local picture has no image (its mask is all False).

Same protocol and output contract as MovieLens: label = overall >= 4, chronological split 0.8 / 0.1
/ 0.1 by (timestamp, user, item), history = the user's strictly earlier items, most recent 50.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import html
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from em3rec.data.schema import DatasetError, DatasetMeta

from data_prep.image_encoder import DEFAULT_CACHE_DIR as IMAGE_CACHE_DIR
from data_prep.image_encoder import ImageEncoder
from data_prep.impressions import Impressions, aligned, id_features, id_vocabs, item_table, prepare_and_report
from data_prep.protocol import DEFAULT_FRACTIONS, MAX_HISTORY, chronological_split
from data_prep.text_encoder import DEFAULT_CACHE_DIR as TEXT_CACHE_DIR
from data_prep.text_encoder import TextEncoder, encode_texts
from data_prep.vocab import Feature, Vocab, max_list_length
from data_prep.writer import ModalityArrays

logger = logging.getLogger(__name__)

PROTOCOL = "amazon-chrono-ctr-v1"
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")
IMAGE_FIELDS = ("image_path", "image_paths", "imagePath", "image", "imageURLHighRes", "imageURL", "imUrl")
_TAG = re.compile(r"<[^>]+>")


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines or Python-literal-lines file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError) as e:
                    raise DatasetError(f"{path}:{number}: neither JSON nor a Python literal ({e})") from e
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{number}: expected an object, got {type(record).__name__}")
            yield number, record


def read_reviews(path: str | Path) -> pa.Table:
    """Reviews -> ``user_id``, ``item_id`` (strings), ``rating`` float32, ``timestamp`` int64."""
    cols: dict[str, list] = {f: [] for f in REVIEW_FIELDS}
    for number, record in read_records(path):
        missing = [f for f in REVIEW_FIELDS if record.get(f) is None]
        if missing:
            raise DatasetError(f"{path}:{number}: review fields {missing} missing; expected {list(REVIEW_FIELDS)}")
        for f in REVIEW_FIELDS:
            cols[f].append(record[f])
    if not cols["asin"]:
        raise DatasetError(f"{path}: no reviews")
    try:
        return pa.table(
            {
                "user_id": pa.array([str(v) for v in cols["reviewerID"]], pa.string()),
                "item_id": pa.array([str(v) for v in cols["asin"]], pa.string()),
                "rating": pa.array([float(v) for v in cols["overall"]], pa.float32()),
                "timestamp": pa.array([int(v) for v in cols["unixReviewTime"]], pa.int64()),
            }
        )
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: 'overall' must be a number and 'unixReviewTime' an integer ({e})") from e


def _text(value: object) -> str | None:
    """A description/title value (string or list of strings) as plain text, or None."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v)
    if not isinstance(value, str):
        return None
    text = re.sub(r"\s+", " ", html.unescape(_TAG.sub(" ", value))).strip()
    return text or None


def _categories(record: dict) -> list[str]:
    raw = record.get("categories", record.get("category")) or []
    flat: list[str] = []
    for entry in raw:
        for c in entry if isinstance(entry, list) else [entry]:
            c = _text(c)
            if c and c not in flat:
                flat.append(c)
    return flat


@dataclass
class ImageRefs:
    """Which local picture each item references, and what could not be used."""

    paths: list[str | None]  # relative to the dump root, per metadata row
    remote_only: int = 0  # items whose image fields are only URLs (never downloaded)
    missing_files: list[str] = field(default_factory=list)  # local paths that do not exist


def _image_refs(records: list[dict], root: Path) -> ImageRefs:
    refs = ImageRefs(paths=[])
    root = root.resolve()
    for record in records:
        values: list[str] = []
        for f in IMAGE_FIELDS:
            v = record.get(f)
            values += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str) and x.strip()]
        local = [v for v in values if not re.match(r"^[a-z]+://", v, re.IGNORECASE)]
        chosen = None
        for v in local:
            path = (root / v).resolve()
            if not path.is_relative_to(root):
                raise DatasetError(
                    f"item {record.get('asin')!r}: image path {v!r} points outside the dump folder {root}"
                )
            if path.is_file():
                chosen = str(path.relative_to(root))
                break
            refs.missing_files.append(v)
        if chosen is None and values and not local:
            refs.remote_only += 1
        refs.paths.append(chosen)
    return refs


@dataclass
class AmazonTables:
    """Raw Amazon tables. ``items``: ``item_id``, ``title``, ``description``, ``brand``,
    ``categories`` list<string>, ``image_path`` (relative to ``root``, null if none)."""

    ratings: pa.Table
    items: pa.Table
    root: Path
    image_refs: ImageRefs
    source: dict


def read_amazon(reviews: str | Path, meta: str | Path, root: str | Path | None = None) -> AmazonTables:
    """Read a reviews file and its metadata file (``root``: folder image paths are relative to)."""
    meta = Path(meta)
    root = Path(root) if root is not None else meta.parent
    ratings = read_reviews(reviews)
    records: list[dict] = []
    seen: set[str] = set()
    duplicates = 0
    for number, record in read_records(meta):
        asin = record.get("asin")
        if not asin:
            raise DatasetError(f"{meta}:{number}: metadata without 'asin'")
        if asin in seen:
            duplicates += 1  # the first record wins
            continue
        seen.add(asin)
        records.append(record)
    if duplicates:
        logger.warning("%s: %d duplicate asin records ignored (first kept)", meta, duplicates)
    refs = _image_refs(records, root)
    if refs.missing_files:
        logger.warning(
            "%d referenced image files do not exist under %s (e.g. %s); those items have no image",
            len(refs.missing_files),
            root,
            refs.missing_files[:3],
        )
    if refs.remote_only:
        logger.info(
            "%d items reference only remote image URLs; nothing is downloaded, they have no image", refs.remote_only
        )
    items = pa.table(
        {
            "item_id": pa.array([str(r["asin"]) for r in records], pa.string()),
            "title": pa.array([_text(r.get("title")) for r in records], pa.string()),
            "description": pa.array([_text(r.get("description")) for r in records], pa.string()),
            "brand": pa.array([_text(r.get("brand")) for r in records], pa.string()),
            "categories": pa.array([_categories(r) for r in records], pa.list_(pa.string())),
            "image_path": pa.array(refs.paths, pa.string()),
        }
    )
    source = {"format": "amazon-reviews", "reviews": str(reviews), "meta": str(meta), "root": str(root)}
    return AmazonTables(ratings=ratings, items=items, root=root, image_refs=refs, source=source)


def build_impressions(
    tables: AmazonTables, fractions: Sequence[float] = DEFAULT_FRACTIONS, max_history: int = MAX_HISTORY
) -> Impressions:
    """Protocol + side features (``brand`` single, ``categories`` multi, when the dump has them)."""
    r = tables.ratings
    split = chronological_split(
        r.column("user_id"),
        r.column("item_id"),
        r.column("timestamp"),
        r.column("rating"),
        fractions=fractions,
        max_history=max_history,
    )
    user_vocab, item_vocab = id_vocabs(r.column("user_id"), r.column("item_id"), None, tables.items.column("item_id"))
    features = id_features(user_vocab, item_vocab, max_history)
    it = tables.items
    side = aligned(item_vocab, it.column("item_id"), it.drop_columns(["item_id"]))
    items = item_table(
        item_vocab,
        {
            "title_text": side.column("title"),
            "description_text": side.column("description"),
            "brand": side.column("brand"),
            "categories": pc.fill_null(side.column("categories"), pa.scalar([], pa.list_(pa.string()))),
            "image_path": side.column("image_path"),
        },
    )
    item_columns = []
    brands = Vocab.build("brand", it.column("brand"))
    if len(brands.values):
        features.append(Feature("brand", "brand", "brand_idx", "single", brands))
        item_columns.append("brand")
    categories = Vocab.build("categories", it.column("categories"))
    if len(categories.values):
        features.append(
            Feature(
                "categories",
                "categories",
                "categories_idx",
                "multi",
                categories,
                max_length=max_list_length(it.column("categories")),
            )
        )
        item_columns.append("categories")
    return Impressions(
        split=split,
        features=features,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        users=pa.table({}),
        items=items,
        item_columns=tuple(item_columns),
    )


def encode_items(
    tables: AmazonTables, items: pa.Table, text_encoders: dict[str, TextEncoder], image_encoder: ImageEncoder | None
) -> tuple[pa.Table, list[ModalityArrays]]:
    """Title / description tokens and, for items that reference a local picture, image tokens."""
    modalities = encode_texts({name: items.column(f"{name}_text").to_pylist() for name in text_encoders}, text_encoders)
    relative = items.column("image_path").to_pylist()
    if image_encoder is not None and any(relative):
        tokens, mask = image_encoder.encode([tables.root / p if p else None for p in relative])
        modalities.append(ModalityArrays("image", tokens, mask, image_encoder.name, image_encoder.version))
    elif image_encoder is not None:
        logger.info("no item references a local image file: no image modality")
    return items, modalities


def prepare(
    tables: AmazonTables,
    out: str | Path,
    *,
    name: str = "amazon",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_title_tokens: int = 16,
    max_description_tokens: int = 64,
    images: bool = True,
    text_cache_dir: str | Path = TEXT_CACHE_DIR,
    image_cache_dir: str | Path = IMAGE_CACHE_DIR,
    progress: bool = True,
) -> DatasetMeta:
    """The whole Amazon pipeline: protocol -> item texts and images -> frozen encoders -> folder."""
    impressions = build_impressions(tables, fractions=fractions)
    text_encoders = {
        "title": TextEncoder(max_title_tokens, cache_dir=text_cache_dir, progress=progress),
        "description": TextEncoder(max_description_tokens, cache_dir=text_cache_dir, progress=progress),
    }
    image_encoder = ImageEncoder(cache_dir=image_cache_dir, progress=progress) if images else None
    items, modalities = encode_items(tables, impressions.items, text_encoders, image_encoder)
    refs = tables.image_refs
    extra = {
        "source": tables.source,
        **impressions.extra(),
        "items_with_image": int(pc.sum(pc.is_valid(items.column("image_path"))).as_py()) if images else 0,
        "items_remote_image_only": refs.remote_only,
        "missing_image_files": len(refs.missing_files),
    }
    return impressions.write(out, name=name, protocol=PROTOCOL, items=items, modalities=modalities, extra=extra)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.amazon", description=__doc__.split("\n")[0])
    parser.add_argument("--reviews", required=True, type=Path, help="reviews JSON lines (.json or .json.gz)")
    parser.add_argument("--meta", required=True, type=Path, help="item metadata lines (.json or .json.gz)")
    parser.add_argument(
        "--root", type=Path, default=None, help="folder image paths are relative to (default: --meta's folder)"
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--name", default="amazon")
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS, metavar=("TRAIN", "VALID", "TEST")
    )
    parser.add_argument("--max-title-tokens", type=int, default=16)
    parser.add_argument("--max-description-tokens", type=int, default=64)
    parser.add_argument("--no-images", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/em3rec"), help="text/ and image/ caches go here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    prepare_and_report(
        lambda: prepare(
            read_amazon(args.reviews, args.meta, args.root),
            args.out,
            name=args.name,
            fractions=args.fractions,
            max_title_tokens=args.max_title_tokens,
            max_description_tokens=args.max_description_tokens,
            images=not args.no_images,
            text_cache_dir=args.cache_dir / "text",
            image_cache_dir=args.cache_dir / "image",
            progress=not args.no_progress,
        )
    )


if __name__ == "__main__":
    main()
