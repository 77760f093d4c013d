"""Content-ID-Contrastive (CIC) loss: align each item's ID embedding with its content embedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from em3rec.config import CICConfig
from em3rec.modules.shape_buckets import bucket_rows


@dataclass
class CICOutput:
    """Fields:
    loss: ``()`` ``weight * value``, the term added to the ranking loss.
    value: ``()`` the raw symmetric InfoNCE (for logging).
    """

    loss: torch.Tensor
    value: torch.Tensor


class ContentIDContrastive(nn.Module):
    """Symmetric InfoNCE between projected, L2-normalised ID and content embeddings of items.

    For anchor ``i`` the positive is the other side of the same row; the negatives are the other
    rows (``num_negatives = 0``) or ``K`` rows sampled uniformly from them (``num_negatives = K``).
    A row with the same item id as the anchor is a false negative and is masked out; so are rows
    with weight 0. Both directions (ID -> content, content -> ID) are averaged over the rows with
    weight > 0. With a single distinct item there are no negatives and the loss is exactly 0, with
    finite (zero) gradients.

    Args:
        id_dim (int): width of the ID embeddings.
        content_dim (int): width of the content embeddings.
        config (CICConfig): ``weight`` (lambda), ``temperature``, ``num_negatives``, ``dim``
            (width of the two projection heads), ``head_bias``, ``warmup_steps`` (lambda ramps
            linearly from 0 over that many training calls), ``id_gradient`` (False: the ID
            embeddings enter detached; only the content side and the heads learn from CIC),
            ``content_gradient`` (False: the content embeddings enter detached; only the ID side
            and the heads learn from CIC).

    Example::

        cic = ContentIDContrastive(16, 16, CICConfig(dim=8))
        out = cic(torch.randn(6, 16), torch.randn(6, 16), torch.arange(6))
        out.loss, out.value
    """

    def __init__(self, id_dim: int, content_dim: int, config: CICConfig) -> None:
        super().__init__()
        self._weight = config.weight
        self._temperature = config.temperature
        self._num_negatives = config.num_negatives
        self._id_gradient = config.id_gradient
        self._content_gradient = config.content_gradient
        self._warmup_steps = config.warmup_steps
        self.id_head = nn.Linear(id_dim, config.dim, bias=config.head_bias)
        self.content_head = nn.Linear(content_dim, config.dim, bias=config.head_bias)
        # Training calls so far (for the warm-up); saved with the model, so a resumed run continues the ramp.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_weight(self) -> torch.Tensor | float:
        """lambda at this step: ``weight * min(1, steps / warmup_steps)``."""
        if self._warmup_steps <= 0:
            return self._weight
        return self._weight * (self.steps.double() / self._warmup_steps).clamp(max=1.0).float()

    def forget_last_step(self) -> None:
        """Take back the last training call's advance of the ramp: its batch was dropped before
        backward (a non-finite loss under ``train.nan_policy = "skip"``), so no step was taken."""
        self.steps -= 1

    def forward(
        self,
        id_embeddings: torch.Tensor,
        content_embeddings: torch.Tensor,
        item_ids: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> CICOutput:
        """
        Args:
            id_embeddings (torch.Tensor): ``(N, D_id)``.
            content_embeddings (torch.Tensor): ``(N, D_c)``, row ``i`` the same item as ID row ``i``.
            item_ids (torch.Tensor): ``(N,)`` int64 item ids (equal ids are false negatives).
            weights (torch.Tensor | None): ``(N,)``; rows with weight 0 take no part. Default all 1.

        Returns:
            CICOutput: weighted loss and raw value, both scalars.
        """
        if not self._id_gradient:
            id_embeddings = id_embeddings.detach()
        if not self._content_gradient:
            content_embeddings = content_embeddings.detach()
        # On CPU in bf16 the heads and the similarity matmul run over a bucketed row count M >= N
        # (N changes with every batch: :mod:`~em3rec.modules.shape_buckets`); only N rows are read.
        z_id = F.normalize(self.id_head(bucket_rows(id_embeddings)), dim=-1)  # (M, C)
        z_content = F.normalize(self.content_head(bucket_rows(content_embeddings)), dim=-1)  # (M, C)
        N = item_ids.shape[0]
        valid = torch.ones(N, dtype=torch.bool, device=z_id.device) if weights is None else weights > 0  # (N,)

        if self._num_negatives > 0:
            losses = self._sampled(z_id, z_content, item_ids, valid)  # (N,)
        else:
            losses = self._in_batch(z_id, z_content, item_ids, valid)  # (N,)
        # Mean over valid anchors; sums of zero rows stay attached to the graph (finite, zero grads).
        value = torch.where(valid, losses, torch.zeros_like(losses)).sum() / valid.sum().clamp_min(1)
        weight = self.current_weight()
        if self.training:
            self.steps += 1
        return CICOutput(loss=weight * value, value=value)

    def _in_batch(
        self, z_id: torch.Tensor, z_content: torch.Tensor, item_ids: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """``z_id``, ``z_content`` ``(M, C)`` with ``M >= N``; ``item_ids``, ``valid`` ``(N,)``. Returns ``(N,)``."""
        N = item_ids.shape[0]
        logits = (z_id @ z_content.T)[:N, :N] / self._temperature  # (N, N): row i = ID i vs content j
        eye = torch.eye(N, dtype=torch.bool, device=z_id.device)
        invalid = ~valid[:, None] | ~valid[None, :]
        masked = ((item_ids[:, None] == item_ids[None, :]) | invalid) & ~eye  # (N, N), symmetric
        logits = logits.masked_fill(masked, float("-inf"))
        # The diagonal is never masked, so every row has a finite logit and a finite logsumexp.
        id_to_content = torch.logsumexp(logits, dim=1) - logits.diagonal()  # (N,)
        content_to_id = torch.logsumexp(logits, dim=0) - logits.diagonal()  # (N,): content i vs every ID
        return 0.5 * (id_to_content + content_to_id)

    def _sampled(
        self, z_id: torch.Tensor, z_content: torch.Tensor, item_ids: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """As :meth:`_in_batch`, against ``K`` sampled negatives per row."""
        N, K = item_ids.shape[0], self._num_negatives
        positive = (z_id[:N] * z_content[:N]).sum(-1, keepdim=True) / self._temperature  # (N, 1)
        if N < 2:
            return 0.0 * positive.squeeze(-1)  # no negatives: loss 0, still attached to the graph
        # Row i's negatives: (i + offset) mod N with offset uniform in [1, N-1]: never i itself.
        offsets = torch.randint(1, N, (N, K), device=z_id.device)
        negatives = (torch.arange(N, device=z_id.device)[:, None] + offsets) % N  # (N, K)
        masked = (item_ids[negatives] == item_ids[:, None]) | ~valid[negatives]  # (N, K)
        # Every ID-content similarity in one matmul, then the sampled ones read from it: cheaper than
        # gathering (N, K, C) negatives and N small matrix products (N is ~10^3, C ~64).
        similarity = z_id @ z_content.T  # (M, M): row i = ID i vs content j; rows and columns >= N unread
        id_to_content = similarity.gather(1, negatives) / self._temperature  # (N, K)
        content_to_id = similarity.T.gather(1, negatives) / self._temperature  # (N, K): content i vs ID j
        losses = []
        for negative_logits in (id_to_content, content_to_id):
            logits = torch.cat([positive, negative_logits.masked_fill(masked, float("-inf"))], dim=1)  # (N, 1 + K)
            losses.append(torch.logsumexp(logits, dim=1) - positive.squeeze(-1))
        return 0.5 * (losses[0] + losses[1])
