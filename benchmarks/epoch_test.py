"""Test metrics at every epoch of a run, paired between two variants: a diagnostic, never a selection.

``python benchmarks/epoch_test.py --configs din_frozen din_em3 --seeds 0 1 2 --set data.path=data/ml100k_cold20``

Trains each (config, seed) as ``benchmarks/quality.py`` does, keeping every epoch's checkpoint
(``train.keep_checkpoints``), unless its run folder already holds a finished run; then evaluates every
epoch's checkpoint on test with ``python -m em3rec.evaluate``. The table shows, per epoch, valid and
test AUC and the paired difference of the second config against the first, beside the difference at
each run's chosen (best-valid) epoch: whether a variant's valid lead at later epochs carries to the
later test interactions. Nothing here chooses an epoch or a setting by test; the quality tables do
that on valid only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.quality import _cell, run_args, run_one  # noqa: E402

METRICS = ("auc", "gauc", "cold_auc", "warm_auc")


def epoch_checkpoints(run: Path) -> dict[int, Path]:
    """epoch -> the checkpoint folder saved at the end of that epoch (``progress.json`` counts the
    next epoch to train)."""
    found = {}
    for folder in sorted((run / "checkpoints").glob("step_*")):
        progress = json.loads((folder / "progress.json").read_text())
        if progress["batches_done"] == 0:
            found[progress["epoch"] - 1] = folder
    return found


def test_by_epoch(config: str, seed: int, overrides: list[str], run_dir: str) -> dict:
    """Train ``config`` with ``seed`` if its run is not there yet; return its valid metrics by epoch,
    chosen epoch and test metrics of every epoch's checkpoint."""
    name = f"{config}_seed{seed}"
    run = ROOT / run_dir / name
    if not (run / "metrics.json").exists():
        run_one(config, seed, 1, overrides + ["train.keep_checkpoints=100"], run_dir)
    result = json.loads((run / "metrics.json").read_text())
    test = {}
    for epoch, folder in epoch_checkpoints(run).items():
        args = run_args(config, seed, overrides, run_dir)
        cmd = [sys.executable, "-m", "em3rec.evaluate", *args, "--checkpoint", str(folder), "--split", "test"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        test[epoch] = json.loads((run / "eval_test.json").read_text())
    epochs = sorted(test)
    if epochs != list(range(len(result["valid_by_epoch"]))):
        raise RuntimeError(f"{run}: checkpoints of epochs {epochs}, valid of {len(result['valid_by_epoch'])} epochs")
    return {"best_epoch": result["best_epoch"], "valid": result["valid_by_epoch"], "test": [test[e] for e in epochs]}


def table(runs: dict[str, dict[int, dict]], base: str, other: str) -> str:
    """Markdown: per epoch, mean valid/test AUC of each config, and ``other − base`` paired by seed."""
    seeds = sorted(set(runs[base]) & set(runs[other]))
    max_epoch = max(len(runs[c][s]["test"]) for c in (base, other) for s in seeds)
    lines = [
        f"| epoch | seeds | {base} valid AUC | {other} valid AUC | Δ valid AUC | "
        + " | ".join(f"Δ test {m}" for m in METRICS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(METRICS),
    ]

    def row(label: str, pick) -> None:
        pairs = [(pick(runs[base][s]), pick(runs[other][s])) for s in seeds]
        pairs = [(b, o) for b, o in pairs if b is not None and o is not None]
        if not pairs:
            return
        vb = [b[0]["auc"] for b, _ in pairs]
        vo = [o[0]["auc"] for _, o in pairs]
        cells = [_cell([o[1][m] - b[1][m] for b, o in pairs], signed=True) for m in METRICS]
        lines.append(
            f"| {label} | {len(pairs)} | {statistics.mean(vb):.4f} | {statistics.mean(vo):.4f} | "
            f"{_cell([o - b for b, o in zip(vb, vo)], signed=True)} | " + " | ".join(cells) + " |"
        )

    for e in range(max_epoch):
        row(str(e), lambda r, e=e: (r["valid"][e], r["test"][e]) if e < len(r["test"]) else None)
    row("chosen (best valid)", lambda r: (r["valid"][r["best_epoch"]], r["test"][r["best_epoch"]]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs=2, default=["din_frozen", "din_em3"], metavar=("BASE", "OTHER"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-dir", default="runs/epoch_test")
    parser.add_argument("--out", default="benchmarks/results/epoch_test.md")
    args = parser.parse_args()
    runs = {c: {s: test_by_epoch(c, s, args.set, args.run_dir) for s in args.seeds} for c in args.configs}
    base, other = args.configs
    chosen = {c: ",".join(str(runs[c][s]["best_epoch"]) for s in args.seeds) for c in args.configs}
    text = (
        f"# Test metrics at every epoch: {other} − {base}, paired by seed (a diagnostic, not a selection)\n\n"
        f"Command: `python benchmarks/epoch_test.py {' '.join(sys.argv[1:])}`  \n"
        f"Chosen (best-valid) epochs: {base} {chosen[base]}; {other} {chosen[other]}. Each run stops one "
        "epoch after its best (`train.patience = 1`), so later epochs have fewer seeds.\n\n"
        + table(runs, base, other)
        + "\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(runs, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
