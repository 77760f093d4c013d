"""Real processes, real faults, 2 gloo ranks under torchrun (and once under torchx).

Every run that survives a fault must end with the metrics of the uninterrupted `reference` run
(conftest.py); every run that cannot continue must end promptly with the fault's message.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from em3rec.checkpoint import validate_checkpoint
from tests.data.conftest import rewrite_split
from tests.reliability.conftest import (
    Reference,
    assert_close_metrics,
    copy_dataset,
    launch,
    metrics,
    overrides,
    run_ok,
    torchrun,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

STABLE = ("valid", "valid_by_epoch", "test", "best_epoch", "skipped_batches", "world_size")


def test_same_seed_and_world_size_give_bit_identical_metrics(
    reference: Reference, reliable_data: Path, tmp_path: Path
) -> None:
    run_ok(torchrun(2, overrides(reliable_data, tmp_path, "again")), tmp_path / "again.log")
    again = metrics(tmp_path / "again")
    for key in STABLE:  # exact: JSON floats are shortest round-trip reprs, so equal text = equal bits
        assert json.dumps(again[key]) == json.dumps(reference.metrics[key]), key


def test_reference_run_drops_the_remainder_and_logs_it(reference: Reference) -> None:
    """4809 rows do not divide into 2 ranks x 64-row batches: equal batch counts, remainder logged."""
    assert (
        "syn/train: 2 ranks x 37 batches x 64 rows; 73 of 4809 rows dropped per epoch (remainder)" in reference.output
    )
    assert reference.metrics["test"]["rows"] == 601 and reference.metrics["valid"]["rows"] == 601


def _kill_rank_after_first_checkpoint(job, checkpoints: Path, rank: int = 1) -> str:  # noqa: ANN001
    """SIGKILL one worker once the first mid-epoch checkpoint exists; return that checkpoint's name."""
    wait_for(lambda: (checkpoints / "latest").is_file(), job, "first checkpoint")
    first = (checkpoints / "latest").read_text().strip()
    wait_for(lambda: rank in job.workers(), job, f"rank {rank} worker")
    os.kill(job.workers()[rank], signal.SIGKILL)
    return first


def test_sigkill_one_rank_torchrun_restarts_and_resumes_exactly(
    reference: Reference, reliable_data: Path, tmp_path: Path
) -> None:
    job = launch(torchrun(2, overrides(reliable_data, tmp_path, "killed"), max_restarts=1), tmp_path / "killed.log")
    first = _kill_rank_after_first_checkpoint(job, tmp_path / "killed" / "checkpoints")
    progress = validate_checkpoint(tmp_path / "killed" / "checkpoints" / first)
    assert progress["epoch"] == 0 and 0 < progress["batches_done"] < 12, "killed mid-epoch, after a checkpoint"
    assert job.wait() == 0, job.output()[-6000:]
    out = job.output()
    assert "torchrun restart 1 of the worker group: resuming from the latest checkpoint" in out
    assert "resumed from " in out and "at epoch " in out
    assert_close_metrics(metrics(tmp_path / "killed"), reference.metrics)


def test_sigkill_one_rank_under_torchx_restarts_and_resumes(
    reference: Reference, reliable_data: Path, tmp_path: Path
) -> None:
    torchx = str(Path(sys.executable).parent / "torchx")
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [
        torchx,
        "run",
        "-s",
        "local_cwd",
        "-cfg",
        f"log_dir={tmp_path / 'torchx'}",
        "torchx/em3rec.py:train",
        "-j",
        "1x2",
        "--max_restarts",
        "1",
        "--config",
        "din_em3",
        *overrides(reliable_data, tmp_path, "tx"),
    ]
    job = launch(cmd, tmp_path / "tx.log", env=env)
    _kill_rank_after_first_checkpoint(job, tmp_path / "tx" / "checkpoints")
    assert job.wait() == 0, job.output()[-6000:]
    logs = job.output() + "".join(
        p.read_text(errors="replace") for p in (tmp_path / "torchx").rglob("*") if p.is_file()
    )
    assert "torchrun restart 1 of the worker group" in logs
    assert_close_metrics(metrics(tmp_path / "tx"), reference.metrics)


def _shard(checkpoint: Path) -> Path:
    return sorted(checkpoint.glob("*.distcp"))[0]


