"""The history branch of EM3's content tower: one module per ``seq_content_mode``, chosen at build.

Each encoder maps the batch's distinct history items to their Q-Former content embeddings ``(H, D)``
and differs only in how gradients (and compute) reach the shared Q-Former:

- :class:`NoGradHistory` (``frozen``): the same Q-Former under ``no_grad``.
- :class:`LoraHistory` (``lora``): the Q-Former's base weights detached plus trainable peft LoRA
  adapters, so the long side trains only low-rank matrices.
- :class:`FullHistory` (``full``): full gradient, as the target branch.
- :class:`CachedHistory` (``cached``, beyond the paper): a memory bank refreshed every N steps.
- :class:`PooledHistory` (``pooled``, beyond the paper): no Q-Former part at all; with the tower's
  pooled base, history content is the two-stage baseline's (pooled vectors through the shared,
  trained projection), and the Q-Former reads only the targets.

The Q-Former is owned by :class:`~em3rec.modules.content_tower.ContentTower` and passed to every
call (an encoder holding it as a submodule would register its parameters twice). ``encode`` is
the branch's plain function of the tokens (what the per-position reference calls); ``forward``
may be faster on a deduplicated batch, e.g. by reusing the target branch's outputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import peft
import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from em3rec.config import LoraConfig
from em3rec.modules.context_bank import ContextBank
from em3rec.modules.fusion_qformer import FusionQFormer, TokenContext

HISTORY_ADAPTER = "history"


@dataclass
class HistoryItems:
    """The distinct history items of a batch and the target branch's outputs to reuse.

    Fields:
        tokens, token_mask: modality -> ``(U, T_m, W_m)`` / ``(U, T_m)``: the batch's distinct items.
        item_ids: ``(U,)`` int64 item id of each distinct item.
        index: ``(H,)`` int64 rows of the distinct items at real history positions.
        target_index: ``(V,)`` int64 rows of the distinct target items.
        target_content: ``(V, D)`` the target branch's Q-Former output for them (with gradient).
        target_context: the target branch's token side, its first ``V`` rows those targets (None
            where the Q-Former has no separate token side).
        target_queries: ``(V, Q, d)`` the target branch's final query vectors for them, the input
            of the Q-Former's head (None: not given).
    """

    tokens: dict[str, torch.Tensor]
    token_mask: dict[str, torch.Tensor]
    item_ids: torch.Tensor
    index: torch.Tensor
    target_index: torch.Tensor
    target_content: torch.Tensor
    target_context: TokenContext | None = None
    target_queries: torch.Tensor | None = None

    def target_position(self) -> torch.Tensor:
        """``(H,)`` int64: each history item's row in ``target_content``, or -1 if it is no target."""
        U = self.item_ids.shape[0]
        position = torch.full((U,), -1, dtype=torch.long, device=self.index.device)
        position[self.target_index] = torch.arange(self.target_index.shape[0], device=self.index.device)
        return position[self.index]


def _reuse_targets(items: HistoryItems, reused: torch.Tensor, encode) -> torch.Tensor:
    """``(H, ...)``: history items that are also targets take their row of ``reused`` ``(V, ...)``
    (a target branch output); only the others are encoded, by ``encode(index)``."""
    position = items.target_position()  # (H,)
    is_target = position >= 0
    rest = encode(items.index[~is_target])  # (H - H_t, ...)
    out = rest.new_zeros(items.index.shape[0], *rest.shape[1:])
    out = out.index_put((is_target,), reused[position[is_target]].to(rest.dtype))
    return out.index_put((~is_target,), rest)  # (H, ...)


def _query_vectors(qformer: FusionQFormer, tokens, token_mask, index: torch.Tensor) -> torch.Tensor:
    """``(U, Q, d)``: the Q-Former's final query vectors (its head's input) for rows ``index (U,)``."""
    return qformer(tokens, token_mask, index).query_embeddings


