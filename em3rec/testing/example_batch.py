"""Synthetic metas and batches of the right shapes, for tests and FLOP counts only.

Every value here is random (labelled ``synthetic=True``); nothing is real item content. Item
popularity is Zipf-like so that the number of distinct items per batch is in a realistic range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from em3rec.data.batch import CATALOGUE_FEATURE, Batch
from em3rec.data.schema import DatasetMeta, FeatureSpec, ModalitySpec, SplitSpec


def example_meta(
    num_users: int = 30,
    num_items: int = 40,
    max_history: int = 8,
    modalities: dict[str, tuple[int, int]] | None = None,
    side_features: dict[str, tuple[str, int, int]] | None = None,
) -> DatasetMeta:
    """A synthetic :class:`DatasetMeta`.

    Args:
        num_users (int): users (vocabulary ``num_users + 1``).
        num_items (int): items (vocabulary ``num_items + 1``).
        max_history (int): ``L``.
        modalities (dict[str, tuple[int, int]]): name -> ``(tokens, width)``; default
            ``{"title": (4, 24), "meta": (6, 20)}``.
        side_features (dict[str, tuple[str, int, int]]): name -> ``(kind, vocab_size, max_length)``
            with kind ``single`` or ``multi``; default one of each.
    """
    modalities = modalities if modalities is not None else {"title": (4, 24), "meta": (6, 20)}
    side_features = (
        side_features if side_features is not None else {"gender": ("single", 3, 1), "genres": ("multi", 8, 3)}
    )
    features = [
        FeatureSpec("user_id", "user_idx", "user", num_users + 1, "user_id"),
        FeatureSpec("item_id", "item_idx", "item", num_items + 1, "item"),
        FeatureSpec("hist_item_ids", "hist_item_idx", "history", num_items + 1, "item", max_history),
    ]
    features += [
        FeatureSpec(n, f"{n}_idx", kind, vocab, n, length) for n, (kind, vocab, length) in side_features.items()
    ]
    return DatasetMeta(
        name="synthetic",
        protocol="synthetic",
        num_items=num_items,
        num_users=num_users,
        features=tuple(features),
        modalities=tuple(ModalitySpec(n, t, w, "random") for n, (t, w) in modalities.items()),
        splits={s: SplitSpec(rows=0, positive_rate=0.5) for s in ("train", "valid", "test")},
        synthetic=True,
    )


def ml100k_shaped_meta() -> DatasetMeta:
    """A synthetic meta with MovieLens-100K's vocabularies and our ml-100k modality shapes
    (``title`` 16 x 384 and ``meta`` 32 x 384 MiniLM tokens, history 50)."""
    return example_meta(
        num_users=943,
        num_items=1682,
        max_history=50,
        modalities={"title": (16, 384), "meta": (32, 384)},
        side_features={
            "age": ("single", 8, 1),
            "gender": ("single", 3, 1),
            "occupation": ("single", 22, 1),
            "zip": ("single", 12, 1),
            "year": ("single", 73, 1),
            "genres": ("multi", 20, 6),
        },
    )


@dataclass
class ExampleItems:
    """Random frozen token features of every item: modality -> ``(num_items + 1, T_m, W_m)`` float16
    tokens and ``(num_items + 1, T_m)`` bool masks (random lengths; some modalities missing)."""

    tokens: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]

    @staticmethod
    def random(meta: DatasetMeta, missing_rate: float = 0.1, seed: int = 0) -> "ExampleItems":
        g = torch.Generator().manual_seed(seed)
        n = meta.features_of("item")[0].vocab_size
        tokens, mask = {}, {}
        for m in meta.modalities:
            tokens[m.name] = torch.randn(n, m.tokens, m.width, generator=g).to(torch.float16)
            lengths = torch.randint(1, m.tokens + 1, (n,), generator=g)
            lengths[torch.rand(n, generator=g) < missing_rate] = 0
            mask[m.name] = torch.arange(m.tokens)[None, :] < lengths[:, None]
        return ExampleItems(tokens, mask)


def example_batch(
    meta: DatasetMeta,
    batch_size: int,
    items: ExampleItems | None = None,
    max_history: int | None = None,
    modalities: list[str] | None = None,
    seed: int = 0,
    empty_history_rows: int = 1,
    padding_rows: int = 0,
    num_item_choices: int | None = None,
    catalogue_samples: int | None = None,
    pooled_vectors: bool = False,
) -> Batch:
    """A random :class:`Batch` that follows the batch contract.

    Args:
        meta (DatasetMeta): features and modalities.
        batch_size (int): ``B``.
        items (ExampleItems | None): item tokens; default ``ExampleItems.random(meta)``.
        max_history (int | None): ``L``; default ``meta.max_history``.
        modalities (list[str] | None): modalities to include; default all.
        seed (int): the batch's random seed.
        empty_history_rows (int): the first rows get an empty history.
        padding_rows (int): the last rows get weight 0.
        num_item_choices (int | None): draw items from only this many (forces duplicates).
        catalogue_samples (int | None): K items drawn uniformly from the whole catalogue for CIC
            (the ``CATALOGUE_FEATURE``, all in the first row); None = no such feature.
        pooled_vectors (bool): also ``content_pooled``: each item's masked token mean in float16,
            as the item store keeps it.
    """
    g = torch.Generator().manual_seed(seed)
    items = items or ExampleItems.random(meta)
    B = batch_size
    L = max_history or meta.max_history
    num_items = meta.features_of("item")[0].vocab_size - 1
    choices = num_item_choices or num_items
    popularity = 1.0 / (torch.arange(choices, dtype=torch.float) + 20.0)  # Zipf-like

    def draw(n: int) -> torch.Tensor:
        return torch.multinomial(popularity, n, replacement=True, generator=g) + 1  # ids 1..choices

    targets = draw(B)  # (B,)
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    lengths[:empty_history_rows] = 0
    history_mask = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
    history = torch.where(history_mask, draw(B * L).view(B, L), torch.zeros(B, L, dtype=torch.long))

    catalogue = torch.randint(1, num_items + 1, (catalogue_samples or 0,), generator=g)  # (K,)
    content_item_ids = torch.unique(torch.cat([targets, history[history_mask], catalogue]))  # (U,)
    target_content_index = torch.searchsorted(content_item_ids, targets)
    history_content_index = torch.where(history_mask, torch.searchsorted(content_item_ids, history), 0)

    names = modalities or [m.name for m in meta.modalities]
    content_tokens = {m: items.tokens[m][content_item_ids] for m in names}
    content_token_mask = {m: items.mask[m][content_item_ids] for m in names}
    content_pooled = {}
    if pooled_vectors:
        for m in names:
            w = content_token_mask[m][..., None].float()  # (U, T, 1)
            mean = (content_tokens[m].float() * w).sum(1) / w.sum(1).clamp_min(1.0)  # (U, W)
            content_pooled[m] = mean.to(torch.float16)

    keys, values, feature_lengths = [], [], []
    for f in meta.features_of("user", "single", "multi"):
        if f.kind == "multi":
            n = torch.randint(0, f.max_length + 1, (B,), generator=g)
        else:
            n = torch.ones(B, dtype=torch.long)
        keys.append(f.name)
        values.append(torch.randint(1, f.vocab_size, (int(n.sum()),), generator=g))
        feature_lengths.append(n)
    user_ids = values[keys.index(meta.features_of("user")[0].name)]
    sparse_features = KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(feature_lengths))
    sequence_keys = [meta.features_of("item")[0].name, meta.features_of("history")[0].name]
    sequence_lengths = [torch.ones(B, dtype=torch.long), lengths]
    if catalogue_samples is not None:
        sequence_keys.append(CATALOGUE_FEATURE)
        sequence_lengths.append(torch.zeros(B, dtype=torch.long).index_fill(0, torch.tensor([0]), catalogue_samples))
    sequence_features = KeyedJaggedTensor(
        keys=sequence_keys,
        values=torch.cat([targets, history[history_mask], catalogue]),
        lengths=torch.cat(sequence_lengths),
    )
    weights = torch.ones(B)
    if padding_rows:
        weights[-padding_rows:] = 0.0
    return Batch(
        sparse_features=sparse_features,
        sequence_features=sequence_features,
        labels=torch.randint(0, 2, (B,), generator=g).float(),
        weights=weights,
        user_ids=user_ids,
        item_ids=targets,
        history_mask=history_mask,
        content_item_ids=content_item_ids,
        target_content_index=target_content_index,
        history_content_index=history_content_index,
        content_tokens=content_tokens,
        catalogue_content_index=torch.searchsorted(content_item_ids, catalogue),
        content_token_mask=content_token_mask,
        content_pooled=content_pooled,
    )
