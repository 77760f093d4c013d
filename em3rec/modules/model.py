"""The EM3 ranking model: ID side + content side + backbone + CIC, and its training wrapper.

One batch goes: ``IdArch`` (TorchRec lookups) and the content tower (Fusion-Q-Former or the frozen
baseline) -> content interest (target attention) -> backbone (DLRM / DCN-v2 / DIN) -> logits; the
CIC loss aligns the target items' ID and content embeddings. A variant is a config:
``build_model(ModelConfig(backbone="dcn", content="em3", seq_content_mode="lora"), ...)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from em3rec.config import BACKBONES, CONTENT_VARIANTS, SEQ_CONTENT_MODES, DataConfig, ModelConfig
from em3rec.data.batch import CATALOGUE_FEATURE, Batch
from em3rec.data.item_appeal import item_targets, train_rows
from em3rec.data.schema import DatasetMeta
from em3rec.modules.backbones import RankingInputs, build_backbone
from em3rec.modules.cic import ContentIDContrastive
from em3rec.modules.content_io import DistinctTargets
from em3rec.modules.content_tower import ContentTower
from em3rec.modules.frozen_content import FrozenContentTower, PooledContentProjection
from em3rec.modules.fusion_qformer import FusionQFormer
from em3rec.modules.history_encoders import (
    CachedHistory,
    FullHistory,
    HistoryEncoder,
    LoraHistory,
    NoGradHistory,
    PooledHistory,
)
from em3rec.modules.id_dropout import IdDropout
from em3rec.modules.interest import TargetAttention
from em3rec.modules.item_appeal_head import ItemAppealHead
from em3rec.modules.sparse import IdArch, build_embedding_collections
from em3rec.modules.text_encoder_top import TextEncoderTop, build_text_encoder_top


logger = logging.getLogger(__name__)


@dataclass
class EM3Output:
    """Output of :class:`EM3Model`.

    Fields:
        logits: ``(B,)`` click logits.
        cic_loss: ``()`` ``lambda * cic_value`` (0 when CIC is off).
        cic_value: ``()`` the raw CIC InfoNCE (0 when CIC is off).
        item_ids: ``(V,)`` int64 the batch's distinct target items (None without content).
        item_content: ``(V, D)`` their target-branch content embeddings (None without content).
        appeal_loss: ``()`` the text encoder's weighted item-appeal loss (0 without
            ``model.text_encoder.appeal_weight``, and in evaluation).
    """

    logits: torch.Tensor
    cic_loss: torch.Tensor
    cic_value: torch.Tensor
    item_ids: torch.Tensor | None
    item_content: torch.Tensor | None
    appeal_loss: torch.Tensor


class EM3Model(nn.Module):
    """A ranking model with optional end-to-end item content (EM3).

    Args:
        id_arch (IdArch): the TorchRec lookups (EBC + EC).
        backbone (nn.Module): maps :class:`RankingInputs` to ``(B,)`` logits.
        content_tower (nn.Module | None): :class:`ContentTower` (EM3) or
            :class:`FrozenContentTower` (baseline); None for ID only.
        content_interest (TargetAttention | None): pools the history content with the target
            content as the query; None when there is no history content.
        cic (ContentIDContrastive | None): the CIC loss; None when off.
        item_id_dropout (IdDropout | None): zeroes the backbone's target-item ID embedding
            (random rows in training, unseen items in evaluation); None when off.
        user_id_dropout (IdDropout | None): zeroes the backbone's user ID embedding (random rows
            in training, unseen users in evaluation); None when off.
        user_feature_index (int): the user feature's position in ``IdEmbeddings.pooled``
            (``IdArch.pooled_feature_names``); read only with ``user_id_dropout``.
        text_encoder (TextEncoderTop | None): re-encodes the batch's pooled item text vectors with
            the text encoder's trainable top layers before the content tower reads them; None: the
            stored vectors.
        appeal_head (ItemAppealHead | None): in training, the item-appeal loss on the re-encoded
            target items' text (``model.text_encoder.appeal_weight``); needs ``text_encoder``.

    Build it with :func:`build_model`.
    """

    def __init__(
        self,
        id_arch: IdArch,
        backbone: nn.Module,
        content_tower: nn.Module | None = None,
        content_interest: TargetAttention | None = None,
        cic: ContentIDContrastive | None = None,
        item_id_dropout: IdDropout | None = None,
        user_id_dropout: IdDropout | None = None,
        user_feature_index: int = 0,
        text_encoder: TextEncoderTop | None = None,
        appeal_head: ItemAppealHead | None = None,
    ) -> None:
        super().__init__()
        self.id_arch = id_arch
        self.content_tower = content_tower
        self.content_interest = content_interest
        self.backbone = backbone
        self.cic = cic
        self.item_id_dropout = item_id_dropout
        self.user_id_dropout = user_id_dropout
        self._user_feature_index = user_feature_index
        self.text_encoder = text_encoder
        self.appeal_head = appeal_head

    def encode_items(
        self,
        tokens: dict[str, torch.Tensor],
        token_mask: dict[str, torch.Tensor],
        pooled: dict[str, torch.Tensor] | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Target-branch content embeddings ``(N, D)`` of any items (for export); ``pooled``:
        modality -> ``(N, W_m)`` stored pooled vectors where the model reads them
        (:func:`uses_pooled_vectors`); ``item_ids (N,)``: the items' ids, needed with a text encoder."""
        if self.content_tower is None:
            raise ValueError("this model has no content tower")
        if self.text_encoder is not None:
            if item_ids is None:
                raise ValueError("a model with model.text_encoder encodes items by id; pass item_ids")
            tokens = self.text_encoder.reencode(tokens, item_ids)
        return self.content_tower.encode_items(tokens, token_mask, pooled=pooled)

    def forward(self, batch: Batch) -> EM3Output:
        """
        Args:
            batch (Batch): ``B`` rows with history length ``L``.

        Returns:
            EM3Output: logits ``(B,)``, CIC loss parts, the distinct target items' content.
        """
        mask = batch.history_mask  # (B, L)
        ids = self.id_arch(batch.sparse_features, batch.sequence_features, mask.shape[1])
        content_vectors = []
        item_ids = item_content = None
        cic_loss = cic_value = appeal_loss = ids.target.new_zeros(())
        if self.content_tower is not None:
            targets = DistinctTargets.of(batch.target_content_index, batch.weights)
            if self.text_encoder is not None:
                batch = self.text_encoder(batch, targets)
                if self.appeal_head is not None and self.training:
                    appeal_loss = self.appeal_head(batch.content_tokens, batch.content_item_ids, targets.index)
            content = self.content_tower(batch, targets)
            content_vectors.append(content.target)  # (B, D)
            # Python-level branch on the module, not on the tensor: TorchRec's train pipeline
            # fx-traces this forward, where `content.history` is a Proxy.
            if self.content_interest is not None:
                content_vectors.append(self.content_interest(content.history, content.target, mask))  # (B, D)
            item_ids = batch.content_item_ids[targets.index]  # (V,)
            item_content = content.item_content  # (V, D)
            if self.cic is not None:
                cic_ids, cic_content, cic_items, cic_weights = (
                    ids.target[targets.first_row],
                    item_content,
                    item_ids,
                    targets.weight,
                )
                if ids.catalogue is not None:
                    # Catalogue items join CIC with their content (target branch) and ID rows; no label.
                    index = batch.catalogue_content_index  # (K,)
                    cic_ids = torch.cat([cic_ids, ids.catalogue])  # (V + K, D)
                    cic_content = torch.cat([cic_content, content.catalogue])  # (V + K, D)
                    cic_items = torch.cat([cic_items, batch.content_item_ids[index]])  # (V + K,)
                    cic_weights = torch.cat([cic_weights, cic_weights.new_ones(index.shape[0])])  # (V + K,)
                cic = self.cic(cic_ids, cic_content, cic_items, cic_weights)
                cic_loss, cic_value = cic.loss, cic.value
        B, D = ids.target.shape
        target_id = ids.target  # (B, D); CIC above keeps every item's own ID row
        if self.item_id_dropout is not None:
            target_id = self.item_id_dropout(target_id, batch.item_ids)
        pooled = ids.pooled  # (B, F, D)
        if self.user_id_dropout is not None:
            u = self._user_feature_index
            user = self.user_id_dropout(pooled[:, u], batch.user_ids)  # (B, D)
            pooled = torch.cat([pooled[:, :u], user.unsqueeze(1), pooled[:, u + 1 :]], dim=1)
        inputs = RankingInputs(
            pooled=pooled,
            target_id=target_id,
            history_ids=ids.history,
            history_mask=mask,
            content=torch.stack(content_vectors, dim=1) if content_vectors else ids.target.new_zeros(B, 0, D),
        )
        logits = self.backbone(inputs)  # (B,)
        return EM3Output(
            logits=logits,
            cic_loss=cic_loss,
            cic_value=cic_value,
            item_ids=item_ids,
            item_content=item_content,
            appeal_loss=appeal_loss,
        )


