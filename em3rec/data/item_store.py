"""The item content table: frozen modality tokens per item, memory-mapped from ``items/*.npy``.

The arrays are opened with ``np.load(mmap_mode="r")``: every rank on a machine shares the same
page-cache pages instead of holding its own copy, and a batch reads only the rows of its distinct
items. A token table small enough (``resident_max_mb``) is instead converted once to the dtype the
model computes in and held in memory, so that a batch's gather is one ``index_select`` and no cast:
on a CPU with little memory bandwidth, fp16 -> bf16 casting each batch's ~50 MB of tokens took most
of the loader's time (``benchmarks/results/README.md``, Cost).

A store can also average each modality's tokens in windows of consecutive positions
(``token_window``, :func:`window_tokens`): fewer, coarser tokens for the Q-Former, whose cost grows
with the tokens it reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from em3rec.data.schema import DatasetError, DatasetMeta
from em3rec.data.validation import check_item_arrays

logger = logging.getLogger(__name__)
_CONVERT_ROWS = 1024  # items converted at a time when a token table is made resident


def window_tokens(tokens: torch.Tensor, mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window of ``window`` consecutive token positions becomes the mean of its real tokens.

    Args:
        tokens: ``(U, T, W)``.
        mask: ``(U, T)`` bool, True for a real token.
        window: positions per window (the last window may be shorter).

    Returns:
        ``(U, ceil(T / window), W)`` float32 means (zeros where a window has no real token) and
        ``(U, ceil(T / window))`` bool, True where the window has a real token.
    """
    U, T, W = tokens.shape
    n = -(-T // window)
    x, m = tokens.float(), mask
    if n * window != T:
        x, m = F.pad(x, (0, 0, 0, n * window - T)), F.pad(m, (0, n * window - T))
    m = m.view(U, n, window)
    sums = torch.einsum("unwc,unw->unc", x.view(U, n, window, W), m.to(x.dtype))  # (U, n, W)
    return sums / m.sum(2, keepdim=True).clamp_min(1), m.any(2)


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
        token_window: every modality's tokens averaged in windows of this many consecutive
            positions (:func:`window_tokens`), ``T -> ceil(T / token_window)``; 1 = as stored.

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
        token_window: int = 1,
    ) -> None:
        if token_window < 1:
            raise ValueError(f"token_window = {token_window}; expected >= 1 (data.token_window)")
        self._folder = Path(folder)
        self._meta = meta if meta is not None else DatasetMeta.load(folder)
        self._arrays = check_item_arrays(self._folder, self._meta, modalities)
        self.token_window = token_window
        self._masks = {  # modality -> (V, T') the masks of the tokens as gathered
            name: arrays["mask"] if token_window == 1 else self._window_mask(arrays["mask"])
            for name, arrays in self._arrays.items()
        }
        self._resident: dict[str, torch.Tensor] = {}  # modality -> (V, T', W) tokens in resident_dtype
        self._resident_pooled: dict[str, torch.Tensor] = {}  # modality -> (V, W) pooled vectors in resident_dtype
        if resident_dtype is not None:
            self._hold_pooled(resident_dtype, resident_max_mb)
            self._hold_tokens(resident_dtype, resident_max_mb)

    def _window_mask(self, mask: np.ndarray) -> np.ndarray:
        """``(V, T)`` -> ``(V, ceil(T / token_window))``: True where a window has a real token."""
        V, T = mask.shape
        n = -(-T // self.token_window)
        padded = np.zeros((V, n * self.token_window), dtype=bool)
        padded[:, :T] = mask
        return padded.reshape(V, n, self.token_window).any(axis=2)

    def _read_tokens(self, name: str, rows: np.ndarray | slice, dtype: torch.dtype) -> torch.Tensor:
        """``(U, T', W)`` tokens of ``rows`` of modality ``name``, read from the memory map, averaged
        in windows (``token_window``) and cast to ``dtype``."""
        arrays = self._arrays[name]
        if isinstance(rows, slice):
            tokens, mask = np.array(arrays["tokens"][rows]), np.array(arrays["mask"][rows])
        else:
            tokens, mask = np.take(arrays["tokens"], rows, axis=0), np.take(arrays["mask"], rows, axis=0)
        values = torch.from_numpy(tokens)  # (U, T, W) float16
        if self.token_window > 1:
            values, _ = window_tokens(values, torch.from_numpy(mask), self.token_window)
        return values.to(dtype)

    def _hold_tokens(self, dtype: torch.dtype, max_mb: float) -> None:
        """Convert every token table to ``dtype`` and keep it, if together (with the pooled tables
        held) they fit ``max_mb``."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        shapes = {
            name: (self.num_rows, self._masks[name].shape[1], a["tokens"].shape[2]) for name, a in self._arrays.items()
        }
        mb = sum(int(np.prod(shape)) * itemsize for shape in shapes.values()) / 2**20
        if not self._arrays or mb + self._pooled_mb(dtype) > max_mb:
            logger.info(
                "%s: item tokens memory-mapped, cast to %s per batch (%.0f MB in that dtype > data.resident_tokens_mb"
                " = %g)", self._folder / "items", dtype, mb, max_mb,
            )  # fmt: skip
            return
        for name, shape in shapes.items():
            table = torch.empty(shape, dtype=dtype)
            for start in range(0, shape[0], _CONVERT_ROWS):  # bounded temporary memory
                table[start : start + _CONVERT_ROWS] = self._read_tokens(
                    name, slice(start, start + _CONVERT_ROWS), dtype
                )
            self._resident[name] = table
        logger.info(
            "%s: item tokens held in memory as %s (%.0f MB per process; data.resident_tokens_mb = %g; "
            "data.token_window = %d)", self._folder / "items", dtype, mb, max_mb, self.token_window,
        )  # fmt: skip

    def _pooled_mb(self, dtype: torch.dtype) -> float:
        """MB of the pooled-vector tables held in memory (0 if none)."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        return sum(t.numel() for t in self._resident_pooled.values()) * itemsize / 2**20

    def _hold_pooled(self, dtype: torch.dtype, max_mb: float) -> None:
        """Convert every pooled-vector table (``T`` times smaller than its tokens) to ``dtype`` and
        keep it, if together they fit ``max_mb``: the pooled level's gather is then one
        ``index_select`` and no cast (fp16 -> bf16 is slow on CPU: ~2 ms for bx's ~12,000 rows)."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        mb = sum(self.num_rows * a["pooled"].shape[1] for a in self._arrays.values()) * itemsize / 2**20
        if not self._arrays or mb > max_mb:
            return
        for name, arrays in self._arrays.items():
            # A copy even where dtype is the stored one: held in memory, not a view of the read-only map.
            self._resident_pooled[name] = torch.from_numpy(np.array(arrays["pooled"])).to(dtype)  # (V, W)
        logger.info(
            "%s: pooled item vectors held in memory as %s (%.0f MB per process)", self._folder / "items", dtype, mb
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
        """The stored memory map (not windowed): kind ``tokens`` (V, T, W), ``mask`` (V, T) or
        ``pooled`` (V, W)."""
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
            ``tokens``: modality -> ``(U, T', W)`` in ``dtype`` (``T' = ceil(T / token_window)``);
            ``mask``: modality -> ``(U, T')`` bool, True for a real token, or a window with one
            (pooled: True if the item has any token of that modality).
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
            token_mask = np.take(self._masks[self._check_modality(name)], ids, axis=0)  # (U, T')
            if pooled and name in self._resident_pooled and self._resident_pooled[name].dtype == dtype:
                index = torch.from_numpy(ids.astype(np.int64, copy=False))
                values = self._resident_pooled[name].index_select(0, index)[:, None, :]  # (U, 1, W)
                mask[name] = torch.from_numpy(token_mask.any(axis=1, keepdims=True))  # (U, 1)
            elif pooled:
                values = torch.from_numpy(np.take(self._arrays[name]["pooled"], ids, axis=0)[:, None, :])  # (U, 1, W)
                mask[name] = torch.from_numpy(token_mask.any(axis=1, keepdims=True))  # (U, 1)
            elif name in self._resident and self._resident[name].dtype == dtype:
                values = self._resident[name].index_select(0, torch.from_numpy(ids.astype(np.int64, copy=False)))
                mask[name] = torch.from_numpy(token_mask)
            else:
                values = self._read_tokens(name, ids, dtype or torch.float16)  # (U, T', W)
                mask[name] = torch.from_numpy(token_mask)
            tokens[name] = values.to(dtype or torch.float16)
        return tokens, mask

    def gather_pooled(
        self, item_ids: np.ndarray, modalities: Sequence[str] | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """modality -> ``(U, W)`` stored pooled vector (the masked mean of the tokens) of
        ``item_ids`` (checked as in :meth:`gather`), in ``dtype`` (None: float16, as stored)."""
        tokens, _ = self.gather(item_ids, modalities, pooled=True, dtype=dtype)
        return {name: t[:, 0] for name, t in tokens.items()}  # (U, W)

    def _check_modality(self, name: str) -> str:
        if name not in self._arrays:
            raise KeyError(f"modality {name!r} is not open; opened: {list(self._arrays)}")
        return name
