"""The item content table: frozen modality tokens per item, memory-mapped from ``items/*.npy``.

The arrays are opened with ``np.load(mmap_mode="r")``: every rank on a machine shares the same
page-cache pages instead of holding its own copy, and a batch reads only the rows of its distinct
items. A token table small enough (``resident_max_mb``) is instead converted once to the dtype the
model computes in and held in memory, so that a batch's gather is one ``index_select`` and no cast:
on a CPU with little memory bandwidth, fp16 -> bf16 casting each batch's ~50 MB of tokens took most
of the loader's time (``benchmarks/results/README.md``, Cost).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from em3rec.data.schema import DatasetError, DatasetMeta
from em3rec.data.validation import check_item_arrays

logger = logging.getLogger(__name__)
_CONVERT_ROWS = 4096  # items converted at a time when a token table is made resident


class ItemStore:
    """Read-only item content arrays of one prepared dataset.

    Args:
        folder: prepared dataset folder (holds ``meta.json`` and ``items/``).
        modalities: modalities to open (default: all in ``meta.json``); an unknown name, a missing
            file or an array whose shape disagrees with ``meta.json`` raises ``DatasetError``.
        meta: the folder's meta, if already loaded.
        resident_dtype: hold every opened modality's token table in memory in this dtype (the one
            the model computes in), converted once here; None = memory-mapped only.
        resident_max_mb: the most MB (in that dtype, all modalities together) held so; larger
            tables stay memory-mapped and are cast batch by batch (the choice is logged).

    Example::

        >>> store = ItemStore("data/ml100k", ["title"])
        >>> tokens, mask = store.gather(np.array([3, 7]))
        >>> tokens["title"].shape, mask["title"].shape   # (2, T, W) float16, (2, T) bool
    """

    def __init__(
        self,
        folder: str | Path,
        modalities: Sequence[str] | None = None,
        meta: DatasetMeta | None = None,
        resident_dtype: torch.dtype | None = None,
        resident_max_mb: float = 0.0,
    ) -> None:
        self._folder = Path(folder)
        self._meta = meta if meta is not None else DatasetMeta.load(folder)
        self._arrays = check_item_arrays(self._folder, self._meta, modalities)
        self._resident: dict[str, torch.Tensor] = {}  # modality -> (V, T, W) tokens in resident_dtype
        if resident_dtype is not None:
            self._hold_tokens(resident_dtype, resident_max_mb)

    def _hold_tokens(self, dtype: torch.dtype, max_mb: float) -> None:
        """Convert every token table to ``dtype`` and keep it, if together they fit ``max_mb``."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        mb = sum(a["tokens"].size * itemsize for a in self._arrays.values()) / 2**20
        if not self._arrays or mb > max_mb:
            logger.info(
                "%s: item tokens memory-mapped, cast to %s per batch (%.0f MB in that dtype > data.resident_tokens_mb"
                " = %g)", self._folder / "items", dtype, mb, max_mb,
            )  # fmt: skip
            return
        for name, arrays in self._arrays.items():
            source = arrays["tokens"]  # (V, T, W) float16 memory map
            table = torch.empty(source.shape, dtype=dtype)
            for start in range(0, len(source), _CONVERT_ROWS):  # bounded temporary memory
                table[start : start + _CONVERT_ROWS] = torch.from_numpy(np.array(source[start : start + _CONVERT_ROWS]))
            self._resident[name] = table
        logger.info(
            "%s: item tokens held in memory as %s (%.0f MB per process; data.resident_tokens_mb = %g)",
            self._folder / "items",
            dtype,
            mb,
            max_mb,
        )

    @property
    def resident_dtype(self) -> torch.dtype | None:
        """The dtype the token tables are held in memory in; None if memory-mapped."""
        return next(iter(self._resident.values())).dtype if self._resident else None

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
        self,
        item_ids: np.ndarray,
        modalities: Sequence[str] | None = None,
        pooled: bool = False,
        dtype: torch.dtype | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Content of ``item_ids``.

        Args:
            item_ids: ``(U,)`` int item indices (sorted ids read the memory map sequentially).
            modalities: subset of the opened modalities (default: all opened).
            pooled: one pooled vector per item instead of its tokens (``T = 1``).
            dtype: the tokens' dtype (None: float16, as stored); read from the resident tables
                when they are held in it.

        Returns:
            ``tokens``: modality -> ``(U, T, W)`` in ``dtype``; ``mask``: modality -> ``(U, T)``
            bool, True for a real token (pooled: True if the item has any token of that modality).
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
                values = torch.from_numpy(np.take(arrays["pooled"], ids, axis=0)[:, None, :])  # (U, 1, W)
                mask[name] = torch.from_numpy(token_mask.any(axis=1, keepdims=True))  # (U, 1)
            elif name in self._resident and self._resident[name].dtype == dtype:
                values = self._resident[name].index_select(0, torch.from_numpy(ids.astype(np.int64, copy=False)))
                mask[name] = torch.from_numpy(token_mask)
            else:
                values = torch.from_numpy(np.take(arrays["tokens"], ids, axis=0))  # (U, T, W)
                mask[name] = torch.from_numpy(token_mask)
            tokens[name] = values.to(dtype or torch.float16)
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
