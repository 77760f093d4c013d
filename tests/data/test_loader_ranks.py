"""Two real gloo ranks iterate their shards with one collective per batch: no rank may hang."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from em3rec.data.loader import ImpressionLoader
from em3rec.testing.multiprocess import run_ranks


def _iterate_with_collectives(rank: int, world_size: int, path: str) -> dict[str, float]:
    out = {}
    for split, batch_size in (("train", 96), ("valid", 64)):
        loader = ImpressionLoader(path, split, batch_size=batch_size, rank=rank, world_size=world_size)
        rows = torch.zeros(1)
        for batch in loader:
            step = torch.ones(1)
            dist.all_reduce(step)  # hangs if the ranks disagree on the number of batches
            rows += batch.weights.sum()
        dist.all_reduce(rows)
        out[split] = float(rows)
    return out


@pytest.mark.multiprocess
def test_two_gloo_ranks_same_batch_count(tiny_dataset: Path) -> None:
    results = run_ranks(_iterate_with_collectives, str(tiny_dataset), timeout_s=120)
    # train: 2401 rows -> 1200 per rank -> 12 batches of 96; valid: every one of the 300 rows once
    assert results == [{"train": 2 * 12 * 96, "valid": 300}] * 2
