"""An item's appeal as its train rows show it: the item-level target of the text encoder's fine-tuning.

The mean over the item's *train* rows of ``label - user rate``, a user's rate being the user's train
click rate shrunk toward the global one by ``prior_rows`` pseudo-rows (the raters' generosity taken
out). Valid and test rows are never read; an item without train rows has no target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from em3rec.data.schema import DatasetMeta


def item_targets(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, num_items: int, prior_rows: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the mean of ``label - user rate`` over its rows ``(num_items,)`` (0 without rows)
    and its row count ``(num_items,)``. ``users``, ``items``, ``labels``: ``(R,)`` train rows."""
    overall = labels.mean()
    clicks, rows = np.bincount(users, weights=labels), np.bincount(users)
    user_rate = (clicks + prior_rows * overall) / (rows + prior_rows)  # (num_users,)
    residual = labels - user_rate[users]  # (R,)
    count = np.bincount(items, minlength=num_items)
    total = np.bincount(items, weights=residual, minlength=num_items)
    return total / np.maximum(count, 1), count


def train_rows(folder: Path, meta: DatasetMeta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train split's user indices, item indices and float64 labels, ``(R,)`` each."""
    user_column = meta.features_of("user")[0].column
    item_column = meta.features_of("item")[0].column
    rows = pq.read_table(folder / "train", columns=[user_column, item_column, "label"])
    labels = rows.column("label").to_numpy().astype(np.float64)
    return rows.column(user_column).to_numpy(), rows.column(item_column).to_numpy(), labels
