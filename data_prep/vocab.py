"""Dense ID vocabularies and the index columns the impression files carry.

Every vocabulary maps its known values to ``1..n`` in sorted order; index 0
(``em3rec.data.schema.RESERVED_INDEX``) is reserved for unknown, missing and padding. Values that are
not in the vocabulary are never dropped: they map to 0 and are counted and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from em3rec.data.schema import RESERVED_INDEX, FeatureKind, FeatureSpec

logger = logging.getLogger(__name__)


def _flat(values: pa.Array | pa.ChunkedArray | np.ndarray | list) -> pa.Array:
    """The scalar values of an array, flattening list arrays one level."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    elif not isinstance(values, pa.Array):
        values = pa.array(values)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = values.flatten()
    return values


class Vocab:
    """Sorted distinct values -> dense indices ``1..n`` (0 = unknown / missing / padding).

    Args:
        name: used in log lines and error messages (e.g. ``"item_id"``).
        values: the known values (any order, duplicates and nulls are ignored).

    Example::

        >>> v = Vocab.build("gender", pa.array(["M", "F", "M"]))
        >>> v.encode(pa.array(["F", "M", "X"]))   # -> [1, 2, 0]; "X" is counted as unknown
    """

    def __init__(self, name: str, values: pa.Array) -> None:
        self.name = name
        values = pc.drop_null(_flat(values))
        values = pc.unique(values)
        self._values: pa.Array = values.take(pc.sort_indices(values))
        self.unknown_count = 0  # values seen by encode() that are not in the vocabulary
        self.missing_count = 0  # nulls seen by encode()

    @classmethod
    def build(cls, name: str, *arrays: pa.Array | pa.ChunkedArray | np.ndarray | list) -> "Vocab":
        """A vocabulary over the union of ``arrays`` (list arrays contribute their elements)."""
        flat = [_flat(a) for a in arrays]
        return cls(name, pa.concat_arrays([f.cast(flat[0].type) for f in flat]))

    @property
    def values(self) -> pa.Array:
        """``(n,)`` the known values; ``values[i]`` has index ``i + 1``."""
        return self._values

    @property
    def size(self) -> int:
        """Number of indices including the reserved index 0 (the embedding table's row count)."""
        return len(self._values) + 1

    def lookup(self, values: pa.Array | pa.ChunkedArray | np.ndarray | list) -> np.ndarray:
        """``(N,)`` raw values -> ``(N,)`` int64 indices, 0 for unknown or null; not counted or logged
        (for joins; index columns go through ``encode``)."""
        return self._index(self._as_array(values))

    def _as_array(self, values: pa.Array | pa.ChunkedArray | np.ndarray | list) -> pa.Array:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        elif not isinstance(values, pa.Array):
            values = pa.array(values)
        if len(values) and values.type != self._values.type:
            try:
                values = values.cast(self._values.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise TypeError(
                    f"vocabulary {self.name!r}: cannot look up values of type {values.type}; "
                    f"expected {self._values.type} ({e})"
                ) from e
        return values

    def _index(self, values: pa.Array) -> np.ndarray:
        found = pc.index_in(values, value_set=self._values)
        return pc.fill_null(pc.add(found, 1), RESERVED_INDEX).to_numpy(zero_copy_only=False).astype(np.int64)

    def encode(self, values: pa.Array | pa.ChunkedArray | np.ndarray | list) -> np.ndarray:
        """``(N,)`` raw values -> ``(N,)`` int64 indices; unknown or null values -> 0 (counted, logged)."""
        values = self._as_array(values)
        index = self._index(values)
        missing = values.null_count
        unknown = int(np.count_nonzero(index == RESERVED_INDEX)) - missing
        self.missing_count += missing
        self.unknown_count += unknown
        if unknown:
            logger.warning(
                "%s: %d of %d values are not in the vocabulary (%d known values) -> index %d (unknown)",
                self.name,
                unknown,
                len(values),
                len(self._values),
                RESERVED_INDEX,
            )
        if missing:
            logger.info(
                "%s: %d of %d values are missing (null) -> index %d", self.name, missing, len(values), RESERVED_INDEX
            )
        return index

    def encode_lists(self, values: pa.ListArray | pa.ChunkedArray) -> pa.ListArray:
        """``list<value>`` rows -> ``list<int64>`` rows of indices, same lengths (unknown -> 0)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not pa.types.is_list(values.type):
            raise TypeError(f"vocabulary {self.name!r}: encode_lists expects a list array, got {values.type}")
        if values.null_count:
            values = pc.fill_null(values, pa.scalar([], values.type))
        offsets = pc.subtract(values.offsets, values.offsets[0])
        flat = self.encode(values.flatten())
        return pa.ListArray.from_arrays(offsets, pa.array(flat, pa.int64()))

    def to_table(self) -> pa.Table:
        """``index``, ``value`` rows for every known value (index 0 is not listed)."""
        return pa.table({"index": pa.array(np.arange(1, self.size, dtype=np.int64)), "value": self._values})


@dataclass
class Feature:
    """One ID feature of a dataset: a raw impression column, its vocabulary and its index column.

    Args:
        name: the feature's key in the ``KeyedJaggedTensor`` (e.g. ``"gender"``).
        source: raw impression column (scalar, or ``list<...>`` for ``history`` / ``multi``).
        column: remapped index column written next to it (e.g. ``"gender_idx"``).
        kind: ``user`` | ``item`` | ``history`` | ``single`` | ``multi``.
        vocab: the vocabulary; ``item`` and ``history`` features share one (table ``"item"``).
        max_length: most values per row (1 for scalar features).
    """

    name: str
    source: str
    column: str
    kind: FeatureKind
    vocab: Vocab
    max_length: int = 1
    table: str = field(default="")

    def __post_init__(self) -> None:
        if not self.table:
            self.table = {"item": "item", "history": "item", "user": "user"}.get(self.kind, self.name)

    @property
    def is_list(self) -> bool:
        return self.kind in ("history", "multi")

    def spec(self) -> FeatureSpec:
        return FeatureSpec(
            name=self.name,
            column=self.column,
            kind=self.kind,
            vocab_size=self.vocab.size,
            table=self.table,
            max_length=self.max_length,
        )

    def index(self, table: pa.Table) -> pa.Array:
        """The index column for ``table``: ``(N,)`` int64, or ``list<int64>`` for list kinds."""
        if self.source not in table.column_names:
            raise KeyError(f"feature {self.name!r}: column {self.source!r} missing; have {table.column_names}")
        col = table.column(self.source)
        if self.is_list:
            return self.vocab.encode_lists(col)
        return pa.array(self.vocab.encode(col), pa.int64())


def add_index_columns(table: pa.Table, features: list[Feature]) -> pa.Table:
    """Append every feature's index column (``Feature.column``) to ``table``."""
    for f in features:
        table = table.append_column(f.column, f.index(table))
    return table


def max_list_length(values: pa.Array | pa.ChunkedArray) -> int:
    """Longest row of a list array (at least 1, so a feature spec is valid even if all rows are empty)."""
    lengths = pc.list_value_length(values)
    longest = pc.max(lengths).as_py()
    return max(1, int(longest or 0))
