"""The ID side: TorchRec embedding collections for the pooled and the sequence ID features.

Pooled features (the user id and the categorical side features) live in an
``EmbeddingBagCollection``; the target item and the history share one ``EmbeddingConfig`` named
``"item"`` in an ``EmbeddingCollection`` (the history needs one vector per position). Both are built
on a device argument: the trainer passes ``torch.device("meta")`` and ``DistributedModelParallel``
materialises and shards them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from em3rec.data.schema import DatasetMeta

ITEM_TABLE = "item"


def build_embedding_collections(
    meta: DatasetMeta, embedding_dim: int, device: torch.device | None = None, catalogue_feature: str | None = None
) -> tuple[EmbeddingBagCollection, EmbeddingCollection]:
    """The ``EmbeddingBagCollection`` (user + side features) and ``EmbeddingCollection`` (items).

    Pooling is MEAN for every bag: for single-valued features it equals SUM, and for multi-valued
    ones (genres) it keeps a row's vector on the same scale whatever its number of values, which
    the backbones' dot products (DLRM) and element-wise crosses (DCN-v2) are sensitive to. An empty
    bag pools to zeros.

    Args:
        meta (DatasetMeta): the features; features sharing ``FeatureSpec.table`` share a table.
        embedding_dim (int): ``D`` of every table.
        device (torch.device | None): where to build the tables (``meta`` for DMP).
        catalogue_feature (str | None): a third feature of the item table (items sampled for CIC).

    Returns:
        tuple[EmbeddingBagCollection, EmbeddingCollection]
    """
    tables: dict[str, list] = {}
    for f in meta.features_of("user", "single", "multi"):
        tables.setdefault(f.table, []).append(f)
    bag_configs = [
        EmbeddingBagConfig(
            name=table,
            embedding_dim=embedding_dim,
            num_embeddings=max(f.vocab_size for f in features),
            feature_names=[f.name for f in features],
            pooling=PoolingType.MEAN,
        )
        for table, features in tables.items()
    ]
    item, history = meta.features_of("item")[0], meta.features_of("history")[0]
    item_config = EmbeddingConfig(
        name=ITEM_TABLE,
        embedding_dim=embedding_dim,
        num_embeddings=max(item.vocab_size, history.vocab_size),
        feature_names=[item.name, history.name] + ([catalogue_feature] if catalogue_feature else []),
    )
    return (
        EmbeddingBagCollection(tables=bag_configs, device=device),
        EmbeddingCollection(tables=[item_config], device=device),
    )


@dataclass
class IdEmbeddings:
    """Output of :class:`IdArch`.

    Fields:
        pooled: ``(B, F, D)`` user and side-feature embeddings, in ``IdArch.pooled_feature_names`` order.
        target: ``(B, D)`` target item embedding.
        history: ``(B, L, D)`` history item embeddings, zeros at padded positions.
        catalogue: ``(K, D)`` embeddings of the items sampled for CIC; None without that feature.
    """

    pooled: torch.Tensor
    target: torch.Tensor
    history: torch.Tensor
    catalogue: torch.Tensor | None = None


class IdArch(nn.Module):
    """Looks up every ID feature of a batch and returns dense, fixed-shape tensors.

    Args:
        embedding_bag_collection (EmbeddingBagCollection): pooled features.
        embedding_collection (EmbeddingCollection): the shared item table with the target and the
            history feature.
        item_feature (str): the target item feature name (e.g. ``"item_id"``).
        history_feature (str): the history feature name (e.g. ``"hist_item_ids"``).
        catalogue_feature (str | None): the feature of the items sampled for CIC, if any.

    Example::

        ebc, ec = build_embedding_collections(meta, 16)
        ids = IdArch(ebc, ec, "item_id", "hist_item_ids")(batch.sparse_features, batch.sequence_features, L)
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        embedding_collection: EmbeddingCollection,
        item_feature: str,
        history_feature: str,
        catalogue_feature: str | None = None,
    ) -> None:
        super().__init__()
        self.embedding_bag_collection = embedding_bag_collection
        self.embedding_collection = embedding_collection
        self._pooled_feature_names = [
            name for config in embedding_bag_collection.embedding_bag_configs() for name in config.feature_names
        ]
        self._item_feature = item_feature
        self._history_feature = history_feature
        self._catalogue_feature = catalogue_feature

    @property
    def pooled_feature_names(self) -> list[str]:
        return list(self._pooled_feature_names)

    def forward(
        self, sparse_features: KeyedJaggedTensor, sequence_features: KeyedJaggedTensor, max_history: int
    ) -> IdEmbeddings:
        """
        Args:
            sparse_features (KeyedJaggedTensor): the pooled features (every name of the EBC).
            sequence_features (KeyedJaggedTensor): ``item_feature`` (one id per row) and
                ``history_feature`` (``<= L`` ids per row, left-aligned).
            max_history (int): ``L``, the padded history length.

        Returns:
            IdEmbeddings: ``pooled (B, F, D)``, ``target (B, D)``, ``history (B, L, D)``.
        """
        pooled = self.embedding_bag_collection(sparse_features).to_dict()
        pooled = torch.stack([pooled[name] for name in self._pooled_feature_names], dim=1)  # (B, F, D)
        sequences = self.embedding_collection(sequence_features)
        target = sequences[self._item_feature].values()  # (B, D): exactly one id per row
        history = sequences[self._history_feature]
        history = history.to_padded_dense(desired_length=max_history)  # (B, L, D)
        catalogue = None
        if self._catalogue_feature is not None:
            catalogue = sequences[self._catalogue_feature].values()  # (K, D)
        return IdEmbeddings(pooled=pooled, target=target, history=history, catalogue=catalogue)
