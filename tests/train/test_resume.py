"""Checkpoints: a killed 2-rank run resumes to the same metrics; a 2-rank checkpoint loads on 1 rank."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from em3rec.checkpoint import validate_checkpoint
from tests.train.conftest import TINY, metrics, run, run_and_kill_after, train_command


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_run_resumes_exactly_and_reshards_to_one_rank(tiny_prepared: Path, tmp_path: Path) -> None:
    common = [*TINY, f"data.path={tiny_prepared}", f"train.run_dir={tmp_path}", "train.checkpoint_every=5"]
    run(train_command(2, "din_em3", [*common, "train.run_name=straight"]))
    straight = metrics(tmp_path / "straight")

    interrupted = [*common, "train.run_name=killed"]
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    run_and_kill_after(train_command(2, "din_em3", interrupted), ckpt_dir / "latest")
    assert not (tmp_path / "killed" / "metrics.json").exists()
    first = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
    assert validate_checkpoint(first)["step"] >= 5
    run(train_command(2, "din_em3", interrupted, resume=True))
    resumed = metrics(tmp_path / "killed")

    for split in ("valid", "test"):
        for key in ("auc", "gauc", "logloss"):
            assert math.isclose(resumed[split][key], straight[split][key], abs_tol=1e-4), (split, key)
    assert resumed["best_epoch"] == straight["best_epoch"]

    # The 2-rank best checkpoint, evaluated by 1 rank (resharded on load), gives the same test AUC.
    out = run(
        train_command(1, "din_em3", [*common, "train.run_name=straight"], module="em3rec.evaluate")
        + ["--split", "test"]
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("test auc=")][-1]
    one_rank_auc = float(line.split()[1].split("=")[1])
    assert math.isclose(one_rank_auc, straight["test"]["auc"], abs_tol=1e-4), line

    # Item embeddings exported by 2 ranks (each encodes half the catalogue) are those of 1 rank.
    exported = {}
    for nproc in (1, 2):
        path = tmp_path / f"items_{nproc}.parquet"
        run(
            train_command(nproc, "din_em3", [*common, "train.run_name=straight"], module="em3rec.export")
            + ["--out", str(path)]
        )
        exported[nproc] = np.stack(pq.read_table(path)["content_embedding"].to_numpy(zero_copy_only=False))
    assert exported[1].shape == (301, 16)  # 300 items and the padding row
    np.testing.assert_allclose(exported[2], exported[1], rtol=1e-5, atol=1e-6)
