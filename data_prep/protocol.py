"""The CTR protocols shared by every importer: chronological (ml100k-ctr-v1 and its generalisation)
and hashed (bx-ctr-v1, for data without timestamps).

Chronological rules (DESIGN.md section 5):

- label = 1 if rating >= threshold (4) else 0;
- rows sorted by (timestamp, user_id, item_id); the first rows are train, then valid, then test
  (fixed row counts for ml100k-ctr-v1, fractions 0.8 / 0.1 / 0.1 elsewhere);
- the history of a row is the same user's item ids with a timestamp *strictly* earlier, oldest
  first (ties broken by item id), the most recent ``max_history``, taken from all rows of all
  splits: the past is known at prediction time, whichever split it fell in.

Hashed rules (bx-ctr-v1, ``hashed_split``):

- label = 1 if rating >= threshold (8 for Book-Crossing's 1-10 scale) else 0;
- a row's split is ``int(md5(f"{user_id}|{item_id}").hexdigest()[:8], 16) % 10``: 0-7 train, 8 valid,
  9 test; rows are ordered by (split, digest), a fixed pseudo-random order;
- the history of a row is the same user's *train* items other than the row's own, ordered by their
  digest ascending, the first ``max_history``: with no time order, nothing from valid or test
  may leak into any row's features.

Everything is vectorised numpy; histories are kept as ``(begin, end)`` offsets into one flat item
array and only materialised as ``list<...>`` columns per chunk, so a 20M-row dump does not need
20M x 50 values in memory at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from em3rec.data.schema import SPLITS

MAX_HISTORY = 50
LABEL_THRESHOLD = 4.0
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
CHRONOLOGICAL_ORDER = "timestamp, user_id, item_id"
HASHED_ORDER = "split, md5(user_id|item_id) hex digest"
HASH_BUCKETS = 10
HASH_SPLIT = (8, 9)  # buckets below 8 train, 8 valid, 9 test


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
class ProtocolSplit:
    """A protocol applied to ``N`` interactions; every array is in protocol order.

    Fields:
        order: ``(N,)`` int64 input row of each protocol position (chronological: sorted by
            timestamp, user, item; hashed: by split, then digest).
        user_ids, item_ids, ratings: ``(N,)`` the input columns in protocol order.
        timestamps: ``(N,)`` int64 in protocol order, or None when the data has none (written as nulls).
        labels: ``(N,)`` float32 in {0, 1}.
        history_begin, history_end: ``(N,)`` int64 slice of ``history_items`` holding each row's
            history (``end - begin <= max_history``, in history order).
        history_items: the item ids the slices point into (chronological: sorted by (user,
            timestamp, item); hashed: every row's history written out).
        bounds: split name -> ``(start, stop)`` protocol positions.
        label_threshold: label = rating >= this.
        order_key: how protocol positions are ordered (recorded in ``meta.extra``).
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
    label_threshold: float = LABEL_THRESHOLD
    order_key: str = CHRONOLOGICAL_ORDER

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
        no_time = self.timestamps is None  # hashed protocols: the data has no timestamps
        return pa.table(
            {
                "label": pa.array(self.labels[positions], pa.float32()),
                "user_id": pa.array(self.user_ids[positions]),
                "item_id": pa.array(self.item_ids[positions]),
                "timestamp": pa.nulls(len(positions), pa.int64())
                if no_time
                else pa.array(self.timestamps[positions], pa.int64()),
                "hist_item_ids": self.history(positions),
            }
        )

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
) -> ProtocolSplit:
    """Apply the chronological protocol to ``N`` interactions given as parallel ``(N,)`` columns.

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
    return ProtocolSplit(
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
        label_threshold=label_threshold,
    )


def split_digests(user_ids: pa.Array | np.ndarray, item_ids: pa.Array | np.ndarray) -> np.ndarray:
    """``(N,)`` ``md5(f"{user_id}|{item_id}")`` hex digests (the raw ids as the dump writes them)."""
    users, items = _numpy(user_ids), _numpy(item_ids)
    return np.array([hashlib.md5(f"{u}|{i}".encode()).hexdigest() for u, i in zip(users.tolist(), items.tolist())])


def hash_bucket_split(digests: np.ndarray) -> np.ndarray:
    """``(N,)`` digests -> ``(N,)`` int8 split index: 0 train, 1 valid, 2 test (``HASH_SPLIT``)."""
    bucket = np.array([int(d[:8], 16) % HASH_BUCKETS for d in digests.tolist()], dtype=np.int64)
    return np.searchsorted(np.asarray(HASH_SPLIT), bucket, side="right").astype(np.int8)


def hashed_split(
    user_ids: pa.Array | np.ndarray,
    item_ids: pa.Array | np.ndarray,
    ratings: pa.Array | np.ndarray,
    label_threshold: float,
    max_history: int = MAX_HISTORY,
) -> ProtocolSplit:
    """Apply the hashed protocol (bx-ctr-v1) to ``N`` interactions, each (user, item) at most once.

    Args:
        user_ids, item_ids: raw ids; ``str()`` of each is what the digest hashes.
        ratings: ``(N,)`` explicit ratings; label = ``rating >= label_threshold``.
        max_history: most history items per row.
    """
    users, items = _numpy(user_ids), _numpy(item_ids)
    rating = _numpy(ratings).astype(np.float32)
    n = len(users)
    if not (len(items) == len(rating) == n):
        raise ValueError(f"interaction columns differ in length: {len(users)}, {len(items)}, {len(rating)}")
    if n == 0:
        raise ValueError("no interactions")
    digest = split_digests(users, items)
    if len(np.unique(digest)) != n:
        raise ValueError("a (user, item) pair occurs more than once; the hashed split needs unique pairs")
    split_of = hash_bucket_split(digest)  # (N,)
    user_rank = np.unique(users, return_inverse=True)[1].reshape(-1)  # (N,) sortable user key

    # Each user's train rows in digest order form one contiguous run of `train_rows`.
    train_rows = np.flatnonzero(split_of == 0)
    train_rows = train_rows[np.lexsort((digest[train_rows], user_rank[train_rows]))]  # (T,)
    train_users = user_rank[train_rows]
    run_start = np.searchsorted(train_users, user_rank, side="left")  # (N,)
    run_length = np.searchsorted(train_users, user_rank, side="right") - run_start
    is_train = split_of == 0
    own = np.zeros(n, dtype=np.int64)  # a train row's place in its user's run
    own[train_rows] = np.arange(len(train_rows)) - run_start[train_rows]

    # History of row r: the run without r's own item, first max_history. Element j of a train row
    # skips its own place: run index j + (j >= own).
    lengths = np.minimum(run_length - is_train, max_history)  # (N,)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row_of = np.repeat(np.arange(n), lengths)  # (H,)
    j = np.arange(offsets[-1]) - offsets[row_of]
    run_index = j + (is_train[row_of] & (j >= own[row_of]))
    history_items = items[train_rows[run_start[row_of] + run_index]]  # (H,)

    order = np.lexsort((digest, split_of))  # protocol order: split, then digest
    ends = np.cumsum(np.bincount(split_of, minlength=len(SPLITS)))
    bounds = {s: (int(ends[k - 1]) if k else 0, int(ends[k])) for k, s in enumerate(SPLITS)}
    return ProtocolSplit(
        order=order,
        user_ids=users[order],
        item_ids=items[order],
        timestamps=None,
        ratings=rating[order],
        labels=(rating[order] >= label_threshold).astype(np.float32),
        history_begin=offsets[:-1][order],
        history_end=offsets[1:][order],
        history_items=history_items,
        bounds=bounds,
        max_history=max_history,
        label_threshold=label_threshold,
        order_key=HASHED_ORDER,
    )


def cold_items(split: ProtocolSplit, target: str = "test", reference: str = "train") -> tuple[int, int]:
    """``(distinct items, rows)`` of ``target`` whose item never occurs in ``reference``."""
    seen = pa.array(split.item_ids[slice(*split.bounds[reference])])
    target_items = pa.array(split.item_ids[slice(*split.bounds[target])])  # Arrow: hashing, fast for string ids
    cold = pc.invert(pc.is_in(target_items, value_set=seen))
    return len(pc.unique(target_items.filter(cold))), int(pc.sum(cold).as_py() or 0)
