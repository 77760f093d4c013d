"""Is EM3 minus a baseline larger than the noise of the test set? A paired user bootstrap.

    python benchmarks/significance.py --runs benchmarks/results/ml100k_cold20_id_dropout0.json \\
        --data data/ml100k_cold20 [--split test] [--baselines frozen id] [--resamples 1000] \\
        [--out benchmarks/results/ml100k_cold20_significance.md]

The seed std of a paired difference (quality.py's tables) measures training noise only: every
seed is scored on the same test rows. A different sample of test users would move every variant's
AUC, and on a subset such as the cold items (~2,000 rows on cold20) that move is of the size of the
differences we rank. This resamples the test *users* with replacement (their rows go together, so
within-user correlation is kept), scores every seed's EM3 and baseline on each resample (paired:
the same resample for both), and reports the bootstrap distribution of the seed-mean difference:
its std, 95 % percentile interval and the share of resamples in which EM3 is ahead, and a total
standard error of the seed-mean difference that adds both noises,
``sqrt(seed_std**2 / seeds + bootstrap_std**2)``. Subsets: all rows, cold / warm items (no train
rows / some) and cold / warm users (likewise). ``--split valid`` does the same on the validation
rows: does valid, which selects, agree with test within their noises? Scores come from each run's
best-valid checkpoint (``benchmarks/buckets.py``'s ``scores_<split>.parquet``, scored once and
reused). Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.buckets import scores_on  # noqa: E402
from benchmarks.quality import BACKBONES, VARIANTS  # noqa: E402


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` under each row of ``weights`` (ties count one half).

    Args:
        scores: ``(N,)`` predictions.
        labels: ``(N,)`` {0, 1}.
        weights: ``(B, N)`` non-negative row weights (bootstrap multiplicities).

    Returns:
        ``(B,)`` AUCs; NaN where a resample has no positive or no negative weight.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # (G,) tie groups
    w = weights[:, order]
    positive = labels[order].astype(bool)
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)  # (B, G)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)  # (B, G)
    neg_below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * (neg_below + 0.5 * neg)).sum(axis=1) / total, np.nan)


def user_bootstrap_weights(users: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(B, N)`` row weights: each resample draws the distinct users with replacement, and a row
    counts as often as its user was drawn (resample 0 is the test set itself)."""
    distinct, user_of_row = np.unique(users, return_inverse=True)
    counts = rng.multinomial(len(distinct), np.full(len(distinct), 1.0 / len(distinct)), size=resamples)
    counts[0] = 1
    return counts[:, user_of_row].astype(np.float64)


def _load(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path, columns=["user_idx", "item_idx", "label", "logit"])
    return {c: table.column(c).to_numpy() for c in table.column_names}