class NoGradHistory(nn.Module):
    """``frozen``: history content from the target branch's Q-Former, without gradient."""

    mode = "frozen"

    def encode(self, qformer: FusionQFormer, tokens, token_mask, index: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return qformer(tokens, token_mask, index).pooled

    def forward(self, qformer: FusionQFormer, items: HistoryItems) -> torch.Tensor:
        encode = functools.partial(self.encode, qformer, items.tokens, items.token_mask)
        return _reuse_targets(items, items.target_content.detach(), encode)


class FullHistory(nn.Module):
    """``full``: history content with full gradient into the Q-Former (the cost LoRA avoids)."""

    mode = "full"

    def encode(self, qformer: FusionQFormer, tokens, token_mask, index: torch.Tensor | None) -> torch.Tensor:
        return qformer(tokens, token_mask, index).pooled

    def forward(self, qformer: FusionQFormer, items: HistoryItems) -> torch.Tensor:
        encode = functools.partial(self.encode, qformer, items.tokens, items.token_mask)
        return _reuse_targets(items, items.target_content, encode)


def lora_target_names(module: nn.Module, names: list[str]) -> list[str]:
    """Qualified names of the ``nn.Linear`` submodules that have one of ``names`` as a path component.

    ``["attn", "token_proj"]`` on a :class:`FusionQFormer` gives ``layers.0.attn.q_proj``, ...,
    ``token_proj.title``, ...; a name that matches nothing is skipped, but something must match.
    """
    wanted = set(names)
    targets = [fqn for fqn, m in module.named_modules() if isinstance(m, nn.Linear) and wanted & set(fqn.split("."))]
    if not targets:
        raise ValueError(f"LoRA target_modules {names} match no nn.Linear in {type(module).__name__}")
    return targets


def _set_adapters(module: nn.Module, enabled: bool) -> None:
    # peft's enable_adapters() also flips the adapters' requires_grad, which must stay fixed for
    # DDP; the private flag is what LoraLayer.forward reads.
    for m in module.modules():
        if isinstance(m, BaseTunerLayer):
            m._disable_adapters = not enabled


class LoraHistory(nn.Module):
    """``lora``: the Q-Former with its base weights frozen *for this branch* plus peft LoRA adapters.

    The adapters (adapter name ``"history"``) are injected into the Q-Former itself, so there is
    one set of base weights. peft's ``inject_adapter_in_model`` sets ``requires_grad=False`` on
    every base parameter; the target branch trains the base, so it is turned back on, and this
    branch calls the Q-Former through ``torch.func.functional_call`` with its base parameters
    *detached*: the base gets gradients from the target branch only, the adapters from this branch
    only (tests check both). Adapters stay disabled outside this call (the target branch's state).
    With no adapter dropout each adapter is folded into its Linear for the call (``W.detach() +
    s B A``, peft's ``get_delta_weight``): the same values and gradients as peft's forward, without its low-rank passes over
    every row (``merge = False`` runs peft's forward, the reference). The alternative, a separate
    history copy whose base is synced every N steps, would double the dense state and make the
    history side lag.

    With adapters on the query side only (the default ``target_modules``) and a Q-Former whose
    token side does not depend on the queries (``FusionQFormer.separable``), the branch runs the
    adapted Q-Former over the token side that the base weights give (``shares_context``): the target
    branch's, detached, for history items that are also targets, and one computed without gradient
    for the others. The same values and gradients as the full call (:meth:`encode`, the reference),
    without the token side's second forward and its backward. Adapters on ``token_proj`` or on the
    token keys/values take the full call.

    With adapters on the output head only (``target_modules = ["head"]``, ``head_only``: any
    Q-Former) everything before the head is the base weights' alone, so the branch takes the target
    branch's final query vectors (detached) for history items that are also targets, decodes only
    the others without gradient, and runs the adapted head over them: again the values and
    gradients of the full call, without a second decode of the shared items or an autograd graph
    through the Q-Former.

    With ``config.context_refresh_steps = N > 0`` (and a shared token side) training reads the
    token side of history items from a :class:`~em3rec.modules.context_bank.ContextBank`: the
    targets' entries fresh from the target branch, the others up to ``N`` steps old. Evaluation
    computes it fresh.

    Args:
        qformer (FusionQFormer): the Q-Former to adapt in place.
        config (LoraConfig): ``rank``, ``alpha``, ``dropout``, ``target_modules``,
            ``context_refresh_steps``.
        num_items (int): the item vocabulary size (the bank's rows; needed with a bank only).

    Example::

        history = LoraHistory(qformer, LoraConfig(rank=4))
        content = history.encode(qformer, tokens, token_mask, index)  # (H, D)
    """

    mode = "lora"

    def __init__(self, qformer: FusionQFormer, config: LoraConfig, num_items: int = 0) -> None:
        super().__init__()
        targets = lora_target_names(qformer, config.target_modules)
        peft_config = peft.LoraConfig(
            r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets
        )
        peft.inject_adapter_in_model(peft_config, qformer, adapter_name=HISTORY_ADAPTER)
        self._base_names = []
        for name, p in qformer.named_parameters():
            if "lora_" not in name:
                p.requires_grad_(True)
                self._base_names.append(name)
        _set_adapters(qformer, enabled=False)
        self._adapted = [  # (base weight's name, its peft layer) per adapted Linear
            (f"{name}.base_layer.weight", module)
            for name, module in qformer.named_modules()
            if isinstance(module, peft.tuners.lora.LoraLayer) and HISTORY_ADAPTER in module.lora_A
        ]
        self.merge = config.merge and config.dropout == 0.0
        # Adapters on the query side only: a history item's token side is the target branch's.
        self.shares_context = qformer.separable and not set(targets) & qformer.token_side_linears()
        # Adapters on the head only (folded into it): the query vectors before it are the target branch's.
        self.head_only = targets == ["head"] and self.merge
        self.bank = None
        if config.context_refresh_steps > 0:
            if not self.shares_context:
                raise ValueError(
                    "model.lora.context_refresh_steps > 0 needs a token side the adapters do not change: adapters "
                    f"on the query side only (target_modules {config.target_modules} adapt {sorted(targets)}) and "
                    "one self-attention layer or cross-attention"
                )
            self.bank = ContextBank(num_items, config.context_refresh_steps)

    def _call(self, qformer: FusionQFormer, args: tuple, kwargs: dict) -> torch.Tensor:
        """``qformer(*args, **kwargs).pooled`` with the base weights detached and the adapters on."""
        params = dict(qformer.named_parameters())
        detached = {name: params[name].detach() for name in self._base_names}
        if self.merge:
            # x (W + s B A)^T = x W^T + s (x A^T) B^T: one matmul per adapted Linear instead of three
            # passes over the rows, and the adapters' gradients through an (out, in) weight gradient.
            for base, layer in self._adapted:
                detached[base] = detached[base] + layer.get_delta_weight(HISTORY_ADAPTER)  # (out, in): s B A
            return torch.func.functional_call(qformer, detached, args, kwargs).pooled
        _set_adapters(qformer, enabled=True)
        try:
            return torch.func.functional_call(qformer, detached, args, kwargs).pooled
        finally:
            _set_adapters(qformer, enabled=False)

    def encode(self, qformer: FusionQFormer, tokens, token_mask, index: torch.Tensor | None) -> torch.Tensor:
        return self._call(qformer, (tokens, token_mask, index), {})

    def _adapted_head(self, qformer: FusionQFormer, query_embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, Q, d)`` final query vectors -> ``(N, D)``: the head with its base weights detached
        and the adapter folded in, times the detached gate (the Q-Former's output, as :meth:`_call`
        computes it with adapters on the head only)."""
        head = qformer.head.base_layer
        weight = head.weight.detach() + qformer.head.get_delta_weight(HISTORY_ADAPTER)  # (D, Q d): W + s B A
        bias = None if head.bias is None else head.bias.detach()
        pooled = F.linear(query_embeddings.flatten(1), weight, bias)  # (N, D)
        return pooled if qformer.gate is None else pooled * qformer.gate.detach()

    def forward(self, qformer: FusionQFormer, items: HistoryItems) -> torch.Tensor:
        use_bank = self.bank is not None and self.training  # the token-side bank takes precedence
        if self.head_only and not use_bank and items.target_queries is not None:
            with torch.no_grad():
                decode = functools.partial(_query_vectors, qformer, items.tokens, items.token_mask)
                queries = _reuse_targets(items, items.target_queries.detach(), decode)  # (H, Q, d)
            return self._adapted_head(qformer, queries)  # (H, D)
        if not self.shares_context or items.target_context is None:
            return self.encode(qformer, items.tokens, items.token_mask, items.index)
        if use_bank:
            context = self.bank(
                items.item_ids[items.target_index],
                items.target_context,
                items.item_ids[items.index],
                lambda rows: qformer.context(items.tokens, items.token_mask, items.index[rows]),
            )
            return self._call(qformer, (), {"context": context})  # (H, D)
        # The token side (projections, keys and values: most of the work) is the base weights'
        # alone: history items that are also targets take the target branch's, detached; the
        # others' is computed without gradient. Only the query side runs with the adapters.
        # (With token dropout the shared items keep the target branch's draw.)
        position = items.target_position()  # (H,)
        is_target = position >= 0
        with torch.no_grad():
            rest = qformer.context(items.tokens, items.token_mask, items.index[~is_target])
        shared = items.target_context.select(position[is_target]).detach()
        context = TokenContext.cat([shared, rest])  # the H items, targets first
        order = torch.cat([is_target.nonzero().squeeze(1), (~is_target).nonzero().squeeze(1)])  # (H,)
        pooled = self._call(qformer, (), {"context": context})  # (H, D) in the context's order
        return torch.empty_like(pooled).index_copy(0, order, pooled)  # (H, D) in items.index's order


class CachedHistory(nn.Module):
    """``cached``: a memory bank ``(num_items, D)`` of history-item content embeddings.

    In training each step writes the target branch's detached outputs into the bank, history
    positions read it, and entries older than ``refresh_steps`` steps (or never filled) are
    recomputed under ``no_grad`` first: history content without gradient (like ``frozen``) at a
    fraction of its forward. In eval the history is encoded fresh (as ``frozen``). The bank is a
    non-persistent buffer: each rank keeps its own (DDP must not broadcast it; DMP's default DDP
    uses ``broadcast_buffers=False``), and it starts empty after a restart.

    Args:
        num_items (int): bank rows (the item vocabulary size).
        dim (int): width ``D`` of the content embeddings.
        refresh_steps (int): an entry written at step ``s`` is read through step
            ``s + refresh_steps`` and recomputed after.
    """

    mode = "cached"

    def __init__(self, num_items: int, dim: int, refresh_steps: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError("seq_content_mode = 'cached' needs num_items (the bank size)")
        self._refresh_steps = refresh_steps
        self._no_grad = NoGradHistory()
        self.last_refresh_count = 0  # bank entries recomputed in the last training step
        self.register_buffer("bank", torch.zeros(num_items, dim), persistent=False)
        self.register_buffer("bank_step", torch.full((num_items,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)

    def encode(self, qformer: FusionQFormer, tokens, token_mask, index: torch.Tensor | None) -> torch.Tensor:
        return self._no_grad.encode(qformer, tokens, token_mask, index)

    def _write(self, item_ids: torch.Tensor, content: torch.Tensor, step: torch.Tensor) -> None:
        """Bank rows ``item_ids (N,)`` <- ``content (N, D)``; a row with a non-finite value is
        written as never filled, so it is recomputed when next read, not served (a batch dropped
        under ``train.nan_policy = "skip"`` leaves no bad entry behind)."""
        self.bank[item_ids] = content.to(self.bank.dtype)
        finite = torch.isfinite(content).all(dim=1)  # (N,)
        self.bank_step[item_ids] = torch.where(finite, step, -1)

    def forward(self, qformer: FusionQFormer, items: HistoryItems) -> torch.Tensor:
        if not self.training:
            return self._no_grad(qformer, items)
        step = self.step
        target_ids = items.item_ids[items.target_index]  # (V,)
        self._write(target_ids, items.target_content.detach(), step)
        history_ids = items.item_ids[items.index]  # (H,)
        last = self.bank_step[history_ids]  # (H,)
        stale = (last < 0) | (step - last > self._refresh_steps)  # (H,)
        self.last_refresh_count = int(stale.sum())
        if self.last_refresh_count:
            fresh = self.encode(qformer, items.tokens, items.token_mask, items.index[stale])
            self._write(history_ids[stale], fresh, step)
        self.step += 1
        return self.bank[history_ids].to(items.target_content.dtype)  # (H, D), no gradient


class PooledHistory(nn.Module):
    """``pooled``: the Q-Former part of history content is 0; the content tower's pooled base (which
    this mode requires) is the whole of it. The history side then costs one Linear over the stored
    pooled vectors, and the loader need not send history items' tokens (see
    ``em3rec.modules.model.reads_history_tokens``). Measured on ml-100k, the gated Q-Former part of
    a trained tower is 3-4 % of the pooled base's norm (``benchmarks/content_share.py``)."""

    mode = "pooled"

    def encode(self, qformer: FusionQFormer, tokens, token_mask, index: torch.Tensor | None) -> torch.Tensor:
        rows = index.shape[0] if index is not None else next(iter(token_mask.values())).shape[0]
        return qformer.queries.new_zeros(rows, qformer.head.out_features)  # (H, D)

    def forward(self, qformer: FusionQFormer, items: HistoryItems) -> torch.Tensor:
        return items.target_content.new_zeros(items.index.shape[0], items.target_content.shape[-1])  # (H, D)


HistoryEncoder = NoGradHistory | FullHistory | LoraHistory | CachedHistory | PooledHistory
