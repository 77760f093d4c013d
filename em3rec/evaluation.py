"""Evaluation: run a model over a split on every rank, gather the rows, compute the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow.dataset as ds
import torch
from torch import nn

from em3rec.data.batch import Batch
from em3rec.data.schema import DatasetMeta
from em3rec.metrics import Predictions, metrics_on_every_rank


def _never_in_train(folder: str | Path, meta: DatasetMeta, kind: str) -> torch.Tensor:
    """``(vocab_size,)`` bool over the ``kind`` feature's indices: True where no training row has it."""
    feature = meta.features_of(kind)[0]
    column = ds.dataset(Path(folder) / "train", format="parquet").to_table(columns=[feature.column]).column(0)
    seen = torch.tensor(column.to_numpy(), dtype=torch.long)  # a copy: Arrow buffers are read-only
    cold = torch.ones(feature.vocab_size, dtype=torch.bool)
    cold[seen] = False
    return cold


def cold_item_mask(folder: str | Path, meta: DatasetMeta) -> torch.Tensor:
    """``(num_item_rows,)`` bool: True for items that never occur as a training target."""
    return _never_in_train(folder, meta, "item")


def cold_user_mask(folder: str | Path, meta: DatasetMeta) -> torch.Tensor:
    """``(num_user_rows,)`` bool: True for users without training rows (on a global time split,
    the users who arrived after the training period)."""
    return _never_in_train(folder, meta, "user")


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Predictions:
    """Logits of this rank's real rows (padding rows, weight 0, dropped).

    ``model`` is the training wrapper: ``model(batch) -> (loss, (loss, logits, labels, aux))``.
    """
    was_training = model.training
    model.eval()
    logits, real, rows = [], [], []
    for batch in batches:
        _, (_, batch_logits, _, _) = model(batch.to(device))
        logits.append(batch_logits.float())  # (B,) left on the device: one copy to the host at the end
        keep = batch.weights > 0  # (B,) on the host
        real.append(keep)
        rows.append((batch.labels[keep], batch.user_ids[keep], batch.item_ids[keep]))
    model.train(was_training)
    if not rows:
        empty = torch.empty(0)
        return Predictions(empty, empty, empty.long(), empty.long())
    labels, user_ids, item_ids = (torch.cat(column) for column in zip(*rows))
    return Predictions(torch.cat(logits).cpu()[torch.cat(real)], labels, user_ids, item_ids)


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    cold_items: torch.Tensor | None,
    cold_users: torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics over all ranks' rows (every rank gets the same numbers); ``cold_items`` /
    ``cold_users`` as in :func:`~em3rec.metrics.compute_metrics`."""
    return metrics_on_every_rank(predict(model, batches, device), cold_items=cold_items, cold_users=cold_users)
