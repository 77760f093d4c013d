"""The content side of a batch: item content embeddings for the target and every history position.

A batch carries its ``U`` distinct items' modality tokens once (``Batch.content_tokens``) and, for
the target and each history position, an index into them. :class:`ContentTower` (EM3) encodes
each distinct item once and gathers (``dedup = True``); ``dedup = False`` is the naive reference
that encodes every position separately, kept as the test oracle.

History content (``seq_content_mode``):

- ``none``: no history content.
- ``frozen``: the history items go through the same Q-Former under ``no_grad``.
- ``lora``: the history branch is the same Q-Former with its base weights frozen *for that branch*
  plus trainable low-rank adapters (peft); the target branch runs with the adapters disabled and
  trains the base. See :func:`add_history_adapters`.
- ``full``: full gradient through history content; one encoding of all distinct items serves both.
- ``cached`` (beyond the paper): a memory bank of history-item embeddings, see :class:`ContentTower`.

:class:`FrozenContentTower` is the two-stage baseline (``ModelConfig.content = "frozen"``): the
pre-extracted pooled per-modality vectors through one trainable Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from em3rec.config import LoraConfig
from em3rec.data.batch import Batch
from em3rec.modules.fusion_qformer import FusionQFormer

SEQ_CONTENT_MODES = ("none", "frozen", "lora", "full", "cached")
HISTORY_ADAPTER = "history"


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
        first_row = torch.full((V,), B, dtype=torch.long, device=inverse.device).scatter_reduce(0, inverse, rows, "amin")
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
    """

    target: torch.Tensor
    history: torch.Tensor | None
    item_content: torch.Tensor


def _place_history(values: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
    """``values (P, D)`` for the ``P`` True positions of ``history_mask (B, L)`` -> ``(B, L, D)``."""
    B, L = history_mask.shape
    out = values.new_zeros(B, L, values.shape[-1])
    return out.index_put((history_mask,), values)  # (B, L, D)


def lora_target_names(module: nn.Module, names: list[str]) -> list[str]:
    """Qualified names of the ``nn.Linear`` submodules that have one of ``names`` as a path component.

    ``["attn", "token_proj"]`` on a :class:`FusionQFormer` gives ``layers.0.attn.q_proj``, ...,
    ``token_proj.title``, ...; a name that matches nothing is skipped, but something must match.
    """
    wanted = set(names)
    targets = [
        fqn for fqn, m in module.named_modules() if isinstance(m, nn.Linear) and wanted & set(fqn.split("."))
    ]
    if not targets:
        raise ValueError(f"LoRA target_modules {names} match no nn.Linear in {type(module).__name__}")
    return targets


def add_history_adapters(qformer: nn.Module, config: LoraConfig) -> list[str]:
    """Inject peft LoRA adapters (adapter name ``"history"``) into ``qformer``; keep its base trainable.

    peft's ``inject_adapter_in_model`` sets ``requires_grad=False`` on every base parameter; the
    target branch trains the base, so it is turned back on here. The history branch must then keep
    its gradient off the base, which :class:`ContentTower` does by calling it through
    ``torch.func.functional_call`` with detached base parameters. Adapters are left disabled (the
    target branch's state); the history branch enables them for its call only.

    Args:
        qformer (nn.Module): the module to adapt in place.
        config (LoraConfig): ``rank``, ``alpha``, ``dropout``, ``target_modules``.

    Returns:
        list[str]: the names of the base (non-adapter) parameters.
    """
    peft_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=lora_target_names(qformer, config.target_modules),
    )
    peft.inject_adapter_in_model(peft_config, qformer, adapter_name=HISTORY_ADAPTER)
    base = []
    for name, p in qformer.named_parameters():
        if "lora_" not in name:
            p.requires_grad_(True)
            base.append(name)
    _set_adapters(qformer, enabled=False)
    return base


