"""What a real set's item tokens tell of an item's click rate, beyond their pooled vector.

    python -m benchmarks.item_signal_probe --data data/ml100k [--modalities title meta]
        [--min-rows 20] [--seeds 0 1 2 3 4] [--out FILE.md]

The target is an item's appeal as its training rows show it, with the raters' generosity taken
out: the mean over the item's train rows of ``label - user rate``, where a user's rate is the
user's train click rate shrunk toward the global one by ``--prior-rows`` pseudo-rows. Only items with
at least ``--min-rows`` train rows take part. The probes of :mod:`benchmarks.content_probes` (EM3's
Fusion-Q-Former and DeepSets over one modality's tokens; that modality's pooled vector through a
Linear and an MLP) regress it; per seed, 70 % of the items train, 10 % pick each probe's stopping
step and 20 % are held out. Held-out R² is what could reach an unseen item.

The ceiling is the target's own reliability: the items' rows split in random halves give two
targets whose correlation ``r`` makes ``2r / (1 + r)`` (Spearman-Brown) the share of the target's
variance that is the item's and not row noise; no predictor's R² can pass it beyond chance. If the
token probes do no better than the pooled ones, the tokens hold no item-level click signal beyond
their mean that these models can learn from this many items.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.content_probes import content_probes, emit, fit, report_head, without_dropout
from em3rec.config import load_config
from em3rec.data.item_appeal import item_targets, train_rows
from em3rec.data.schema import DatasetMeta


def split_half_reliability(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    num_items: int,
    prior_rows: float,
    eligible: np.ndarray,
    rng: np.random.Generator,
) -> float:
    """Spearman-Brown reliability of the item target over the ``eligible`` items: each item's rows
    split in random halves, the two halves' targets correlated."""
    half = rng.random(len(items)) < 0.5
    a, _ = item_targets(users[half], items[half], labels[half], num_items, prior_rows)
    b, _ = item_targets(users[~half], items[~half], labels[~half], num_items, prior_rows)
    r = float(np.corrcoef(a[eligible], b[eligible])[0, 1])
    return 2 * r / (1 + r)


POOLED_RIDGE = "pooled vector, ridge (penalty chosen on the stopping slice)"
RIDGE_ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def ridge(
    features: np.ndarray, target: np.ndarray, train: np.ndarray, valid: np.ndarray, held_out: np.ndarray
) -> tuple[float, float]:
    """R² on ``train`` and ``held_out`` of :func:`ridge_scores`."""
    train_r2, _, held_out_r2 = ridge_scores(features, target, train, valid, held_out)
    return train_r2, held_out_r2


def ridge_scores(
    features: np.ndarray, target: np.ndarray, train: np.ndarray, valid: np.ndarray, held_out: np.ndarray
) -> tuple[float, float, float]:
    """Closed-form ridge regression (with an unpenalised intercept) of ``target (I,)`` on
    ``features (I, K)``, its penalty the one of :data:`RIDGE_ALPHAS` with the best R² on ``valid``;
    R² on ``train``, ``valid`` and ``held_out``."""
    x = features - features[train].mean(0)
    y = target - target[train].mean()

    def r2(w: np.ndarray, items: np.ndarray) -> float:
        return float(1 - ((x[items] @ w - y[items]) ** 2).mean() / target[items].var())

    gram, moment = x[train].T @ x[train], x[train].T @ y[train]
    fits = [np.linalg.solve(gram + alpha * np.eye(len(gram)), moment) for alpha in RIDGE_ALPHAS]
    best = max(fits, key=lambda w: r2(w, valid))
    return r2(best, train), r2(best, valid), r2(best, held_out)


