"""Ranking backbones: DLRM (dot interaction), DCN-v2 (low-rank cross net), DIN (target attention).

Every backbone takes the same :class:`RankingInputs` (ID embeddings plus 0-2 content feature
vectors) and returns one logit per row, so "with / without EM3" is only the number of content
vectors it sees. History ID pooling is the masked mean for DLRM and DCN-v2 and target attention for
DIN; the content interest (history content pooled by target attention) is computed by the model in
every backbone and arrives here as one of the content vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.models.dlrm import InteractionArch, OverArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP

from em3rec.config import BACKBONES, ModelConfig
from em3rec.modules.interest import TargetAttention


@dataclass
class RankingInputs:
    """What a backbone sees, all of width ``D``.

    Fields:
        pooled: ``(B, F, D)`` user and side-feature embeddings.
        target_id: ``(B, D)`` target item ID embedding.
        history_ids: ``(B, L, D)`` history item ID embeddings (zeros at padding).
        history_mask: ``(B, L)`` bool, True where a position holds an item.
        content: ``(B, C, D)`` content feature vectors: ``C = 0`` (ID only), 1 (target content) or
            2 (target content, content interest).
    """

    pooled: torch.Tensor
    target_id: torch.Tensor
    history_ids: torch.Tensor
    history_mask: torch.Tensor
    content: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x (B, L, D)`` over the True positions of ``mask (B, L)``; zeros for an empty row."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)


class DLRMBackbone(nn.Module):
    """DLRM: pairwise dot products of all feature vectors, then the over-arch.

    TorchRec's ``InteractionArch`` takes the target item ID embedding as its "dense" vector and the
    rest (pooled features, mean-pooled history IDs, content vectors) as its "sparse" vectors; its
    output ``[target_id, all pairwise dots]`` goes through ``OverArch(over_layers + [1])``. With
    ``raw_content`` the content vectors join that output as they are, as the dense vector does: a
    per-item content effect (an item bias, say) then reaches the over-arch directly instead of only
    through dot products with vectors that vary by user.

    Args:
        num_pooled (int): ``F``.
        num_content (int): ``C``.
        dim (int): ``D``.
        over_layers (list[int]): over-arch hidden sizes.
        dropout (float): on the over-arch input.
        raw_content (bool): also pass the ``C`` content vectors to the over-arch.
    """

    def __init__(
        self,
        num_pooled: int,
        num_content: int,
        dim: int,
        over_layers: list[int],
        dropout: float,
        raw_content: bool = False,
    ) -> None:
        super().__init__()
        num_vectors = num_pooled + 1 + num_content  # + the mean-pooled history
        self.inter_arch = InteractionArch(num_sparse_features=num_vectors)
        self._raw_content = raw_content
        self._dropout = nn.Dropout(dropout)
        raw = dim * (1 + (num_content if raw_content else 0))
        self.over_arch = OverArch(raw + (num_vectors + 1) * num_vectors // 2, over_layers + [1])

    def forward(self, inputs: RankingInputs) -> torch.Tensor:
        """Returns ``(B,)`` logits."""
        history = masked_mean(inputs.history_ids, inputs.history_mask).unsqueeze(1)  # (B, 1, D)
        vectors = torch.cat([inputs.pooled, history, inputs.content], dim=1)  # (B, F + 1 + C, D)
        interactions = self.inter_arch(inputs.target_id, vectors)  # (B, D + (F+2 choose 2))
        if self._raw_content:
            interactions = torch.cat([inputs.content.flatten(1), interactions], dim=1)  # (B, C*D + ...)
        return self.over_arch(self._dropout(interactions)).squeeze(-1)  # (B,)


class DCNBackbone(nn.Module):
    """DCN-v2 (parallel): a low-rank cross net and a deep MLP over the concatenated vectors, side by
    side; their concatenation goes through ``OverArch(over_layers + [1])``.

    Args:
        num_pooled (int): ``F``.
        num_content (int): ``C``.
        dim (int): ``D``.
        cross_layers (int): cross layers.
        cross_low_rank (int): rank of each cross layer.
        dense_layers (list[int]): deep tower sizes (empty: cross net only).
        over_layers (list[int]): over-arch hidden sizes.
        dropout (float): on the over-arch input.
    """

    def __init__(
        self,
        num_pooled: int,
        num_content: int,
        dim: int,
        cross_layers: int,
        cross_low_rank: int,
        dense_layers: list[int],
        over_layers: list[int],
        dropout: float,
    ) -> None:
        super().__init__()
        in_features = (num_pooled + 2 + num_content) * dim  # pooled, target, history mean, content
        self.crossnet = LowRankCrossNet(in_features, num_layers=cross_layers, low_rank=cross_low_rank)
        self.deep = MLP(in_features, dense_layers, activation="relu") if dense_layers else None
        self._dropout = nn.Dropout(dropout)
        over_in = in_features + (dense_layers[-1] if dense_layers else 0)
        self.over_arch = OverArch(over_in, over_layers + [1])

    def forward(self, inputs: RankingInputs) -> torch.Tensor:
        """Returns ``(B,)`` logits."""
        history = masked_mean(inputs.history_ids, inputs.history_mask).unsqueeze(1)  # (B, 1, D)
        vectors = torch.cat([inputs.pooled, inputs.target_id.unsqueeze(1), history, inputs.content], dim=1)
        x0 = vectors.flatten(1)  # (B, (F + 2 + C) * D)
        parts = [self.crossnet(x0)]  # (B, N)
        if self.deep is not None:
            parts.append(self.deep(x0))  # (B, dense_layers[-1])
        return self.over_arch(self._dropout(torch.cat(parts, dim=1))).squeeze(-1)  # (B,)


class DINBackbone(nn.Module):
    """DIN: target attention over the history ID embeddings with the target ID as the query, then
    ``OverArch(over_layers + [1])`` over ``[pooled, target_id, id_interest, content]``.

    Args:
        num_pooled (int): ``F``.
        num_content (int): ``C``.
        dim (int): ``D``.
        attention_hidden (list[int]): attention MLP sizes.
        attention_softmax (bool): softmax-normalise the attention weights.
        over_layers (list[int]): over-arch hidden sizes.
        dropout (float): on the over-arch input.
    """

    def __init__(
        self,
        num_pooled: int,
        num_content: int,
        dim: int,
        attention_hidden: list[int],
        attention_softmax: bool,
        over_layers: list[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.id_interest = TargetAttention(dim, attention_hidden, softmax=attention_softmax)
        self._dropout = nn.Dropout(dropout)
        self.over_arch = OverArch((num_pooled + 2 + num_content) * dim, over_layers + [1])

    def forward(self, inputs: RankingInputs) -> torch.Tensor:
        """Returns ``(B,)`` logits."""
        interest = self.id_interest(inputs.history_ids, inputs.target_id, inputs.history_mask)  # (B, D)
        vectors = torch.cat(
            [inputs.pooled, inputs.target_id.unsqueeze(1), interest.unsqueeze(1), inputs.content], dim=1
        )
        return self.over_arch(self._dropout(vectors.flatten(1))).squeeze(-1)  # (B,)


def build_backbone(config: ModelConfig, num_pooled: int, num_content: int) -> nn.Module:
    """The backbone named by ``config.backbone`` for ``F = num_pooled`` and ``C = num_content``."""
    D = config.embedding_dim
    if config.backbone == "dlrm":
        return DLRMBackbone(num_pooled, num_content, D, config.over_layers, config.dropout, config.dlrm_raw_content)
    if config.backbone == "dcn":
        return DCNBackbone(
            num_pooled,
            num_content,
            D,
            config.cross_layers,
            config.cross_low_rank,
            config.dense_layers,
            config.over_layers,
            config.dropout,
        )
    if config.backbone == "din":
        return DINBackbone(
            num_pooled,
            num_content,
            D,
            config.attention_hidden,
            config.attention_softmax,
            config.over_layers,
            config.dropout,
        )
    raise ValueError(f"backbone = {config.backbone!r}; expected one of {BACKBONES}")
