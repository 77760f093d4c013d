"""ID embeddings inferred from content for items without training rows (``model.cold_item_id``).

An item with no training rows has an ID embedding no ranking gradient ever moved, and the ranker
reads that row beside the item's content. CIC has learned to align each warm item's ID embedding
with its content: ``normalize(W_id e) ~ normalize(W_c c)``. Inverting the ID head gives, for any
item, the ID embedding whose CIC projection points where its content's does,
``e = pinv(W_id) normalize(W_c c)``, rescaled to the mean norm of the warm target ID rows seen in
training. In evaluation, :class:`ContentInferredIds` gives the backbone that embedding in place of
the untrained row of every unseen target item. Training is unchanged (the norm is only observed).
"""

from __future__ import annotations

import torch
from torch import nn

from em3rec.modules.cic import ContentIDContrastive


class ContentInferredIds(nn.Module):
    """Replaces the backbone's target ID embedding of unseen items by the one CIC infers from content.

    Args:
        unseen (torch.Tensor): ``(vocab_size,)`` bool, True for items with no training rows
            (:func:`em3rec.evaluation.cold_item_mask`); a buffer, not saved in checkpoints.
        momentum (float): weight of each training batch in the running mean of the warm ID norm.

    Example::

        inferred = ContentInferredIds(cold_item_mask("data/ml100k", meta))
        inferred.observe(id_rows, weights)  # training: (V, D), (V,)
        target_id = inferred(target_id, target_content, item_ids, cic)  # evaluation: (B, D)
    """

    def __init__(self, unseen: torch.Tensor, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("unseen", unseen.to(torch.bool), persistent=False)
        # The running mean norm of the warm target ID rows, and whether any batch was seen yet.
        self.register_buffer("id_norm", torch.ones(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, id_rows: torch.Tensor, weights: torch.Tensor) -> None:
        """Training: fold the mean norm of a batch's target ID rows ``(V, D)`` (weights ``(V,)``,
        0 for padding) into the running mean; no host synchronisation."""
        present = (weights > 0).float()  # (V,)
        norms = id_rows.detach().float().norm(dim=-1)  # (V,)
        mean = (norms * present).sum() / present.sum().clamp_min(1.0)
        updated = torch.where(self.observed, torch.lerp(self.id_norm, mean, self.momentum), mean)
        self.id_norm.copy_(updated)
        self.observed.fill_(True)

    def forward(
        self,
        target_id: torch.Tensor,
        target_content: torch.Tensor,
        item_ids: torch.Tensor,
        cic: ContentIDContrastive,
    ) -> torch.Tensor:
        """
        Args:
            target_id (torch.Tensor): ``(B, D)`` the rows' target ID embeddings.
            target_content (torch.Tensor): ``(B, D_c)`` their content embeddings (CIC's content side).
            item_ids (torch.Tensor): ``(B,)`` int64 the target items.
            cic (ContentIDContrastive): the trained CIC whose heads define the alignment.

        Returns:
            torch.Tensor: ``(B, D)``, the inferred embedding in the rows of unseen items.
        """
        inferred = cic.id_from_content(target_content) * self.id_norm  # (B, D), float32
        unseen = self.unseen[item_ids].unsqueeze(1)  # (B, 1)
        return torch.where(unseen, inferred.to(target_id.dtype), target_id)

    def extra_repr(self) -> str:
        return f"unseen={int(self.unseen.sum())}, momentum={self.momentum}"
