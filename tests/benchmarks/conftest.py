"""The FLOP counter's tests run on the model tests' tiny config and batch."""

from tests.modules.conftest import _seed, batch, data_config, items, meta, model_config  # noqa: F401 - fixtures
