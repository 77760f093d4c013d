"""Shared pieces of the fault-injection suite: a tiny dataset whose sizes do not divide evenly, the
overrides of a short run, process helpers (launch, find a worker by rank, wait) and one
uninterrupted 2-rank reference run that the fault runs are compared with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import SyntheticConfig, generate
from em3rec.config import load_config
from em3rec.distributed import init_distributed
from em3rec.train import Recipe
from tests.processes import kill_job
from tests.train.conftest import ROOT, TINY

# 6011 rows: train 4809, valid 601, test 601. Two ranks of 64-row batches drop 73 training rows per
# epoch and evaluate 301 + 300 rows. The generator gives some rows an empty history and some items
# no token of one modality; `reliable_data` also makes two popular items all padding in every one.
ROWS = 6011
NO_CONTENT_ITEMS = (2, 5)
# A short run: 2 epochs of 12 steps, a checkpoint every 5 steps (mid-epoch) and at each epoch end.
SHORT = [*TINY, "train.max_steps_per_epoch=12", "train.checkpoint_every=5"]
RUN_TIMEOUT = 300  # seconds for one training subprocess; far above the ~20-40 s they take


@pytest.fixture(scope="session")
def reliable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only tiny dataset (copy it before corrupting anything: :func:`copy_dataset`)."""
    out = tmp_path_factory.mktemp("reliability") / "syn"
    generate(
        SyntheticConfig(
            out=out,
            rows=ROWS,
            items=300,
            users=100,
            history_mean=8.0,
            history_max=20,
            modalities=("title", "meta"),
            tokens=(4, 6),
            width=(16, 8),
            seed=3,
        )
    )
    for mask_file in (out / "items").glob("*.mask.npy"):  # all-padding content: every token masked
        modality = mask_file.name.split(".")[0]
        for kind in ("mask", "tokens", "pooled"):
            path = out / "items" / f"{modality}.{kind}.npy"
            array = np.load(path)
            array[list(NO_CONTENT_ITEMS)] = 0
            np.save(path, array)
    return out


def copy_dataset(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def split_table(folder: Path, split: str):  # noqa: ANN201 - a pyarrow Table
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in sorted((folder / split).glob("*.parquet"))])


def items_without_content(folder: Path) -> np.ndarray:
    """Item indices (>= 1) with no real token in any modality: all-padding content."""
    masks = [np.load(p) for p in sorted((folder / "items").glob("*.mask.npy"))]
    empty = np.logical_and.reduce([~m.any(axis=1) for m in masks])
    return np.nonzero(empty)[0][1:] if empty[0] else np.nonzero(empty)[0]


def poison_item(folder: Path, item: int, value: float = float("nan"), modality: str = "title") -> None:
    """Write ``value`` into every real token of ``item`` in ``items/<modality>.tokens.npy``, and into
    its pooled vector (``<modality>.pooled.npy``, the tokens' mean, which such tokens would give)."""
    path = folder / "items" / f"{modality}.tokens.npy"
    tokens = np.load(path)
    mask = np.load(folder / "items" / f"{modality}.mask.npy")
    assert mask[item].any(), f"item {item} has no {modality} token to poison"
    tokens[item, mask[item]] = value
    np.save(path, tokens)
    pooled_path = folder / "items" / f"{modality}.pooled.npy"
    pooled = np.load(pooled_path)
    pooled[item] = value
    np.save(pooled_path, pooled)


def torchrun(nproc: int, args: list[str], max_restarts: int = 0, resume: bool = False) -> list[str]:
    """``python -m torch.distributed.run ... -m em3rec.train --config din_em3 [--resume] --set ...``."""
    import sys

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "em3rec.train",
        "--config",
        "din_em3",
    ]
    cmd += ["--resume"] if resume else []
    for a in args:
        cmd += ["--set", a]
    return cmd


