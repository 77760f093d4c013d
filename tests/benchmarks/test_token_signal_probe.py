"""The token-signal probe reads the control set's latent back and fits every probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.token_signal_probe import latent, main
from data_prep.synthetic import SyntheticConfig, generate


def _set(folder: Path, signal: float) -> Path:
    generate(
        SyntheticConfig(
            out=folder, rows=300, items=60, users=20, modalities=("title",), tokens=(4,), width=(8,), missing=0.0,
            seed=2, token_signal=signal,
        )
    )  # fmt: skip
    return folder


def test_probe_writes_a_row_per_model(tmp_path: Path) -> None:
    data = _set(tmp_path / "signal", 1.0)
    cfg, world = latent(data)
    q = world.token_latent
    assert cfg.token_signal == 1.0 and q.shape == (61,) and float(q.std()) > 0.5
    out = tmp_path / "probe.md"
    main(["--data", str(data), "--rows", str(data), "--steps", "3", "--batch", "8", "--out", str(out)])
    probes = [
        line
        for line in out.read_text().splitlines()
        if line.startswith("| ") and not line.startswith(("| model", "| rows"))
    ]
    assert len(probes) == 5 + 2, "the oracle and four probes, then cold and warm rows of what q is worth"
    assert all(np.isfinite(float(r.split(" | ")[2])) for r in probes[:5])
    warm = probes[-1].strip("| ").split(" | ")
    assert warm[0] == "warm items" and float(warm[3]) > float(warm[2]), "user bias + S q beats user bias alone"


def test_probe_refuses_a_set_without_signal(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="without --token-signal"):
        latent(_set(tmp_path / "plain", 0.0))
