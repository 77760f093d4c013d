"""Impression tables: the protocol's rows joined with user / item side features and index columns.

Shared by every importer. Side features live once per entity (row ``i`` of ``users`` / ``items`` is
vocabulary index ``i``) and are gathered per impression chunk, so large splits stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from em3rec.data.schema import SPLITS, DatasetMeta

from data_prep.protocol import ProtocolSplit, cold_items
from data_prep.vocab import Feature, Vocab, add_index_columns
from data_prep.writer import ModalityArrays, write_prepared


def aligned(vocab: Vocab, keys: pa.Array | pa.ChunkedArray, table: pa.Table) -> pa.Table:
    """``table`` (one row per ``keys`` value) reordered so that row ``i`` is vocabulary index ``i``.

    Row 0 (reserved) and known values without a row in ``table`` are null.
    """
    rows = pc.index_in(vocab.values, value_set=keys)  # (n,) table row of each known value, or null
    idx = pa.concat_arrays([pa.nulls(1, pa.int32()), rows.cast(pa.int32())])
    return pa.table({c: table.column(c).take(idx) for c in table.column_names})


@dataclass
class Impressions:
    """The protocol's rows plus everything needed to write their side features and index columns.

    Fields:
        split: the protocol's split (labels, order, histories).
        features: every ID feature, in the order their index columns are written.
        user_vocab, item_vocab: the id vocabularies (the item one is shared with the history).
        users: row ``i`` = user index ``i``: user side columns copied into every impression.
        items: row ``i`` = item index ``i``: ``item_idx``, ``item_id`` and the item side columns.
        item_columns: the ``items`` columns copied into every impression.
    """

    split: ProtocolSplit
    features: list[Feature]
    user_vocab: Vocab
    item_vocab: Vocab
    users: pa.Table
    items: pa.Table
    item_columns: Sequence[str]

    def table(self, positions: np.ndarray) -> pa.Table:
        """Impressions at protocol ``positions``: protocol columns, raw side features, index columns."""
        base = self.split.table(positions)
        user_idx = self.user_vocab.lookup(base.column("user_id"))  # (n,)
        item_idx = self.item_vocab.lookup(base.column("item_id"))  # (n,)
        for name in self.users.column_names:
            base = base.append_column(name, self.users.column(name).take(user_idx))
        for name in self.item_columns:
            base = base.append_column(name, self.items.column(name).take(item_idx))
        return add_index_columns(base, self.features)

    def tables(self, split: str, chunk_rows: int = 1_000_000) -> Iterator[pa.Table]:
        """The split's impressions in protocol order, ``chunk_rows`` at a time."""
        start, stop = self.split.bounds[split]
        for lo in range(start, stop, chunk_rows):
            yield self.table(np.arange(lo, min(lo + chunk_rows, stop)))

    def vocabs(self) -> dict[str, Vocab]:
        return {f.name: f.vocab for f in self.features if f.kind != "history"}

    def extra(self) -> dict:
        """Protocol facts recorded in ``meta.extra``.

        Cold test rows are those whose item never occurs in train (what ``em3rec.evaluation``
        reports ``cold_auc`` on); warm test rows are the others (``warm_auc``).
        """
        cold_test_items, cold_test_rows = cold_items(self.split)
        start, stop = self.split.bounds["test"]
        test_items = len(pc.unique(pa.array(self.split.item_ids[start:stop])))
        return {
            "label": f"rating >= {self.split.label_threshold:g}",
            "split_order": self.split.order_key,
            "split_rows": {s: b - a for s, (a, b) in self.split.bounds.items()},
            "max_history": self.split.max_history,
            "num_real_users": self.user_vocab.size - 1,
            "num_real_items": self.item_vocab.size - 1,
            "index_note": "num_users / num_items and every vocab_size count the reserved index 0",
            "cold_test_items": cold_test_items,
            "cold_test_rows": cold_test_rows,
            "warm_test_items": test_items - cold_test_items,
            "warm_test_rows": stop - start - cold_test_rows,
        }

    def write(
        self,
        out: str | Path,
        *,
        name: str,
        protocol: str,
        items: pa.Table,
        modalities: Sequence[ModalityArrays],
        extra: dict,
    ) -> DatasetMeta:
        """Write every split, ``items`` (row ``i`` = item index ``i``) and the modality arrays to ``out``."""
        return write_prepared(
            out,
            name=name,
            protocol=protocol,
            features=[f.spec() for f in self.features],
            splits={s: self.tables(s) for s in SPLITS},
            items=items,
            modalities=modalities,
            vocabs=self.vocabs(),
            extra=extra,
        )