class EM3Train(nn.Module):
    """Training wrapper (like TorchRec's ``DLRMTrain``): the loss of a batch.

    ``loss = sum(w * BCE(logits, labels)) / sum(w) + lambda * CIC (+ the item-appeal loss)`` with
    ``w = Batch.weights`` (padding rows weigh 0).

    Args:
        model (EM3Model): the model.

    Example::

        train = EM3Train(build_model(ModelConfig(), meta, DataConfig()))
        loss, (loss_detached, logits, labels, aux) = train(batch)
        loss.backward()
    """

    def __init__(self, model: EM3Model) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        """
        Returns:
            ``(loss, (loss.detach(), logits.detach(), labels, {"bce": ..., "cic": ..., "appeal": ...}))``;
            ``bce`` is the weighted BCE, ``cic`` the raw (unweighted) CIC value and ``appeal`` the
            weighted item-appeal loss, all detached scalars.
        """
        out = self.model(batch)
        weights = batch.weights
        bce = F.binary_cross_entropy_with_logits(out.logits, batch.labels, weight=weights, reduction="sum")
        bce = bce / weights.sum().clamp_min(1.0)
        loss = bce + out.cic_loss + out.appeal_loss
        aux = {"bce": bce.detach(), "cic": out.cic_value.detach(), "appeal": out.appeal_loss.detach()}
        return loss, (loss.detach(), out.logits.detach(), batch.labels, aux)