def token_moments(tokens: torch.Tensor, mask: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """``(I, 2W)``: each item's token mean and per-dimension standard deviation over its real
    tokens, ``chunk`` items at a time (float64)."""
    parts = []
    for start in range(0, len(tokens), chunk):
        m = mask[start : start + chunk].unsqueeze(-1).double()  # (c, T, 1)
        x = tokens[start : start + chunk].double()
        count = m.sum(1).clamp(min=1)
        mean = (x * m).sum(1) / count
        std = (((x - mean[:, None]) * m).pow(2).sum(1) / count).sqrt()
        parts.append(torch.cat([mean, std], dim=1))
    return torch.cat(parts).numpy()


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a prepared set (meta.json, train/, items/)")
    p.add_argument("--modalities", nargs="+", default=None, help="default: every modality of the set")
    p.add_argument("--min-rows", type=int, default=20, help="items with fewer train rows take no part")
    p.add_argument("--prior-rows", type=float, default=10.0, help="pseudo-rows shrinking a user's click rate")
    p.add_argument("--config", default="din_em3", help="whose model.qformer to build")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (model.qformer.*)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=10, help="steps between the stopping slice's R² scores")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    meta = DatasetMeta.load(args.data)
    users, items, labels = train_rows(args.data, meta)
    target_np, count = item_targets(users, items, labels, meta.num_items, args.prior_rows)
    eligible = np.flatnonzero(count >= args.min_rows)
    if len(eligible) < 50:
        raise SystemExit(f"{args.data}: {len(eligible)} items with >= {args.min_rows} train rows; need 50")
    modalities = args.modalities or [m.name for m in meta.modalities]
    unknown = sorted(set(modalities) - {m.name for m in meta.modalities})
    if unknown:
        raise SystemExit(f"--modalities {unknown}: not in {args.data}/meta.json ({[m.name for m in meta.modalities]})")
    qformer_config = without_dropout(load_config(args.config, args.set).model.qformer)
    label = f"`{args.config}`'s, no dropout"
    reliability = [
        split_half_reliability(
            users, items, labels, meta.num_items, args.prior_rows, eligible, np.random.default_rng([seed, 7])
        )
        for seed in args.seeds
    ]
    print(f"ceiling (split-half reliability): {mean_std(reliability)}", flush=True)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    seconds: dict[tuple[str, str], float] = {}
    with_tokens: dict[str, int] = {}  # modality -> taking-part items with at least one token
    for modality in modalities:
        # Only the taking-part items' rows are read (bx: ~120,000 items of up to 32 x 384 tokens);
        # from here on an item is its position in `usable`.
        folder = args.data / "items"
        mask_all = np.load(folder / f"{modality}.mask.npy", mmap_mode="r")  # (I, T)
        usable = eligible[np.asarray(mask_all[eligible]).any(1)]  # items with at least one token
        with_tokens[modality] = len(usable)
        mask = torch.from_numpy(np.asarray(mask_all[usable]))  # (n, T)
        tokens = torch.from_numpy(np.load(folder / f"{modality}.tokens.npy", mmap_mode="r")[usable])  # (n, T, W) fp16
        pooled = torch.from_numpy(np.load(folder / f"{modality}.pooled.npy", mmap_mode="r")[usable])  # (n, W)
        target = torch.from_numpy(target_np[usable]).float()  # (n,)
        ridge_features = {
            POOLED_RIDGE: pooled.double().numpy(),
            "token mean and per-dimension std, ridge (the same)": token_moments(tokens, mask),
        }
        for seed in args.seeds:
            torch.manual_seed(seed)
            order = torch.randperm(len(usable))
            n = len(order)
            train, valid, held_out = order[: n * 7 // 10], order[n * 7 // 10 : n * 8 // 10], order[n * 8 // 10 :]
            splits = (train.numpy(), valid.numpy(), held_out.numpy())
            for name, features in ridge_features.items():
                results.setdefault((modality, name), []).append(ridge(features, target_np[usable], *splits))
                seconds[(modality, name)] = 0.0
            for name, (model, predict) in content_probes(modality, tokens, mask, pooled, qformer_config, label).items():
                started = time.perf_counter()
                scores = fit(
                    model,
                    predict,
                    target,
                    train,
                    held_out,
                    args.steps,
                    args.batch,
                    args.lr,
                    args.weight_decay,
                    valid,
                    args.eval_every,
                )
                results.setdefault((modality, name), []).append(scores)
                seconds[(modality, name)] = seconds.get((modality, name), 0.0) + time.perf_counter() - started
                print(f"{modality} seed {seed} {name}: R² train {scores[0]:.3f} held-out {scores[1]:.3f}", flush=True)

    def versus_pooled(modality: str, scores: list[tuple[float, float]]) -> str:
        """Held-out R² minus the pooled-vector ridge's, paired by seed (the same items)."""
        reference = results[(modality, POOLED_RIDGE)]
        return mean_std([s[1] - r[1] for s, r in zip(scores, reference)])

    rows = [
        f"| {modality} | {name} | {mean_std([s[0] for s in scores])} | **{mean_std([s[1] for s in scores])}** "
        f"| {versus_pooled(modality, scores)} | {seconds[(modality, name)]:.0f} |"
        for (modality, name), scores in results.items()
    ]
    report = "\n".join(
        [
            *report_head(f"Item-signal probe: {args.data.name}", "benchmarks.item_signal_probe", argv),
            f"Target: an item's mean of `label - user rate` over its train rows (user rate shrunk by "
            f"{args.prior_rows:g} pseudo-rows), for the {len(eligible):,} items with >= {args.min_rows} train rows "
            f"(of {meta.num_items - 1:,}); per seed 70 % train, 10 % pick the stopping step (R² scored every "
            f"{args.eval_every} steps), 20 % held out; of them, with at least one token (the rest sit out that modality): "
            + ", ".join(f"{m} {n:,}" for m, n in with_tokens.items())
            + f". AdamW lr {args.lr}, at most {args.steps} steps of {args.batch} items, weight "
            f"decay {args.weight_decay}; seeds {args.seeds} (split and initialisation); Q-Former {qformer_config}.",
            "",
            f"Ceiling: the target's split-half reliability (Spearman-Brown) {mean_std(reliability)}: the share of "
            "its variance that is the item's, not row noise.",
            "",
            "| modality | model | R² train items | R² held-out items | held-out − pooled-vector ridge, paired "
            "| s (all seeds) |",
            "|---|---|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    emit(report, args.out)


if __name__ == "__main__":
    main()
