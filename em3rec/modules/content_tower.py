"""EM3's content side of a batch: item content embeddings for the target and every history position.

A batch carries its ``U`` distinct items' modality tokens once (``Batch.content_tokens``) and, for
the target and each history position, an index into them. :class:`ContentTower` encodes each
distinct item once per branch and gathers (``dedup = True``); ``dedup = False`` is the naive
reference that encodes every position separately, kept as the test oracle.

An item's content embedding is the Fusion-Q-Former's output, plus (``pooled_base``) the two-stage
baseline's embedding of the same item: its pooled pre-extracted vectors through a Linear. The
Q-Former is then built gated (its output scaled by a per-dimension gate that starts at 0), so the
tower starts exactly at the baseline and end-to-end training can only add to the pretrained
signal. The history branch is one of :mod:`em3rec.modules.history_encoders` (or none).
"""

from __future__ import annotations

import torch
from torch import nn

from em3rec.data.batch import Batch
from em3rec.modules.content_io import ContentOutput, DistinctTargets, distinct_rows, place_history
from em3rec.modules.frozen_content import PooledContentProjection
from em3rec.modules.fusion_qformer import FusionQFormer, QFormerOutput
from em3rec.modules.history_encoders import HistoryEncoder, HistoryItems
from em3rec.modules.shape_buckets import bucket_size, pad_index, wants_buckets


