"""Item-ID dropout for cold start (DropoutNet, Volkovs et al., NeurIPS 2017).

An item without training rows has an ID embedding that no ranking gradient ever moved (its
random initialisation), and a ranker trained only on warm items never learned to score an item
from its content and side features alone. Item-ID dropout teaches it: in training, each row's
target-item ID embedding is replaced by zeros with probability ``p``; in evaluation, the rows whose
item has no training rows get the same zeros, the input the ranker learned for "ID unknown".
Only the backbone's input changes: CIC still sees every item's own ID row.
"""

from __future__ import annotations

import torch
from torch import nn


class ItemIdDropout(nn.Module):
    """Zeroes target-item ID embeddings: at random in training, for unseen items in evaluation.

    Args:
        p (float): the probability that a training row loses its target item's ID embedding, in ``(0, 1)``.
        unseen_items (torch.Tensor): ``(num_items,)`` bool, True for items with no training rows
            (:func:`em3rec.evaluation.cold_item_mask`); a buffer, not saved in checkpoints.

    Example::

        dropout = ItemIdDropout(0.1, cold_item_mask("data/ml100k", meta))
        target_id = dropout(ids.target, batch.item_ids)  # (B, D)
    """

    def __init__(self, p: float, unseen_items: torch.Tensor) -> None:
        super().__init__()
        if not 0.0 < p < 1.0:
            raise ValueError(f"model.id_dropout = {p}; expected a probability in (0, 1)")
        self.p = p
        self.register_buffer("unseen_items", unseen_items.to(torch.bool), persistent=False)

    def forward(self, target_id: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """
        Args:
            target_id (torch.Tensor): ``(B, D)`` target-item ID embeddings.
            item_ids (torch.Tensor): ``(B,)`` int64 target item indices.

        Returns:
            torch.Tensor: ``(B, D)``, zeros in the dropped (training) or unseen (evaluation) rows.
        """
        if self.training:
            drop = torch.rand_like(target_id[:, 0], dtype=torch.float32) < self.p  # (B,)
        else:
            drop = self.unseen_items[item_ids]  # (B,)
        return target_id.masked_fill(drop.unsqueeze(1), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, unseen_items={int(self.unseen_items.sum())}"
