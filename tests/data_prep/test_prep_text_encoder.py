"""The frozen all-MiniLM-L6-v2 text encoder: token-level output, masks, cache."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import text_encoder
from data_prep.text_encoder import TextEncoder

TEXTS = ["Toy Story", "The Usual Suspects", None, "Toy Story", "  ", "a " * 40]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    enc = TextEncoder(max_tokens=8, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    tokens, mask = enc.encode(TEXTS)
    return enc, tokens, mask


def test_shapes_masks_and_missing(encoded):
    enc, tokens, mask = encoded
    assert tokens.shape == (6, 8, 384) and tokens.dtype == np.float16
    assert mask.shape == (6, 8) and mask.dtype == np.bool_
    # "Toy Story" -> [CLS] toy story [SEP]; the long text is truncated to 8 tokens.
    assert mask.sum(1).tolist() == [4, 5, 0, 4, 0, 8]
    assert (tokens[2] == 0).all() and (tokens[4] == 0).all()
    assert (tokens[~mask] == 0).all()
    assert np.array_equal(tokens[0], tokens[3])
    assert not np.array_equal(tokens[0], tokens[1])
    assert enc.encoded == 3  # distinct non-blank texts


def test_matches_the_model_run_directly(encoded):
    import torch

    _, tokens, _ = encoded
    tokenizer, model = text_encoder.load_model()
    batch = tokenizer(["The Usual Suspects"], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state[0]  # (5, 384)
    np.testing.assert_allclose(tokens[1, :5].astype(np.float32), hidden.numpy(), atol=1e-2)


def test_sentence_similarity_is_sensible(encoded):
    enc, _, _ = encoded
    t, m = enc.encode(["a film about space travel", "a movie about astronauts in orbit", "a recipe for apple pie"])
    pooled = (t.astype(np.float32) * m[..., None]).sum(1) / m.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


def test_cache_hit_skips_the_model(encoded, monkeypatch):
    enc, tokens, mask = encoded
    again = TextEncoder(max_tokens=8, cache_dir=enc.cache.root.parent, progress=False)
    monkeypatch.setattr(TextEncoder, "_run", lambda self, texts: pytest.fail(f"cache missed for {texts}"))
    t2, m2 = again.encode(TEXTS)
    assert np.array_equal(t2, tokens) and np.array_equal(m2, mask)
    assert again.cache_hits == 3 and again.encoded == 0 and not again.model_loaded


def test_cache_key_includes_max_tokens(encoded):
    enc, _, _ = encoded
    other = TextEncoder(max_tokens=4, cache_dir=enc.cache.root.parent, progress=False)
    tokens, mask = other.encode(["a " * 40])
    assert other.encoded == 1 and mask.sum() == 4 and tokens.shape == (1, 4, 384)


def test_bad_max_tokens():
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        TextEncoder(max_tokens=1)


def test_interrupted_encoding_keeps_finished_batches(tmp_path, monkeypatch):
    texts = ["Dune", "Emma", "Ulysses"]
    enc = TextEncoder(max_tokens=8, cache_dir=tmp_path, batch_size=1, progress=False)
    run = TextEncoder._run

    def killed_after_one_batch(self, todo):
        for k, item in enumerate(run(self, todo)):
            if k == 1:
                raise KeyboardInterrupt  # a kill while the second batch is being handed over
            yield item

    monkeypatch.setattr(TextEncoder, "_run", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        enc.encode(texts)
    monkeypatch.undo()
    resumed = TextEncoder(max_tokens=8, cache_dir=tmp_path, batch_size=1, progress=False)
    tokens, mask = resumed.encode(texts)
    assert resumed.cache_hits == 1 and resumed.encoded == 2  # the first batch was not redone
    fresh, fresh_mask = TextEncoder(max_tokens=8, cache_dir=tmp_path / "other", progress=False).encode(texts)
    assert np.array_equal(mask, fresh_mask)
    np.testing.assert_allclose(
        tokens.astype(np.float32), fresh.astype(np.float32), atol=1e-2
    )  # batch padding may differ slightly
