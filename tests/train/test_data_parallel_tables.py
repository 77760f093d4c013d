"""A table trains with the embedding optimiser whatever the plan shards it as: a ``data_parallel``
(replicated) table has no fused in-backward optimiser in TorchRec, so ``build_optimizer`` gives it
``optim.embedding_optimizer`` rather than leaving it to the dense AdamW."""

from __future__ import annotations

from pathlib import Path

import torch

from em3rec.config import load_config
from em3rec.distributed import data_parallel_table_parameters, init_distributed
from em3rec.train import Recipe
from tests.train.conftest import TINY
from tests.train.test_checkpoint import _flat


def test_a_data_parallel_table_takes_the_embedding_optimisers_step(tiny_prepared: Path, tmp_path: Path) -> None:
    config = load_config(
        "din_em3",
        [
            *TINY,
            f"data.path={tiny_prepared}",
            f"train.run_dir={tmp_path}",
            "sharding.pipeline=false",
            'sharding.types=["data_parallel","table_wise"]',
            "optim.embedding_optimizer=rowwise_adagrad",
            "optim.embedding_lr=0.05",
            "optim.dense_lr=1e-4",
        ],
    )
    recipe = Recipe(config, init_distributed("cpu"))
    recipe.setup()
    replicated = data_parallel_table_parameters(recipe.model)
    assert replicated, "the planner replicated no table: this test needs one"
    before = _flat(recipe.model.state_dict())

    recipe._step(iter(recipe.loader("train")))
    after = _flat(recipe.model.state_dict())
    for name in replicated:
        key = f"{name}."
        change = after[key] - before[key]
        rows = change.abs().sum(dim=1) > 0
        assert rows.any(), f"{name}: no row moved"
        # Row-wise Adagrad's first step moves each touched row by lr * g / rms(g): an RMS of lr.
        # AdamW at dense_lr would move it by ~1e-4 per element.
        rms = change[rows].pow(2).mean(dim=1).sqrt()
        torch.testing.assert_close(rms, torch.full_like(rms, 0.05), rtol=1e-3, atol=0.0)