def overrides(data: Path, run_dir: Path, name: str, *extra: str) -> list[str]:
    return [*SHORT, f"data.path={data}", f"train.run_dir={run_dir}", f"train.run_name={name}", *extra]


def in_process_recipe(data: Path, run_dir: Path, *extra: str) -> Recipe:
    """A 1-rank recipe in this process (no pipeline): start-up checks and single steps, in seconds."""
    config = load_config("din_em3", [*overrides(data, run_dir, "solo"), "sharding.pipeline=false", *extra])
    recipe = Recipe(config, init_distributed("cpu"))
    recipe.setup()
    return recipe


# ------------------------------------------------------------------------------------- processes


@dataclass
class Job:
    """A launched training command: its process, log file and the tag that finds its workers."""

    proc: subprocess.Popen
    log: Path
    tag: str
    started: float
    drain: threading.Thread

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"job still running after {timeout}s:\n{self.output()[-4000:]}") from None
        self.drain.join(timeout=30)  # the rest of the output (a leftover grandchild may hold the pipe)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_job(self.proc)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> dict[int, int]:
        """``{rank: pid}`` of this job's live worker processes (found by the tag in their environment)."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = dict(
                    v.split("=", 1)
                    for v in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                    if "=" in v
                )
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if env.get("EM3REC_FAULT_TAG") == self.tag and "RANK" in env and "LOCAL_RANK" in env and state != "Z":
                found[int(env["RANK"])] = int(entry.name)
        return found


def launch(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> Job:
    """Start ``cmd`` from the repo root in its own process group; its output goes to ``log``.

    Through a pipe that a thread drains into the file: a limit on the job's file sizes
    (RLIMIT_FSIZE, the full-disk test) then does not cut its log, and the pipe never fills.
    """
    tag = uuid.uuid4().hex
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "EM3REC_FAULT_TAG": tag, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
        preexec_fn=preexec,
    )

    def drain() -> None:
        with open(log, "wb") as out:
            for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
                out.write(chunk)
                out.flush()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return Job(proc, log, tag, time.monotonic(), thread)


def run_ok(cmd: list[str], log: Path, **kwargs: object) -> str:
    job = launch(cmd, log, **kwargs)
    rc = job.wait()
    assert rc == 0, f"{' '.join(cmd)} exited {rc}:\n{job.output()[-6000:]}"
    return job.output()


def wait_for(condition: Callable[[], bool], job: Job, what: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if job.proc.poll() is not None:
            raise AssertionError(f"job ended (rc={job.proc.returncode}) before {what}:\n{job.output()[-6000:]}")
        if time.monotonic() > deadline:
            job.kill()
            raise AssertionError(f"no {what} after {timeout}s:\n{job.output()[-4000:]}")
        time.sleep(0.02)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_close_metrics(got: dict, want: dict, tol: float = 1e-4) -> None:
    """Valid and test metrics within ``tol`` (NaN matches NaN: e.g. cold AUC with one class)."""
    import math

    for split in ("valid", "test"):
        for key in ("auc", "gauc", "logloss", "cold_auc"):
            a, b = got[split][key], want[split][key]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol, (split, key, a, b)
    assert got["best_epoch"] == want["best_epoch"]
    assert got["test"]["rows"] == want["test"]["rows"]


# --------------------------------------------------------------------------- the reference run


@dataclass(frozen=True)
class Reference:
    root: Path  # train.run_dir
    name: str  # train.run_name
    output: str  # the run's stdout + stderr
    metrics: dict

    @property
    def run_dir(self) -> Path:
        return self.root / self.name

    def copy_to(self, root: Path) -> Path:
        """A private copy of the finished run folder under ``root`` (same run name)."""
        return Path(shutil.copytree(self.run_dir, root / self.name))


@pytest.fixture(scope="session")
def reference(reliable_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted 2-rank run: the result every fault run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    output = run_ok(torchrun(2, overrides(reliable_data, root, "ref")), root / "ref.log")
    return Reference(root, "ref", output, metrics(root / "ref"))
