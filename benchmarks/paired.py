"""Paired differences, by seed, of runs against other runs stored in results JSONs.

    python benchmarks/paired.py --title "ml-100k DIN" \\
        --runs benchmarks/results/ml100k_ablation_din_token_window.json:pooled \\
        --against tokens=benchmarks/results/ml100k_ablation_din_rerun_context_bank_control.json:rerun \\
        --against frozen=benchmarks/results/ml100k_din_reference_2026_12_05.json:din_frozen \\
        --out benchmarks/results/ml100k_pooled_content_paired.md [--append]

A run list is ``FILE.json:KEY`` (the JSON of ``benchmarks/quality.py`` or ``benchmarks/ablation.py``:
key -> runs, each with its seed, best epoch and valid/test metrics). Each ``--against`` list is
paired with ``--runs`` over the seeds both hold; a cell is the mean ± std of ``runs - against`` and
``(n/N)``, the seeds on which ``--runs`` is ahead. Nothing is trained: it reads what the runs wrote.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

COLUMNS = (("valid", "auc"), ("test", "auc"), ("test", "gauc"), ("test", "cold_auc"), ("test", "warm_auc"))


def load_runs(spec: str) -> dict[int, dict]:
    """``FILE.json:KEY`` -> seed -> run."""
    file, _, key = spec.rpartition(":")
    runs = json.loads(Path(file).read_text())
    if key not in runs:
        raise SystemExit(f"{file}: no key {key!r}; it holds {sorted(runs)}")
    return {r["config"]["train"]["seed"]: r for r in runs[key]}


def paired_cell(runs: dict[int, dict], against: dict[int, dict], split: str, metric: str) -> str:
    seeds = [s for s in sorted(set(runs) & set(against)) if metric in runs[s][split] and metric in against[s][split]]
    diffs = [runs[s][split][metric] - against[s][split][metric] for s in seeds]
    if not diffs:
        return "-"
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.4f} ± {std:.4f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def table(title: str, runs_spec: str, against: list[tuple[str, str]]) -> str:
    runs = load_runs(runs_spec)
    epochs = ",".join(str(runs[s]["best_epoch"]) for s in sorted(runs))
    lines = [
        f"### {title}: `{runs_spec}` (seeds {sorted(runs)}, best epochs {epochs})",
        "",
        "| minus | " + " | ".join(f"{split} {metric}" for split, metric in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for label, spec in against:
        other = load_runs(spec)
        cells = [paired_cell(runs, other, split, metric) for split, metric in COLUMNS]
        lines.append(f"| {label} (`{spec}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--title", required=True)
    parser.add_argument("--runs", required=True, metavar="FILE.json:KEY")
    parser.add_argument("--against", action="append", required=True, metavar="LABEL=FILE.json:KEY")
    parser.add_argument("--out", required=True)
    parser.add_argument("--append", action="store_true", help="add this table to --out instead of replacing it")
    args = parser.parse_args()
    against = [tuple(a.split("=", 1)) for a in args.against]
    command = "python benchmarks/paired.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = f"{table(args.title, args.runs, against)}\nCommand: `{command}`\n"
    out = Path(args.out)
    if args.append and out.exists():
        text = out.read_text() + "\n" + text
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
