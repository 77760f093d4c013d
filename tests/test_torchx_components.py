"""The torchx components generate the AppDefs we document (checked by dry runs, no job runs)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _components():
    spec = importlib.util.spec_from_file_location("em3rec_torchx_components", ROOT / "torchx/em3rec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torchx_folder_has_no_init_py() -> None:
    assert not (ROOT / "torchx/__init__.py").exists()  # it would shadow the installed torchx


def test_train_component_builds_a_torchrun_appdef() -> None:
    app = _components().train("model.backbone=dcn", config="din_em3", j="2x4", gpu=4, resume=True, max_restarts=3)
    (role,) = app.roles
    cmd = role.args[1]
    assert role.num_replicas == 2 and role.resource.gpu == 4
    assert cmd.startswith("torchrun --max-restarts 3 ")
    assert "--nnodes 2 --nproc_per_node 4" in cmd
    assert "-m em3rec.train --config din_em3 --resume --set model.backbone=dcn" in cmd


def test_evaluate_and_bench_components() -> None:
    c = _components()
    ev = c.evaluate(config="dcn_em3", checkpoint="runs/x/checkpoints/step_00000010", split="valid")
    assert "-m em3rec.evaluate --config dcn_em3 --split valid --checkpoint runs/x/checkpoints/step_00000010" in ev.roles[0].args[1]
    bench = c.bench("--steps", "5", j="1x2")
    assert "-m benchmarks.throughput --steps 5" in bench.roles[0].args[1]
    assert "--nproc_per_node 2" in bench.roles[0].args[1]


def test_cli_dryrun_local_and_slurm() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    torchx = [str(Path(sys.executable).parent / "torchx"), "run", "--dryrun"]
    for scheduler, expect in (("local_cwd", "torchrun"), ("slurm", "#SBATCH")):
        out = subprocess.run(
            [*torchx, "-s", scheduler, "torchx/em3rec.py:train", "-j", "1x2", "--config", "din_em3", "train.epochs=1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert expect in out.stdout
        for arg in ("em3rec.train", "--config din_em3", "--set train.epochs=1"):  # pprint may wrap lines
            assert arg in out.stdout
