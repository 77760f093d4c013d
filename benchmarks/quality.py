"""The quality table of a dataset: every backbone x {ID only, ID + frozen content, EM3} x seeds.

    python benchmarks/quality.py --seeds 0 1 2 [--dataset bx] [--backbones din dcn] [--set train.epochs=4]

Each run is ``python -m em3rec.train`` with the bundled config ``<prefix><backbone>_<variant>``
(under torchrun when ``--nproc > 1``); the epoch is chosen on valid AUC inside each run and test
is evaluated once, on that epoch. Writes ``benchmarks/results/<protocol>.md`` (mean +- std over
seeds, paired differences) and a JSON of every run, after every run (an interrupted sweep keeps
what finished).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("dlrm", "dcn", "din")
# dataset -> (bundled config prefix, protocol): configs `<prefix><backbone>_<variant>`
DATASETS = {"ml100k": ("", "ml100k-ctr-v1"), "bx": ("bx_", "bx-ctr-v1"), "ml1m": ("ml1m_", "ml1m-ctr-v1")}


def table_json(dataset: str) -> Path:
    """The quality table's JSON of every run on ``dataset`` (``benchmarks/results/<protocol>.json``)."""
    return ROOT / "benchmarks/results" / f"{DATASETS[dataset][1].replace('-', '_')}.json"


VARIANTS = {"id": "ID only", "frozen": "ID + frozen content", "em3": "EM3"}
METRICS = ("auc", "gauc", "logloss", "cold_auc", "warm_auc", "cold_user_auc")


def run_args(config: str, seed: int, overrides: list[str], run_dir: str) -> list[str]:
    """Command-line arguments of the run ``<config>_seed<seed>`` in ``run_dir`` (for ``em3rec.train``
    and the commands that load its checkpoints)."""
    args = ["--config", config, "--set", f"train.seed={seed}", "--set", f"train.run_name={config}_seed{seed}"]
    args += ["--set", f"train.run_dir={run_dir}"]
    for o in overrides:
        args += ["--set", o]
    return args


def run_one(config: str, seed: int, nproc: int, overrides: list[str], run_dir: str, resume: bool = False) -> dict:
    """Train ``config`` with ``seed`` and return its metrics.json; ``resume`` continues the run
    from its latest checkpoint (a finished run with a larger ``train.patience`` or
    ``train.epochs`` trains on where it stopped, exactly as an uninterrupted run would)."""
    name = f"{config}_seed{seed}"
    args = run_args(config, seed, overrides, run_dir)
    if resume:
        args.append("--resume")
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "em3rec.train",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "em3rec.train", *args]
    start = time.perf_counter()
    log_file = Path(run_dir) / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a" if resume else "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    result = json.loads((Path(run_dir) / name / "metrics.json").read_text())
    result["wall_seconds"] = time.perf_counter() - start
    return result


