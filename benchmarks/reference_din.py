"""A plain-PyTorch reference of the ID-only DIN: ``nn.EmbeddingBag`` / ``nn.Embedding`` + DDP.

The same model as ``build_model(ModelConfig(backbone="din", content="none"))`` with the TorchRec
ID side (``EmbeddingBagCollection`` + ``EmbeddingCollection`` under ``DistributedModelParallel``)
replaced by what a PyTorch user writes without TorchRec: one ``nn.EmbeddingBag(mode="mean")`` per
pooled table, one ``nn.Embedding`` for the item table shared by target and history, the whole model
replicated on every rank and wrapped in ``DistributedDataParallel``. The dense part is our own
:class:`~em3rec.modules.backbones.DINBackbone`, so the two paths differ only in how the ID tables are
stored, looked up, synchronised and updated: the difference ``python -m benchmarks.throughput`` measures.

Two flavours of the tables (``sparse``):

- ``True``: sparse gradients (only the looked-up rows), all-reduced by DDP as sparse tensors, and
  ``torch.optim.Adagrad``'s sparse update (the closest plain-PyTorch optimiser to TorchRec's fused
  row-wise Adagrad).
- ``False``: dense gradients of every table, all-reduced in full, dense Adagrad over every row.

Example::

    model = ReferenceDIN(meta, ModelConfig(backbone="din", content="none"), sparse=True)
    loss = model(batch)            # weighted BCE, as EM3Train's
    optimizer = reference_optimizer(ddp_model, OptimConfig())
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from em3rec.config import ModelConfig, OptimConfig
from em3rec.data.batch import Batch
from em3rec.data.schema import DatasetMeta
from em3rec.modules.backbones import DINBackbone, RankingInputs


class ReferenceIdArch(nn.Module):
    """The ID side with plain PyTorch embedding modules (same tables and outputs as ``IdArch``).

    Args:
        meta (DatasetMeta): features; those sharing ``FeatureSpec.table`` share a table.
        dim (int): ``D``.
        sparse (bool): sparse gradients for every table.
    """

    def __init__(self, meta: DatasetMeta, dim: int, sparse: bool) -> None:
        super().__init__()
        sizes: dict[str, int] = {}
        self._table_of: dict[str, str] = {}
        for f in meta.features_of("user", "single", "multi"):
            sizes[f.table] = max(sizes.get(f.table, 0), f.vocab_size)
            self._table_of[f.name] = f.table
        self._pooled_features = list(self._table_of)  # the EBC's order: tables in meta order
        self.bags = nn.ModuleDict({t: nn.EmbeddingBag(n, dim, mode="mean", sparse=sparse) for t, n in sizes.items()})
        item, history = meta.features_of("item")[0], meta.features_of("history")[0]
        self.items = nn.Embedding(max(item.vocab_size, history.vocab_size), dim, sparse=sparse)
        self._item_feature, self._history_feature = item.name, history.name

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``pooled (B, F, D)``, ``target (B, D)``, ``history (B, L, D)`` (zeros at padding)."""
        features = batch.sparse_features.to_dict()
        pooled = [
            self.bags[self._table_of[name]](features[name].values(), features[name].offsets()[:-1])  # (B, D)
            for name in self._pooled_features
        ]
        sequence = batch.sequence_features.to_dict()
        target = self.items(sequence[self._item_feature].values())  # (B, D)
        mask = batch.history_mask  # (B, L)
        history_ids = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
        history_ids[mask] = sequence[self._history_feature].values()  # left-aligned, row-major
        history = self.items(history_ids) * mask.unsqueeze(-1)  # (B, L, D)
        return torch.stack(pooled, dim=1), target, history


class ReferenceDIN(nn.Module):
    """ID-only DIN without TorchRec: :class:`ReferenceIdArch` + ``DINBackbone`` + weighted BCE.

    Args:
        meta (DatasetMeta): features.
        config (ModelConfig): ``embedding_dim``, ``attention_hidden``, ``attention_softmax``,
            ``over_layers``, ``dropout`` (the DIN backbone's).
        sparse (bool): sparse embedding gradients.
    """

    def __init__(self, meta: DatasetMeta, config: ModelConfig, sparse: bool) -> None:
        super().__init__()
        self.id_arch = ReferenceIdArch(meta, config.embedding_dim, sparse)
        num_pooled = len(meta.features_of("user", "single", "multi"))
        self.backbone = DINBackbone(
            num_pooled,
            0,
            config.embedding_dim,
            config.attention_hidden,
            config.attention_softmax,
            config.over_layers,
            config.dropout,
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        """The loss ``sum(w * BCE) / sum(w)`` of ``batch`` (as ``EM3Train``)."""
        pooled, target, history = self.id_arch(batch)
        B, D = target.shape
        inputs = RankingInputs(pooled, target, history, batch.history_mask, target.new_zeros(B, 0, D))
        logits = self.backbone(inputs)  # (B,)
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels, weight=batch.weights, reduction="sum")
        return bce / batch.weights.sum().clamp_min(1.0)


class ReferenceOptimizer:
    """Adagrad on the embedding tables (sparse or dense, as their gradients) and AdamW on the rest."""

    def __init__(self, model: nn.Module, config: OptimConfig) -> None:
        tables = [p for n, p in model.named_parameters() if ".id_arch." in f".{n}"]
        dense = [p for n, p in model.named_parameters() if ".id_arch." not in f".{n}"]
        self._optimizers = [
            torch.optim.Adagrad(tables, lr=config.embedding_lr, eps=1e-8),
            torch.optim.AdamW(dense, lr=config.dense_lr, weight_decay=config.weight_decay),
        ]

    def zero_grad(self) -> None:
        for o in self._optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self._optimizers:
            o.step()


def reference_optimizer(model: nn.Module, config: OptimConfig) -> ReferenceOptimizer:
    """The reference's optimiser over ``model`` (a ``ReferenceDIN`` or its DDP wrapper)."""
    return ReferenceOptimizer(model, config)
