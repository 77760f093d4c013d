"""ID dropout for cold start (DropoutNet, Volkovs et al., NeurIPS 2017), for items and for users.

An item or a user without training rows has an ID embedding that no ranking gradient ever moved
(its random initialisation), and a ranker trained only on warm ids never learned to score a row
from content, history and side features alone. ID dropout teaches it: in training, each row's ID
embedding is replaced by zeros with probability ``p``; in evaluation, the rows whose id has no
training rows get the same zeros, the input the ranker learned for "ID unknown" (with
``model.cold_item_rows = "from_content"``, which writes those items' rows from content, the model
passes no item as unseen, and evaluation reads the written rows). Only the backbone's input
changes: CIC still sees every item's own ID row.

On ml100k-ctr-v1 (a global time split) 85 % of the valid and test rows belong to users who have
no training rows; user-ID dropout is the option for them (measured there: it lowers valid AUC for
every variant: benchmarks/results/README.md, "Cold users").
"""

from __future__ import annotations

import torch
from torch import nn


class IdDropout(nn.Module):
    """Zeroes ID embeddings: at random in training, for ids without training rows in evaluation.

    Args:
        p (float): the probability that a training row loses its ID embedding, in ``(0, 1)``.
        unseen (torch.Tensor): ``(vocab_size,)`` bool, True for ids with no training rows
            (:func:`em3rec.evaluation.cold_item_mask`, :func:`em3rec.evaluation.cold_user_mask`);
            a buffer, not saved in checkpoints.
        option (str): the config option that set ``p`` (for errors).

    Example::

        dropout = IdDropout(0.1, cold_item_mask("data/ml100k", meta))
        target_id = dropout(ids.target, batch.item_ids)  # (B, D)
    """

    def __init__(self, p: float, unseen: torch.Tensor, option: str = "model.id_dropout") -> None:
        super().__init__()
        if not 0.0 < p < 1.0:
            raise ValueError(f"{option} = {p}; expected a probability in (0, 1)")
        self.p = p
        self.register_buffer("unseen", unseen.to(torch.bool), persistent=False)

    def forward(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embeddings (torch.Tensor): ``(B, D)`` one ID embedding per row.
            ids (torch.Tensor): ``(B,)`` int64 the rows' id indices.

        Returns:
            torch.Tensor: ``(B, D)``, zeros in the dropped (training) or unseen (evaluation) rows.
        """
        if self.training:
            drop = torch.rand_like(embeddings[:, 0], dtype=torch.float32) < self.p  # (B,)
        else:
            drop = self.unseen[ids]  # (B,)
        return embeddings.masked_fill(drop.unsqueeze(1), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, unseen={int(self.unseen.sum())}"