def _cell(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` (one value: the value); ``n/a`` where a run's value is NaN (an AUC over a
    subset with one class or no rows, e.g. cold users on a set without any)."""
    sign = "+" if signed else ""
    if any(math.isnan(v) for v in values):
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:{sign}.4f}"
    return f"{statistics.mean(values):{sign}.4f} ± {statistics.stdev(values):.4f}"


FEW_ROWS = 1000  # a subset metric over fewer rows than this shows its row count beside it


def _metric_cell(runs: list[dict], split: str, metric: str) -> str:
    """``_cell`` of ``metric`` over the runs; n/a if a run predates the metric (e.g. ``cold_user_auc``).
    A subset's metric (``cold_auc``: the rows of ``cold_rows``) over fewer than ``FEW_ROWS`` rows
    carries the mean row count, so that e.g. bx's 2 cold-user rows are not read as a result."""
    values = [r[split].get(metric) for r in runs]
    if None in values:
        return "n/a"
    rows = [r[split].get(metric.rsplit("_", 1)[0] + "_rows") for r in runs]
    if None not in rows and (mean_rows := statistics.mean(rows)) < FEW_ROWS:
        return f"{_cell(values)} ({mean_rows:,.0f} rows)"
    return _cell(values)


def _samples_per_s(runs: list[dict]) -> str:
    """Mean training samples/s (steps only, all ranks); runs from before it was recorded give n/a."""
    values = [r["train_samples_per_s"] for r in runs if r.get("train_samples_per_s")]
    return f"{statistics.mean(values):,.0f}" if values else "n/a"


def table(results: dict[str, list[dict]], prefix: str = "") -> str:
    """One row per backbone x variant: mean ± std over the seeds that finished (n says how many)."""
    lines = [
        "| backbone | variant | n | valid auc | "
        + " | ".join(f"test {m}" for m in METRICS)
        + " | best epochs | train samples/s | s/run |",
        "|---|---|---|---|" + "---|" * (len(METRICS) + 3),
    ]
    for backbone in BACKBONES:
        for variant, label in VARIANTS.items():
            runs = results.get(f"{prefix}{backbone}_{variant}", [])
            if not runs:
                continue
            cells = [_metric_cell(runs, "test", m) for m in METRICS]
            valid = _cell([r["valid"]["auc"] for r in runs])
            epochs = ",".join(str(r["best_epoch"]) for r in runs)
            secs = statistics.mean(r["wall_seconds"] for r in runs)
            lines.append(
                f"| {backbone} | {label} | {len(runs)} | {valid} | "
                + " | ".join(cells)
                + f" | {epochs} | {_samples_per_s(runs)} | {secs:.0f} |"
            )
    return "\n".join(lines)


def paired_table(
    results: dict[str, list[dict]], metrics: tuple[str, ...] = ("auc", "gauc", "cold_auc", "warm_auc"), prefix: str = ""
) -> str:
    """EM3 minus each baseline, paired by seed (mean ± std of the per-seed differences, n pairs)."""
    lines = [
        "| backbone | difference | n | " + " | ".join(f"Δ test {m}" for m in metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for backbone in BACKBONES:
        em3 = {r["config"]["train"]["seed"]: r for r in results.get(f"{prefix}{backbone}_em3", [])}
        for baseline in ("frozen", "id"):
            other = {r["config"]["train"]["seed"]: r for r in results.get(f"{prefix}{backbone}_{baseline}", [])}
            seeds = sorted(em3.keys() & other.keys())
            if not seeds:
                continue
            cells = [_cell([em3[s]["test"][m] - other[s]["test"][m] for s in seeds], signed=True) for m in metrics]
            lines.append(f"| {backbone} | EM3 − {VARIANTS[baseline]} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="ml100k", help="which bundled configs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-dir", default="runs/quality")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its checkpoints in --run-dir (e.g. with a larger train.patience); "
        "s/run adds the earlier invocation's time",
    )
    parser.add_argument("--out", default="", help="default: benchmarks/results/<protocol>.md")
    parser.add_argument(
        "--table-only",
        metavar="RUNS_COMMAND",
        default="",
        help="rewrite the table from the JSON of earlier runs made by RUNS_COMMAND",
    )
    args = parser.parse_args()
    args.prefix, args.protocol = DATASETS[args.dataset]
    args.out = args.out or str(table_json(args.dataset).with_suffix(".md"))
    if args.table_only:
        write(args, json.loads(Path(args.out).with_suffix(".json").read_text()))
        return
    configs = {f"{args.prefix}{b}_{v}" for b in args.backbones for v in args.variants}
    results = _earlier_runs(Path(args.out).with_suffix(".json"), configs, set(args.seeds))
    earlier_seconds = _earlier_wall_seconds(Path(args.out).with_suffix(".json")) if args.resume else {}
    for seed in args.seeds:  # seeds outermost: a partial run still covers every variant
        for backbone in args.backbones:
            for variant in args.variants:
                config = f"{args.prefix}{backbone}_{variant}"
                r = run_one(config, seed, args.nproc, args.set, args.run_dir, args.resume)
                r["wall_seconds"] += earlier_seconds.get((config, seed), 0.0)
                results.setdefault(config, []).append(r)
                print(
                    f"{config} seed {seed}: "
                    + " ".join(f"{m}={r['test'][m]:.4f}" for m in METRICS)
                    + f" best_epoch={r['best_epoch']} ({r['wall_seconds']:.0f}s)",
                    flush=True,
                )
                write(args, results)


def _earlier_runs(path: Path, configs: set[str], seeds: set[int]) -> dict[str, list[dict]]:
    """Runs kept from earlier invocations: all but the (config, seed) pairs about to be rerun, so
    seeds and backbones can be added one batch at a time."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    return {
        config: kept
        for config, runs in earlier.items()
        if (kept := [r for r in runs if config not in configs or r["config"]["train"]["seed"] not in seeds])
    }


def _earlier_wall_seconds(path: Path) -> dict[tuple[str, int], float]:
    """(config, seed) -> wall seconds recorded by earlier invocations (what a resumed run adds to)."""
    if not path.exists():
        return {}
    return {
        (config, r["config"]["train"]["seed"]): r["wall_seconds"]
        for config, runs in json.loads(path.read_text()).items()
        for r in runs
    }


def write(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    command = args.table_only or "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    seeds = sorted({r["config"]["train"]["seed"] for runs in results.values() for r in runs})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# {args.protocol}: test metrics at the best-valid epoch (mean ± std over n seeds)\n\n"
        f"Command: `{command}` (seeds in the table: {seeds}; runs of other seeds are kept from earlier "
        f"invocations' JSON)  \nMachine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {args.nproc} process(es) per run. s/run is wall time on a "
        "machine shared with other jobs (not a benchmark: see throughput_*.md).\n\n"
        + table(results, args.prefix)
        + "\n\nPaired by seed (per-seed test differences, mean ± std):\n\n"
        + paired_table(results, prefix=args.prefix)
        + "\n"
    )
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
