"""Shared fixtures for the data_prep tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    """The folder of real sample pictures shipped in scikit-image."""
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image is part of the pinned stack"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@pytest.fixture(scope="session")
def ml100k():
    """ml100k-ctr-v1 impressions (protocol, side features, index columns), no encoder."""
    from data_prep.ml100k import ml100k_impressions

    return ml100k_impressions()


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text-feature cache per test session (never the user's .cache)."""
    return tmp_path_factory.mktemp("text-cache")
