"""Cold items' ID rows regressed from content, post hoc: how each trained run scores before and after.

    python -m benchmarks.cold_item_warmup --config din_em3 --run-dir runs/X --run-name din_em3_seed0 \
        [--set data.path=data/ml100k_cold20] [--out benchmarks/results/F.jsonl]
    python -m benchmarks.cold_item_warmup --summarise F.jsonl --md F.md   # the table of every run in F

For one trained run (best checkpoint, any world size): valid and test evaluated as the checkpoint
is, then again after :func:`em3rec.cold_start.regress_cold_item_rows` (what ``model.cold_item_rows
= "from_content"`` does before each evaluation in training) rewrote the rows of the items without
training rows. The checkpoint on disk is left as it was.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch.distributed as dist

from benchmarks.paired import paired_cell
from em3rec.cold_start import regress_cold_item_rows
from em3rec.config import load_config
from em3rec.evaluation import evaluate
from em3rec.factory import load_trained


def summarise(records: list[dict]) -> str:
    """Markdown: each run before -> after, each config's mean change, and configs paired by seed."""
    lines = [
        "| run | held-out R² | valid auc | valid cold_auc | test auc | test cold_auc | test warm_auc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cells = [
            f"{r['before'][s][m]:.4f} -> {r['after'][s][m]:.4f}"
            for s, m in (
                ("valid", "auc"),
                ("valid", "cold_auc"),
                ("test", "auc"),
                ("test", "cold_auc"),
                ("test", "warm_auc"),
            )
        ]
        lines.append(f"| {r['run']} | {r['held_out_r2']:.3f} | " + " | ".join(cells) + " |")
    by_config: dict[str, dict[int, dict]] = {}
    for r in records:
        match = re.search(r"seed(\d+)$", r["run"])
        if match is None:
            raise ValueError(f"run {r['run']!r}: expected a run name ending in seed<N> (benchmarks/quality.py's names)")
        by_config.setdefault(r["config"], {})[int(match.group(1))] = r
    lines += [
        "",
        "| config | n | Δ valid auc | Δ valid cold_auc | Δ test auc | Δ test cold_auc (after − before) |",
        "|---|---|---|---|---|---|",
    ]
    for config, runs in by_config.items():
        after = {seed: r["after"] for seed, r in runs.items()}
        before = {seed: r["before"] for seed, r in runs.items()}
        deltas = [
            paired_cell(after, before, s, m)
            for s, m in (("valid", "auc"), ("valid", "cold_auc"), ("test", "auc"), ("test", "cold_auc"))
        ]
        lines.append(f"| {config} | {len(runs)} | " + " | ".join(deltas) + " |")
    configs = list(by_config)
    if len(configs) == 2:
        a, b = configs
        seeds = sorted(set(by_config[a]) & set(by_config[b]))  # paired_cell pairs the same seeds
        lines += [
            "",
            f"Paired by seed ({a} − {b}, seeds {seeds}):",
            "",
            "| when | test auc | test cold_auc |",
            "|---|---|---|",
        ]
        for when in ("before", "after"):
            first = {seed: r[when] for seed, r in by_config[a].items()}
            second = {seed: r[when] for seed, r in by_config[b].items()}
            diffs = [paired_cell(first, second, "test", m) for m in ("auc", "cold_auc")]
            lines.append(f"| {when} | " + " | ".join(diffs) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarise", type=Path, help="a JSON-lines file this script wrote: print its table")
    parser.add_argument("--md", type=Path, help="with --summarise: also write the table here")
    parser.add_argument("--config", default="din_em3")
    parser.add_argument("--run-dir")
    parser.add_argument("--run-name")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", type=Path, help="append one JSON line here")
    args = parser.parse_args()
    if args.summarise:
        table = summarise([json.loads(line) for line in args.summarise.read_text().splitlines() if line.strip()])
        print(table, end="")
        if args.md:
            args.md.write_text(table)
        return
    if not (args.run_dir and args.run_name):
        parser.error("--run-dir and --run-name are required (or --summarise)")
    config = load_config(args.config, [f"train.run_dir={args.run_dir}", f"train.run_name={args.run_name}", *args.set])
    trained = load_trained(config)
    assert trained.item_store is not None, f"{args.config}: a content model is needed"

    def metrics() -> dict[str, dict[str, float]]:
        with trained.precision.autocast():
            return {
                split: evaluate(trained.model, trained.loader(split), trained.env.device, trained.cold_items)
                for split in ("valid", "test")
            }

    before = metrics()
    with trained.precision.autocast():
        report = regress_cold_item_rows(
            trained.model, trained.em3_model, trained.item_store, trained.cold_items, config, trained.env.device
        )
    after = metrics()
    record = {
        "run": args.run_name,
        "config": args.config,
        "cold_rows_written": report.rows_written,
        "penalty": report.penalty,
        "held_out_r2": report.held_out_r2,
        "before": before,
        "after": after,
    }
    if trained.env.is_main:
        for split in ("valid", "test"):
            b, a = before[split], after[split]
            print(
                f"{split}: auc {b['auc']:.4f} -> {a['auc']:.4f}, cold_auc {b['cold_auc']:.4f} -> "
                f"{a['cold_auc']:.4f}, warm_auc {b['warm_auc']:.4f} -> {a['warm_auc']:.4f}"
            )
        print(report.describe())
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
