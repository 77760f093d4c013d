"""ItemStore: resident token tables give what the memory map gives; tokens averaged in windows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from em3rec import factory
from em3rec.config import load_config
from em3rec.data.item_store import ItemStore, window_tokens
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import DatasetMeta

IDS = np.array([0, 3, 3, 17, 200, 42])  # the reserved item, a repeat, the last item


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])  # float16: the stored dtype
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
    # The pooled vectors too (held beside the tokens), in the dtype asked for.
    expected_pooled = mapped.gather_pooled(IDS)
    pooled = resident.gather_pooled(IDS, dtype=dtype)
    for name in ("title", "meta"):
        assert pooled[name].dtype == dtype and expected_pooled[name].dtype == torch.float16
        torch.testing.assert_close(pooled[name], expected_pooled[name].to(dtype), rtol=0, atol=0)
        # Held in memory even in the stored dtype: not a view of the read-only memory map.
        mapped_pooled = np.asarray(resident._arrays[name]["pooled"])
        assert resident._resident_pooled[name].data_ptr() != mapped_pooled.ctypes.data
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
            modalities=["title", "meta"], token_dtype=torch.bfloat16, pooled_vectors=True,
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
            assert a.content_pooled[name].dtype == b.content_pooled[name].dtype == torch.bfloat16
            assert torch.equal(a.content_pooled[name], b.content_pooled[name])


def test_window_tokens_is_the_mean_of_each_windows_real_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) < 0.6
    mask[2] = False  # an item without tokens
    mask[3, :4] = False  # a first window without tokens
    means, window_mask = window_tokens(tokens, mask, 3)
    assert means.shape == (5, 3, 3) and window_mask.shape == (5, 3)  # windows [0, 3), [3, 6), [6, 7)
    for u in range(5):
        for w, (lo, hi) in enumerate([(0, 3), (3, 6), (6, 7)]):
            real = mask[u, lo:hi]
            assert bool(window_mask[u, w]) == bool(real.any())
            expected = tokens[u, lo:hi][real].mean(0) if real.any() else torch.zeros(3, dtype=torch.float64)
            torch.testing.assert_close(means[u, w].double(), expected, rtol=1e-6, atol=1e-6)
    same, same_mask = window_tokens(tokens, mask, 1)
    assert torch.equal(same_mask, mask)
    torch.testing.assert_close(same.double(), tokens * mask[..., None], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_windowed_store_gathers_the_windowed_tokens(tiny_dataset: Path, dtype: torch.dtype) -> None:
    stored = ItemStore(tiny_dataset)
    mapped = ItemStore(tiny_dataset, token_window=4)
    resident = ItemStore(tiny_dataset, resident_dtype=dtype, resident_max_mb=1.0, token_window=4)
    assert resident.resident_dtype == dtype
    tokens, mask = stored.gather(IDS)
    expected = {name: window_tokens(tokens[name], mask[name], 4) for name in ("title", "meta")}
    for store in (mapped, resident):
        got_tokens, got_mask = store.gather(IDS, dtype=dtype)
        for name, (values, value_mask) in expected.items():
            assert got_tokens[name].shape == (len(IDS), -(-tokens[name].shape[1] // 4), tokens[name].shape[2])
            torch.testing.assert_close(got_tokens[name], values.to(dtype), rtol=0, atol=0)
            assert torch.equal(got_mask[name], value_mask)


def test_loader_rejects_a_store_with_another_window(tiny_dataset: Path) -> None:
    with pytest.raises(ValueError, match="data.token_window = 2"):
        ImpressionLoader(
            tiny_dataset,
            "train",
            batch_size=64,
            modalities=["title"],
            item_store=ItemStore(tiny_dataset),
            token_window=2,
        )
    with pytest.raises(ValueError, match="token_window = 0"):
        ItemStore(tiny_dataset, token_window=0)


def test_the_configs_token_window_reaches_the_batches(tiny_dataset: Path) -> None:
    config = load_config(
        "din_em3",
        [
            f"data.path={tiny_dataset}",
            "data.pooled_content=false",
            "data.token_window=3",
            "data.batch_size=64",
            "data.max_history=20",
        ],
    )
    meta = DatasetMeta.load(tiny_dataset)
    store = factory.open_item_store(config, meta, torch.device("cpu"))
    assert store is not None and store.token_window == 3
    loader = ImpressionLoader.from_config(
        config.data,
        "train",
        item_store=store,
        max_batches=1,
        prefetch=0,
        **factory.batch_options(config.model, "train"),
    )
    batch = next(iter(loader))
    for m in meta.modalities:
        assert batch.content_tokens[m.name].shape[1] == -(-m.tokens // 3)
        assert batch.content_token_mask[m.name].shape[1] == -(-m.tokens // 3)
