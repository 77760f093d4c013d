"""The text encoder's item-level target inside the ranker: each item's appeal, regressed from its text.

The two-stage tuned encoder (``benchmarks.tuned_content``) fine-tunes the text encoder on each item's
appeal (:mod:`em3rec.data.item_appeal`) before the ranker, and its vectors lift the frozen-content
baseline where the ranking loss alone, training the same layers in the loop, does not. This head
puts that target in the loop: a Linear per modality regresses the appeal from the item's
re-encoded text vector, and its mean squared error over the step's distinct targets with enough
train rows joins the loss (``model.text_encoder.appeal_weight``). Labels of valid and test rows are
never read: the targets come from the train split, computed once at build time.
"""

from __future__ import annotations

import torch
from torch import nn


class ItemAppealHead(nn.Module):
    """``weight * MSE(Linear(text vector), appeal)`` per modality over the fitted target items.

    Args:
        widths (dict[str, int]): modality -> its text vectors' width ``W_m``.
        appeal (torch.Tensor): ``(I,)`` float32 each item's appeal (0 where it has no train rows).
        fitted (torch.Tensor): ``(I,)`` bool, the items the loss reads (enough train rows).
        weight (float): the loss's weight beside the ranking loss.

    Example::

        head = ItemAppealHead({"meta": 384}, appeal, count >= 20, weight=1.0)
        loss = head(batch.content_tokens, batch.content_item_ids, targets.index)  # ()
    """

    def __init__(self, widths: dict[str, int], appeal: torch.Tensor, fitted: torch.Tensor, weight: float) -> None:
        super().__init__()
        if appeal.shape != fitted.shape or appeal.dim() != 1:
            raise ValueError(f"appeal {tuple(appeal.shape)} and fitted {tuple(fitted.shape)}: expected (I,) each")
        self.heads = nn.ModuleDict({m: nn.Linear(w, 1) for m, w in widths.items()})
        self.weight = weight
        # Plain tensors, not buffers: derived from the data at build time, not model state (no
        # checkpoint entry, no DDP broadcast).
        self._appeal = appeal.float()
        self._fitted = fitted.bool()

    def forward(self, tokens: dict[str, torch.Tensor], item_ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tokens: modality -> ``(U_t, 1, W_m)`` the items' re-encoded text vectors
                (``Batch.content_tokens`` after the text encoder).
            item_ids: ``(U,)`` the ids of those rows (``Batch.content_item_ids``).
            rows: ``(V,)`` the rows to regress (the distinct targets, which carry gradient).

        Returns:
            ``()`` the weighted loss (0 when no row is fitted).
        """
        if self._appeal.device != item_ids.device:
            self._appeal, self._fitted = self._appeal.to(item_ids.device), self._fitted.to(item_ids.device)
        ids = item_ids.index_select(0, rows)  # (V,)
        fitted = self._fitted.index_select(0, ids).float()  # (V,)
        target = self._appeal.index_select(0, ids)  # (V,)
        loss = fitted.new_zeros(())
        for m, head in self.heads.items():
            vectors = tokens[m].index_select(0, rows)[:, 0].float()  # (V, W_m)
            error = (head(vectors).squeeze(-1) - target).square()  # (V,)
            loss = loss + (error * fitted).sum() / fitted.sum().clamp_min(1.0)
        return self.weight * loss
