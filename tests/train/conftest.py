"""A tiny synthetic prepared dataset and tiny model overrides for end-to-end training tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from em3rec.config import load_config
from em3rec.distributed import init_distributed
from em3rec.train import Recipe

from data_prep.synthetic import SyntheticConfig, generate
from tests.processes import kill_job

ROOT = Path(__file__).resolve().parents[2]

# A small EM3-DIN: every part of the model runs, each step takes milliseconds.
TINY = [
    "data.batch_size=64",
    "data.batch_scope=rank",  # 64 rows on every rank, whatever the world size (the tests count per rank)
    "data.eval_batch_size=256",
    "data.max_history=20",
    "model.embedding_dim=16",
    "model.qformer.dim=16",
    "model.qformer.num_heads=2",
    "model.cic.dim=16",
    "model.cic.catalogue_samples=8",  # of the 300 items: rare items stay rare (test_numerics needs some)
    "model.dense_layers=[32]",
    "model.over_layers=[32,16]",
    "model.attention_hidden=[16]",
    "train.epochs=2",
    "train.log_every=10",
]


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "syn"
    generate(
        SyntheticConfig(
            out=out,
            rows=6000,
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
    return out


def train_command(
    nproc: int, config: str, overrides: list[str], resume: bool = False, module: str = "em3rec.train"
) -> list[str]:
    launcher = [sys.executable, "-m", "em3rec.train"] if module == "em3rec.train" else [sys.executable, "-m", module]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            module,
        ]
    args = ["--config", config, *(["--resume"] if resume else [])]
    for o in overrides:
        args += ["--set", o]
    return launcher + args


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repo root; past ``timeout`` it is killed with its workers (a hung job
    must not leave ranks spinning through the rest of the suite)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)}: still running after {timeout}s\n{stderr[-6000:]}") from None
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return out


def run_and_kill_after(cmd: list[str], marker: Path, timeout: float = 300) -> None:
    """Start ``cmd`` and SIGKILL it with all its workers once ``marker`` exists."""
    log = marker.parent.parent / "killed_run.log"  # a file, not a pipe: a full pipe would block the job
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended (rc={proc.returncode}) before {marker} appeared:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            kill_job(proc)
            raise AssertionError(f"{marker} did not appear in {timeout}s")
        time.sleep(0.02)
    kill_job(proc)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def recipe(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    """A 1-process EM3-DIN recipe (no train pipeline) after 3 training steps."""
    run_dir = tmp_path_factory.mktemp("ckpt")
    config = load_config(
        "din_em3",
        [
            *TINY,
            f"data.path={tiny_prepared}",
            f"train.run_dir={run_dir}",
            "train.run_name=r",
            "sharding.pipeline=false",
        ],
    )
    recipe = Recipe(config, init_distributed("cpu"))
    recipe.setup()
    batches = iter(recipe.loader("train"))
    for _ in range(3):
        recipe._step(batches)
    return recipe
