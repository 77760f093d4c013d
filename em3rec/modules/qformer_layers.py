"""The Fusion-Q-Former's building blocks: attention, feed-forward and its two layer types.

Attention is written with plain ``nn.Linear`` projections and ``F.scaled_dot_product_attention`` (see
:func:`attention`) so that peft LoRA can target the Linears by name and ``torch.compile`` /
``torch.fx`` see plain ops. :class:`SelfAttentionLayer` is EM3's layer over ``[queries; tokens]``,
:class:`CrossAttentionLayer` BLIP-2's; both split into ``keys_values`` (the token side) and
``decode`` (the query side), which :class:`~em3rec.modules.fusion_qformer.FusionQFormer` runs apart
where the token side does not depend on the queries.

Notation: ``U`` items, ``Q`` queries, ``T`` tokens, ``K`` keys per item, ``d`` model width, ``H`` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as ``F.dropout``: each element kept with probability ``1 - p`` and scaled
    by ``1 / (1 - p)``. On CPU the mask is drawn as ``uniform >= p``, about 3x faster than
    ``F.dropout``'s Bernoulli sampling (the same distribution, other random draws); elsewhere it
    is ``F.dropout``."""
    if not training or p == 0.0 or x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep = torch.rand_like(x) >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` by :func:`dropout` (its faster CPU mask; the same distribution)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d_h)) v`` written out: two batched matmuls in the inputs' dtype, the
    softmax in at least fp32. The values of ``F.scaled_dot_product_attention`` up to rounding.

    Args:
        q (torch.Tensor): ``(U, H, S, d_h)``.
        k (torch.Tensor): ``(U, H, K, d_h)``.
        v (torch.Tensor): ``(U, H, K, d_h)``.
        mask (torch.Tensor | None): bool, broadcastable to ``(U, H, S, K)``, True = attend; every
            row needs at least one True. None = attend to all.

    Returns:
        torch.Tensor: ``(U, H, S, d_h)`` in the dtype of ``v``.
    """
    scores = q @ k.transpose(-1, -2)  # (U, H, S, K)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v  # (U, H, S, d_h)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention by the faster kernel for the Q-Former's shapes (2 query rows,
    ~50 keys, head width 16): ``F.scaled_dot_product_attention``, except on CPU in bf16/fp16. There
    its flash kernel is slow: the Q-Former forward + backward at ml-100k's shapes takes 1.13x as
    long with it as with :func:`explicit_attention`, and 1.3x as long with it in fp32
    (``benchmarks/throughput_ab.py``, 2 threads, AMX). Shapes as :func:`explicit_attention`."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return explicit_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MultiHeadAttention(nn.Module):
    """Multi-head attention from ``x`` to ``context`` with a key-padding mask.

    Args:
        dim (int): model width ``d`` (divisible by ``num_heads``).
        num_heads (int): attention heads.

    Example::

        attn = MultiHeadAttention(dim=32, num_heads=4)
        y = attn(torch.randn(8, 2, 32), torch.randn(8, 10, 32), torch.ones(8, 10, dtype=torch.bool))
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self._num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(U, H, K, d/H)`` each of the context rows ``(U, K, d)``."""
        U, K, d = context.shape
        H = self._num_heads
        k = self.k_proj(context).view(U, K, H, d // H).transpose(1, 2)  # (U, H, K, d/H)
        v = self.v_proj(context).view(U, K, H, d // H).transpose(1, 2)  # (U, H, K, d/H)
        return k, v

    def attend(
        self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The rows ``x (U, S, d)`` attend to precomputed :meth:`keys_values`; ``key_mask`` as
        :meth:`forward`. Returns ``(U, S, d)``."""
        U, S, d = x.shape
        H = self._num_heads
        q = self.q_proj(x).view(U, S, H, d // H).transpose(1, 2)  # (U, H, S, d/H)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (U, 1, 1, K)
        y = attention(q, *keys_values, mask)  # (U, H, S, d/H)
        return self.out_proj(y.transpose(1, 2).reshape(U, S, d))  # (U, S, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): ``(U, S, d)`` the attending rows.
            context (torch.Tensor): ``(U, K, d)`` the keys/values.
            key_mask (torch.Tensor | None): ``(U, K)`` bool, True = attend; every row needs at
                least one True (the caller guarantees it). None = attend to all.

        Returns:
            torch.Tensor: ``(U, S, d)``.
        """
        return self.attend(x, self.keys_values(context), key_mask)


class FeedForward(nn.Module):
    """Position-wise MLP ``d -> mlp_ratio * d -> d`` with GELU.

    Args:
        dim (int): model width ``d``.
        mlp_ratio (int): hidden width multiplier.
    """

    def __init__(self, dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(dim, mlp_ratio * dim)
        self.fc_out = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class SelfAttentionLayer(nn.Module):
    """EM3's layer: pre-LayerNorm transformer block over ``[queries; tokens]``.

    Args:
        dim (int): model width ``d``.
        num_heads (int): attention heads.
        mlp_ratio (int): feed-forward hidden width multiplier.
        attention_dropout (float): dropout on the attention branch before its residual add.
        ffn_dropout (float): dropout on the feed-forward branch before its residual add.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, attention_dropout: float, ffn_dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio)
        self._attention_dropout = Dropout(attention_dropout)
        self._ffn_dropout = Dropout(ffn_dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, num_out: int | None = None) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): ``(U, Q + T, d)`` queries first, then tokens.
            key_mask (torch.Tensor): ``(U, Q + T)`` bool, True for queries and real tokens.
            num_out (int | None): compute only the first ``num_out`` rows (the last layer needs
                only the queries; the token rows' outputs would be discarded). None = all rows.

        Returns:
            torch.Tensor: ``(U, num_out or Q + T, d)``.
        """
        h = self.ln_attn(x)  # (U, Q + T, d)
        if num_out is not None:
            x, rows = x[:, :num_out], h[:, :num_out]  # (U, Q, d)
        else:
            rows = h
        x = x + self._attention_dropout(self.attn(rows, h, key_mask))
        return x + self._ffn_dropout(self.mlp(self.ln_mlp(x)))

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention's keys and values ``(U, H, Q + T, d/H)`` of ``x (U, Q + T, d)``."""
        return self.attn.keys_values(self.ln_attn(x))

    def decode(
        self, queries: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor], token_mask: torch.Tensor
    ) -> torch.Tensor:
        """The query rows of :meth:`forward` (with ``num_out = Q``) over precomputed
        :meth:`keys_values`: ``queries (U, Q, d)``, ``token_mask (U, T)`` -> ``(U, Q, d)``."""
        U, Q, _ = queries.shape
        key_mask = torch.cat([token_mask.new_ones(U, Q), token_mask], dim=1)  # (U, Q + T)
        queries = queries + self._attention_dropout(self.attn.attend(self.ln_attn(queries), keys_values, key_mask))
        return queries + self._ffn_dropout(self.mlp(self.ln_mlp(queries)))


class CrossAttentionLayer(nn.Module):
    """BLIP-2-style layer: queries self-attend, then cross-attend to the tokens, then an MLP.

    BLIP-2 cross-attends every other layer; here every layer does (our stacks are 1-2 layers).
    An item with no real token at all skips the cross-attention (its output is zeroed), so it still
    gives finite queries.

    Args: as :class:`SelfAttentionLayer` (``attention_dropout`` on both attention branches).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, attention_dropout: float, ffn_dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.ln_cross = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio)
        self._attention_dropout = Dropout(attention_dropout)
        self._ffn_dropout = Dropout(ffn_dropout)

    def keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention's keys and values ``(U, H, T, d/H)`` of ``tokens (U, T, d)``."""
        return self.cross_attn.keys_values(tokens)

    def decode(
        self, queries: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor], token_mask: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`forward` over precomputed :meth:`keys_values`."""
        h = self.ln_attn(queries)
        queries = queries + self._attention_dropout(self.attn(h, h, None))
        has_tokens = token_mask.any(dim=1)  # (U,)
        # An item without tokens attends to its (padding) tokens so that softmax stays finite; the
        # result is then zeroed, so neither the output nor any gradient depends on them.
        safe_mask = token_mask | ~has_tokens[:, None]  # (U, T)
        cross = self.cross_attn.attend(self.ln_cross(queries), keys_values, safe_mask)  # (U, Q, d)
        cross = torch.where(has_tokens[:, None, None], cross, torch.zeros_like(cross))
        queries = queries + self._attention_dropout(cross)
        return queries + self._ffn_dropout(self.mlp(self.ln_mlp(queries)))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries (torch.Tensor): ``(U, Q, d)``.
            tokens (torch.Tensor): ``(U, T, d)`` projected, layer-normed tokens.
            token_mask (torch.Tensor): ``(U, T)`` bool, True for a real token.

        Returns:
            torch.Tensor: ``(U, Q, d)``.
        """
        return self.decode(queries, self.keys_values(tokens), token_mask)