def item_table(item_vocab: Vocab, columns: dict[str, pa.Array | pa.ChunkedArray]) -> pa.Table:
    """The item table every importer writes: ``item_idx`` (0..n), raw ``item_id`` (null on the
    reserved row 0), then ``columns`` (each already aligned to item indices)."""
    return pa.table(
        {
            "item_idx": pa.array(np.arange(item_vocab.size), pa.int64()),
            "item_id": pa.concat_arrays([pa.nulls(1, item_vocab.values.type), item_vocab.values]),
            **columns,
        }
    )


def id_vocabs(
    user_ids: pa.ChunkedArray | pa.Array,
    item_ids: pa.ChunkedArray | pa.Array,
    listed_users: pa.Array | pa.ChunkedArray | None,
    listed_items: pa.Array | pa.ChunkedArray | None,
) -> tuple[Vocab, Vocab]:
    """User and item vocabularies over every interaction and every listed entity.

    Users and items are known entities (the dump lists them), so their vocabularies are built over
    all rows and all listed entities, not over train only: a test row's user or item has an index
    (its embedding is simply untrained if it never occurs in train).
    """
    users = [user_ids] + ([listed_users] if listed_users is not None else [])
    items = [item_ids] + ([listed_items] if listed_items is not None else [])
    return Vocab.build("user_id", *users), Vocab.build("item_id", *items)


def id_features(user_vocab: Vocab, item_vocab: Vocab, max_history: int) -> list[Feature]:
    """The user, target-item and history features every dataset has (history shares the item table)."""
    return [
        Feature("user_id", "user_id", "user_idx", "user", user_vocab),
        Feature("item_id", "item_id", "item_idx", "item", item_vocab),
        Feature("hist_item_ids", "hist_item_ids", "hist_item_idx", "history", item_vocab, max_length=max_history),
    ]


def summary(meta: DatasetMeta, seconds: float) -> str:
    """Human-readable lines: split sizes and positive rates, entities, modalities, extras."""
    lines = [f"prepared {meta.name} ({meta.protocol}) in {seconds:.1f}s"]
    for split, spec in meta.splits.items():
        lines.append(f"  {split:5s} {spec.rows:>10,d} rows  positive rate {spec.positive_rate:.4f}")
    lines.append(
        f"  users {meta.extra.get('num_real_users')}, items {meta.extra.get('num_real_items')} (+ reserved index 0)"
    )
    for m in meta.modalities:
        lines.append(f"  modality {m.name}: {m.tokens} x {m.width} from {m.encoder}")
    for key in (
        "row_filter",
        "malformed_rows",
        "wikidata_matches",
        "items_with_image",
        "cold_test_items",
        "cold_test_rows",
        "warm_test_items",
        "warm_test_rows",
    ):
        if meta.extra.get(key) is not None:
            lines.append(f"  {key}: {meta.extra[key]}")
    return "\n".join(lines)


def prepare_and_report(prepare: Callable[[], DatasetMeta]) -> DatasetMeta:
    """A command's body: log to stderr, run ``prepare``, print its ``summary`` with the time taken."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    meta = prepare()
    print(summary(meta, time.perf_counter() - start), flush=True)
    return meta
