"""A memory bank of the Q-Former's token side per item, for the LoRA history branch.

With adapters on the query side only, the history branch reads each item's token side (the keys
and values of its tokens, :class:`~em3rec.modules.fusion_qformer.TokenContext`) as the base weights
give it, without gradient. Computing it fresh for every history item that is not also a target is
most of that branch's forward (~1,000 items per ml-100k batch). The bank keeps it per item instead:
each training step writes the target branch's fresh token side of the batch's targets, recomputes
entries older than ``refresh_steps`` steps (or never written), and reads the rest. The base weights
move little in ``refresh_steps`` steps, so the history branch sees token sides up to that many
steps old; the adapters' path (the query side) is computed fresh every step.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from em3rec.modules.fusion_qformer import TokenContext

logger = logging.getLogger(__name__)


class ContextBank(nn.Module):
    """Per-item token sides ``(num_items, H, K, d/H)`` per layer and attention, refreshed by age.

    The tensors are allocated at the first write, with the shapes and dtype of the token side
    written, and are no state of the model: not in ``state_dict`` (a checkpoint holds none; the bank
    starts empty after a restart), not broadcast by DDP; each rank keeps its own.

    Args:
        num_items (int): bank rows (the item vocabulary size).
        refresh_steps (int): an entry written at step ``s`` is read through step
            ``s + refresh_steps`` and recomputed after.

    Example::

        bank = ContextBank(num_items=1683, refresh_steps=20)
        context = bank(target_ids, target_context, history_ids, compute)  # (H items) TokenContext
    """

    def __init__(self, num_items: int, refresh_steps: int) -> None:
        super().__init__()
        if num_items < 1 or refresh_steps < 1:
            raise ValueError(
                f"a token-side bank needs num_items >= 1 and refresh_steps >= 1; got {num_items}, {refresh_steps}"
            )
        self.num_items = num_items
        self.refresh_steps = refresh_steps
        self.step = 0
        self.last_refresh_count = 0  # entries recomputed in the last step
        self._keys_values: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._token_mask: torch.Tensor | None = None  # (num_items, T) bool
        self._written_at: torch.Tensor | None = None  # (num_items,) int64 step, -1 = never

    def _allocate(self, like: TokenContext) -> None:
        device = like.token_mask.device
        self._keys_values = [
            (k.new_zeros(self.num_items, *k.shape[1:]), v.new_zeros(self.num_items, *v.shape[1:]))
            for k, v in like.keys_values
        ]
        self._token_mask = like.token_mask.new_zeros(self.num_items, like.token_mask.shape[1])
        self._written_at = torch.full((self.num_items,), -1, dtype=torch.long, device=device)
        size = sum(k.numel() * k.element_size() * 2 for k, _ in self._keys_values) / 2**20
        logger.info(
            "LoRA history token-side bank: %d items, %.0f MB (%s)", self.num_items, size, like.token_mask.device
        )

    def _write(self, item_ids: torch.Tensor, context: TokenContext) -> None:
        """Rows ``item_ids (N,)`` <- ``context``; a row with a non-finite key or value is written as
        never filled, so it is recomputed when next read, not served (a batch dropped under
        ``train.nan_policy = "skip"`` leaves no bad entry behind)."""
        if self._written_at is None:
            self._allocate(context)
        finite = torch.ones_like(item_ids, dtype=torch.bool)  # (N,)
        for (bank_k, bank_v), (k, v) in zip(self._keys_values, context.keys_values):
            bank_k[item_ids] = k.detach().to(bank_k.dtype)
            bank_v[item_ids] = v.detach().to(bank_v.dtype)
            finite &= torch.isfinite(k).flatten(1).all(dim=1) & torch.isfinite(v).flatten(1).all(dim=1)
        self._token_mask[item_ids] = context.token_mask
        self._written_at[item_ids] = torch.where(finite, self.step, -1)

    def forward(
        self,
        target_ids: torch.Tensor,
        target_context: TokenContext,
        history_ids: torch.Tensor,
        compute: Callable[[torch.Tensor], TokenContext],
    ) -> TokenContext:
        """The token side of ``history_ids (H,)``, without gradient, and advance one step.

        Args:
            target_ids (torch.Tensor): ``(V,)`` item ids of the batch's targets.
            target_context (TokenContext): their fresh token side (its first ``V`` rows are read).
            history_ids (torch.Tensor): ``(H,)`` distinct item ids of the history.
            compute: ``rows (R,) -> TokenContext`` of those positions of ``history_ids``, fresh
                (called under ``no_grad`` for the stale entries only).

        Returns:
            TokenContext: ``H`` rows, in ``history_ids``' order.
        """
        self._write(target_ids, target_context.head(target_ids.shape[0]))
        written = self._written_at[history_ids]  # (H,) step of each entry's write, -1 = never
        stale = ((written < 0) | (self.step - written > self.refresh_steps)).nonzero().squeeze(1)  # (R,)
        self.last_refresh_count = stale.shape[0]
        if self.last_refresh_count:
            with torch.no_grad():
                self._write(history_ids[stale], compute(stale))
        self.step += 1
        return TokenContext(
            [(k.index_select(0, history_ids), v.index_select(0, history_ids)) for k, v in self._keys_values],
            self._token_mask.index_select(0, history_ids),
        )
