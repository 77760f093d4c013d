"""Streaming loader: one prepared split -> :class:`~em3rec.data.batch.Batch` es for one rank.

Parquet row groups (found with ``pyarrow.dataset``; the training order shuffles them) -> record
batches (only ``label`` and the ``*_idx`` columns) -> numpy columns (history cut to the most recent
``max_history`` at read time) -> [training: bounded shuffle buffer] -> ``B``-row slices -> ``Batch``
(KJTs, dense history index, distinct items and their content). All steps are vectorised over Arrow
offsets/values; nothing loops over rows in Python. A background thread builds ``prefetch`` batches
ahead of the consumer.

Every rank yields the same number of batches, which collectives need:

* training: each rank reads a contiguous range of ``N // world_size`` rows and yields
  ``num_batches = (N // world_size) // B`` full batches; the remainder is dropped (logged).
* evaluation: ranks read contiguous ranges that differ by at most one row, cover every row exactly
  once, and pad to ``ceil(ceil(N / world_size) / B)`` batches with weight-0 rows.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from em3rec.config import ConfigError, DataConfig
from em3rec.data.batch import CATALOGUE_FEATURE, Batch
from em3rec.data.item_store import ItemStore
from em3rec.data.schema import DatasetMeta
from em3rec.data.validation import (
    LABEL,
    RowGroup,
    SplitInfo,
    check_meta_counts,
    check_record_batch,
    is_list_feature,
    read_error,
    validate_split,
)
from em3rec.openmp import keep_one_openmp_team

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- jagged helpers


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``values[starts[i] : starts[i] + lengths[i]]`` for all i -> (offsets (k+1,), values)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, values[index]


def jagged_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` (k,) of the jagged array ``(offsets (n+1,), values)`` -> ``(offsets (k+1,), values)``."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows]
    return _gather_ranges(starts, offsets[rows + 1] - starts, values)


def jagged_tail(offsets: np.ndarray, values: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last ``max_length`` values of every row (the most recent history items)."""
    ends = offsets[1:]
    starts = np.maximum(offsets[:-1], ends - max_length)
    return _gather_ranges(starts, ends - starts, values)


@dataclass
class Rows:
    """``n`` impression rows as numpy columns.

    ``scalars``: column -> ``(n,)``; ``lists``: column -> ``(offsets (n+1,) int64 from 0, values)``.
    """

    scalars: dict[str, np.ndarray]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(next(iter(self.scalars.values())))

    @staticmethod
    def from_arrow(batch: pa.RecordBatch, list_columns: Sequence[str], tail: dict[str, int]) -> "Rows":
        """Zero-copy views of ``batch``; list columns in ``tail`` keep only their last ``tail[c]`` values."""
        scalars, lists = {}, {}
        for name in batch.schema.names:
            column = batch.column(name)
            if name not in list_columns:
                scalars[name] = column.to_numpy()
                continue
            offsets = column.offsets.to_numpy().astype(np.int64)  # (n+1,) into the unsliced values
            values = column.values.to_numpy()[offsets[0] : offsets[-1]]
            offsets -= offsets[0]
            if name in tail and len(offsets) > 1 and np.diff(offsets).max() > tail[name]:
                offsets, values = jagged_tail(offsets, values, tail[name])
            lists[name] = (offsets, values)
        return Rows(scalars, lists)

    def take(self, rows: np.ndarray) -> "Rows":
        return Rows(
            {k: v[rows] for k, v in self.scalars.items()},
            {k: jagged_take(o, v, rows) for k, (o, v) in self.lists.items()},
        )

    def slice(self, start: int, stop: int) -> "Rows":
        lists = {k: (o[start : stop + 1] - o[start], v[o[start] : o[stop]]) for k, (o, v) in self.lists.items()}
        return Rows({k: v[start:stop] for k, v in self.scalars.items()}, lists)

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        if len(parts) == 1:
            return parts[0]
        scalars = {k: np.concatenate([p.scalars[k] for p in parts]) for k in parts[0].scalars}
        lists = {}
        for k in parts[0].lists:
            shift = np.cumsum([0] + [p.lists[k][0][-1] for p in parts[:-1]])
            offsets = np.concatenate([[0]] + [p.lists[k][0][1:] + s for p, s in zip(parts, shift)])
            lists[k] = (offsets, np.concatenate([p.lists[k][1] for p in parts]))
        return Rows(scalars, lists)


