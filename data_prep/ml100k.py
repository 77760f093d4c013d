"""MovieLens-100K under the ml100k-ctr-v1 protocol: ``python -m data_prep.ml100k --out data/ml100k``.

The data is the copy shipped in the ``recbole==1.2.1`` wheel (``recbole/dataset_example/ml-100k/``,
tab-separated atomic files with ``name:type`` headers), located without importing recbole.
Protocol (DESIGN.md section 5): label = rating >= 4; rows sorted by (timestamp, user_id, item_id);
rows 0..79,999 train, 80,000..89,999 valid, 90,000..99,999 test; history = the same user's items
strictly earlier, most recent 50, from all rows. Item content: the ``title`` and a ``meta`` text
(genres, year, Wikidata director/writer/country/language/runtime/cast), each encoded to tokens by
the frozen all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from em3rec.data.schema import DatasetError, DatasetMeta

from data_prep.movielens import (
    MovieLensTables,
    add_common_args,
    build_impressions,
    clean_titles,
    file_digest,
    prepare,
    prepare_from_args,
    read_delimited,
    split_genres,
)
from data_prep.impressions import Impressions, prepare_and_report
from data_prep.text_encoder import DEFAULT_CACHE_DIR

PROTOCOL = "ml100k-ctr-v1"
NUM_RATINGS = 100_000
SPLIT_COUNTS = (80_000, 10_000, 10_000)
RECBOLE_VERSION = "1.2.1"


def recbole_ml100k_dir() -> Path:
    """``recbole/dataset_example/ml-100k`` inside the installed recbole wheel (not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package recbole=={RECBOLE_VERSION} is not installed (scripts/bootstrap.sh installs it --no-deps)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing from the recbole wheel")
    return folder


def read_atomic(source: Path | bytes) -> pa.Table:
    """A RecBole atomic file or its bytes (``name:type`` header, tab-separated, LF or CRLF line ends)
    as all-string columns named ``name``."""
    if isinstance(source, Path):
        if not source.is_file():
            raise FileNotFoundError(f"{source}: missing")
        with open(source, "rb") as f:
            first = f.readline()
    else:
        first = source.split(b"\n", 1)[0]
    header = first.decode("utf-8").rstrip("\r\n").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    return read_delimited(source, names, "\t", header=True)


def require_columns(table: pa.Table, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: columns {missing} missing; have {table.column_names}")


def _int(table: pa.Table, column: str, path: Path) -> pa.Array:
    try:
        return pc.cast(table.column(column), pa.int64())
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{path}: column {column!r} must hold integers ({e})") from e


def read_ml100k(folder: str | Path | None = None) -> MovieLensTables:
    """The ml-100k ``.inter``, ``.user`` and ``.item`` files as ``MovieLensTables``."""
    folder = Path(folder) if folder is not None else recbole_ml100k_dir()
    inter_path, user_path, item_path = (folder / f"ml-100k.{ext}" for ext in ("inter", "user", "item"))

    inter = read_atomic(inter_path)
    require_columns(inter, ["user_id", "item_id", "rating", "timestamp"], inter_path)
    if inter.num_rows != NUM_RATINGS:
        raise DatasetError(f"{inter_path}: {inter.num_rows} ratings; {PROTOCOL} expects exactly {NUM_RATINGS}")
    ratings = pa.table(
        {
            "user_id": _int(inter, "user_id", inter_path),
            "item_id": _int(inter, "item_id", inter_path),
            "rating": pc.cast(inter.column("rating"), pa.float32()),
            "timestamp": pc.cast(pc.cast(inter.column("timestamp"), pa.float64()), pa.int64()),
        }
    )

    user = read_atomic(user_path)
    require_columns(user, ["user_id", "age", "gender", "occupation", "zip_code"], user_path)
    users = pa.table(
        {
            "user_id": _int(user, "user_id", user_path),
            "age": _int(user, "age", user_path),
            "gender": user.column("gender"),
            "occupation": user.column("occupation"),
            "zip_code": user.column("zip_code"),
        }
    )

    item = read_atomic(item_path)
    require_columns(item, ["item_id", "movie_title", "release_year", "class"], item_path)
    # release_year is a 4-digit year except for two rows: the "unkonwn" placeholder item (no year)
    # and one whose year sits in its title ("... (1995)", release_year "V"); clean_titles recovers it.
    year_text = item.column("release_year").combine_chunks()
    is_year = pc.match_substring_regex(year_text, r"^\d{4}$")
    years = pc.if_else(is_year, pc.cast(pc.if_else(is_year, year_text, "0"), pa.int64()), pa.scalar(None, pa.int64()))
    titles, years = clean_titles(item.column("movie_title").combine_chunks(), years)
    items = pa.table(
        {
            "item_id": _int(item, "item_id", item_path),
            "title": titles,
            "year": years,
            "genres": split_genres(item.column("class").combine_chunks(), " "),
        }
    )
    source = {
        "dataset": f"MovieLens-100K from recbole=={RECBOLE_VERSION} dataset_example/ml-100k",
        "sha256": {p.name: file_digest(p) for p in (inter_path, user_path, item_path)},
    }
    return MovieLensTables(ratings=ratings, items=items, users=users, source=source)


def ml100k_impressions(folder: str | Path | None = None) -> Impressions:
    """The protocol, side features and index columns of ml100k-ctr-v1, without any encoder."""
    return build_impressions(read_ml100k(folder), counts=SPLIT_COUNTS)


def prepare_ml100k(
    out: str | Path,
    *,
    max_title_tokens: int = 16,
    max_meta_tokens: int = 32,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    wikidata: bool = True,
    progress: bool = True,
    source: str | Path | None = None,
) -> DatasetMeta:
    """Prepare ml100k-ctr-v1 into ``out`` (text features are cached under ``cache_dir``)."""
    return prepare(
        read_ml100k(source),
        out,
        name="ml100k",
        protocol=PROTOCOL,
        counts=SPLIT_COUNTS,
        max_title_tokens=max_title_tokens,
        max_meta_tokens=max_meta_tokens,
        cache_dir=cache_dir,
        wikidata=wikidata,
        progress=progress,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ml100k", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--src", type=Path, default=None, help="ml-100k atomic files folder (default: the recbole wheel's)"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    prepare_and_report(
        lambda: prepare_from_args(read_ml100k(args.src), args, name="ml100k", protocol=PROTOCOL, counts=SPLIT_COUNTS)
    )


if __name__ == "__main__":
    main()
