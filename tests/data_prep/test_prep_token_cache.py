"""The content-addressed token cache: round trip, the fast float16 reader, unreadable entries."""

from __future__ import annotations

import numpy as np

from data_prep.token_cache import TokenCache, content_key


def test_round_trip_and_fallbacks(tmp_path):
    cache = TokenCache(tmp_path)
    tokens = np.random.default_rng(0).normal(size=(5, 384)).astype(np.float16)
    key, other, broken = (content_key("enc", "v1", text) for text in ("a", "b", "c"))
    assert cache.get(key) is None
    cache.put(key, tokens)
    got = cache.get(key)
    assert got.dtype == np.float16 and np.array_equal(got, tokens)  # the fast reader
    cache.put(other, tokens)
    np.save(cache._path(other), tokens.astype(np.float32))  # any other .npy goes through np.load
    assert cache.get(other).dtype == np.float32
    cache.put(broken, tokens)
    cache._path(broken).write_bytes(cache._path(key).read_bytes()[:-10])  # a torn write
    assert cache.get(broken) is None
    assert not list(tmp_path.rglob("*.tmp"))