def compare(
    em3: dict[int, dict[str, np.ndarray]],
    baseline: dict[int, dict[str, np.ndarray]],
    train_count: np.ndarray,
    resamples: int,
    seed: int = 0,
    cold_users: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """EM3 minus the baseline on each subset: seed-paired mean and std, and the user bootstrap of
    the seed-mean difference. ``em3`` / ``baseline``: seed -> scores of the same rows;
    ``train_count``: ``(num_items,)`` train rows per item; ``cold_users``: ``(num_users,)`` bool,
    True for users without train rows (adds the subsets ``cold users`` / ``warm users``)."""
    seeds = sorted(em3.keys() & baseline.keys())
    if not seeds:
        raise ValueError("no seed has both an EM3 run and a baseline run")
    reference = em3[seeds[0]]
    for runs in (em3, baseline):
        for s in seeds:
            if not np.array_equal(runs[s]["user_idx"], reference["user_idx"]) or not np.array_equal(
                runs[s]["label"], reference["label"]
            ):
                raise ValueError(f"seed {s}: scores are not of the same test rows in the same order")
    weights = user_bootstrap_weights(reference["user_idx"], resamples, np.random.default_rng(seed))
    cold = train_count[reference["item_idx"]] == 0
    subsets = [("all", np.ones_like(cold)), ("cold", cold), ("warm", ~cold)]
    if cold_users is not None:
        cold_user = cold_users[reference["user_idx"]]
        subsets += [("cold users", cold_user), ("warm users", ~cold_user)]
    result = {}
    for subset, mask in subsets:
        if not mask.any():
            continue
        labels, w = reference["label"][mask], weights[:, mask]
        diffs = np.stack(
            [
                weighted_auc(em3[s]["logit"][mask], labels, w) - weighted_auc(baseline[s]["logit"][mask], labels, w)
                for s in seeds
            ]
        )  # (S, B); column 0 is the test set itself
        boot = diffs.mean(axis=0)
        boot = boot[~np.isnan(boot)]
        seed_std = float(diffs[:, 0].std(ddof=1)) if len(seeds) > 1 else float("nan")
        bootstrap_std = float(boot.std(ddof=1))
        result[subset] = {
            "rows": int(mask.sum()),
            "seeds": len(seeds),
            "mean": float(diffs[:, 0].mean()),
            "seed_std": seed_std,
            "bootstrap_std": bootstrap_std,
            "total_se": float(np.sqrt(seed_std**2 / len(seeds) + bootstrap_std**2)),
            "ci_low": float(np.percentile(boot, 2.5)),
            "ci_high": float(np.percentile(boot, 97.5)),
            "share_ahead": float((boot > 0).mean()),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a quality.py JSON")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the runs trained on")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--baselines", nargs="+", default=["frozen", "id"], choices=["frozen", "id"])
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="the rows scored and resampled")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="default: <runs>_significance.md")
    args = parser.parse_args()
    out = args.out or args.runs.with_name(args.runs.stem + "_significance.md")
    runs = json.loads(args.runs.read_text())
    train = pq.read_table(ROOT / args.data / "train", columns=["item_idx", "user_idx"])
    rows = pq.read_table(ROOT / args.data / args.split, columns=["item_idx", "user_idx"])
    counts = {}
    for column in ("item_idx", "user_idx"):
        seen, scored = train.column(column).to_numpy(), rows.column(column).to_numpy()
        counts[column] = np.bincount(seen, minlength=max(int(scored.max()), int(seen.max())) + 1)
    train_count, cold_users = counts["item_idx"], counts["user_idx"] == 0
    table: dict[str, dict[str, dict[str, float]]] = {}
    for backbone in args.backbones:
        configs = {v: c for v in VARIANTS for c in runs if c.endswith(f"{backbone}_{v}")}
        if "em3" not in configs:
            continue
        scores = {
            v: {r["config"]["train"]["seed"]: _load(scores_on(r, args.split)) for r in runs[config]}
            for v, config in configs.items()
            if v == "em3" or v in args.baselines
        }
        for baseline in args.baselines:
            if baseline in scores:
                key = f"{backbone}: EM3 − {VARIANTS[baseline]}"
                table[key] = compare(
                    scores["em3"], scores[baseline], train_count, args.resamples, cold_users=cold_users
                )
                print(key, table[key], flush=True)
    lines = [
        "| comparison | subset | rows | seeds | mean Δ AUC | seed std | user-bootstrap std | 95 % interval | "
        "resamples with EM3 ahead | total s.e. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, by_subset in table.items():
        for subset, r in by_subset.items():
            lines.append(
                f"| {key} | {subset} | {r['rows']:,} | {r['seeds']} | {r['mean']:+.4f} | {r['seed_std']:.4f} | "
                f"{r['bootstrap_std']:.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['share_ahead']:.0%} | {r['total_se']:.4f} |"
            )
    out.write_text(
        f"# EM3 minus each baseline on {args.split}: seed noise against {args.split}-set noise ({args.runs.name})\n\n"
        f"Command: `python benchmarks/significance.py {' '.join(sys.argv[1:])}`\n\n"
        "mean Δ AUC: EM3 minus the baseline, averaged over the seeds both have (the quality table's "
        "paired mean); seed std: its std over seeds (training noise); user-bootstrap std and 95 % "
        f"interval: of the seed-mean difference over {args.resamples} resamples of the {args.split} users with "
        "replacement (the split's user-sampling noise, both models scored on the same resample); total s.e.: "
        "sqrt(seed std² / seeds + bootstrap std²), both noises. cold = items without train rows; "
        "cold users = users without train rows.\n\n" + "\n".join(lines) + "\n"
    )
    out.with_suffix(".json").write_text(json.dumps(table, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
