"""Before/after training throughput of two ``em3rec`` source trees: real training epochs, alternating.

Each round trains one epoch of every config from each tree (``python -m em3rec.train``, 1 process,
real loader, fresh batches, evaluation excluded from the rate) and reads ``train_samples_per_s`` from
the run's ``metrics.json``; ``--set train.epochs=3 --set train.patience=0`` trains three (what
happens after the first evaluation and checkpoint shows only then). Unlike ``throughput_ab`` (fixed in-memory batches), this is what a user
pays per epoch, loader included. Sides alternate, and which goes first alternates by round, so both
see the same machine load on average.

``--before-set`` / ``--after-set`` give one side its own overrides, so ``--before .`` compares two
settings of this tree (``--before . --before-set data.prefetch=2 --after-set data.prefetch=0``);
``--nproc 2`` trains each epoch under ``torchrun`` with that many processes.

Example::

    git worktree add /tmp/before HEAD && ln -s "$PWD/data" /tmp/before/data   # before the change
    python -m benchmarks.train_ab --before /tmp/before --configs din_em3 din_frozen --rounds 2 \\
        --out benchmarks/results/train_ab_shape_buckets_ml100k.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import results_head, write_results

ROOT = Path(__file__).resolve().parents[1]


def one_epoch(tree: Path, config: str, overrides: list[str], nproc: int = 1) -> dict:
    """Train ``config`` for one epoch with the ``em3rec`` of ``tree`` (``nproc`` > 1: under
    torchrun); its metrics.json."""
    with tempfile.TemporaryDirectory() as run_dir:
        args = ["--config", config, "--set", "train.epochs=1", "--set", "train.run_name=ab"]
        args += ["--set", f"train.run_dir={run_dir}"] + [a for o in overrides for a in ("--set", o)]
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
        run = subprocess.run(
            [sys.executable, *launcher, "-m", "em3rec.train", *args],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
        )
        if run.returncode:
            raise SystemExit(
                f"{config} from {tree} failed (exit {run.returncode}); its output ends:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
            )
        return json.loads(next(Path(run_dir).rglob("metrics.json")).read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, type=Path, help="the 'before' source tree (with the same data/)")
    p.add_argument("--configs", nargs="+", default=["din_em3", "din_frozen"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--before-set", action="append", default=[], metavar="KEY=VALUE", help="override, before side only")
    p.add_argument("--after-set", action="append", default=[], metavar="KEY=VALUE", help="override, after side only")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (> 1: torchrun)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="", help="write the Markdown table here")
    args = p.parse_args(argv)
    if not (args.before / "em3rec").is_dir():
        raise SystemExit(
            f"--before {args.before}: no em3rec package there (expected a source tree, e.g. a git worktree)"
        )
    sides = {"before": args.before.resolve(), "after": ROOT}
    side_sets = {"before": args.before_set, "after": args.after_set}
    rates: dict[tuple[str, str], list[float]] = {}
    aucs: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))  # who goes first alternates
        for config in args.configs:
            for side, tree in order:
                m = one_epoch(tree, config, args.set + side_sets[side], args.nproc)
                rates.setdefault((config, side), []).append(m["train_samples_per_s"])
                aucs.setdefault((config, side), []).append(m["valid"]["auc"])
                print(f"round {r + 1} {config} {side}: {m['train_samples_per_s']:.0f} samples/s", flush=True)
    lines = [
        "| config | before samples/s (per round) | after samples/s (per round) | after / before (median) "
        "| best valid AUC, before / after |",
        "|---|---|---|---:|---|",
    ]
    for config in args.configs:
        b, a = rates[(config, "before")], rates[(config, "after")]
        auc = f"{statistics.mean(aucs[(config, 'before')]):.4f} / {statistics.mean(aucs[(config, 'after')]):.4f}"
        lines.append(
            f"| {config} | {', '.join(f'{x:.0f}' for x in b)} | {', '.join(f'{x:.0f}' for x in a)} "
            f"| {statistics.median(a) / statistics.median(b):.2f}x | {auc} |"
        )
    note = (
        f"One training run per cell (one epoch unless `--set train.epochs=N`; {args.nproc} process(es), the "
        "bundled config), the two sides alternating; samples/s over the run's training epochs."
        + (f" Before: `{' '.join(args.before_set)}`." if args.before_set else "")
        + (f" After: `{' '.join(args.after_set)}`." if args.after_set else "")
    )
    head = results_head("benchmarks.train_ab", argv, ["em3rec", "benchmarks/train_ab.py"], note)
    write_results(head + "\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
