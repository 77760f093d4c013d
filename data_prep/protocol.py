"""The chronological CTR protocol shared by every importer (ml100k-ctr-v1 and its generalisation).

Rules (DESIGN.md section 5):

- label = 1 if rating >= threshold (4) else 0;
- rows sorted by (timestamp, user_id, item_id); the first rows are train, then valid, then test
  (fixed row counts for ml100k-ctr-v1, fractions 0.8 / 0.1 / 0.1 elsewhere);
- the history of a row is the same user's item ids with a timestamp *strictly* earlier, oldest
  first (ties broken by item id), the most recent ``max_history``, taken from all rows of all
  splits: the past is known at prediction time, whichever split it fell in.

Everything is vectorised numpy; histories are kept as ``(begin, end)`` offsets into one
user-sorted item array and only materialised as ``list<...>`` columns per chunk, so a 20M-row
dump does not need 20M x 50 values in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from em3rec.data.schema import SPLITS

MAX_HISTORY = 50
LABEL_THRESHOLD = 4.0
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def _numpy(values: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if values.null_count:
            raise ValueError(f"interaction column of type {values.type} has {values.null_count} nulls; expected none")
        return values.to_numpy(zero_copy_only=False)
    return np.asarray(values)


def split_counts(num_rows: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """Row counts of train / valid / test for ``fractions``; test takes the rounding remainder."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
    train = int(round(num_rows * fractions[0]))
    valid = int(round(num_rows * fractions[1]))
    return train, valid, num_rows - train - valid


@dataclass
class ChronologicalSplit:
    """The protocol applied to ``N`` interactions; every array is in protocol order.

    Fields:
        order: ``(N,)`` int64 input row of each protocol position (sorted by timestamp, user, item).
        user_ids, item_ids, timestamps, ratings: ``(N,)`` the input columns in protocol order.
        labels: ``(N,)`` float32 in {0, 1}.
        history_begin, history_end: ``(N,)`` int64 slice of ``history_items`` holding each row's
            history (``end - begin <= max_history``, oldest first).
        history_items: ``(N,)`` the item ids sorted by (user, timestamp, item).
        bounds: split name -> ``(start, stop)`` protocol positions.
    """

    order: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    labels: np.ndarray
    history_begin: np.ndarray
    history_end: np.ndarray
    history_items: np.ndarray
    bounds: dict[str, tuple[int, int]]
    max_history: int

    @property
    def num_rows(self) -> int:
        return len(self.order)

    def split_positions(self, split: str) -> np.ndarray:
        start, stop = self.bounds[split]
        return np.arange(start, stop)

    def history(self, positions: np.ndarray) -> pa.ListArray:
        """``list<item id>`` histories of the rows at ``positions`` (oldest first)."""
        begin = self.history_begin[positions]
        lengths = self.history_end[positions] - begin  # (n,)
        offsets = np.zeros(len(positions) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] > np.iinfo(np.int32).max:
            raise ValueError(f"{offsets[-1]} history values in one chunk overflow list offsets; use smaller chunks")
        # flat[k] = begin[row of k] + (k - offsets[row of k])
        flat = np.repeat(begin - offsets[:-1], lengths) + np.arange(offsets[-1])
        values = pa.array(self.history_items[flat])
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)

    def table(self, positions: np.ndarray) -> pa.Table:
        """The protocol columns of the rows at ``positions``: label, ids, timestamp, history.

        The rating itself is left out: it is the label's source, not a feature.
        """
        return pa.table({
            "label": pa.array(self.labels[positions], pa.float32()),
            "user_id": pa.array(self.user_ids[positions]),
            "item_id": pa.array(self.item_ids[positions]),
            "timestamp": pa.array(self.timestamps[positions], pa.int64()),
            "hist_item_ids": self.history(positions),
        })

    def iter_tables(self, split: str, chunk_rows: int = 1_000_000) -> Iterator[pa.Table]:
        """The split's rows in protocol order as tables of at most ``chunk_rows`` rows."""
        start, stop = self.bounds[split]
        for lo in range(start, stop, chunk_rows):
            yield self.table(np.arange(lo, min(lo + chunk_rows, stop)))


def chronological_split(
    user_ids: pa.Array | np.ndarray,
    item_ids: pa.Array | np.ndarray,
    timestamps: pa.Array | np.ndarray,
    ratings: pa.Array | np.ndarray,
    counts: tuple[int, int, int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_history: int = MAX_HISTORY,
    label_threshold: float = LABEL_THRESHOLD,
) -> ChronologicalSplit:
    """Apply the protocol to ``N`` interactions given as parallel ``(N,)`` columns.

    Args:
        user_ids, item_ids: raw ids (integers or strings).
        timestamps: ``(N,)`` integer seconds.
        ratings: ``(N,)`` explicit ratings; label = ``rating >= label_threshold``.
        counts: exact train / valid / test row counts (must sum to ``N``); overrides ``fractions``.
        fractions: train / valid / test fractions when ``counts`` is not given.
        max_history: most history items per row.
    """
    users, items = _numpy(user_ids), _numpy(item_ids)
    ts = _numpy(timestamps).astype(np.int64)
    rating = _numpy(ratings).astype(np.float32)
    n = len(users)
    if not (len(items) == len(ts) == len(rating) == n):
        raise ValueError(f"interaction columns differ in length: {len(users)}, {len(items)}, {len(ts)}, {len(rating)}")
    if n == 0:
        raise ValueError("no interactions")
    counts = counts if counts is not None else split_counts(n, fractions)
    if sum(counts) != n or min(counts) < 0:
        raise ValueError(f"split counts {counts} must be non-negative and sum to the {n} interactions")

    # History offsets in user-major order: sort by (user, timestamp, item); within a user, the
    # rows strictly earlier than row j are those before the first row sharing j's timestamp.
    by_user = np.lexsort((items, ts, users))  # (N,)
    u, t = users[by_user], ts[by_user]
    pos = np.arange(n)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_time = new_user.copy()
    new_time[1:] |= t[1:] != t[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
    time_start = np.maximum.accumulate(np.where(new_time, pos, 0))
    begin_by_user = np.maximum(user_start, time_start - max_history)
    begin = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    begin[by_user] = begin_by_user  # back to input rows
    end[by_user] = time_start

    order = np.lexsort((items, users, ts))  # protocol order: (timestamp, user, item)
    train, valid, _ = counts
    bounds = {
        "train": (0, train),
        "valid": (train, train + valid),
        "test": (train + valid, n),
    }
    assert tuple(bounds) == SPLITS
    return ChronologicalSplit(
        order=order,
        user_ids=users[order],
        item_ids=items[order],
        timestamps=ts[order],
        ratings=rating[order],
        labels=(rating[order] >= label_threshold).astype(np.float32),
        history_begin=begin[order],
        history_end=end[order],
        history_items=items[by_user],
        bounds=bounds,
        max_history=max_history,
    )


def cold_items(split: ChronologicalSplit, target: str = "test", reference: str = "train") -> tuple[int, int]:
    """``(distinct items, rows)`` of ``target`` whose item never occurs in ``reference``."""
    seen = np.unique(split.item_ids[slice(*split.bounds[reference])])
    target_items = split.item_ids[slice(*split.bounds[target])]
    cold = ~np.isin(target_items, seen)
    return int(len(np.unique(target_items[cold]))), int(cold.sum())