def _set_adapters(module: nn.Module, enabled: bool) -> None:
    # peft's enable_adapters() also flips the adapters' requires_grad, which must stay fixed for
    # DDP; the private flag is what LoraLayer.forward reads.
    for m in module.modules():
        if isinstance(m, BaseTunerLayer):
            m._disable_adapters = not enabled


class ContentTower(nn.Module):
    """EM3's content side: Fusion-Q-Former embeddings for the target and the history of each row.

    With ``dedup`` every distinct item is encoded once per branch and gathered; ``dedup = False``
    encodes every target row and every history position separately (the reference).

    ``lora`` mode: the adapters are injected into ``qformer`` itself (one set of base weights). The
    target branch runs with the adapters disabled and trains the base; the history branch calls
    the Q-Former through ``torch.func.functional_call`` with its base parameters *detached* and the
    adapters enabled, so the base gets gradients from the target branch only and the adapters from
    the history branch only (tests check both). With no adapter dropout each adapter is folded into
    its Linear for that call (``W.detach() + s B A``, ``merge_history_adapters``): the same values
    and gradients as peft's forward, without its low-rank passes over every row. The alternative, a separate history copy whose
    base is synced every N steps, is not implemented: it would double the dense state and make the
    history side lag.

    ``cached`` mode keeps a memory bank ``(num_items, D)`` of history-item content embeddings with
    a per-item last-refresh step. In training, each step writes the target branch's detached
    outputs into the bank, history positions read the bank, and entries older than
    ``cache_refresh_steps`` steps or never filled are recomputed under ``no_grad`` first. So the
    history content has no gradient (like ``frozen``) but costs a fraction of its forward. In eval
    the history is encoded fresh under ``no_grad`` (the model is fixed; the bank is a training-time
    approximation). The bank is a non-persistent buffer: each rank keeps its own (it must not be
    broadcast by DDP; DMP's default DDP wrapper uses ``broadcast_buffers=False``, and a custom DDP
    must too), and it starts empty after a restart.

    Args:
        qformer (FusionQFormer): the item encoder (its ``pooled`` output is the embedding).
        seq_content_mode (str): ``none | frozen | lora | full | cached``.
        dedup (bool): encode distinct items once (True) or every position (False; not with ``cached``).
        lora (LoraConfig | None): the adapters for ``lora`` mode.
        num_items (int): bank rows for ``cached`` mode (item vocabulary size).
        cache_refresh_steps (int): ``cached`` mode: an entry written at step ``s`` is read through
            step ``s + cache_refresh_steps`` and recomputed after.

    Example::

        tower = ContentTower(FusionQFormer({"title": 384}, QFormerConfig()), "lora", lora=LoraConfig())
        out = tower(batch, DistinctTargets.of(batch.target_content_index, batch.weights))
        out.target.shape, out.history.shape  # (B, D), (B, L, D)
    """

    def __init__(
        self,
        qformer: FusionQFormer,
        seq_content_mode: str,
        dedup: bool = True,
        lora: LoraConfig | None = None,
        num_items: int = 0,
        cache_refresh_steps: int = 50,
    ) -> None:
        super().__init__()
        if seq_content_mode not in SEQ_CONTENT_MODES:
            raise ValueError(f"seq_content_mode = {seq_content_mode!r}; expected one of {SEQ_CONTENT_MODES}")
        if seq_content_mode == "cached" and not dedup:
            raise ValueError("seq_content_mode = 'cached' works on distinct items; it needs dedup = True")
        self.qformer = qformer
        self._mode = seq_content_mode
        self._dedup = dedup
        self._base_names: list[str] = []
        self._adapted: list[tuple[str, str, str, float]] = []  # (base weight, A, B, scaling) per adapted Linear
        lora = lora or LoraConfig()
        if seq_content_mode == "lora":
            self._base_names = add_history_adapters(qformer, lora)
            for name, module in qformer.named_modules():
                if isinstance(module, peft.tuners.lora.LoraLayer) and HISTORY_ADAPTER in module.lora_A:
                    self._adapted.append((
                        f"{name}.base_layer.weight", f"{name}.lora_A.{HISTORY_ADAPTER}.weight",
                        f"{name}.lora_B.{HISTORY_ADAPTER}.weight", float(module.scaling[HISTORY_ADAPTER]),
                    ))  # fmt: skip
        # The history branch folds each adapter into its Linear's weight (W + s B A) instead of running
        # peft's extra low-rank passes over every row; exact without adapter dropout.
        self.merge_history_adapters = lora.dropout == 0.0
        self._refresh_steps = cache_refresh_steps
        self.last_refresh_count = 0  # `cached`: bank entries recomputed in the last training step
        if seq_content_mode == "cached":
            if num_items < 1:
                raise ValueError("seq_content_mode = 'cached' needs num_items (the bank size)")
            out_dim = qformer.head.out_features
            self.register_buffer("_bank", torch.zeros(num_items, out_dim), persistent=False)
            self.register_buffer("_bank_step", torch.full((num_items,), -1, dtype=torch.long), persistent=False)
            self.register_buffer("_step", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def seq_content_mode(self) -> str:
        return self._mode

    def encode_items(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Target-branch content embeddings ``(U, D)`` of items given as ``(N, T_m, W_m)`` tokens:
        rows ``index (U,)`` of them (None: all, ``U = N``)."""
        return self.qformer(tokens, token_mask, index).pooled

    def _encode_history(
        self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor], index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The history branch for rows ``index`` of the tokens: ``(U, D)``; no gradient reaches the
        Q-Former's base weights."""
        if self._mode == "frozen" or self._mode == "cached":
            with torch.no_grad():
                return self.encode_items(tokens, token_mask, index)
        if self._mode == "full":
            return self.encode_items(tokens, token_mask, index)
        # lora: base weights enter as detached tensors, so only the adapters get this branch's grads.
        params = dict(self.qformer.named_parameters())
        detached = {name: params[name].detach() for name in self._base_names}
        if self.merge_history_adapters:
            # x (W + s B A)^T = x W^T + s (x A^T) B^T: one matmul per adapted Linear instead of three
            # passes over the rows, and the adapters' gradients through an (out, in) weight gradient.
            for base, a, b, scaling in self._adapted:
                detached[base] = detached[base] + scaling * (params[b] @ params[a])  # (out, in)
            return torch.func.functional_call(self.qformer, detached, (tokens, token_mask, index)).pooled
        _set_adapters(self.qformer, enabled=True)
        try:
            out = torch.func.functional_call(self.qformer, detached, (tokens, token_mask, index))
        finally:
            _set_adapters(self.qformer, enabled=False)
        return out.pooled

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

        if self._mode == "full":
            items = self.encode_items(tokens, token_mask)  # (U, D): every distinct item, once
            history = items[batch.history_content_index]  # (B, L, D)
            history = torch.where(mask[..., None], history, torch.zeros_like(history))
            item_content = items[targets.index]  # (V, D)
            return ContentOutput(target=item_content[targets.inverse], history=history, item_content=item_content)

        item_content = self.encode_items(tokens, token_mask, targets.index)  # (V, D)
        history = None
        if self._mode != "none":
            # Only the items at real history positions: (H,) distinct, (P,) one per real position.
            history_index, position_item = torch.unique(batch.history_content_index[mask], return_inverse=True)
            if self._mode == "cached" and self.training:
                history_items = self._read_bank(batch, targets, item_content, history_index)  # (H, D)
            elif self._mode in ("frozen", "cached"):
                history_items = self._frozen_history(batch, targets, item_content, history_index)  # (H, D)
            else:
                history_items = self._encode_history(tokens, token_mask, history_index)  # (H, D)
            history = _place_history(history_items[position_item], mask)  # (B, L, D)
        return ContentOutput(target=item_content[targets.inverse], history=history, item_content=item_content)

    def _frozen_history(
        self, batch: Batch, targets: DistinctTargets, item_content: torch.Tensor, history_index: torch.Tensor
    ) -> torch.Tensor:
        """``frozen`` history ``(H, D)``: history items that are also targets reuse the target branch's
        (detached) output; only the others are encoded, under ``no_grad``."""
        U = batch.content_item_ids.shape[0]
        target_position = torch.full((U,), -1, dtype=torch.long, device=history_index.device)
        target_position[targets.index] = torch.arange(targets.index.shape[0], device=history_index.device)
        position = target_position[history_index]  # (H,), -1 = not a target
        is_target = position >= 0
        history_items = item_content.detach().new_empty(history_index.shape[0], item_content.shape[-1])
        history_items[is_target] = item_content.detach()[position[is_target]]
        rest = history_index[~is_target]
        history_items[~is_target] = self._encode_history(batch.content_tokens, batch.content_token_mask, rest)
        return history_items

    def _read_bank(
        self, batch: Batch, targets: DistinctTargets, item_content: torch.Tensor, history_index: torch.Tensor
    ) -> torch.Tensor:
        """``cached`` mode, training: write the targets, refresh stale history entries, read. ``(H, D)``."""
        step = self._step
        target_ids = batch.content_item_ids[targets.index]  # (V,)
        self._bank[target_ids] = item_content.detach().to(self._bank.dtype)
        self._bank_step[target_ids] = step
        history_ids = batch.content_item_ids[history_index]  # (H,)
        last = self._bank_step[history_ids]  # (H,)
        stale = (last < 0) | (step - last > self._refresh_steps)  # (H,)
        self.last_refresh_count = int(stale.sum())
        if self.last_refresh_count:
            refresh = history_index[stale]
            fresh = self._encode_history(batch.content_tokens, batch.content_token_mask, refresh)
            self._bank[history_ids[stale]] = fresh.to(self._bank.dtype)
            self._bank_step[history_ids[stale]] = step
        self._step += 1
        return self._bank[history_ids].to(item_content.dtype)  # (H, D), no gradient

    def _forward_per_position(self, batch: Batch, targets: DistinctTargets) -> ContentOutput:
        """The reference: every target row and every history position encoded on its own."""
        tokens, token_mask = batch.content_tokens, batch.content_token_mask
        target = self.encode_items(tokens, token_mask, batch.target_content_index)  # (B, D)
        history = None
        if self._mode != "none":
            B, L = batch.history_mask.shape
            flat = batch.history_content_index.reshape(-1)  # (B*L,)
            encode = self.encode_items if self._mode == "full" else self._encode_history
            history = encode(tokens, token_mask, flat).view(B, L, -1)  # (B, L, D)
            history = torch.where(batch.history_mask[..., None], history, torch.zeros_like(history))
        return ContentOutput(target=target, history=history, item_content=target[targets.first_row])


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

    def forward(self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """Args: modality -> ``(U, T_m, W_m)`` tokens and ``(U, T_m)`` masks. Returns ``(U, D)``."""
        pooled = []
        for m in self._modalities:
            w = token_mask[m].to(self.proj.weight.dtype).unsqueeze(-1)  # (U, T_m, 1)
            x = tokens[m].to(self.proj.weight.dtype)  # (U, T_m, W_m)
            pooled.append((x * w).sum(1) / w.sum(1).clamp_min(1.0))  # (U, W_m)
        return self.proj(torch.cat(pooled, dim=-1))  # (U, D)


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

    def encode_items(self, tokens: dict[str, torch.Tensor], token_mask: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, D)`` content embeddings of items given as ``(N, T_m, W_m)`` tokens."""
        return self.projection(tokens, token_mask)

    def forward(self, batch: Batch, targets: DistinctTargets) -> ContentOutput:
        """Same contract as :meth:`ContentTower.forward`."""
        items = self.projection(batch.content_tokens, batch.content_token_mask)  # (U, D)
        history = None
        if self._use_history:
            history = items[batch.history_content_index]  # (B, L, D)
            history = torch.where(batch.history_mask[..., None], history, torch.zeros_like(history))
        item_content = items[targets.index]  # (V, D)
        return ContentOutput(target=item_content[targets.inverse], history=history, item_content=item_content)