def test_corrupt_latest_checkpoint_then_full_disk_then_recovery(
    reference: Reference, reliable_data: Path, tmp_path: Path
) -> None:
    """The finished reference run, with its newest checkpoint bit-flipped and a leftover partial
    save: --resume refuses the corrupt checkpoint and falls back to the previous one; its first save
    hits a full disk (RLIMIT_FSIZE: write(2) fails like ENOSPC) and the job stops with that message,
    the older checkpoint untouched; with space back, --resume finishes with the reference metrics."""
    run_dir = reference.copy_to(tmp_path)
    (run_dir / "metrics.json").unlink()
    checkpoints = run_dir / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text().strip()
    assert latest.name == "step_00000024"
    shard = _shard(latest)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    args = overrides(reliable_data, tmp_path, reference.name)
    # The file-size limit binds every child too: g++ building torch.compile's kernels would hit it
    # before the checkpoint does, so this run trains eager (the same values; compile is not under test).
    eager = overrides(reliable_data, tmp_path, reference.name, "model.compile_backbone=false")

    # Half the largest shard: the model's shard write hits the limit, not a small file (RNG, metadata).
    limit = max(p.stat().st_size for p in (checkpoints / "step_00000020").glob("*.distcp")) // 2
    full_disk = launch(
        torchrun(2, eager, resume=True),
        tmp_path / "full.log",
        preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    start = time.monotonic()
    assert full_disk.wait() != 0
    out = full_disk.output()
    assert f"checkpoint refused: {latest}: file {shard.name} is corrupt (CRC-32" in out
    assert "falling back to step_00000020" in out
    assert "resumed from step_00000020, an older checkpoint: the newer one(s) ['step_00000024'] were refused" in out
    assert f"CheckpointError: {checkpoints}/step_00000024: save failed (OSError: [Errno 27] File too large" in out, out[
        -4000:
    ]
    assert "earlier checkpoints are untouched (newest: step_00000024)" in out  # the corrupt one, left as found
    assert time.monotonic() - start < 200
    assert not (checkpoints / ".step_00000024.tmp").exists()
    assert validate_checkpoint(checkpoints / "step_00000020")["step"] == 20

    # A save killed mid-write by an earlier crash left this behind; the next start removes it.
    partial = checkpoints / ".step_00000022.tmp"
    shutil.copytree(checkpoints / "step_00000020", partial)
    (partial / "progress.json").unlink()
    out = run_ok(torchrun(2, args, resume=True), tmp_path / "recovered.log")
    assert "removed .step_00000022.tmp (a checkpoint save that did not finish)" in out
    assert "falling back to step_00000020" in out
    assert not partial.exists()
    assert_close_metrics(metrics(run_dir), reference.metrics)


def test_bad_row_on_one_rank_stops_every_rank_promptly(reliable_data: Path, tmp_path: Path) -> None:
    """A NaN label in rank 1's half of the training split, checked lazily (data.scan_rows = 0, as
    for a split too big to scan at open): only rank 1 reads it. Rank 0 would wait in its next
    collective for up to train.collective_timeout_s (600 s here); torchrun stops it as soon as rank 1
    exits, and the message names the file, row group and column."""
    data = copy_dataset(reliable_data, tmp_path / "data")

    def nan_label(table):  # noqa: ANN001, ANN202
        import pyarrow as pa

        labels = table.column("label").to_pylist()
        labels[4000] = float("nan")  # rank 1 reads rows [2404, 4808)
        return table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.float32()))

    rewrite_split(data, "train", nan_label)
    job = launch(
        torchrun(2, overrides(data, tmp_path, "bad", "data.scan_rows=0", "train.collective_timeout_s=600")),
        tmp_path / "bad.log",
    )
    assert job.wait(timeout=200) != 0
    elapsed = time.monotonic() - job.started
    out = job.output()
    message = f"{data}/train/part-00000.parquet (row group 0): column 'label' has 1 NaN value(s); expected 0 or 1"
    # A user error: one line, exit status 2; only rank 1 read the bad row (rank 0 is stopped by the agent).
    assert out.count(f"error: {message}") == 1, out[-6000:]
    failures, root_cause = out.split("Root Cause (first observed failure):")
    assert "rank      : 1 (local_rank: 1)" in root_cause and "exitcode  : 2" in root_cause and message in root_cause
    assert "rank      : 0 (local_rank: 0)" in failures and "(SIGTERM)" in failures  # stopped by the agent
    assert elapsed < 150, f"{elapsed:.0f}s: rank 0 was not stopped promptly"
