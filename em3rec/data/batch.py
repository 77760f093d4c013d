"""The batch that travels from the loader to the model.

One batch carries both sides of EM3: the ID side as TorchRec ``KeyedJaggedTensor``s (sharded
embedding lookups) and the content side as the batch's *distinct* items with their modality tokens,
plus, for the target and for every history position, an index into those distinct items. The model
encodes each distinct item once and gathers (the dedup that keeps end-to-end content affordable).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

# The sequence feature of the catalogue items sampled for CIC (content only, no label). It shares
# the item table; the loader puts all K ids in the first row (the other rows are empty).
CATALOGUE_FEATURE = "cic_catalogue_item_ids"


@dataclass
class Batch(Pipelineable):
    """A training or evaluation batch of ``B`` impressions with history length up to ``L``.

    Fields:
        sparse_features: pooled ID features for the ``EmbeddingBagCollection``: the user id and the
            categorical side features (one value per row, or several for multi-valued ones).
        sequence_features: features for the ``EmbeddingCollection``: ``item_id`` (one value per
            row) and ``hist_item_ids`` (``<= L`` values per row, oldest first); both use the shared
            item table.
        labels: ``(B,)`` float32 click labels in {0, 1}.
        weights: ``(B,)`` float32, 1 for real rows and 0 for padding rows (evaluation pads the last
            batch so that every rank runs the same number of steps).
        user_ids: ``(B,)`` int64 user index (for GAUC).
        item_ids: ``(B,)`` int64 target item index (for cold-item metrics and CIC).
        history_mask: ``(B, L)`` bool, True where a history position holds an item.
        content_item_ids: ``(U,)`` int64 distinct item indices of the batch (targets and history).
        target_content_index: ``(B,)`` int64 index of each target item into ``content_item_ids``.
        history_content_index: ``(B, L)`` int64 index of each history item into
            ``content_item_ids`` (0 at padded positions; use ``history_mask``).
        content_tokens: modality name -> ``(U_t, T_m, W_m)`` float16 frozen token features of the
            first ``U_t`` distinct items (``T_m = 1`` for pooled features). ``U_t = U``, unless the
            loader sent tokens of the targets and the catalogue sample only (a model that reads no
            history tokens): those come first in ``content_item_ids``.
        content_token_mask: modality name -> ``(U_t, T_m)`` bool, True for a real token. A row with
            no True is a missing modality for that item.
        catalogue_content_index: ``(K,)`` int64 index into ``content_item_ids`` of the items
            sampled from the catalogue for CIC (``K = 0`` when none are; their ids are the
            ``CATALOGUE_FEATURE`` of ``sequence_features``).
        content_pooled: modality name -> ``(U, W_m)`` float16 stored pooled vector of each distinct
            item (the masked mean of its tokens), sent with token-level content for EM3's pooled
            base; empty when not loaded.
    """

    sparse_features: KeyedJaggedTensor
    sequence_features: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    user_ids: torch.Tensor
    item_ids: torch.Tensor
    history_mask: torch.Tensor
    content_item_ids: torch.Tensor
    target_content_index: torch.Tensor
    history_content_index: torch.Tensor
    content_tokens: dict[str, torch.Tensor]
    content_token_mask: dict[str, torch.Tensor]
    catalogue_content_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    content_pooled: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    def _map(self, fn) -> "Batch":  # noqa: ANN001 - fn maps a tensor or KJT to the same type
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            changes[f.name] = {k: fn(v) for k, v in value.items()} if isinstance(value, dict) else fn(value)
        return replace(self, **changes)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device=device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            for t in value.values() if isinstance(value, dict) else [value]:
                t.record_stream(stream)
