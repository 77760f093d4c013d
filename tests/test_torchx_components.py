"""The torchx components generate the AppDefs we document (checked by dry runs, no job runs)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
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


def test_a_replica_gets_resources_for_each_of_its_processes() -> None:
    c = _components()
    node = c.train(j="4x8", gpu=8).roles[0].resource  # a node running 8 trainers
    assert (node.cpu, node.gpu, node.memMB) == (16, 8, 65536)
    given = c.train(j="4x8", gpu=8, cpu=48, memMB=400_000).roles[0].resource
    assert (given.cpu, given.memMB) == (48, 400_000)
    assert c.evaluate(j="1x1").roles[0].resource.memMB == 8192 and c.bench(j="1x2").roles[0].resource.cpu == 4


def test_evaluate_and_bench_components() -> None:
    c = _components()
    ev = c.evaluate(config="dcn_em3", checkpoint="runs/x/checkpoints/step_00000010", split="valid")
    assert (
        "-m em3rec.evaluate --config dcn_em3 --split valid --checkpoint runs/x/checkpoints/step_00000010"
        in ev.roles[0].args[1]
    )
    bench = c.bench("--steps", "5", j="1x2")
    assert "-m benchmarks.throughput --steps 5" in bench.roles[0].args[1]
    assert "--nproc_per_node 2" in bench.roles[0].args[1]


def _torchx_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_cli_dryrun_local_slurm_and_kubernetes() -> None:
    torchx = [str(Path(sys.executable).parent / "torchx"), "run", "--dryrun"]
    for scheduler, run_options, component_options, expect in (
        ("local_cwd", [], [], "torchrun"),
        ("slurm", [], [], "#SBATCH"),
        # The image holds the repo and its .venv: no workspace to build (torchx would call docker).
        (
            "kubernetes",
            ["--workspace", "", "-cfg", "queue=default"],
            ["--image", "example/em3rec:1"],
            "'image': 'example/em3rec:1'",
        ),
    ):
        cmd = [
            *torchx,
            "-s",
            scheduler,
            *run_options,
            "torchx/em3rec.py:train",
            "-j",
            "1x2",
            *component_options,
            "--config",
            "din_em3",
            "train.epochs=1",
        ]
        out = subprocess.run(cmd, cwd=ROOT, env=_torchx_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert expect in out.stdout
        for arg in ("em3rec.train", "--config din_em3", "--set train.epochs=1"):  # pprint may wrap lines
            assert arg in out.stdout


def _readme_torchx_lines() -> list[str]:
    """Every ``torchx run`` command of the README's shell blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("torchx run")]


def test_every_readme_torchx_command_passes_dryrun() -> None:
    lines = _readme_torchx_lines()
    assert any("-s kubernetes" in x for x in lines) and any("-s slurm" in x for x in lines)
    for line in lines:
        words = shlex.split(line.split("#")[0])
        cmd = [str(Path(sys.executable).parent / "torchx"), "run", "--dryrun", *words[2:]]
        out = subprocess.run(cmd, cwd=ROOT, env=_torchx_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{line}\n{out.stderr[-3000:]}"


def test_a_retried_train_job_resumes_and_mounts_reach_the_role() -> None:
    mounts = ["type=volume", "src=em3rec-runs", "dst=/job/runs"]
    app = _components().train(config="din_em3", max_retries=2, mounts=mounts)
    (role,) = app.roles
    assert "-m em3rec.train --config din_em3 --resume" in role.args[1]  # a retry continues, never restarts
    assert app.roles[0].max_retries == 2
    assert [(m.src, m.dst_path) for m in role.mounts] == [("em3rec-runs", "/job/runs")]
    assert "--resume" not in _components().train(config="din_em3").roles[0].args[1]
