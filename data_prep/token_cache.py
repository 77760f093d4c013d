"""A content-addressed on-disk cache of per-item token features.

One ``.npy`` per entry, holding only the real tokens ``(n, W)`` float16, under
``<root>/<key[:2]>/<key>.npy`` where ``key`` is a SHA-256 of everything that determines the
features (encoder name and version, settings, the input's content). Writes are atomic (write to a
temporary name, then rename), so concurrent preparations can share one cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np


_MAGIC = b"\x93NUMPY\x01\x00"
_FLOAT16_2D = re.compile(rb"\{'descr': '<f2', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \} *\n")


def _read_npy(data: bytes) -> np.ndarray:
    """An ``.npy`` file's bytes as an array. The ``(n, W)`` float16 files ``put`` writes are parsed
    directly (``np.load`` evaluates the header with ``ast``, ~5x slower per small file, which is most
    of a cached preparation of 10^5 items); anything else goes through ``np.load``."""
    if data[:8] == _MAGIC:
        size = int.from_bytes(data[8:10], "little")
        header = _FLOAT16_2D.fullmatch(data[10 : 10 + size])
        if header is not None:
            rows, width = int(header[1]), int(header[2])
            if len(data) != 10 + size + 2 * rows * width:
                raise ValueError("truncated .npy file")
            return np.frombuffer(data, dtype="<f2", offset=10 + size).reshape(rows, width)
    return np.load(io.BytesIO(data), allow_pickle=False)


def content_key(*parts: str | bytes) -> str:
    """SHA-256 hex digest of ``parts`` (separated, so ("ab", "c") and ("a", "bc") differ)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class TokenCache:
    """``key -> (n, W) float16`` token features stored as one ``.npy`` file per key.

    Args:
        root: cache folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached ``(n, W)`` array, or None if absent or unreadable (it is then recomputed)."""
        try:
            return _read_npy(self._path(key).read_bytes())
        except (FileNotFoundError, ValueError, OSError, EOFError):
            return None

    def put(self, key: str, tokens: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(tokens, dtype=np.float16))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
