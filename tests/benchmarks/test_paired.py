"""benchmarks/paired.py: differences paired by seed, over the seeds both run lists hold."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.paired import paired_cell, table


def _run(seed: int, valid: float, test: float) -> dict:
    return {"config": {"train": {"seed": seed}}, "best_epoch": 1, "valid": {"auc": valid}, "test": {"auc": test}}


def test_cells_pair_by_seed_over_the_common_seeds(tmp_path: Path) -> None:
    runs = {0: _run(0, 0.70, 0.71), 1: _run(1, 0.72, 0.70), 2: _run(2, 0.9, 0.9)}
    against = {1: _run(1, 0.70, 0.71), 0: _run(0, 0.69, 0.71)}  # seed 2 has no partner
    assert paired_cell(runs, against, "valid", "auc") == "+0.0150 ± 0.0071 (2/2)"
    assert paired_cell(runs, against, "test", "auc") == "-0.0050 ± 0.0071 (0/2)"
    assert paired_cell(runs, {}, "test", "auc") == "-"

    file = tmp_path / "runs.json"
    file.write_text(json.dumps({"a": list(runs.values()), "b": list(against.values())}))
    text = table("t", f"{file}:a", [("b", f"{file}:b")])
    assert "+0.0150 ± 0.0071 (2/2)" in text and "best epochs 1,1,1" in text
