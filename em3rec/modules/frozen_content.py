"""The two-stage baseline's content side: pre-extracted pooled vectors through one trainable Linear.

:class:`PooledContentProjection` is also EM3's starting point (``ModelConfig.pooled_base``): the
EM3 content tower adds a gated Q-Former correction to it.
"""

from __future__ import annotations

import torch
from torch import nn

from em3rec.data.batch import Batch
from em3rec.modules.content_io import ContentOutput, DistinctTargets, place_history
from em3rec.modules.shape_buckets import concat_into_bucket, wants_buckets


class PooledContentProjection(nn.Module):
    """The two-stage baseline's content encoder: pooled frozen per-modality vectors -> one Linear.

    Each modality's tokens are mean-pooled over the real ones (with pre-pooled features, ``T_m = 1``,
    this is the stored vector itself); a missing modality gives zeros. The modalities are
    concatenated and projected to ``out_dim``.

    Args:
        modality_widths (dict[str, int]): modality name -> width ``W_m``.
        out_dim (int): output width ``D``.

    Example::

        proj = PooledContentProjection({"title": 384, "meta": 384}, out_dim=64)
        y = proj({"title": t1, "meta": t2}, {"title": m1, "meta": m2})  # (U, 64)
    """

    def __init__(self, modality_widths: dict[str, int], out_dim: int) -> None:
        super().__init__()
        self._modalities = list(modality_widths)
        self.proj = nn.Linear(sum(modality_widths.values()), out_dim)

    def forward(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: modality -> ``(N, T_m, W_m)`` tokens and ``(N, T_m)`` masks; ``index (U,)`` the rows to
        pool (None: all, ``U = N``). Returns ``(U, D)``."""
        pooled = []
        for m in self._modalities:  # the module's own list: traceable by torch.fx (the train pipeline)
            mask, x = (token_mask[m], tokens[m]) if index is None else (token_mask[m][index], tokens[m][index])
            if not isinstance(x, torch.fx.Proxy) and x.shape[1] == 1:
                # One stored vector (the loader's pooled level): the mean is the vector itself, or 0
                # where the modality is missing; kept in its dtype, not copied to fp32 and back.
                pooled.append(x[:, 0] * mask.to(x.dtype))  # (U, W_m)
                continue
            w = mask.to(self.proj.weight.dtype).unsqueeze(-1)  # (U, T_m, 1)
            x = x.to(self.proj.weight.dtype)  # (U, T_m, W_m)
            pooled.append((x * w).sum(1) / w.sum(1).clamp_min(1.0))  # (U, W_m)
        return self._project(pooled)  # (U, D)

    def project(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """modality -> ``(U, W_m)`` stored pooled vectors (0 for a missing modality, as the item
        store keeps them) -> ``(U, D)``: :meth:`forward` on pre-pooled tokens, without their masks."""
        return self._project([pooled[m] for m in self._modalities])

    def _project(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """modality parts ``(U, W_m)``, concatenated -> ``(U, D)``. ``U`` changes with every batch, so
        on CPU in bf16 the parts go straight into a bf16 buffer of bucketed rows
        (:func:`~em3rec.modules.shape_buckets.concat_into_bucket`): a repeating matmul shape, without
        a padding copy or an fp32 copy of the ``(U, sum W_m)`` input (bx: ~12,000 rows a batch).
        Elsewhere under autocast (CUDA) the parts go to the autocast dtype, which the Linear would
        cast its input to anyway: one cast of each part, not one to fp32 and one back."""
        if not wants_buckets(parts[0]):
            return self.proj(torch.cat([p.to(self._input_dtype(parts[0])) for p in parts], dim=-1))
        # wants_buckets means CPU autocast, but for tests that force it (then: the weight's dtype).
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else self.proj.weight.dtype
        return self.proj(concat_into_bucket(parts, dtype))[: parts[0].shape[0]]

    def _input_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The autocast dtype where autocast is on for ``x``'s device, else the weight's (also while
        torch.fx traces: the traced graph keeps the weight's)."""
        if not isinstance(x, torch.fx.Proxy) and torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return self.proj.weight.dtype


class FrozenContentTower(nn.Module):
    """Content side of the ID + frozen-content baseline: every distinct item through
    :class:`PooledContentProjection` once, gathered for the target and (optionally) the history.

    Args:
        projection (PooledContentProjection): the trainable projection.
        use_history (bool): also return history content (``seq_content_mode != "none"``).
    """

    def __init__(self, projection: PooledContentProjection, use_history: bool) -> None:
        super().__init__()
        self.projection = projection
        self._use_history = use_history

    def encode_items(
        self,
        tokens: dict[str, torch.Tensor],
        token_mask: dict[str, torch.Tensor],
        pooled: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``(N, D)`` content embeddings of items given as ``(N, T_m, W_m)`` tokens (the baseline's
        tokens are already the pooled vectors, so ``pooled`` adds nothing and is not read)."""
        return self.projection(tokens, token_mask)

    def forward(self, batch: Batch, targets: DistinctTargets) -> ContentOutput:
        """Same contract as :meth:`ContentTower.forward`."""
        items = self.projection(batch.content_tokens, batch.content_token_mask)  # (U, D)
        history = None
        if self._use_history:
            mask = batch.history_mask  # (B, L)
            history = place_history(items.index_select(0, batch.history_content_index[mask]), mask)  # (B, L, D)
        # index_select, not indexing: its backward is an index_add (indexing's is a sorting index_put).
        item_content = items.index_select(0, targets.index)  # (V, D)
        return ContentOutput(
            target=item_content.index_select(0, targets.inverse),
            history=history,
            item_content=item_content,
            catalogue=items.index_select(0, batch.catalogue_content_index),  # (K, D)
        )
