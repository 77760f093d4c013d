"""The equal-budget sweep: its draws, its selection on valid AUC, and the bundled sweep files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from benchmarks.sweep import ROOT, best_overrides, draw_trials, write_table
from em3rec.config import load_config

SWEEPS = sorted((ROOT / "benchmarks" / "sweeps").glob("*.toml"))


def test_draws_are_distinct_repeatable_grid_points() -> None:
    grid = {"optim.dense_lr": [5e-4, 1e-3], "optim.embedding_lr": [0.05, 0.1], "model.cic.weight": [0.0, 0.01]}
    trials = draw_trials(grid, 5, draw_seed=0)
    assert trials == draw_trials(grid, 5, draw_seed=0)  # a rerun draws the same trials
    assert len({tuple(t) for t in trials}) == 5
    for t in trials:  # every trial sets every key of the grid, to one of its values
        pairs = [o.split("=", 1) for o in t]
        assert [k for k, _ in pairs] == sorted(grid)
        assert all(json.loads(v) in grid[k] for k, v in pairs)
    with pytest.raises(ValueError, match="cannot fill 9 trials"):
        draw_trials(grid, 9, draw_seed=0)


def test_selection_reads_valid_auc_only(tmp_path: Path) -> None:
    done = [
        {"variant": "din_em3", "trial": 0, "overrides": ["a=1"], "valid_auc": 0.69, "test_auc": 0.80},
        {"variant": "din_em3", "trial": 1, "overrides": ["a=2"], "valid_auc": 0.70, "test_auc": 0.60},
        {"variant": "din_id", "trial": 0, "overrides": ["a=3"], "valid_auc": 0.68},
    ]
    best = best_overrides(done)
    assert best["din_em3"]["overrides"] == ["a=2"] and best["din_id"]["overrides"] == ["a=3"]
    for t in done:
        t.update(best_epoch=0, valid_by_epoch=[t["valid_auc"]], wall_seconds=1.0)
    out = tmp_path / "sweep_x.md"
    write_table(out, {"trials": 2, "seed": 0}, done, "python benchmarks/sweep.py x.toml")
    text = out.read_text()
    assert "- din_em3: `a=2` (valid auc 0.7000)" in text and text.count("| din_em3 |") == 2


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_bundled_sweep_draws_valid_overrides_of_its_configs(path: Path) -> None:
    spec = tomllib.loads(path.read_text())
    for variant, grid in spec["variants"].items():
        for overrides in draw_trials(grid, spec["trials"], spec["draw_seed"]):
            load_config(variant, overrides)  # a mistyped key or value fails here
