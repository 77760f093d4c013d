"""What every content tower takes and returns: the batch's distinct targets and the content output."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DistinctTargets:
    """The batch's distinct target items.

    Fields:
        index: ``(V,)`` int64 index of each distinct target item into ``Batch.content_item_ids``.
        inverse: ``(B,)`` int64 position of each row's target in ``index``.
        first_row: ``(V,)`` int64 the first batch row whose target is that item.
        weight: ``(V,)`` float the largest ``Batch.weights`` among the item's rows (0: padding only).
    """

    index: torch.Tensor
    inverse: torch.Tensor
    first_row: torch.Tensor
    weight: torch.Tensor

    @staticmethod
    def of(target_content_index: torch.Tensor, weights: torch.Tensor) -> "DistinctTargets":
        """Args: ``target_content_index (B,)``, ``weights (B,)``."""
        index, inverse = torch.unique(target_content_index, return_inverse=True)  # (V,), (B,)
        V, B = index.shape[0], inverse.shape[0]
        rows = torch.arange(B, device=inverse.device)
        first_row = torch.full((V,), B, dtype=torch.long, device=inverse.device).scatter_reduce(
            0, inverse, rows, "amin"
        )
        weight = weights.new_zeros(V).scatter_reduce(0, inverse, weights, "amax")
        return DistinctTargets(index=index, inverse=inverse, first_row=first_row, weight=weight)


@dataclass
class ContentOutput:
    """Output of the content towers.

    Fields:
        target: ``(B, D)`` content embedding of each row's target item (target branch).
        history: ``(B, L, D)`` content embedding of each history position, zeros at padded
            positions; None when ``seq_content_mode = "none"``.
        item_content: ``(V, D)`` target-branch content embeddings of the distinct target items
            (``DistinctTargets.index`` order): the CIC input and what an export writes.
        catalogue: ``(K, D)`` target-branch content embeddings of the items sampled from the
            catalogue for CIC (``Batch.catalogue_content_index`` order; ``K = 0`` when none are).
    """

    target: torch.Tensor
    history: torch.Tensor | None
    item_content: torch.Tensor
    catalogue: torch.Tensor


def distinct_rows(index: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(index, return_inverse=True)`` for ``index (P,)`` with values in
    ``[0, num_rows)``: the distinct values ascending ``(H,)`` and each entry's position among them
    ``(P,)``. By a presence mask over the rows instead of a sort: O(P + num_rows)."""
    present = index.new_zeros(num_rows, dtype=torch.bool).index_fill_(0, index, True)  # (num_rows,)
    rank = present.cumsum(0) - 1  # (num_rows,): a present row's position among the present rows
    return present.nonzero().squeeze(1), rank.index_select(0, index)  # (H,), (P,)


def place_history(values: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
    """``values (P, D)`` for the ``P`` True positions of ``history_mask (B, L)`` -> ``(B, L, D)``."""
    B, L = history_mask.shape
    out = values.new_zeros(B, L, values.shape[-1])
    return out.index_put((history_mask,), values)  # (B, L, D)
