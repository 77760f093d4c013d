"""End to end: prepare the full ml100k-ctr-v1 folder with the real MiniLM, then again from the cache."""

from __future__ import annotations

import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from em3rec.data.schema import DatasetMeta

from data_prep.ml100k import PROTOCOL, prepare_ml100k
from data_prep.text_encoder import TextEncoder


@pytest.mark.slow
def test_prepare_full_ml100k_then_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    start = time.perf_counter()
    meta = prepare_ml100k(tmp_path / "a", cache_dir=cache, progress=False)
    first = time.perf_counter() - start
    out = tmp_path / "a"

    assert DatasetMeta.load(out) == meta
    assert meta.protocol == PROTOCOL and meta.name == "ml100k"
    assert meta.num_items == 1683 and meta.num_users == 944
    assert {s: v.rows for s, v in meta.splits.items()} == {"train": 80_000, "valid": 10_000, "test": 10_000}
    for split, spec in meta.splits.items():
        table = pq.read_table(out / split)
        assert table.num_rows == spec.rows
        assert spec.positive_rate == pytest.approx(pc.mean(table.column("label")).as_py())
        for f in meta.features:
            values = (
                pc.list_flatten(table.column(f.column)) if f.kind in ("history", "multi") else table.column(f.column)
            )
            assert pc.max(values).as_py() < f.vocab_size
    assert [(m.name, m.tokens, m.width) for m in meta.modalities] == [("title", 16, 384), ("meta", 32, 384)]
    assert all("all-MiniLM-L6-v2" in m.encoder and "transformers==" in m.encoder_version for m in meta.modalities)
    assert 1250 <= meta.extra["wikidata_matches"] <= 1400
    assert meta.extra["cold_test_items"] > 0 and meta.extra["num_real_items"] == 1682

    items = pq.read_table(out / "items/items.parquet")
    assert items.num_rows == 1683
    for m in meta.modalities:
        tokens = np.load(out / f"items/{m.name}.tokens.npy")
        mask = np.load(out / f"items/{m.name}.mask.npy")
        pooled = np.load(out / f"items/{m.name}.pooled.npy")
        assert tokens.shape == (1683, m.tokens, 384) and tokens.dtype == np.float16
        assert mask.shape == (1683, m.tokens) and not mask[0].any()
        assert mask[1:].any(axis=1).sum() >= 1680  # only the "unknown" placeholder item may lack text
        expected = (tokens.astype(np.float32) * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        np.testing.assert_allclose(pooled.astype(np.float32), expected, atol=2e-3)
    assert not np.load(out / "items/title.mask.npy")[267].any()  # placeholder title "unkonwn"

    # Second run: every text is in the cache, the model never runs, the arrays are identical.
    monkeypatch.setattr(TextEncoder, "_run", lambda self, texts: pytest.fail(f"cache missed {len(texts)} texts"))
    start = time.perf_counter()
    again = prepare_ml100k(tmp_path / "b", cache_dir=cache, progress=False)
    second = time.perf_counter() - start
    assert again == meta
    for m in meta.modalities:
        assert np.array_equal(
            np.load(tmp_path / f"a/items/{m.name}.tokens.npy"), np.load(tmp_path / f"b/items/{m.name}.tokens.npy")
        )
    assert second < first and second < 15, (first, second)
