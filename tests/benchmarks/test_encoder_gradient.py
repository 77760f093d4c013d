"""The encoder-gradient diagnostic: one row per warm-up point, the appeal head idle while the ranker warms up."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.encoder_gradient import main
from em3rec.testing.text_set import write_text_set
from tests.train.conftest import TINY


@pytest.fixture
def text_set(tmp_path: Path) -> Path:
    return write_text_set(tmp_path / "set", tmp_path / "cache")


def test_one_row_per_warm_up_point(text_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "gradient.md"
    overrides = [*TINY, 'data.modalities=["title"]', "data.pooled_content=true", f"data.path={text_set}"]
    overrides += ["model.text_encoder.appeal_min_rows=1"]
    main([*(a for o in overrides for a in ("--set", o)), "--warm-steps", "0", "3", "--batches", "2", "--out", str(out)])
    rows = [
        line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 0 ") or line.startswith("| 3 ")
    ]
    assert [r[0] for r in rows] == ["| 0", "| 3"]
    for row in rows:
        bce, appeal = float(row[1]), float(row[2])
        assert bce > 0 and appeal > 0, "both losses reach the encoder"
        assert all(-1.0 <= float(cell.strip(" |")) <= 1.0 for cell in row[4:])
