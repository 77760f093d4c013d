"""model.cold_item_rows = "from_content": the unseen items' rows are the ridge prediction from content,
computed from per-shard statistics on any sharding and world size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from em3rec.cold_start import HELD_OUT_FOLD, PENALTIES, _solve, _squared_error, _Statistics, item_table_shards
from em3rec.config import ConfigError, load_config
from em3rec.distributed import DistEnv
from em3rec.export import item_embeddings
from em3rec.factory import local_model
from em3rec.modules.model import uses_pooled_vectors
from em3rec.testing.multiprocess import run_ranks
from em3rec.train import Recipe
from tests.train.conftest import TINY


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    x_mean, y_mean = x.mean(0), y.mean(0)
    w = np.linalg.solve(
        (x - x_mean).T @ (x - x_mean) + penalty * len(x) * np.eye(x.shape[1]), (x - x_mean).T @ (y - y_mean)
    )
    return w, y_mean - x_mean @ w


def test_statistics_give_the_direct_ridge_and_its_held_out_error():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 3))
    fold = np.arange(60) % 4 == 0
    stats = _Statistics(5, 3, torch.device("cpu"))
    for f, rows in enumerate((~fold, fold)):
        stats.add_rows(f, torch.from_numpy(x[rows]))
        stats.add_columns(f, torch.from_numpy(x[rows]), torch.from_numpy(y[rows, :2]), column=0)  # columns in 2 blocks
        stats.add_columns(f, torch.from_numpy(x[rows]), torch.from_numpy(y[rows, 2:]), column=2)
    weights, bias = _solve(stats, [0], 0.1)
    expected_w, expected_b = _ridge(x[~fold], y[~fold], 0.1)
    np.testing.assert_allclose(weights.numpy(), expected_w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bias.numpy(), expected_b, rtol=1e-8, atol=1e-10)
    error = ((y[fold] - (x[fold] @ expected_w + expected_b)) ** 2).sum()
    assert float(_squared_error(stats, 1, weights, bias)) == pytest.approx(error, rel=1e-8)


def test_needs_a_content_model():
    with pytest.raises(ConfigError, match="model.cold_item_rows"):
        load_config("din_id", ["model.cold_item_rows=from_content"])


def _regress_on_ranks(rank: int, world_size: int, data: str, run_dir: str, sharding: str) -> dict:
    config = load_config(
        "din_frozen",
        [
            *TINY,
            f"data.path={data}",
            f"train.run_dir={run_dir}",
            "train.run_name=cold",
            "sharding.pipeline=false",
            f"sharding.types=[{sharding!r}]",
            "model.cold_item_rows=from_content",
            # column_wise splits a table into 128-wide shards (TorchRec's minimum): 256 gives two
            *([f"model.embedding_dim={256 if sharding == 'column_wise' else 16}"]),
        ],
    )
    recipe = Recipe(config, DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo"))
    recipe.setup()
    batches = iter(recipe.loader("train"))
    for _ in range(5):
        recipe._step(batches)
    model = local_model(recipe.model)
    content = item_embeddings(
        model,
        recipe.item_store,
        config.data.pooled_content,
        torch.device("cpu"),
        pooled_vectors=uses_pooled_vectors(config.model),
        show_progress=False,
    )  # (N, D) every item, on every rank

    def full_table() -> np.ndarray:
        table = np.zeros((content.shape[0], config.model.embedding_dim))
        for s in item_table_shards(recipe.model):
            table[s.row : s.row + s.weight.shape[0], s.column : s.column + s.weight.shape[1]] = s.weight.numpy()
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, table)
        return np.sum(gathered, axis=0)  # shards are disjoint

    before = full_table()
    recipe._regress_cold_item_rows()
    after = full_table()
    return {
        "content": content,
        "before": before,
        "after": after,
        "cold": recipe.cold_items.numpy(),
        "shards": [(s.row, s.column, tuple(s.weight.shape)) for s in item_table_shards(recipe.model)],
    }


@pytest.mark.multiprocess
@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_two_ranks_write_the_ridge_prediction_into_the_unseen_rows(tiny_prepared: Path, tmp_path: Path, sharding: str):
    results = run_ranks(_regress_on_ranks, str(tiny_prepared), str(tmp_path), sharding)
    r = results[0]
    content, before, after = r["content"].astype(np.float64), r["before"], r["after"]
    cold = r["cold"].copy()
    cold[0] = True  # the padding row
    rows = np.arange(len(cold))
    fit, held = ~cold & (rows % HELD_OUT_FOLD != 0), ~cold & (rows % HELD_OUT_FOLD == 0)

    def held_out_error(penalty: float) -> float:
        w, b = _ridge(content[fit], before[fit], penalty)
        return float(((before[held] - (content[held] @ w + b)) ** 2).sum())

    w, b = _ridge(content[~cold], before[~cold], min(PENALTIES, key=held_out_error))
    written = cold & (rows != 0)
    assert 0 < written.sum() < len(cold) - 1
    expected = content[written] @ w + b
    # At width 256 the fit has more inputs than warm items: float32 content differences of ~1e-7
    # move the ridge solution by ~1e-5 against rows of ~1e-2 (a wrong column block would be off by ~1e-2).
    np.testing.assert_allclose(after[written], expected, rtol=1e-3, atol=3e-3 * np.abs(expected).max())
    np.testing.assert_array_equal(after[~written], before[~written])  # every other row untouched
    np.testing.assert_array_equal(results[1]["after"], after)  # both ranks see the same table
    if sharding == "column_wise":  # the table's columns really were split across the ranks
        assert sorted(shard for x in results for shard in x["shards"]) == [(0, 0, (301, 128)), (0, 128, (301, 128))]
