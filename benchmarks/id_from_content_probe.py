"""How much of a trained item ID embedding its content predicts: the ceiling of any content -> ID map.

    python -m benchmarks.id_from_content_probe --config din_em3 --run-dir runs/X --run-name din_em3_seed0 \
        [--set data.path=data/ml100k_cold20] [--out benchmarks/results/F.md]

For one trained run (best checkpoint, one process) this reads every warm item's trained ID row
(the item table) and two content inputs: the run's own content embedding (the tower's target
branch, :func:`em3rec.export.item_embeddings`) and the stored pooled MiniLM vectors, concatenated
over modalities. A ridge regression content -> ID is fitted on 60 % of the warm items, its penalty
chosen on 20 %, and scored on the last 20 %: R^2 over all ``D`` dimensions (around the mean ID row)
and the mean cosine between predicted and trained rows, beside the cosine the mean ID row alone
reaches. Items without training rows are left out (their rows were never trained by the ranking loss).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from em3rec.cold_start import item_table_shards
from em3rec.config import load_config
from em3rec.export import item_embeddings
from em3rec.factory import load_trained
from em3rec.modules.model import uses_pooled_vectors

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def item_table(model: torch.nn.Module) -> np.ndarray:
    """``(num_items, D)`` float32 rows of the item table (one process: every shard is local)."""
    shards = item_table_shards(model)
    rows = max(s.row + s.weight.shape[0] for s in shards)
    table = np.zeros((rows, sum(s.weight.shape[1] for s in shards if s.row == 0)), dtype=np.float32)
    for s in shards:
        table[s.row : s.row + s.weight.shape[0], s.column : s.column + s.weight.shape[1]] = s.weight.float().cpu()
    return table


def ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(F, D)`` and intercept ``(D,)`` of ridge regression ``x (n, F) -> y (n, D)``."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    w = np.linalg.solve(xc.T @ xc + penalty * len(x) * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return w, y_mean - x_mean @ w


def scores(pred: np.ndarray, y: np.ndarray, y_mean: np.ndarray) -> tuple[float, float]:
    """(R^2 over all dimensions around ``y_mean``, mean row cosine)."""
    r2 = 1.0 - ((y - pred) ** 2).sum() / ((y - y_mean) ** 2).sum()
    cos = (pred * y).sum(1) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
    return float(r2), float(cos.mean())


def probe(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    order = np.random.default_rng(seed).permutation(len(x))
    fit, pick, held = np.split(order, [int(0.6 * len(x)), int(0.8 * len(x))])
    y_mean = y[fit].mean(0)

    def pick_r2(penalty: float) -> float:
        w, b = ridge(x[fit], y[fit], penalty)
        return scores(x[pick] @ w + b, y[pick], y_mean)[0]

    best = max(PENALTIES, key=pick_r2)
    w, b = ridge(x[np.concatenate([fit, pick])], y[np.concatenate([fit, pick])], best)
    r2, cos = scores(x[held] @ w + b, y[held], y_mean)
    _, cos_mean = scores(np.broadcast_to(y_mean, y[held].shape), y[held], y_mean)
    return {"penalty": best, "r2": r2, "cos": cos, "cos_mean_row": cos_mean, "held_out": len(held)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="din_em3")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0, help="of the item split")
    parser.add_argument("--out", type=Path, help="append a Markdown row here")
    args = parser.parse_args()
    config = load_config(args.config, [f"train.run_dir={args.run_dir}", f"train.run_name={args.run_name}", *args.set])
    trained = load_trained(config)
    store = trained.item_store
    ids = item_table(trained.model)  # (N, D)
    with trained.precision.autocast():
        content = item_embeddings(
            trained.em3_model,
            store,
            config.data.pooled_content,
            trained.env.device,
            pooled_vectors=uses_pooled_vectors(config.model),
            show_progress=False,
        )  # (N, D)
    rows = np.arange(store.num_rows)
    pooled = np.concatenate([v.float().numpy() for v in store.gather_pooled(rows).values()], axis=1)  # (N, sum W)
    warm = ~trained.cold_items.numpy()
    warm[0] = False  # the padding row
    results = {"trained content embedding": probe(content[warm], ids[warm], args.seed)}
    results["pooled MiniLM vectors"] = probe(pooled[warm], ids[warm], args.seed)
    lines = []
    for name, r in results.items():
        lines.append(
            f"| {args.run_name} | {name} | {r['held_out']} | {r['penalty']:g} | {r['r2']:.3f} | {r['cos']:.3f} |"
            f" {r['cos_mean_row']:.3f} |"
        )
    print("\n".join(lines))
    if args.out:
        if not args.out.exists():
            args.out.write_text(
                "| run | input | held-out items | ridge penalty | R² | cos(predicted, trained) | cos(mean row, trained) |\n"
                "|---|---|---|---|---|---|---|\n"
            )
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