def _check(model_config: ModelConfig) -> None:
    if model_config.backbone not in BACKBONES:
        raise ValueError(f"model.backbone = {model_config.backbone!r}; expected one of {BACKBONES}")
    if model_config.content not in CONTENT_VARIANTS:
        raise ValueError(f"model.content = {model_config.content!r}; expected one of {CONTENT_VARIANTS}")
    if model_config.seq_content_mode not in SEQ_CONTENT_MODES:
        raise ValueError(
            f"model.seq_content_mode = {model_config.seq_content_mode!r}; expected one of {SEQ_CONTENT_MODES}"
        )
    if model_config.content == "em3" and model_config.seq_content_mode == "cached" and not model_config.dedup:
        raise ValueError("model.seq_content_mode = 'cached' needs model.dedup = true")
    if model_config.content == "em3" and model_config.seq_content_mode == "pooled" and not model_config.pooled_base:
        raise ValueError("model.seq_content_mode = 'pooled' reads the pooled base; it needs model.pooled_base = true")
    if not model_config.over_layers:
        raise ValueError("model.over_layers needs at least one hidden layer")


def uses_catalogue(model_config: ModelConfig) -> bool:
    """Whether batches must carry the catalogue items sampled for CIC (``Batch.catalogue_content_index``)."""
    return model_config.content == "em3" and model_config.cic.weight > 0 and model_config.cic.catalogue_samples > 0


