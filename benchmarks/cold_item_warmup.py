"""Cold items' ID rows regressed from content: does the ranker score unseen items better with them?

    python -m benchmarks.cold_item_warmup --config din_em3 --run-dir runs/X --run-name din_em3_seed0 \
        [--set data.path=data/ml100k_cold20] [--out benchmarks/results/F.jsonl]
    python -m benchmarks.cold_item_warmup --summarise F.jsonl --md F.md   # the table of every run in F

For one trained run (best checkpoint, one process): every item's content embedding (the model's own,
:func:`em3rec.export.item_embeddings`) and its trained ID row; a ridge regression content -> ID row
fitted on the items with training rows (penalty chosen on a held-out fifth of them, then refitted on
all); the predicted rows written into the item table for the items without training rows (whose rows
no ranking gradient moved); valid and test evaluated before and after. A post-hoc probe: training
is untouched, and the table's other rows too.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np
import torch

from benchmarks.id_from_content_probe import PENALTIES, item_table_tensor, ridge, scores
from em3rec.config import load_config
from em3rec.evaluation import evaluate
from em3rec.export import item_embeddings
from em3rec.factory import load_trained
from em3rec.modules.model import uses_pooled_vectors


def fit_rows(content: np.ndarray, ids: np.ndarray, warm: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
    """Ridge content -> ID on the warm rows; returns (predictions ``(N, D)`` for every row, the
    penalty chosen, held-out R^2 at that penalty)."""
    rows = np.flatnonzero(warm)
    order = np.random.default_rng(seed).permutation(rows)
    fit, pick = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]
    y_mean = ids[fit].mean(0)

    def pick_r2(penalty: float) -> float:
        w, b = ridge(content[fit], ids[fit], penalty)
        return scores(content[pick] @ w + b, ids[pick], y_mean)[0]

    best = max(PENALTIES, key=pick_r2)
    w, b = ridge(content[rows], ids[rows], best)
    return content @ w + b, best, pick_r2(best)


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.4f} ± {std:.4f} ({sum(v > 0 for v in values)}/{len(values)})"


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
        deltas = [
            _mean_std([r["after"][s][m] - r["before"][s][m] for r in runs.values()])
            for s, m in (("valid", "auc"), ("valid", "cold_auc"), ("test", "auc"), ("test", "cold_auc"))
        ]
        lines.append(f"| {config} | {len(runs)} | " + " | ".join(deltas) + " |")
    configs = list(by_config)
    if len(configs) == 2:
        a, b = configs
        seeds = sorted(set(by_config[a]) & set(by_config[b]))
        lines += [
            "",
            f"Paired by seed ({a} − {b}, seeds {seeds}):",
            "",
            "| when | test auc | test cold_auc |",
            "|---|---|---|",
        ]
        for when in ("before", "after"):
            diffs = [
                _mean_std([by_config[a][s][when]["test"][m] - by_config[b][s][when]["test"][m] for s in seeds])
                for m in ("auc", "cold_auc")
            ]
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
    parser.add_argument("--seed", type=int, default=0, help="of the penalty's held-out fifth")
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
    table = item_table_tensor(trained.model)  # (N, D), the model's own storage
    ids = table.float().cpu().numpy()
    with trained.precision.autocast():
        content = item_embeddings(
            trained.em3_model,
            trained.item_store,
            config.data.pooled_content,
            trained.env.device,
            pooled_vectors=uses_pooled_vectors(config.model),
            show_progress=False,
        )  # (N, D)
    cold = trained.cold_items.numpy().copy()
    cold[0] = False  # the padding row stays as it is
    warm = ~cold
    warm[0] = False
    predicted, penalty, r2 = fit_rows(content, ids, warm, args.seed)

    def metrics() -> dict[str, dict[str, float]]:
        with trained.precision.autocast():
            return {
                split: evaluate(trained.model, trained.loader(split), trained.env.device, trained.cold_items)
                for split in ("valid", "test")
            }

    before = metrics()
    with torch.no_grad():
        rows = torch.from_numpy(np.flatnonzero(cold))
        table[rows] = torch.from_numpy(predicted[cold]).to(table.dtype)
    assert np.allclose(item_table_tensor(trained.model).float().cpu().numpy()[cold], predicted[cold], atol=1e-2)
    after = metrics()
    record = {
        "run": args.run_name,
        "config": args.config,
        "cold_rows_written": int(cold.sum()),
        "penalty": penalty,
        "held_out_r2": r2,
        "unseen_row_norm_before": float(np.linalg.norm(ids[cold], axis=1).mean()),
        "warm_row_norm": float(np.linalg.norm(ids[warm], axis=1).mean()),
        "written_row_norm": float(np.linalg.norm(predicted[cold], axis=1).mean()),
        "before": before,
        "after": after,
    }
    for split in ("valid", "test"):
        b, a = before[split], after[split]
        print(
            f"{split}: auc {b['auc']:.4f} -> {a['auc']:.4f}, cold_auc {b['cold_auc']:.4f} -> {a['cold_auc']:.4f}, "
            f"warm_auc {b['warm_auc']:.4f} -> {a['warm_auc']:.4f}"
        )
    print(f"penalty {penalty:g}, held-out R^2 {r2:.3f}, {record['cold_rows_written']} rows written")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
