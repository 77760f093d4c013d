"""The item content table: frozen modality tokens per item, memory-mapped from ``items/*.npy``.

The arrays are opened with ``np.load(mmap_mode="r")``: every rank on a machine shares the same
page-cache pages instead of holding its own copy, and a batch reads only the rows of its distinct
items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from em3rec.data.schema import DatasetError, DatasetMeta
from em3rec.data.validation import check_item_arrays


class ItemStore:
    """Read-only item content arrays of one prepared dataset.

    Args:
        folder: prepared dataset folder (holds ``meta.json`` and ``items/``).
        modalities: modalities to open (default: all in ``meta.json``); an unknown name, a missing
            file or an array whose shape disagrees with ``meta.json`` raises ``DatasetError``.
        meta: the folder's meta, if already loaded.

    Example::

        >>> store = ItemStore("data/ml100k", ["title"])
        >>> tokens, mask = store.gather(np.array([3, 7]))
        >>> tokens["title"].shape, mask["title"].shape   # (2, T, W) float16, (2, T) bool
    """

    def __init__(
        self, folder: str | Path, modalities: Sequence[str] | None = None, meta: DatasetMeta | None = None
    ) -> None:
        self._folder = Path(folder)
        self._meta = meta if meta is not None else DatasetMeta.load(folder)
        self._arrays = check_item_arrays(self._folder, self._meta, modalities)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    @property
    def num_rows(self) -> int:
        """Rows of every array: the item vocabulary size (row 0 = reserved/padding item)."""
        return self._meta.features_of("item")[0].vocab_size

    def array(self, modality: str, kind: str) -> np.ndarray:
        """The raw memory map: kind ``tokens`` (V, T, W), ``mask`` (V, T) or ``pooled`` (V, W)."""
        return self._arrays[self._check_modality(modality)][kind]

    def gather(
        self, item_ids: np.ndarray, modalities: Sequence[str] | None = None, pooled: bool = False
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Content of ``item_ids``.

        Args:
            item_ids: ``(U,)`` int item indices (sorted ids read the memory map sequentially).
            modalities: subset of the opened modalities (default: all opened).
            pooled: one pooled vector per item instead of its tokens (``T = 1``).

        Returns:
            ``tokens``: modality -> ``(U, T, W)`` float16; ``mask``: modality -> ``(U, T)`` bool,
            True for a real token (pooled: True if the item has any token of that modality).
        """
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"item_ids: expected a 1-D integer array, got shape {ids.shape} {ids.dtype}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise DatasetError(
                f"{self._folder / 'items'}: item ids in [{ids.min()}, {ids.max()}] requested; the item arrays "
                f"have {self.num_rows} rows"
            )
        tokens: dict[str, torch.Tensor] = {}
        mask: dict[str, torch.Tensor] = {}
        for name in self.modalities if modalities is None else modalities:
            arrays = self._arrays[self._check_modality(name)]
            token_mask = np.take(arrays["mask"], ids, axis=0)  # (U, T)
            if pooled:
                tokens[name] = torch.from_numpy(np.take(arrays["pooled"], ids, axis=0)[:, None, :])  # (U, 1, W)
                mask[name] = torch.from_numpy(token_mask.any(axis=1, keepdims=True))  # (U, 1)
            else:
                tokens[name] = torch.from_numpy(np.take(arrays["tokens"], ids, axis=0))  # (U, T, W)
                mask[name] = torch.from_numpy(token_mask)
        return tokens, mask

    def gather_pooled(self, item_ids: np.ndarray, modalities: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """modality -> ``(U, W)`` float16 stored pooled vector (the masked mean of the tokens) of
        ``item_ids`` (checked as in :meth:`gather`)."""
        tokens, _ = self.gather(item_ids, modalities, pooled=True)
        return {name: t[:, 0] for name, t in tokens.items()}  # (U, W)

    def _check_modality(self, name: str) -> str:
        if name not in self._arrays:
            raise KeyError(f"modality {name!r} is not open; opened: {list(self._arrays)}")
        return name
