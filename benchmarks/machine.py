"""What a benchmark result was measured on: CPUs, GPU, package versions, commit, load and date."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def describe_machine(versions: dict[str, str], watched: list[str]) -> dict[str, str]:
    """The header fields of a results file.

    Args:
        versions: package name -> version, beyond Python and torch.
        watched: paths (relative to the repo) whose uncommitted changes mark the commit as
            ``(+ uncommitted changes)``.
    """
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *watched], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "commit": commit,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def results_head(module: str, argv: list[str] | None, watched: list[str], note: str = "") -> str:
    """A results file's first lines: the command that ran ``module`` with ``argv`` (None: this
    process's arguments), then the machine (CPU and what torch reports of it, torch, date, commit of
    the ``watched`` paths, load average) and ``note``."""
    info = describe_machine({}, watched)
    command = f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)
    return (
        f"Command: `{command}`  \n"
        f"Machine: {info['nproc']} CPUs ({info['cpu']}; torch reports {torch.backends.cpu.get_cpu_capability()}, "
        f"AMX tiles: {torch.cpu._is_amx_tile_supported()}); torch {info['torch']}; {info['date']}; commit "
        f"{info['commit']}; load average at the end {info['load']}. {note}\n\n"
    )


def write_results(text: str, out: str) -> None:
    """Print ``text`` and write it to ``out`` (when given)."""
    print(text)
    if out:
        Path(out).write_text(text)
