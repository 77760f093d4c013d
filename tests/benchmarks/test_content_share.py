"""benchmarks.content_share on a trained tiny EM3 run: the gate moved off 0, the shares are finite."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.train.conftest import TINY, run, tiny_prepared, train_command  # noqa: F401 - fixture


@pytest.mark.slow
def test_content_share_reads_a_trained_em3_run(tiny_prepared: Path, tmp_path: Path) -> None:  # noqa: F811
    overrides = [
        *TINY,
        f"data.path={tiny_prepared}",
        f"train.run_dir={tmp_path}",
        "train.run_name=em3",
        "train.epochs=1",
    ]
    run(train_command(1, "din_em3", overrides))
    out = tmp_path / "share.md"
    run([sys.executable, "-m", "benchmarks.content_share", str(tmp_path / "em3"), "--out", str(out)])
    row = [line for line in out.read_text().splitlines() if line.startswith(f"| {tmp_path / 'em3'} |")]
    assert row, out.read_text()
    gate, warm, cold, items = [c.strip() for c in row[0].split("|")[2:6]]
    assert float(gate) > 0  # trained: the zero-initialised gate moved
    assert float(warm) > 0 and re.fullmatch(r"\d+ / \d+", items)