class ContentTower(nn.Module):
    """Fusion-Q-Former embeddings (plus the pooled baseline) for the target and history of each row.

    Args:
        qformer (FusionQFormer): the item encoder (its ``pooled`` output); build it ``gated`` when
            ``pooled_base`` is given, so that the tower starts at the baseline.
        history (HistoryEncoder | None): the history branch; None = no history content.
        pooled_base (PooledContentProjection | None): the baseline embedding added to every
            item's Q-Former output; None = the Q-Former alone (the paper's form).
        dedup (bool): encode distinct items once (True) or every position (False, the reference;
            not with a cached history).

    Example::

        qformer = FusionQFormer({"title": 384}, QFormerConfig(), gated=True)
        tower = ContentTower(qformer, LoraHistory(qformer, LoraConfig()), PooledContentProjection({"title": 384}, 64))
        out = tower(batch, DistinctTargets.of(batch.target_content_index, batch.weights))
        out.target.shape, out.history.shape  # (B, D), (B, L, D)
    """

    def __init__(
        self,
        qformer: FusionQFormer,
        history: HistoryEncoder | None = None,
        pooled_base: PooledContentProjection | None = None,
        dedup: bool = True,
    ) -> None:
        super().__init__()
        if history is not None and history.mode == "cached" and not dedup:
            raise ValueError("seq_content_mode = 'cached' works on distinct items; it needs dedup = True")
        self.qformer = qformer
        self.history = history
        self.pooled_base = pooled_base
        self._dedup = dedup

    @property
    def seq_content_mode(self) -> str:
        return "none" if self.history is None else self.history.mode

    def encode_items(
        self,
        tokens: dict[str, torch.Tensor],
        token_mask: dict[str, torch.Tensor],
        index: torch.Tensor | None = None,
        pooled: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Target-branch content embeddings ``(U, D)`` of items given as ``(N, T_m, W_m)`` tokens:
        rows ``index (U,)`` of them (None: all, ``U = N``). ``pooled``: modality -> ``(N, W_m)``
        stored pooled vectors for the pooled base, as the training batches carry them (None: pool
        the tokens)."""
        content = self.qformer(tokens, token_mask, index).pooled  # (U, D)
        if self.pooled_base is None:
            return content
        if pooled:
            rows = pooled if index is None else {m: v[index] for m, v in pooled.items()}
            return content + self.pooled_base.project(rows)  # (U, D)
        return content + self.pooled_base(tokens, token_mask, index)  # (U, D): only the rows asked for

    def forward(self, batch: Batch, targets: DistinctTargets) -> ContentOutput:
        """
        Args:
            batch (Batch): uses ``content_tokens`` / ``content_token_mask`` ``(U, T_m, W_m)`` /
                ``(U, T_m)``, ``content_item_ids (U,)``, ``target_content_index (B,)``,
                ``history_content_index (B, L)`` and ``history_mask (B, L)``.
            targets (DistinctTargets): the batch's distinct targets.

        Returns:
            ContentOutput: ``target (B, D)``, ``history (B, L, D)`` or None, ``item_content (V, D)``.
        """
        if not self._dedup:
            return self._forward_per_position(batch, targets)
        tokens, token_mask = batch.content_tokens, batch.content_token_mask
        mask = batch.history_mask  # (B, L)
        base = self._pooled_base(batch)  # (U, D) or None
        # The distinct targets and the catalogue sample through the target branch in one call.
        V = targets.index.shape[0]
        rows = torch.cat([targets.index, batch.catalogue_content_index])  # (V + K,)
        target = self._target_branch(tokens, token_mask, rows)
        encoded = target.pooled  # (V + K, D)
        target_content = encoded[:V]  # (V, D): the Q-Former part, which the history branch may reuse
        # index_select, not base[rows]: its backward is an index_add (indexing's is a sorting index_put).
        if base is not None:
            encoded = encoded + base.index_select(0, rows)
        item_content, catalogue = encoded[:V], encoded[V:]  # (V, D), (K, D)
        history = None
        if self.history is not None:
            # Only the items at real history positions: (H,) distinct, (P,) one per real position.
            history_index, position_item = distinct_rows(
                batch.history_content_index[mask], batch.content_item_ids.shape[0]
            )
            items = HistoryItems(
                tokens,
                token_mask,
                batch.content_item_ids,
                history_index,
                targets.index,
                target_content,
                target.context,
                target.query_embeddings[:V],
            )
            history_items = self.history(self.qformer, items)  # (H, D)
            if base is not None:
                history_items = history_items + base.index_select(0, history_index)
            history = place_history(history_items.index_select(0, position_item), mask)  # (B, L, D)
        return ContentOutput(
            target=item_content.index_select(0, targets.inverse),
            history=history,
            item_content=item_content,
            catalogue=catalogue,
        )

    def _target_branch(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], rows: torch.Tensor
    ) -> QFormerOutput:
        """The Q-Former over ``rows (N,)``. On CPU in bf16 over a bucketed number of rows (see
        :mod:`~em3rec.modules.shape_buckets`), here as well as inside the Q-Former: a compiled
        Q-Former skips its own padding, and its matmuls build a kernel per shape all the same."""
        n = rows.shape[0]
        if wants_buckets(rows) and bucket_size(n) != n:
            return self.qformer(tokens, token_mask, pad_index(rows, bucket_size(n))).head(n)
        return self.qformer(tokens, token_mask, rows)

    def _pooled_base(self, batch: Batch) -> torch.Tensor | None:
        """``(U, D)`` the pooled base of the batch's distinct items: from the stored pooled vectors
        (``Batch.content_pooled``: the baseline's own input, no pooling per step) when the loader
        sent them, else pooled from the tokens (the same values up to fp16 rounding)."""
        if self.pooled_base is None:
            return None
        if not batch.content_pooled:
            return self.pooled_base(batch.content_tokens, batch.content_token_mask)
        return self.pooled_base.project(batch.content_pooled)  # (U, D)

    def _forward_per_position(self, batch: Batch, targets: DistinctTargets) -> ContentOutput:
        """The reference: every target row and every history position encoded on its own."""
        tokens, token_mask, pooled = batch.content_tokens, batch.content_token_mask, batch.content_pooled
        target = self.encode_items(tokens, token_mask, batch.target_content_index, pooled)  # (B, D)
        history = None
        if self.history is not None:
            B, L = batch.history_mask.shape
            flat = batch.history_content_index.reshape(-1)  # (B*L,)
            history = self.history.encode(self.qformer, tokens, token_mask, flat)  # (B*L, D)
            if self.pooled_base is not None:
                history = history + self._pooled_base(batch)[flat]
            history = history.view(B, L, -1)  # (B, L, D)
            history = torch.where(batch.history_mask[..., None], history, torch.zeros_like(history))
        catalogue = self.encode_items(tokens, token_mask, batch.catalogue_content_index, pooled)  # (K, D)
        return ContentOutput(
            target=target, history=history, item_content=target[targets.first_row], catalogue=catalogue
        )
