"""Ranking metrics of the CTR protocols: AUC, GAUC, logloss, and AUC on cold and on warm items.

Metrics are computed on the *gathered* predictions of all ranks (``gather_predictions``), never as
averages of per-rank metrics, which are biased for AUC. AUC comes from torchmetrics; GAUC is ours:
TorchRec's ``GAUCMetric`` averages sessions unweighted and ignores score ties, while the protocol
weights each user's AUC by their row count and ties must count one half.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc


@dataclass
class Predictions:
    """Per-row evaluation outputs (``N`` real rows; padding rows already removed)."""

    logits: torch.Tensor  # (N,) float
    labels: torch.Tensor  # (N,) float in {0, 1}
    user_ids: torch.Tensor  # (N,) int64
    item_ids: torch.Tensor  # (N,) int64

    @staticmethod
    def cat(parts: list["Predictions"]) -> "Predictions":
        return Predictions(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("logits", "labels", "user_ids", "item_ids"))
        )


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (ties count one half); NaN when only one class is present."""
    if labels.numel() == 0 or labels.min() == labels.max():
        return float("nan")
    return float(binary_auroc(scores.double(), labels.long()))


def group_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[float, int]:
    """GAUC: per-group AUC over groups with both classes, weighted by the group's row count.

    Vectorised Mann-Whitney: rank scores within each group (ties get their average rank), then
    ``AUC_g = (sum of positive ranks - P(P+1)/2) / (P * N)``.

    Args:
        scores: ``(N,)`` predictions.
        labels: ``(N,)`` {0, 1}.
        groups: ``(N,)`` int64 group (user) ids.

    Returns:
        (GAUC, number of groups that counted); NaN if none did (or there are no rows).
    """
    if labels.numel() == 0:
        return float("nan"), 0
    scores = scores.double()
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # (N,) sorted by (group, score)
    g, s, y = groups[order], scores[order], labels[order].double()
    n = g.numel()
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = g[1:] != g[:-1]
    group_id = torch.cumsum(new_group, 0) - 1  # (N,) dense group index
    starts = torch.nonzero(new_group).squeeze(1)  # (G,)
    position = torch.arange(n, dtype=torch.float64) - starts[group_id].double() + 1  # 1-based rank in group
    new_tie = new_group.clone()
    new_tie[1:] |= s[1:] != s[:-1]
    tie_id = torch.cumsum(new_tie, 0) - 1
    tie_rank_sum = torch.zeros(int(tie_id[-1]) + 1, dtype=torch.float64).index_add_(0, tie_id, position)
    tie_size = torch.bincount(tie_id).double()
    rank = (tie_rank_sum / tie_size)[tie_id]  # average rank within ties
    num_groups = starts.numel()
    pos = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_id, y)
    size = torch.bincount(group_id, minlength=num_groups).double()
    neg = size - pos
    pos_rank_sum = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_id, rank * y)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan"), 0
    group_aucs = (pos_rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2) / (pos[valid] * neg[valid])
    weights = size[valid]
    return float((group_aucs * weights).sum() / weights.sum()), int(valid.sum())


def compute_metrics(
    pred: Predictions, cold_items: torch.Tensor | None = None, cold_users: torch.Tensor | None = None
) -> dict[str, float]:
    """AUC, GAUC, logloss, and AUC / GAUC on the rows whose item is cold and on the others (warm);
    likewise ``cold_user_*`` / ``warm_user_*`` split by the user. ``cold_items`` / ``cold_users``:
    bool masks over item / user indices, True for ids never seen in training."""
    scores = torch.sigmoid(pred.logits.double())
    result = {
        "auc": auc(scores, pred.labels),
        "logloss": float(F.binary_cross_entropy_with_logits(pred.logits.double(), pred.labels.double())),
        "rows": int(pred.labels.numel()),
        "positive_rate": float(pred.labels.double().mean()) if pred.labels.numel() else float("nan"),
    }
    result["gauc"], result["gauc_users"] = group_auc(scores, pred.labels, pred.user_ids)
    subsets = []
    if cold_items is not None:
        subsets.append(("", cold_items[pred.item_ids]))
    if cold_users is not None:
        subsets.append(("_user", cold_users[pred.user_ids]))
    for suffix, cold in subsets:
        for name, rows in ((f"cold{suffix}", cold), (f"warm{suffix}", ~cold)):
            result[f"{name}_auc"] = auc(scores[rows], pred.labels[rows])
            result[f"{name}_gauc"], _ = group_auc(scores[rows], pred.labels[rows], pred.user_ids[rows])
            result[f"{name}_rows"] = int(rows.sum())
    return result


def gather_predictions(local: Predictions, dst: int = 0) -> Predictions | None:
    """All ranks' rows (CPU tensors, in rank order) on rank ``dst``, None on the others; uneven row
    counts are fine."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    mine = Predictions(*(t.cpu() for t in (local.logits, local.labels, local.user_ids, local.item_ids)))
    parts: list[Predictions | None] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(mine, parts, dst=dst)
    return Predictions.cat([p for p in parts if p is not None]) if parts is not None else None


def metrics_on_every_rank(
    local: Predictions, cold_items: torch.Tensor | None = None, cold_users: torch.Tensor | None = None
) -> dict[str, float]:
    """:func:`compute_metrics` over all ranks' rows, computed once (rank 0) and sent to every rank
    (each needs them: early stopping and the best checkpoint are decided on every rank)."""
    gathered = gather_predictions(local)
    result = [compute_metrics(gathered, cold_items, cold_users) if gathered is not None else None]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(result, src=0)
    assert result[0] is not None
    return result[0]
