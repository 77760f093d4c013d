"""Fusion-Q-Former: Q trainable queries read an item's modality tokens into a fixed-length embedding.

EM3's variant runs self-attention over ``[queries; tokens]`` (``attention = "self"``); the BLIP-2
variant lets the queries self-attend and then cross-attend to the tokens (``attention = "cross"``).
Its layers (attention, feed-forward, EM3's self-attention layer and BLIP-2's cross-attention layer)
are in :mod:`~em3rec.modules.qformer_layers`.

Where the token side does not depend on the queries (BLIP-2's cross-attention, or a single
self-attention layer) the forward runs in two parts: :meth:`FusionQFormer.context` (the token side:
projections, and the attention keys and values of the tokens) and :meth:`FusionQFormer.decode` (the
query side over them). The history branch reuses the target branch's context for the items both
branches encode (``em3rec.modules.history_encoders.LoraHistory``).

Notation: ``U`` items, ``T`` tokens of all modalities together, ``Q`` queries, ``d`` model width,
``K`` keys per item, ``H`` heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from em3rec.config import QFORMER_ATTENTIONS, QFormerConfig
from em3rec.modules.qformer_layers import CrossAttentionLayer, Dropout, SelfAttentionLayer
from em3rec.modules.shape_buckets import bucket_size, pad_index, wants_buckets


@dataclass
class TokenContext:
    """The token side of ``U`` items: what :meth:`FusionQFormer.decode` reads of their tokens.

    Fields:
        keys_values: per layer, the attention's keys and values ``(U, H, K, d/H)`` each (for
            self-attention ``K = Q + T``: the queries' rows first, the same for every item).
        token_mask: ``(U, T)`` bool, True for a real token.
    """

    keys_values: list[tuple[torch.Tensor, torch.Tensor]]
    token_mask: torch.Tensor

    def select(self, index: torch.Tensor) -> TokenContext:
        """Rows ``index (U',)`` of every field."""
        return TokenContext(
            [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.keys_values],
            self.token_mask.index_select(0, index),
        )

    def detach(self) -> TokenContext:
        return TokenContext([(k.detach(), v.detach()) for k, v in self.keys_values], self.token_mask)

    def head(self, n: int) -> TokenContext:
        """The first ``n`` items (views, no copy)."""
        return TokenContext([(k[:n], v[:n]) for k, v in self.keys_values], self.token_mask[:n])

    @staticmethod
    def cat(parts: list[TokenContext]) -> TokenContext:
        """The items of ``parts`` one after the other (same layers, ``T`` and dtype)."""
        layers = zip(*(part.keys_values for part in parts))
        keys_values = [(torch.cat([k for k, _ in kv]), torch.cat([v for _, v in kv])) for kv in layers]
        return TokenContext(keys_values, torch.cat([part.token_mask for part in parts]))


@dataclass
class QFormerOutput:
    """Output of :class:`FusionQFormer`.

    Fields:
        query_embeddings: ``(U, Q, d)`` the final (layer-normed) query vectors.
        pooled: ``(U, out_dim)`` the flattened query vectors through a Linear (times the gate when
            gated): the item's content embedding.
        context: the items' token side (with gradient), for reuse; None where the token side
            depends on the queries (self-attention with several layers).
    """

    query_embeddings: torch.Tensor
    pooled: torch.Tensor
    context: TokenContext | None = None

    def head(self, n: int) -> QFormerOutput:
        """The first ``n`` items (views, no copy)."""
        context = None if self.context is None else self.context.head(n)
        return QFormerOutput(self.query_embeddings[:n], self.pooled[:n], context)


class FusionQFormer(nn.Module):
    """EM3's Fusion-Q-Former: the item's modality tokens -> ``Q`` query vectors and one pooled vector.

    Each modality's tokens go through their own Linear to width ``d`` and get a learned
    modality-type embedding; ``Q`` trainable queries are prepended; ``N`` layers run over them (see
    :class:`SelfAttentionLayer` / :class:`CrossAttentionLayer`). Padded tokens and whole missing
    modalities are removed from attention by the key mask (never zero-filled into it); the queries
    always attend to themselves, so an item with no tokens at all still gets a finite embedding.

    Args:
        modality_widths (dict[str, int]): modality name -> token width ``W_m`` (e.g. 384 for
            MiniLM), in the order the modalities are concatenated.
        config (QFormerConfig): ``dim`` (d), ``num_queries`` (Q), ``num_layers``, ``num_heads``,
            ``mlp_ratio``, ``token_dropout``, ``attention_dropout``, ``ffn_dropout``, ``attention``
            ("self" | "cross").
        out_dim (int | None): width of the pooled vector; default ``d``.
        gated (bool): scale the pooled vector by a per-dimension ``gate (out_dim,)`` that starts at
            0 (a residual correction to another embedding that must start at that embedding).

    Example::

        qformer = FusionQFormer({"title": 384}, QFormerConfig(dim=32, num_heads=4))
        out = qformer({"title": torch.randn(8, 16, 384)}, {"title": torch.ones(8, 16, dtype=torch.bool)})
        out.query_embeddings.shape, out.pooled.shape  # (8, 2, 32), (8, 32)
    """

    def __init__(
        self, modality_widths: dict[str, int], config: QFormerConfig, out_dim: int | None = None, gated: bool = False
    ) -> None:
        super().__init__()
        if config.attention not in QFORMER_ATTENTIONS:
            raise ValueError(f"attention = {config.attention!r}; expected 'self' or 'cross'")
        if config.num_layers < 1 or config.num_queries < 1:
            raise ValueError("the Q-Former needs num_layers >= 1 and num_queries >= 1")
        d, Q = config.dim, config.num_queries
        self._modalities = list(modality_widths)
        self._num_queries = Q
        self._cross = config.attention == "cross"
        self.token_proj = nn.ModuleDict({m: nn.Linear(w, d) for m, w in modality_widths.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(modality_widths), d) * 0.02)  # (M, d)
        self.queries = nn.Parameter(torch.randn(Q, d) * 0.02)  # (Q, d)
        self._token_dropout = Dropout(config.token_dropout)
        layer = CrossAttentionLayer if self._cross else SelfAttentionLayer
        self.layers = nn.ModuleList(
            [
                layer(d, config.num_heads, config.mlp_ratio, config.attention_dropout, config.ffn_dropout)
                for _ in range(config.num_layers)
            ]
        )
        self.token_norm = nn.LayerNorm(d) if self._cross else nn.Identity()
        self.ln_final = nn.LayerNorm(d)
        self.head = nn.Linear(Q * d, out_dim or d)
        self.gate = nn.Parameter(torch.zeros(out_dim or d)) if gated else None  # (out_dim,)

    @property
    def modalities(self) -> list[str]:
        return list(self._modalities)

    def _cast_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Stored (fp16) tokens as the token projections take them: under autocast as they are
        (the projection casts them once, to the autocast dtype), else in the parameters' dtype.
        (A Python-level check: torch.fx traces this, and a tensor's device would be a Proxy.)"""
        return x if torch._C._is_any_autocast_enabled() else x.to(self.queries.dtype)

    def embed_tokens(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention input: projected, modality-tagged (dropped-out) tokens and their mask.

        Only the real tokens are read, cast and projected (packed as rows); padded positions of the
        output hold zeros. Attention masks them out, so their value never reaches an output or a
        gradient, and garbage (NaN/inf) in padded inputs is never read. Same result as
        :meth:`embed_tokens_dense` (the reference) except at padded positions, and half the work
        when half the tokens are padding.

        Args: as :meth:`forward`.

        Returns:
            ``x_tokens (U, T, d)`` (T = all modalities' tokens) and ``token_mask (U, T)`` bool.
        """
        masks = [token_mask[m] if index is None else token_mask[m][index] for m in self._modalities]  # (U, T_m)
        token_mask_all = torch.cat(masks, dim=1)  # (U, T)
        U, T = token_mask_all.shape
        device = token_mask_all.device
        rows = torch.arange(U, device=device)[:, None]  # (U, 1)
        source_rows = rows if index is None else index[:, None]  # (U, 1)
        values, positions = [], []
        offset = 0
        buckets = wants_buckets(token_mask_all)
        for i, (m, mask) in enumerate(zip(self._modalities, masks)):
            x = tokens[m]  # (N, T_m, W_m)
            T_m = x.shape[1]
            slots = torch.arange(T_m, device=device)  # (T_m,)
            flat = x.reshape(-1, x.shape[-1])  # (N * T_m, W_m)
            rows_m = (source_rows * T_m + slots)[mask]  # (R_m,) the real tokens
            R_m = rows_m.shape[0]
            if buckets:  # project a bucketed row count (extra rows repeat the first, then are dropped)
                rows_m = pad_index(rows_m, bucket_size(R_m))
            projected = self.token_proj[m](self._cast_tokens(flat.index_select(0, rows_m)))[:R_m]  # (R_m, d)
            values.append(projected + self.modality_embedding[i])  # (R_m, d)
            positions.append((rows * T + offset + slots)[mask])  # (R_m,) flat positions in (U, T)
            offset += T_m
        packed = self._token_dropout(torch.cat(values))  # (R, d)
        d = packed.shape[-1]
        x_tokens = packed.new_zeros(U * T, d).index_copy(0, torch.cat(positions), packed)
        return x_tokens.view(U, T, d), token_mask_all  # (U, T, d), (U, T)

    def embed_tokens_dense(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference of :meth:`embed_tokens`: every token position cast and projected, padded
        tokens zeroed first (so garbage in them stays out of the projections' gradients)."""
        if index is not None:
            tokens = {m: tokens[m][index] for m in self._modalities}
            token_mask = {m: token_mask[m][index] for m in self._modalities}
        projected = [
            self.token_proj[m](self._cast_tokens(tokens[m]).masked_fill(~token_mask[m][..., None], 0.0))
            + self.modality_embedding[i]  # (U, T_m, d)
            for i, m in enumerate(self._modalities)
        ]
        x_tokens = self._token_dropout(torch.cat(projected, dim=1))  # (U, T, d)
        token_mask_all = torch.cat([token_mask[m] for m in self._modalities], dim=1)  # (U, T)
        return x_tokens, token_mask_all

    @property
    def separable(self) -> bool:
        """Whether the token side is independent of the queries (cross-attention, or one
        self-attention layer): then the forward is :meth:`context` then :meth:`decode`."""
        return self._cross or len(self.layers) == 1

    def token_side_linears(self) -> set[str]:
        """Qualified names of the ``nn.Linear`` modules that :meth:`context` runs (an adapter on one
        of them changes the context)."""
        names = {f"token_proj.{m}" for m in self._modalities}
        attn = "cross_attn" if self._cross else "attn"
        for i in range(len(self.layers) if self.separable else 0):
            names |= {f"layers.{i}.{attn}.k_proj", f"layers.{i}.{attn}.v_proj"}
        return names

    def context(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], index: torch.Tensor | None = None
    ) -> TokenContext:
        """The token side of the items (only where :attr:`separable`). Args: as :meth:`forward`."""
        if not self.separable:
            raise ValueError("a self-attention Q-Former with several layers has no separate token side")
        U, rows = self._bucketed_rows(token_mask, index)
        context = self._context(*self._embed(tokens, token_mask, rows))
        return context if rows is index else context.head(U)

    def _bucketed_rows(
        self, token_mask: dict[str, torch.Tensor], index: torch.Tensor | None
    ) -> tuple[int, torch.Tensor | None]:
        """``U`` (the items asked for) and the rows to encode: ``index`` itself, or where matmuls
        build a kernel per shape (:mod:`~em3rec.modules.shape_buckets`) padded to a bucketed count
        (the caller keeps the first ``U`` results)."""
        mask = next(iter(token_mask.values()))  # (N, T_m)
        U = mask.shape[0] if index is None else index.shape[0]
        if not wants_buckets(mask) or bucket_size(U) == U:
            return U, index
        rows = torch.arange(U, device=mask.device) if index is None else index
        return U, pad_index(rows, bucket_size(U))

    def _embed(self, tokens, token_mask, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embed_tokens`, or its dense reference under torch.compile (the packed path has
        data-dependent shapes)."""
        if torch.compiler.is_compiling():
            return self.embed_tokens_dense(tokens, token_mask, index)
        return self.embed_tokens(tokens, token_mask, index)

    def _context(self, x_tokens: torch.Tensor, token_mask_all: torch.Tensor) -> TokenContext:
        if self._cross:
            x_tokens = self.token_norm(x_tokens)  # (U, T, d)
            return TokenContext([layer.keys_values(x_tokens) for layer in self.layers], token_mask_all)
        queries = self.queries.expand(x_tokens.shape[0], -1, -1)  # (U, Q, d)
        x = torch.cat([queries, x_tokens], dim=1)  # (U, Q + T, d)
        return TokenContext([self.layers[0].keys_values(x)], token_mask_all)

    def decode(self, context: TokenContext) -> QFormerOutput:
        """The query side over the items' token side: queries, their layers, the head and gate."""
        U = context.token_mask.shape[0]
        if wants_buckets(context.token_mask) and bucket_size(U) != U:  # see _bucketed_rows
            padded = context.select(pad_index(torch.arange(U, device=context.token_mask.device), bucket_size(U)))
            out = self.decode(padded).head(U)
            return QFormerOutput(out.query_embeddings, out.pooled, context)
        # A copy, not a view: under no_grad a view of a parameter keeps requires_grad without a
        # grad_fn, which module hooks that track gradients (torch's FlopCounterMode) reject.
        queries = self.queries.expand(U, -1, -1).contiguous()  # (U, Q, d)
        for layer, keys_values in zip(self.layers, context.keys_values):
            queries = layer.decode(queries, keys_values, context.token_mask)  # (U, Q, d)
        return self._output(queries, context)

    def _output(self, queries: torch.Tensor, context: TokenContext | None) -> QFormerOutput:
        query_embeddings = self.ln_final(queries)  # (U, Q, d)
        pooled = self.head(query_embeddings.flatten(1))  # (U, out_dim)
        if self.gate is not None:
            pooled = pooled * self.gate
        return QFormerOutput(query_embeddings=query_embeddings, pooled=pooled, context=context)

    def forward(
        self,
        tokens: dict[str, torch.Tensor] | None = None,
        token_mask: dict[str, torch.Tensor] | None = None,
        index: torch.Tensor | None = None,
        context: TokenContext | None = None,
    ) -> QFormerOutput:
        """
        Args:
            tokens (dict[str, torch.Tensor]): modality -> ``(N, T_m, W_m)`` token features (any
                float dtype; cast to the parameters' dtype).
            token_mask (dict[str, torch.Tensor]): modality -> ``(N, T_m)`` bool, True = real token.
            index (torch.Tensor | None): ``(U,)`` int64 rows of ``tokens`` to encode (repeats
                allowed); None = all ``N`` rows. Passing the rows saves gathering copies of their
                tokens first.
            context (TokenContext | None): instead of the three above, the items' token side
                already computed (:meth:`context`): runs :meth:`decode` only.

        Returns:
            QFormerOutput: ``query_embeddings (U, Q, d)``, ``pooled (U, out_dim)``, ``context``.
        """
        if context is not None:
            return self.decode(context)
        U, rows = self._bucketed_rows(token_mask, index)
        if rows is not index:
            return self.forward(tokens, token_mask, rows).head(U)
        x_tokens, token_mask_all = self._embed(tokens, token_mask, index)
        if self.separable:
            return self.decode(self._context(x_tokens, token_mask_all))

        # Several self-attention layers: the token rows change from layer to layer.
        U, Q = x_tokens.shape[0], self._num_queries
        x = torch.cat([self.queries.expand(U, -1, -1), x_tokens], dim=1)  # (U, Q + T, d)
        key_mask = torch.cat([token_mask_all.new_ones(U, Q), token_mask_all], dim=1)  # (U, Q + T)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask, num_out=Q if i == last else None)
        return self._output(x[:, :Q], None)  # (U, Q, d) queries
