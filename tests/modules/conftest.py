"""Tiny configs and synthetic batches for the module tests (d = 16, 1-2 layers: seconds each)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from em3rec.config import CICConfig, DataConfig, LoraConfig, ModelConfig, QFormerConfig
from em3rec.data.batch import Batch
from em3rec.testing.example_batch import ExampleItems, example_batch, example_meta


def tiny_model_config(**overrides) -> ModelConfig:
    """A ModelConfig with d = D = 16; keyword overrides replace fields (nested configs included)."""
    config = ModelConfig(
        embedding_dim=16,
        dense_layers=[16],
        over_layers=[32, 16],
        cross_layers=2,
        cross_low_rank=4,
        attention_hidden=[16],
        qformer=QFormerConfig(
            dim=16, num_queries=2, num_layers=1, num_heads=2, token_dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0
        ),
        lora=LoraConfig(rank=2, alpha=4.0),
        cic=CICConfig(weight=0.1, temperature=0.2, dim=8),
    )
    return dataclasses.replace(config, **overrides)


@pytest.fixture
def model_config():
    """Factory: ``model_config(backbone="dcn", ...)`` -> a tiny :class:`ModelConfig`."""
    return tiny_model_config


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def meta():
    return example_meta()


@pytest.fixture
def data_config() -> DataConfig:
    return DataConfig(modalities=["title", "meta"], max_history=8)


@pytest.fixture
def items(meta) -> ExampleItems:
    return ExampleItems.random(meta, missing_rate=0.2)


@pytest.fixture
def batch(meta, items) -> Batch:
    """12 rows, 1 empty history, 2 padding rows, items drawn from 15 (duplicates guaranteed)."""
    return example_batch(meta, 12, items=items, padding_rows=2, num_item_choices=15)
