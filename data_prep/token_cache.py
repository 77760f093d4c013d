"""A content-addressed on-disk cache of per-item token features.

One ``.npy`` per entry, holding only the real tokens ``(n, W)`` float16, under
``<root>/<key[:2]>/<key>.npy`` where ``key`` is a SHA-256 of everything that determines the
features (encoder name and version, settings, the input's content). Writes are atomic (write to a
temporary name, then rename), so concurrent preparations can share one cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


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
        path = self._path(key)
        try:
            return np.load(path, allow_pickle=False)
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
