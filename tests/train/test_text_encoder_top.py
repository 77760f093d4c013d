"""Training with the text encoder's top layers in the loop: their own optimiser, they move, the
export reads them, and the 2-rank pipelined run works."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from em3rec.config import load_config
from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader
from em3rec.distributed import init_distributed
from em3rec.export import item_embeddings
from em3rec.factory import batch_options, local_model
from em3rec.train import Recipe
from em3rec.testing.text_set import write_text_set
from tests.train.conftest import TINY, metrics, run, train_command

TEXT = [*TINY, 'data.modalities=["title"]', "data.pooled_content=true", "model.text_encoder.trainable_layers=1"]


@pytest.fixture(scope="module")
def text_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text_train")
    return write_text_set(root / "set", root / "cache")


@pytest.mark.parametrize("config", ["din_frozen", "din_em3"])
def test_the_top_layers_train_at_their_own_rate_and_the_export_reads_them(
    text_set: Path, tmp_path: Path, config: str
) -> None:
    overrides = [*TEXT, f"data.path={text_set}", f"train.run_dir={tmp_path}", "sharding.pipeline=false"]
    recipe = Recipe(load_config(config, [*overrides, "optim.encoder_lr=3e-4"]), init_distributed("cpu"))
    recipe.setup()
    model = local_model(recipe.model)
    assert model.text_encoder is not None
    before = copy.deepcopy(model.text_encoder.layers.state_dict())
    lrs = {
        g["lr"]
        for g in recipe.optimizer.param_groups
        if any(p is q for p in g["params"] for q in model.text_encoder.parameters())
    }
    assert lrs == {3e-4}
    batches = iter(recipe.loader("train"))
    for _ in range(3):
        recipe._step(batches)
    moved = [k for k, v in model.text_encoder.layers.state_dict().items() if not torch.equal(v, before[k])]
    assert len(moved) == len(before), "every weight of the top layer trains"

    store = ItemStore(text_set, ["title"], recipe.meta)
    embeddings = item_embeddings(model, store, pooled=True, device=torch.device("cpu"), chunk=16)
    loader = ImpressionLoader.from_config(recipe.config.data, "valid", **batch_options(recipe.config.model, "valid"))
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        out = model(batch)
    np.testing.assert_allclose(embeddings[out.item_ids.numpy()], out.item_content.numpy(), rtol=1e-3, atol=1e-4)


def test_the_appeal_target_joins_the_loss_and_trains_its_head_at_the_dense_rate(text_set: Path, tmp_path: Path) -> None:
    appeal = ["model.text_encoder.appeal_weight=2.0", "model.text_encoder.appeal_min_rows=1", "optim.dense_lr=1e-3"]
    overrides = [*TEXT, *appeal, f"data.path={text_set}", f"train.run_dir={tmp_path}", "sharding.pipeline=false"]
    recipe = Recipe(load_config("din_frozen", overrides), init_distributed("cpu"))
    recipe.setup()
    model = local_model(recipe.model)
    assert model.appeal_head is not None
    lrs = {
        g["lr"]
        for g in recipe.optimizer.param_groups
        if any(p is q for p in g["params"] for q in model.appeal_head.parameters())
    }
    assert lrs == {1e-3}
    batch = next(iter(recipe.loader("train")))
    model.train()
    out = model(batch)
    assert out.appeal_loss.item() > 0
    out.appeal_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.appeal_head.parameters())
    assert model.text_encoder.layers[0].output.dense.weight.grad.abs().sum() > 0, "the target reaches the encoder"
    model.eval()
    with torch.no_grad():
        assert model(batch).appeal_loss.item() == 0.0, "evaluation reads no appeal"


@pytest.mark.parametrize("appeal_weight", [0.0, 1.0])
def test_two_ranks_with_the_train_pipeline(text_set: Path, tmp_path: Path, appeal_weight: float) -> None:
    overrides = [*TEXT, f"data.path={text_set}", f"train.run_dir={tmp_path}", "train.epochs=1", "train.run_name=r"]
    overrides += [f"model.text_encoder.appeal_weight={appeal_weight}", "model.text_encoder.appeal_min_rows=1"]
    run(train_command(2, "din_em3", overrides))
    assert 0.0 < metrics(tmp_path / "r")["test"]["auc"] < 1.0