def _targets_first(
    content_ids: np.ndarray, inverse: np.ndarray, batch_size: int, catalogue: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reorder the distinct items so that the targets and the catalogue sample come first.

    Args: ``content_ids (U,)`` sorted distinct ids; ``inverse`` the position of every value
    (``B`` targets, then history values, then ``K`` catalogue items) in ``content_ids``.

    Returns: the reordered ids (each part still sorted: the memory map is read in order), the
    inverse into them, and ``U_t``, how many come first.
    """
    first = np.zeros(len(content_ids), dtype=bool)
    first[inverse[:batch_size]] = True
    first[inverse[len(inverse) - catalogue :]] = True
    order = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])  # (U,)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return content_ids[order], position[inverse], int(first.sum())


# -------------------------------------------------------------------------------------- prefetch

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(make_iterator: Callable[[], Iterator[Batch]], depth: int) -> Iterator[Batch]:
    """Run ``make_iterator()`` in a background thread, ``depth`` items ahead of the consumer.

    Parquet decoding and numpy/torch copies release the GIL, so batch building overlaps the
    consumer's work. Errors are re-raised in the consumer; abandoning the iterator stops the thread.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make_iterator():
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer thread
            put(_Failure(e))

    # The thread's torch ops run serially, the consumer's keep their threads: one OpenMP team per
    # process (a second one slows every small parallel op of the step; prefetching on 2 cores,
    # epochs 1.09-1.25x faster with it; benchmarks/results/README.md, Cost).
    keep_one_openmp_team()
    thread = threading.Thread(target=produce, name="em3rec-loader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------------------------------- loader


@dataclass(frozen=True)
class _Piece:
    """Rows ``[start, stop)`` (local to the row group) of one row group."""

    group: RowGroup
    start: int
    stop: int


def _decoded(batches: Iterator[pa.RecordBatch], where: str) -> Iterator[pa.RecordBatch]:
    """Record batches, with decode failures (corrupt pages) raised as errors naming the row group."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as e:
            raise read_error(where, e) from e
        yield batch


def shard_bounds(rows: int, world_size: int, training: bool) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` row ranges per rank: equal ``rows // W`` (training, tail dropped)
    or differing by at most one row and covering every row (evaluation)."""
    if training:
        per_rank = rows // world_size
        return [(r * per_rank, (r + 1) * per_rank) for r in range(world_size)]
    return [(rows * r // world_size, rows * (r + 1) // world_size) for r in range(world_size)]


class ImpressionLoader(IterableDataset):
    """Batches of one split for one rank.

    Args:
        path: prepared dataset folder.
        split: ``train`` | ``valid`` | ``test``.
        batch_size: rows per batch ``B`` (per rank).
        max_history: history positions ``L`` (default: the dataset's); the most recent are kept.
        modalities: item modalities to attach (empty: no content tensors).
        drop_features: side features left out (:meth:`DatasetMeta.without_features`): their
            columns are neither read nor sent.
        pooled_content: one pooled vector per modality (``T = 1``) instead of its tokens.
        token_window: tokens averaged in windows of this many positions (``ItemStore``); an
            ``item_store`` passed in must have the same.
        pooled_vectors: with the tokens, also each item's stored pooled vector per modality
            (``Batch.content_pooled``; EM3's pooled base reads it instead of pooling every step),
            in ``token_dtype``.
        token_dtype: the dtype the content tower computes in (``Precision.dtype``): tokens arrive
            in it, read from the store's resident tables when it holds them in that dtype, else
            cast here, in the loader (its prefetch thread), not in every training step; None keeps
            the store's float16.
        history_tokens: False = tokens only of the targets and the catalogue sample, which then
            come first among the distinct items (``Batch.content_tokens`` has ``U_t <= U`` rows);
            with ``pooled_vectors``, every item's pooled vector is still sent.
        training: shuffle and drop the remainder (default: ``split == "train"``); else read in
            order and pad the last batches with weight-0 rows.
        shuffle: override the shuffle of ``training`` (e.g. an unshuffled training pass).
        shuffle_buffer: rows held by the shuffle buffer (the bound on its memory).
        seed: shuffle seed; the order depends on ``(seed, epoch, rank)`` (see :meth:`set_epoch`).
        rank, world_size: this rank's shard of the split.
        max_batches: stop after this many batches (the same on every rank).
        prefetch: batches built ahead in a background thread (0: build in the caller's thread).
        pin_memory: yield batches in page-locked memory (for a CUDA device: the copy to it can then
            run asynchronously, e.g. on the train pipeline's memcpy stream); done where they are
            built, so in the prefetch thread.
        read_rows: rows per Parquet record batch.
        scan_rows: splits up to this many rows are value-checked at open, larger ones per record
            batch as read (see ``em3rec.data.validation``).
        item_store: share an open :class:`ItemStore` between loaders.
        catalogue_samples: None = no catalogue feature; K >= 0 = each batch carries the
            ``CATALOGUE_FEATURE`` with K items drawn uniformly from the catalogue for CIC (their
            content only; evaluation passes 0 so that its batches have the same keys).

    Example::

        >>> loader = ImpressionLoader("data/ml100k", "train", batch_size=512, modalities=["title"])
        >>> loader.set_epoch(0)
        >>> for batch in loader: ...   # len(loader) batches, identical count on every rank
    """

    def __init__(
        self,
        path: str | Path,
        split: str,
        *,
        batch_size: int,
        max_history: int | None = None,
        modalities: Sequence[str] = (),
        drop_features: Sequence[str] = (),
        pooled_content: bool = False,
        token_window: int = 1,
        pooled_vectors: bool = False,
        history_tokens: bool = True,
        token_dtype: torch.dtype | None = None,
        training: bool | None = None,
        shuffle: bool | None = None,
        shuffle_buffer: int = 65536,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
        prefetch: int = 2,
        pin_memory: bool = False,
        read_rows: int = 8192,
        scan_rows: int = 1_000_000,
        item_store: ItemStore | None = None,
        catalogue_samples: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size = {batch_size}; expected >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self._path = Path(path)
        self.meta = DatasetMeta.load(path).without_features(drop_features)
        self.split = split
        self.batch_size = batch_size
        self.training = split == "train" if training is None else training
        self._shuffle = self.training if shuffle is None else shuffle
        self._shuffle_buffer = max(shuffle_buffer, 2 * batch_size)
        self._seed, self._epoch, self._start_batch = seed, 0, 0
        self.rank, self.world_size = rank, world_size
        self._prefetch = prefetch
        self._pin_memory = pin_memory
        self._read_rows = max(read_rows, 1)
        self._catalogue_samples = catalogue_samples

        self._user = self.meta.features_of("user")[0]
        self._item = self.meta.features_of("item")[0]
        self._history = self.meta.features_of("history")[0]
        self._sparse = self.meta.features_of("user", "single", "multi")
        features = [self._item, self._history] + self._sparse
        dataset_history = self._history.max_length
        self.max_history = dataset_history if max_history is None else max_history
        if not 1 <= self.max_history <= dataset_history:
            raise ConfigError(
                f"data.max_history = {self.max_history}; expected 1 <= max_history <= {dataset_history} "
                f"(meta.json feature {self._history.name!r} max_length)"
            )
        self._features = features
        self._columns = [LABEL] + [f.column for f in features]
        self._list_columns = [f.column for f in features if is_list_feature(f)]

        check_meta_counts(path, self.meta)
        self._info: SplitInfo = validate_split(path, self.meta, split, features, scan_rows=scan_rows)
        self._checked: set[int] = set()  # row groups whose values were checked (lazy validation)
        self.modalities = tuple(modalities)
        self.pooled_content = pooled_content
        self._pooled_vectors = pooled_vectors and not pooled_content  # pooled batches carry them as tokens
        self._history_tokens = history_tokens or pooled_content
        self._token_dtype = token_dtype
        self._items = None
        if self.modalities:
            self._items = (
                item_store
                if item_store is not None
                else ItemStore(path, self.modalities, self.meta, token_window=token_window)
            )
            if self._items.token_window != token_window:
                raise ValueError(
                    f"item_store averages tokens in windows of {self._items.token_window}; this loader was asked "
                    f"for data.token_window = {token_window}"
                )

        rows = self._info.rows
        self._lo, self._hi = shard_bounds(rows, world_size, self.training)[rank]
        if self.training:
            full = (rows // world_size) // batch_size
            if full == 0:
                raise ConfigError(
                    f"{self._path / split}: {rows} rows give no full batch of data.batch_size = {batch_size} "
                    f"on {world_size} rank(s); lower the batch size"
                )
            self.dropped_rows = rows - full * batch_size * world_size
            if self.dropped_rows and rank == 0:
                logger.info(
                    "%s/%s: %d ranks x %d batches x %d rows; %d of %d rows dropped per epoch (remainder)",
                    self._path.name,
                    split,
                    world_size,
                    full,
                    batch_size,
                    self.dropped_rows,
                    rows,
                )
        else:
            full = math.ceil(math.ceil(rows / world_size) / batch_size)
            self.dropped_rows = 0
        self.num_batches = full if max_batches is None else min(full, max_batches)

    @classmethod
    def from_config(
        cls, config: DataConfig, split: str, *, rank: int = 0, world_size: int = 1, seed: int = 0, **kwargs: object
    ) -> "ImpressionLoader":
        """A loader with the batch size (this rank's share of it), history, modalities and shuffle of
        ``config`` (``data`` section)."""
        training = bool(kwargs.pop("training", split == "train"))
        options: dict[str, object] = dict(
            batch_size=config.rank_batch_size(world_size) if training else config.eval_batch_size,
            max_history=config.max_history, modalities=config.modalities, drop_features=config.drop_features,
            pooled_content=config.pooled_content,
            token_window=config.token_window, shuffle_buffer=config.shuffle_buffer,
        )  # fmt: skip
        options.update(kwargs)  # e.g. modalities=() for an ID-only model
        return cls(config.path, split, training=training, seed=seed, rank=rank, world_size=world_size, **options)

    @property
    def rows(self) -> int:
        """Rows of this rank's shard (before dropping the training remainder)."""
        return self._hi - self._lo

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle: the next iteration's order depends on ``(seed, epoch, rank)``.

        ``start_batch`` resumes mid-epoch (from a checkpoint): the first ``start_batch`` batches of
        the same deterministic order are read but not built or yielded.
        """
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} is outside 0..{self.num_batches}")
        self._epoch, self._start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank (``start_batch`` does not change it)."""
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise RuntimeError(
                "ImpressionLoader shards by rank, not by DataLoader worker: use num_workers <= 1 and the "
                "loader's own prefetch= instead"
            )
        if self._prefetch > 0:
            return prefetch(self._batches, self._prefetch)
        return self._batches()

    # ------------------------------------------------------------------------------ internals

    def _pieces(self) -> list[_Piece]:
        pieces = []
        for g in self._info.groups:
            start, stop = max(self._lo, g.start), min(self._hi, g.start + g.rows)
            if start < stop:
                pieces.append(_Piece(g, start - g.start, stop - g.start))
        return pieces

    def _read(self, pieces: Sequence[_Piece]) -> Iterator[Rows]:
        """Record batches of the pieces, history cut to the last ``max_history`` values.

        ``ParquetFile.iter_batches`` decodes a row group incrementally, ``read_rows`` at a time; the
        dataset scanner (``Fragment.to_batches``) decodes a whole row group before its first batch,
        which stalled the consumer for 150-800 ms per row group here.
        """
        tail = {self._history.column: self.max_history}
        for piece in pieces:
            group = piece.group
            check = not self._info.scanned and group.start not in self._checked
            offset = 0
            with pq.ParquetFile(group.fragment.path, metadata=group.fragment.metadata) as file:
                for record_batch in _decoded(
                    file.iter_batches(batch_size=self._read_rows, row_groups=[group.index], columns=self._columns),
                    group.where,
                ):
                    n = record_batch.num_rows
                    start, stop = max(piece.start - offset, 0), min(piece.stop - offset, n)
                    offset += n
                    if start < stop:
                        record_batch = record_batch.slice(start, stop - start)
                        if check:
                            check_record_batch(
                                record_batch, self._features, group.where, not self._info.stats_cover_ids
                            )
                        yield Rows.from_arrow(record_batch, self._list_columns, tail)
                    if offset >= piece.stop:
                        break
            if check:
                self._checked.add(group.start)

    def _rebatch(self, chunks: Iterator[Rows]) -> Iterator[Rows]:
        """In order: ``B``-row slices (zero-copy within a chunk), then the final partial slice."""
        carry: Rows | None = None
        B = self.batch_size
        for chunk in chunks:
            if carry is not None:
                need = B - len(carry)
                if len(chunk) < need:
                    carry = Rows.concat([carry, chunk])
                    continue
                yield Rows.concat([carry, chunk.slice(0, need)])
                chunk, carry = chunk.slice(need, len(chunk)), None
            full = len(chunk) // B * B
            for start in range(0, full, B):
                yield chunk.slice(start, start + B)
            if full < len(chunk):
                carry = chunk.slice(full, len(chunk))
        if carry is not None and len(carry):
            yield carry

    def _shuffled(self, chunks: Iterator[Rows], rng: np.random.Generator) -> Iterator[Rows]:
        """Bounded shuffle buffer.

        Once ``shuffle_buffer`` rows are held they are permuted; all but half of them are served as
        whole batches while the next rows are read (about one batch served per batch read, which
        keeps the work per batch even), and the kept half is permuted again with those rows. At the
        end everything left is permuted and served. Memory: about 1.5 x ``shuffle_buffer`` rows.
        """
        B, capacity = self.batch_size, self._shuffle_buffer
        held: list[Rows] = []
        count = 0
        ready: deque[Rows] = deque()
        for chunk in chunks:
            held.append(chunk)
            count += len(chunk)
            for _ in range(math.ceil(len(chunk) / B)):
                if ready:
                    yield ready.popleft()
            if count >= capacity and not ready:
                rows = Rows.concat(held)
                rows = rows.take(rng.permutation(len(rows)))
                emit = (len(rows) - capacity // 2) // B * B
                ready.extend(rows.slice(start, start + B) for start in range(0, emit, B))
                held, count = [rows.slice(emit, len(rows))], len(rows) - emit
        yield from ready
        if count:
            rows = Rows.concat(held)
            rows = rows.take(rng.permutation(len(rows)))
            for start in range(0, len(rows), B):
                yield rows.slice(start, min(start + B, len(rows)))

    def _batches(self) -> Iterator[Batch]:
        pieces = self._pieces()
        rng = np.random.default_rng([self._seed, self._epoch, self.rank])
        if self._shuffle:
            pieces = [pieces[i] for i in rng.permutation(len(pieces))]
            slices = self._shuffled(self._read(pieces), rng)
        else:
            slices = self._rebatch(self._read(pieces))
        produced, skip = 0, self._start_batch
        for rows in slices:
            if produced == self.num_batches:
                break
            real = len(rows)
            if real < self.batch_size:
                if self.training:
                    break  # the dropped remainder
                rows = Rows.concat([rows, self._padding(self.batch_size - real)])
            if produced >= skip:
                yield self._finished(self._to_batch(rows, real, produced))
            produced += 1
        while produced < self.num_batches:  # ranks with fewer rows pad with whole weight-0 batches
            if produced >= skip:
                yield self._finished(self._to_batch(self._padding(self.batch_size), 0, produced))
            produced += 1

    def _finished(self, batch: Batch) -> Batch:
        return batch.pin_memory() if self._pin_memory else batch

    def _padding(self, n: int) -> Rows:
        """``n`` weight-0 rows: label 0, single-valued ids 0 (the reserved index), empty lists."""
        scalars = {LABEL: np.zeros(n, dtype=np.float32)}
        scalars.update({c: np.zeros(n, dtype=np.int64) for c in self._columns[1:] if c not in self._list_columns})
        lists = {c: (np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)) for c in self._list_columns}
        return Rows(scalars, lists)

    def _catalogue(self, batch_index: int) -> np.ndarray:
        """``(K,)`` item ids drawn uniformly (with replacement) from the catalogue, index 0 excluded.
        Seeded by (seed, epoch, rank, batch), so a resumed epoch draws the same items."""
        if not self._catalogue_samples:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self._seed, self._epoch, self.rank, batch_index, 0xC1C])
        return rng.integers(1, self._item.vocab_size, size=self._catalogue_samples, dtype=np.int64)

    def _to_batch(self, rows: Rows, real: int, batch_index: int) -> Batch:
        """``B`` rows (the first ``real`` real, the rest padding) -> ``Batch``; ``batch_index`` is
        the batch's position in the epoch (seeds the catalogue sample)."""
        B, L = len(rows), self.max_history
        user = rows.scalars[self._user.column]
        item = rows.scalars[self._item.column]
        hist_offsets, hist_values = rows.lists[self._history.column]
        hist_lengths = np.diff(hist_offsets)  # (B,)
        ones = np.ones(B, dtype=np.int64)

        sparse_values, sparse_lengths = [], []
        for f in self._sparse:
            if is_list_feature(f):
                offsets, values = rows.lists[f.column]
                sparse_values.append(values)
                sparse_lengths.append(np.diff(offsets))
            else:
                sparse_values.append(rows.scalars[f.column])
                sparse_lengths.append(ones)
        sparse = KeyedJaggedTensor(
            keys=[f.name for f in self._sparse],
            values=torch.from_numpy(np.concatenate(sparse_values).astype(np.int64, copy=False)),
            lengths=torch.from_numpy(np.concatenate(sparse_lengths).astype(np.int32)),
        )
        keys, lengths = [self._item.name, self._history.name], [ones, hist_lengths]
        catalogue = self._catalogue(batch_index)  # (K,)
        if self._catalogue_samples is not None:
            keys.append(CATALOGUE_FEATURE)
            lengths.append(np.zeros(B, dtype=np.int64))
            lengths[-1][0] = len(catalogue)
        target_and_history = np.concatenate([item, hist_values, catalogue])  # (B + sum(lengths) + K,)
        sequence = KeyedJaggedTensor(
            keys=keys,
            values=torch.from_numpy(target_and_history),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
        )

        history_mask = np.arange(L)[None, :] < hist_lengths[:, None]  # (B, L), oldest first, left-aligned
        content_ids, inverse = np.unique(target_and_history, return_inverse=True)  # (U,), (B + sum,)
        with_tokens = len(content_ids)  # U_t: the first U_t distinct items get tokens
        if not self._history_tokens:
            content_ids, inverse, with_tokens = _targets_first(content_ids, inverse, B, len(catalogue))
        history_index = np.zeros((B, L), dtype=np.int64)
        history_index[history_mask] = inverse[B : len(inverse) - len(catalogue)]  # row-major = the values' order
        tokens, token_mask, pooled = ({}, {}, {})
        if self._items is not None:
            tokens, token_mask = self._items.gather(
                content_ids[:with_tokens], self.modalities, self.pooled_content, dtype=self._token_dtype
            )
            if self._pooled_vectors:
                pooled = self._items.gather_pooled(content_ids, self.modalities, dtype=self._token_dtype)

        weights = np.zeros(B, dtype=np.float32)
        weights[:real] = 1.0
        return Batch(
            sparse_features=sparse,
            sequence_features=sequence,
            labels=torch.from_numpy(rows.scalars[LABEL].astype(np.float32, copy=True)),
            weights=torch.from_numpy(weights),
            user_ids=torch.from_numpy(user.astype(np.int64, copy=True)),
            item_ids=torch.from_numpy(item.astype(np.int64, copy=True)),
            history_mask=torch.from_numpy(history_mask),
            content_item_ids=torch.from_numpy(content_ids.astype(np.int64, copy=False)),
            target_content_index=torch.from_numpy(inverse[:B].astype(np.int64, copy=True)),
            history_content_index=torch.from_numpy(history_index),
            content_tokens=tokens,
            content_token_mask=token_mask,
            content_pooled=pooled,
            catalogue_content_index=torch.from_numpy(
                inverse[len(inverse) - len(catalogue) :].astype(np.int64, copy=True)
            ),
        )


__all__ = ["ImpressionLoader", "Rows", "jagged_tail", "jagged_take", "prefetch", "shard_bounds"]
