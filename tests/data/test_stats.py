"""The planner's pooling factors from the data: mean ids per row of the multi-valued features."""

from __future__ import annotations

from pathlib import Path

import pytest

from em3rec.data.schema import DatasetMeta
from em3rec.data.stats import mean_ids_per_row
from tests.data.conftest import reference_rows


@pytest.mark.parametrize("max_history", [30, 4])
def test_mean_ids_per_row_is_that_of_the_rows_the_loader_keeps(tiny_dataset: Path, max_history: int) -> None:
    meta = DatasetMeta.load(tiny_dataset)
    rows = reference_rows(tiny_dataset, "train")
    history = meta.features_of("history")[0]
    expected = {history.name: sum(min(len(r[history.column] or []), max_history) for r in rows) / len(rows)}
    for f in meta.features_of("multi"):
        expected[f.name] = sum(len(r[f.column] or []) for r in rows) / len(rows)
    assert mean_ids_per_row(tiny_dataset, meta, max_history) == pytest.approx(expected)
    assert expected[history.name] > 1.5  # the planner's default of 1 would be wrong here
    first = reference_rows(tiny_dataset, "train")[:100]
    head = sum(min(len(r[history.column] or []), max_history) for r in first) / 100
    assert mean_ids_per_row(tiny_dataset, meta, max_history, max_rows=100)[history.name] == pytest.approx(head)
