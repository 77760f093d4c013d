"""Equal-budget hyperparameter search, selected on valid AUC only: every trial recorded.

    python benchmarks/sweep.py benchmarks/sweeps/ml100k_din.toml [--variants din_em3] [--set k=v ...]

The sweep file names a number of ``trials`` per variant and, per variant (a bundled config), a grid
of ``--set`` overrides. Each variant's trials are drawn without replacement from its grid with a
fixed seed, so every variant gets the same budget and a rerun draws the same trials; every trial
sets each of its grid's keys explicitly, so it does not depend on the bundled values. Each trial is one ``python -m em3rec.train`` run (the epoch chosen on
valid inside it; its test metrics are recorded by the run but never read here). Results go to
``benchmarks/results/sweep_<name>.jsonl`` (one line per finished trial; a rerun skips the trials
already there, so an interrupted sweep loses nothing) and ``sweep_<name>.md`` (every trial, and per
variant the overrides with the best valid AUC).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.quality import run_one  # noqa: E402


def draw_trials(grid: dict[str, list], trials: int, draw_seed: int) -> list[list[str]]:
    """``trials`` distinct grid points (``--set`` override lists), drawn without replacement."""
    keys = sorted(grid)
    points = [
        [f"{k}={json.dumps(v)}" for k, v in zip(keys, values)] for values in itertools.product(*(grid[k] for k in keys))
    ]
    if len(points) < trials:
        raise ValueError(f"a grid of {len(points)} points cannot fill {trials} trials; widen it")
    return random.Random(draw_seed).sample(points, trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep TOML (trials, seed, draw_seed, [variants.<config>] grids)")
    parser.add_argument("--variants", nargs="+", default=None, help="default: every variant in the file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="added to every trial")
    parser.add_argument("--run-dir", default="runs/sweep")
    parser.add_argument("--out", default="", help="default: benchmarks/results/sweep_<sweep file stem>")
    args = parser.parse_args()
    spec = tomllib.loads(args.sweep.read_text())
    out = Path(args.out or ROOT / f"benchmarks/results/sweep_{args.sweep.stem}")
    log = out.with_suffix(".jsonl")
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    command = f"python benchmarks/sweep.py {' '.join(sys.argv[1:])}"
    for variant in args.variants or list(spec["variants"]):
        for i, overrides in enumerate(draw_trials(spec["variants"][variant], spec["trials"], spec["draw_seed"])):
            overrides = overrides + args.set
            if any(t["variant"] == variant and t["overrides"] == overrides for t in done):
                continue
            r = run_one(variant, spec["seed"], 1, overrides, f"{args.run_dir}/{args.sweep.stem}/{variant}_t{i}")
            trial = {
                "variant": variant,
                "trial": i,
                "overrides": overrides,
                "valid_auc": r["valid"]["auc"],
                "best_epoch": r["best_epoch"],
                "valid_by_epoch": [v["auc"] for v in r["valid_by_epoch"]],
                "wall_seconds": r["wall_seconds"],
                "commit": _commit(),
            }
            done.append(trial)
            with log.open("a") as f:
                f.write(json.dumps(trial) + "\n")
            print(
                f"{variant} trial {i} {overrides}: valid auc {trial['valid_auc']:.4f} (epoch {trial['best_epoch']})",
                flush=True,
            )
            write_table(out.with_suffix(".md"), spec, done, command)


def _commit() -> str:
    """The code a trial ran: HEAD, marked ``+dirty`` when tracked files differ from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return head + ("+dirty" if dirty else "")


def best_overrides(done: list[dict]) -> dict[str, dict]:
    """Per variant, the trial with the highest valid AUC."""
    best: dict[str, dict] = {}
    for t in done:
        if t["variant"] not in best or t["valid_auc"] > best[t["variant"]]["valid_auc"]:
            best[t["variant"]] = t
    return best


def write_table(path: Path, spec: dict, done: list[dict], command: str) -> None:
    lines = [
        f"# Sweep `{path.stem}`: {spec['trials']} trials per variant at seed {spec['seed']}, selected on valid AUC",
        "",
        f"Command: `{command}` (trials of earlier invocations kept from the JSONL)",
        "",
        "| variant | trial | overrides | valid auc | best epoch | valid auc by epoch | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in sorted(done, key=lambda t: (t["variant"], t["trial"])):
        by_epoch = " ".join(f"{a:.4f}" for a in t["valid_by_epoch"])
        lines.append(
            f"| {t['variant']} | {t['trial']} | `{' '.join(t['overrides'])}` | "
            f"{t['valid_auc']:.4f} | {t['best_epoch']} | {by_epoch} | {t['wall_seconds']:.0f} |"
        )
    lines += ["", "Chosen (best valid AUC per variant):", ""]
    for variant, t in best_overrides(done).items():
        lines.append(f"- {variant}: `{' '.join(t['overrides'])}` (valid auc {t['valid_auc']:.4f})")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
