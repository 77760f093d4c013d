"""The frozen EfficientNet-Lite0 image encoder on real pictures shipped in scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.image_encoder import ImageEncoder, preprocess

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return ImageEncoder(cache_dir=tmp_path_factory.mktemp("img-cache"), progress=False)


@pytest.fixture(scope="module")
def encoded(encoder, skimage_data):
    paths = [skimage_data / n for n in ("chelsea.png", "coffee.png", "astronaut.png", "camera.png", "logo.png")]
    tokens, mask = encoder.encode([*paths, None, paths[0]])
    return tokens, mask


def test_shapes_and_mask(encoded):
    tokens, mask = encoded
    assert tokens.shape == (7, 49, 1280) and tokens.dtype == np.float16
    assert mask.shape == (7, 49) and mask[:5].all() and not mask[5].any()
    assert (tokens[5] == 0).all() and np.isfinite(tokens).all()


def test_same_image_identical_different_images_differ(encoded):
    tokens, _ = encoded
    assert np.array_equal(tokens[0], tokens[6])
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.allclose(tokens[i], tokens[j], atol=1e-2), (i, j)


def test_deterministic_across_runs(encoded, skimage_data, tmp_path):
    paths = [skimage_data / n for n in ("chelsea.png", "coffee.png", "astronaut.png", "camera.png", "logo.png")]
    fresh = ImageEncoder(cache_dir=tmp_path / "a", progress=False)
    tokens, _ = fresh.encode([*paths, None, paths[0]])
    assert fresh.encoded == 5
    assert np.array_equal(tokens, encoded[0])  # same inputs, same batches: bit-identical
    # A different batch composition may pick another CPU kernel: equal up to float16 rounding.
    alone, _ = ImageEncoder(cache_dir=tmp_path / "b", progress=False).encode([paths[0]])
    np.testing.assert_allclose(alone[0].astype(np.float32), encoded[0][0].astype(np.float32), atol=1e-2)


def test_features_carry_imagenet_semantics(encoder, encoded):
    """The tokens' mean through the pretrained classifier recognises the cat and the coffee."""
    tokens, _ = encoded
    with torch.inference_mode():
        logits = encoder.model._fc(torch.from_numpy(tokens[:2].astype(np.float32)).mean(1))  # (2, 1000)
    top5 = logits.topk(5).indices.tolist()
    assert top5[0][0] in IMAGENET_CATS
    assert top5[1][0] in IMAGENET_COFFEE


def test_preprocess_handles_grey_and_alpha(skimage_data):
    for name in ("camera.png", "logo.png", "chelsea.png"):
        x = preprocess(skimage_data / name)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32


def test_cache_hit_and_errors(encoder, encoded, skimage_data, tmp_path):
    again = ImageEncoder(cache_dir=encoder.cache.root.parent, progress=False)
    tokens, _ = again.encode([skimage_data / "coffee.png"])
    assert again.cache_hits == 1 and again.encoded == 0
    assert np.array_equal(tokens[0], encoded[0][1])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        again.encode([tmp_path / "nope.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png: cannot read as an image"):
        again.encode([tmp_path / "broken.png"])
