"""ItemStore's resident token tables: the same tokens as the memory map cast per batch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader

IDS = np.array([0, 3, 3, 17, 200, 42])  # the reserved item, a repeat, the last item


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_resident_tables_gather_what_the_memory_map_gives(tiny_dataset: Path, dtype: torch.dtype) -> None:
    mapped = ItemStore(tiny_dataset)
    resident = ItemStore(tiny_dataset, resident_dtype=dtype, resident_max_mb=1.0)
    assert mapped.resident_dtype is None and resident.resident_dtype == dtype
    expected_tokens, expected_mask = mapped.gather(IDS)
    tokens, mask = resident.gather(IDS, dtype=dtype)
    for name in ("title", "meta"):
        assert tokens[name].dtype == dtype
        torch.testing.assert_close(tokens[name], expected_tokens[name].to(dtype), rtol=0, atol=0)
        assert torch.equal(mask[name], expected_mask[name])
    # Another dtype, or none, is read from the memory map, not from the tables.
    as_stored, _ = resident.gather(IDS)
    assert as_stored["title"].dtype == torch.float16
    assert torch.equal(as_stored["title"], expected_tokens["title"])


def test_tables_over_the_budget_stay_memory_mapped(tiny_dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="em3rec.data.item_store"):
        store = ItemStore(tiny_dataset, resident_dtype=torch.bfloat16, resident_max_mb=0.001)
    assert store.resident_dtype is None
    assert "memory-mapped, cast to torch.bfloat16 per batch" in caplog.text
    assert "data.resident_tokens_mb = 0.001" in caplog.text
    tokens, _ = store.gather(IDS, dtype=torch.bfloat16)
    assert tokens["meta"].dtype == torch.bfloat16


def test_loader_batches_do_not_depend_on_residency(tiny_dataset: Path) -> None:
    def batches(store: ItemStore) -> list:
        loader = ImpressionLoader(
            tiny_dataset, "train", batch_size=64, seed=3, max_batches=4, prefetch=0, item_store=store,
            modalities=["title", "meta"], token_dtype=torch.bfloat16,
        )  # fmt: skip
        return list(loader)

    mapped = batches(ItemStore(tiny_dataset))
    resident = batches(ItemStore(tiny_dataset, resident_dtype=torch.bfloat16, resident_max_mb=1.0))
    assert len(mapped) == len(resident) == 4
    for a, b in zip(mapped, resident):
        assert torch.equal(a.content_item_ids, b.content_item_ids)
        for name in ("title", "meta"):
            assert b.content_tokens[name].dtype == torch.bfloat16
            assert torch.equal(a.content_tokens[name], b.content_tokens[name])
            assert torch.equal(a.content_token_mask[name], b.content_token_mask[name])
