"""DIN-style target attention: pool a behaviour sequence with the target item as the query."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP


class TargetAttention(nn.Module):
    """Target attention pooling (DIN, Zhou et al. 2018) of ``(B, L, D)`` keys by a ``(B, D)`` query.

    The weight of position ``l`` is ``MLP([q, k_l, q - k_l, q * k_l])``; masked positions get weight
    exactly 0, so an all-empty history pools to zeros. By default the weights are used as they come
    (the DIN paper drops the softmax to keep the intensity of interest); ``softmax=True`` normalises
    them over the real positions instead.

    Args:
        dim (int): width ``D`` of query and keys.
        hidden (list[int]): hidden layer sizes of the attention MLP (PReLU activations).
        softmax (bool): normalise the weights over the real positions.

    Example::

        attention = TargetAttention(dim=16, hidden=[32, 16])
        pooled = attention(torch.randn(4, 10, 16), torch.randn(4, 16), torch.ones(4, 10, dtype=torch.bool))
    """

    def __init__(self, dim: int, hidden: list[int], softmax: bool = False) -> None:
        super().__init__()
        self._softmax = softmax
        self.mlp = MLP(4 * dim, hidden, activation=nn.PReLU) if hidden else nn.Identity()
        self.score = nn.Linear(hidden[-1] if hidden else 4 * dim, 1)

    def scores(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Raw weights ``MLP([q, k, q - k, q * k])`` of every position: ``(B, L)``.

        The first layer's product with the concatenation is expanded,
        ``W [q; k; q - k; q * k] = (W_q + W_d) q + (W_k - W_d) k + W_p (q * k)``, so the query's term
        is computed once per row instead of once per position and the ``(B, L, 4D)`` concatenation
        is never built: about half the work of :meth:`scores_reference`, the same values up to
        float rounding.
        """
        if isinstance(self.mlp, nn.Identity):  # no hidden layer: `score` is the first layer
            first, activation, rest = self.score, None, None
        else:
            perceptron = self.mlp._mlp[0]  # torchrec Perceptron: Linear then activation
            first, activation, rest = perceptron._linear, perceptron._activation_fn, self.mlp._mlp[1:]
        w_q, w_k, w_d, w_p = first.weight.split(keys.shape[-1], dim=1)  # (H, D) each
        per_row = F.linear(query, w_q + w_d, first.bias).unsqueeze(1)  # (B, 1, H)
        per_position = torch.cat([keys, query.unsqueeze(1) * keys], dim=-1)  # (B, L, 2D)
        h = F.linear(per_position, torch.cat([w_k - w_d, w_p], dim=1)) + per_row  # (B, L, H)
        if activation is None:
            return h.squeeze(-1)  # (B, L)
        return self.score(rest(activation(h))).squeeze(-1)  # (B, L)

    def scores_reference(self, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` as the DIN paper writes it (the test oracle): ``(B, L)``."""
        q = query.unsqueeze(1).expand_as(keys)  # (B, L, D)
        return self.score(self.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1))).squeeze(-1)

    def forward(self, keys: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            keys (torch.Tensor): ``(B, L, D)`` history vectors.
            query (torch.Tensor): ``(B, D)`` target vector.
            mask (torch.Tensor): ``(B, L)`` bool, True where a position holds an item.

        Returns:
            torch.Tensor: ``(B, D)`` the weighted sum of the real positions.
        """
        keys, query = _in_autocast_dtype(keys, query)
        scores = self.scores(keys, query)  # (B, L)
        if self._softmax:
            scores = scores.masked_fill(~mask, float("-inf"))
            # A row with no real position would be all -inf (NaN softmax); give it finite scores,
            # the mask below zeroes its weights anyway.
            scores = torch.where(mask.any(dim=1, keepdim=True), scores, torch.zeros_like(scores))
            scores = scores.softmax(dim=1)  # (B, L)
        weights = torch.where(mask, scores, torch.zeros_like(scores))  # (B, L)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, D)


def _in_autocast_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under autocast, the tensors cast once to its dtype (bf16): the ``(B, L, 2D)`` per-position
    features and the pooling then run in it, as autocast would have cast them for each matmul
    anyway, at half the memory traffic. (Not while torch.fx traces: TorchRec's train pipeline.)"""
    first = tensors[0]
    if isinstance(first, torch.fx.Proxy) or not torch.is_autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) for t in tensors)