def uses_pooled_vectors(model_config: ModelConfig) -> bool:
    """Whether the model reads the stored pooled vectors beside the tokens (``Batch.content_pooled``):
    EM3 with the pooled base."""
    return model_config.content == "em3" and model_config.pooled_base


def reads_history_tokens(model_config: ModelConfig) -> bool:
    """Whether the model reads the tokens of history items (False: EM3 with ``seq_content_mode``
    ``none`` or ``pooled``, whose Q-Former reads targets and the catalogue sample only)."""
    return not (
        model_config.content == "em3" and model_config.dedup and model_config.seq_content_mode in ("none", "pooled")
    )


def build_history_encoder(model_config: ModelConfig, qformer: FusionQFormer, num_items: int) -> HistoryEncoder | None:
    """The history branch ``model.seq_content_mode`` names (None for ``none``)."""
    mode = model_config.seq_content_mode
    if mode == "none":
        return None
    if mode == "frozen":
        return NoGradHistory()
    if mode == "full":
        return FullHistory()
    if mode == "lora":
        return LoraHistory(qformer, model_config.lora, num_items)
    if mode == "pooled":
        return PooledHistory()
    return CachedHistory(num_items, qformer.head.out_features, model_config.cache_refresh_steps)


def build_model(
    model_config: ModelConfig,
    meta: DatasetMeta,
    data_config: DataConfig,
    sparse_device: torch.device | None = None,
    dense_device: torch.device | None = None,
    unseen_items: torch.Tensor | None = None,
    unseen_users: torch.Tensor | None = None,
) -> EM3Model:
    """Build the model a config names.

    ``content``: ``none`` (ID only), ``frozen`` (pooled pre-extracted vectors through a trainable
    Linear, for the target and, unless ``seq_content_mode = "none"``, the history) or ``em3``
    (Fusion-Q-Former, ``seq_content_mode`` for the history, CIC when ``cic.weight > 0``). Only the
    modules a variant uses are built, so every trainable dense parameter gets a gradient every step
    (DDP under DMP requires it).

    Args:
        model_config (ModelConfig): the model section of the run config.
        meta (DatasetMeta): features (vocabularies, tables) and modalities (token widths).
        data_config (DataConfig): ``modalities`` the model reads.
        sparse_device (torch.device | None): where the embedding tables are built (``meta`` for DMP).
        dense_device (torch.device | None): where the dense modules are built.
        unseen_items (torch.Tensor | None): ``(num_items,)`` bool, items without training rows;
            required when ``model.id_dropout > 0`` (:class:`IdDropout`).
        unseen_users (torch.Tensor | None): ``(num_users,)`` bool, users without training rows;
            required when ``model.user_id_dropout > 0``.

    Returns:
        EM3Model
    """
    _check(model_config)
    D = model_config.embedding_dim
    catalogue = CATALOGUE_FEATURE if uses_catalogue(model_config) else None
    ebc, ec = build_embedding_collections(meta, D, device=sparse_device, catalogue_feature=catalogue)
    id_arch = IdArch(ebc, ec, meta.features_of("item")[0].name, meta.features_of("history")[0].name, catalogue)
    num_pooled = len(id_arch.pooled_feature_names)
    widths = {m.name: m.width for m in meta.modalities}
    missing = [m for m in data_config.modalities if m not in widths]
    if model_config.content != "none" and missing:
        raise ValueError(f"data.modalities {missing} are not in the dataset's modalities {sorted(widths)}")
    modality_widths = {m: widths[m] for m in data_config.modalities}
    with_history = model_config.seq_content_mode != "none"

    with torch.device(dense_device or "cpu"):
        content_tower = content_interest = cic = None
        num_content = 0
        if model_config.content == "em3":
            qformer = FusionQFormer(modality_widths, model_config.qformer, out_dim=D, gated=model_config.pooled_base)
            pooled_base = PooledContentProjection(modality_widths, D) if model_config.pooled_base else None
            history = build_history_encoder(model_config, qformer, meta.features_of("item")[0].vocab_size)
            if model_config.qformer.compile:  # after the LoRA adapters are in, so they are compiled too
                qformer.compile(dynamic=True)
            content_tower = ContentTower(qformer, history, pooled_base, dedup=model_config.dedup)
            if model_config.cic.weight > 0:
                cic = ContentIDContrastive(D, D, model_config.cic)
        elif model_config.content == "frozen":
            content_tower = FrozenContentTower(PooledContentProjection(modality_widths, D), use_history=with_history)
        if content_tower is not None:
            num_content = 1
            if with_history:
                content_interest = TargetAttention(D, model_config.attention_hidden, model_config.attention_softmax)
                num_content = 2
        backbone = build_backbone(model_config, num_pooled, num_content)
        if model_config.compile_backbone:  # in place: module names and state_dict keys unchanged
            backbone.compile()
            if content_interest is not None:
                content_interest.compile()
        item_id_dropout = user_id_dropout = None
        if model_config.id_dropout > 0:
            if unseen_items is None:
                raise ValueError("model.id_dropout > 0 needs unseen_items (the items without training rows)")
            if model_config.cold_item_rows == "from_content":  # unseen items keep their regressed rows
                unseen_items = torch.zeros_like(unseen_items)
            item_id_dropout = IdDropout(model_config.id_dropout, unseen_items, "model.id_dropout")
        if model_config.user_id_dropout > 0:
            if unseen_users is None:
                raise ValueError("model.user_id_dropout > 0 needs unseen_users (the users without training rows)")
            user_id_dropout = IdDropout(model_config.user_id_dropout, unseen_users, "model.user_id_dropout")
    user_feature_index = id_arch.pooled_feature_names.index(meta.features_of("user")[0].name)
    text_encoder = None
    if model_config.text_encoder.trainable_layers > 0 and content_tower is not None:
        tokens = {m.name: m.tokens for m in meta.modalities}
        chosen = model_config.text_encoder.modalities or data_config.modalities
        text_encoder = build_text_encoder_top(
            Path(data_config.path), {m: tokens[m] for m in chosen}, model_config.text_encoder.trainable_layers
        ).to(dense_device or "cpu")
    appeal_head = None
    if text_encoder is not None and model_config.text_encoder.appeal_weight > 0:
        appeal_head = build_appeal_head(model_config, meta, Path(data_config.path), text_encoder).to(
            dense_device or "cpu"
        )
    return EM3Model(
        id_arch,
        backbone,
        content_tower,
        content_interest,
        cic,
        item_id_dropout,
        user_id_dropout,
        user_feature_index,
        text_encoder,
        appeal_head,
    )


def build_appeal_head(
    model_config: ModelConfig, meta: DatasetMeta, data_path: Path, text_encoder: TextEncoderTop
) -> ItemAppealHead:
    """The text encoder's item-appeal head (``model.text_encoder.appeal_*``): targets from the
    train split of ``data_path`` (:mod:`em3rec.data.item_appeal`), fitted where an item has at
    least ``appeal_min_rows`` train rows."""
    config = model_config.text_encoder
    appeal, count = item_targets(*train_rows(data_path, meta), meta.num_items, config.appeal_prior_rows)
    fitted = count >= config.appeal_min_rows
    logger.info(
        "text encoder: item-appeal target over %d of %d items (>= %d train rows), weight %g",
        int(fitted.sum()),
        meta.num_items,
        config.appeal_min_rows,
        config.appeal_weight,
    )
    widths = {m: text_encoder.width(m) for m in text_encoder.modalities}
    return ItemAppealHead(widths, torch.from_numpy(appeal), torch.from_numpy(fitted), config.appeal_weight)
