"""Scores come out one per impression, in file order, and agree with the evaluation metrics."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from em3rec.evaluation import predict
from em3rec.metrics import auc
from em3rec.score import write_scores
from em3rec.train import Recipe


def test_scores_follow_file_order(recipe: Recipe, tmp_path: Path) -> None:
    loader = recipe.loader("valid")
    pred = predict(recipe.model, loader, recipe.env.device)
    write_scores(tmp_path / "scores.parquet", pred)
    scores = pq.read_table(tmp_path / "scores.parquet")
    user, item = recipe.meta.features_of("user")[0].column, recipe.meta.features_of("item")[0].column
    rows = ds.dataset(Path(recipe.config.data.path) / "valid", format="parquet").to_table(columns=[user, item])
    assert scores.num_rows == rows.num_rows
    assert scores["user_idx"].to_pylist() == rows[user].to_pylist()
    assert scores["item_idx"].to_pylist() == rows[item].to_pylist()
    s = torch.tensor(scores["score"].to_numpy())
    assert torch.all((s > 0) & (s < 1))
    # the scores are the logits' float32 sigmoid (which can tie where the logits do not), row for row
    torch.testing.assert_close(s, torch.sigmoid(pred.logits.float()), rtol=0, atol=0)
    assert auc(s.double(), torch.tensor(scores["label"].to_numpy())) == auc(
        torch.sigmoid(pred.logits.float()).double(), pred.labels
    )


def test_the_train_split_scored_is_every_row_in_file_order(recipe: Recipe) -> None:
    """Inference over the train split (``em3rec.score --split train``) reads it as evaluation does:
    not shuffled, no remainder dropped, no ``train.max_steps_per_epoch`` cap, no catalogue sample."""
    import dataclasses

    from em3rec.factory import open_loader

    config = dataclasses.replace(recipe.config, train=dataclasses.replace(recipe.config.train, max_steps_per_epoch=2))
    loader = open_loader(config, "train", recipe.env, None, training=False)
    batches = list(loader)
    assert len(batches) > 2 and all(b.catalogue_content_index.numel() == 0 for b in batches)
    item = recipe.meta.features_of("item")[0].column
    rows = ds.dataset(Path(config.data.path) / "train", format="parquet").to_table(columns=[item])
    read = torch.cat([b.item_ids[b.weights > 0] for b in batches])
    assert read.tolist() == rows[item].to_pylist()
    assert len(list(open_loader(config, "train", recipe.env, None))) == 2  # training: the cap holds


def test_the_loader_prefetches_in_a_thread_only_when_data_prefetch_asks(recipe: Recipe) -> None:
    """``data.prefetch`` reaches the loader: auto on CPU builds batches in the caller's thread."""
    import dataclasses
    import threading

    from em3rec.factory import open_loader

    def prefetch_threads(prefetch: int) -> int:
        config = dataclasses.replace(recipe.config, data=dataclasses.replace(recipe.config.data, prefetch=prefetch))

        def running() -> int:
            return sum(t.name == "em3rec-loader-prefetch" for t in threading.enumerate())

        before = running()
        batches = iter(open_loader(config, "valid", recipe.env, recipe.item_store))
        next(batches)
        started = running() - before
        batches.close()
        return started

    assert recipe.env.device.type == "cpu"
    assert prefetch_threads(-1) == 0
    assert prefetch_threads(2) == 1
