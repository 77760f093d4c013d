"""Can the Fusion-Q-Former learn the control set's token-level latent when told it directly?

    python -m benchmarks.token_signal_probe --data data/token_signal [--rows data/token_signal_cold20]
        [--steps 3000] [--out FILE.md]

The set comes from ``data_prep.synthetic --token-signal S``: each item has a latent ``q`` that only
its first modality's token spread carries. This regresses ``q`` on the item tokens, no clicks and no
IDs, with EM3's ``FusionQFormer`` (the config's ``model.qformer``, without dropout) plus a Linear
head; a DeepSets model over the same tokens (a per-token MLP, then their mean); and the pooled vector
through a Linear and through an MLP. An oracle that knows the direction is the ceiling: the
untouched spread of a few tokens is itself random. 80 % of the items (with >= 2 real tokens) train,
20 % are held out; R² on each. Held-out R² is what could reach an unseen item.

``--rows`` (the set or a ``data_prep.cold_holdout`` copy of it) adds what ``q`` is worth: the AUC on
its test rows, cold items (no train row) and warm ones apart, of the generator's own logit terms
(user bias alone, + ``S q``, + ``S`` times the oracle's estimate, user + item bias, all three).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq
import torch
from torchmetrics.functional.classification import binary_auroc

from benchmarks.content_probes import content_probes, emit, fit, report_head, without_dropout
from data_prep.synthetic import SyntheticConfig, World, logit_terms, world_of
from em3rec.config import load_config


def latent(folder: Path) -> tuple[SyntheticConfig, World]:
    """The generator's config and world (``token_latent``: ``q`` per item), rebuilt from ``meta.json``."""
    saved = json.loads((folder / "meta.json").read_text())["extra"]["config"]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()} | {"out": Path(saved["out"])}
    cfg = SyntheticConfig(**fields)
    if cfg.token_signal <= 0:
        raise SystemExit(f"{folder}: made without --token-signal; nothing to probe")
    return cfg, world_of(cfg)


def oracle_estimate(
    tokens: torch.Tensor, mask: torch.Tensor, direction: np.ndarray, q: torch.Tensor, train: torch.Tensor
) -> torch.Tensor:
    """``q`` as well as the tokens tell it to one who knows the direction: least squares (on
    ``train``) of ``q`` on the log sample variance along ``direction``, slope and intercept per
    token count. ``(I,)``; 0 for items with fewer than 2 tokens. The ceiling of any probe: the
    untouched spread of a handful of tokens is itself random."""
    count = mask.sum(1)  # (I,)
    along = tokens @ torch.from_numpy(direction)  # (I, T)
    mean = (along * mask).sum(1) / count.clamp(min=1)
    log_var = torch.log(((along - mean[:, None]) * mask).pow(2).sum(1).clamp(min=1e-12) / (count - 1).clamp(min=1))
    onehot = torch.nn.functional.one_hot(count, mask.shape[1] + 1).double()  # (I, T + 1)
    features = torch.cat([onehot, onehot * log_var.double()[:, None]], dim=1)  # (I, 2 (T + 1))
    coef = torch.linalg.lstsq(
        features[train], q[train].double()[:, None], driver="gelsd"
    ).solution  # rank-deficient: unused counts
    return torch.where(count >= 2, (features @ coef).squeeze(-1), 0.0).float()


def headroom(cfg: SyntheticConfig, world: World, rows: Path, estimate: torch.Tensor) -> list[str]:
    """Table rows: AUC of the generator's logit terms on the test rows of ``rows``, by item kind,
    and of the user term plus ``S`` times ``estimate`` (the oracle's q from the tokens)."""
    seen = np.unique(pq.read_table(rows / "train", columns=["item_id_idx"]).column(0).to_numpy())
    test = pq.read_table(rows / "test", columns=["user_id_idx", "item_id_idx", "label"])
    users, items = test.column("user_id_idx").to_numpy(), test.column("item_id_idx").to_numpy()
    labels = torch.tensor(test.column("label").to_numpy()).long()
    terms = logit_terms(cfg, world, users, items) | {"estimate": cfg.token_signal * estimate.numpy()[items]}
    cold = ~np.isin(items, seen)
    out = []
    for kind, keep in (("cold items", cold), ("warm items", ~cold)):
        aucs = [
            float(binary_auroc(torch.from_numpy(sum(terms[t] for t in parts)[keep]), labels[keep]))
            for parts in (["user"], ["user", "q"], ["user", "estimate"], ["user", "item"], ["user", "item", "q"])
        ]
        out.append(f"| {kind} | {int(keep.sum()):,} | " + " | ".join(f"{a:.4f}" for a in aucs) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a set made with data_prep.synthetic --token-signal")
    p.add_argument(
        "--rows", type=Path, default=None, help="a prepared copy of the set: report what q is worth on its test rows"
    )
    p.add_argument("--config", default="din_em3", help="whose model.qformer to build")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (model.qformer.*)")
    p.add_argument("--keep-dropout", action="store_true", help="the config's dropout (default: none)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay of every probe")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg, world = latent(args.data)
    q = torch.from_numpy(world.token_latent)  # (I,)
    modality = cfg.modalities[0]
    items = args.data / "items"
    tokens = torch.from_numpy(np.load(items / f"{modality}.tokens.npy").astype(np.float32))  # (I, T, W)
    mask = torch.from_numpy(np.load(items / f"{modality}.mask.npy"))  # (I, T)
    pooled = torch.from_numpy(np.load(items / f"{modality}.pooled.npy").astype(np.float32))  # (I, W)
    usable = torch.nonzero(mask.sum(1) >= 2).flatten()  # a single token has no spread
    order = usable[torch.randperm(len(usable))]
    train, held_out = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]

    qformer_config = load_config(args.config, args.set).model.qformer
    if not args.keep_dropout:
        qformer_config = without_dropout(qformer_config)
    label = f"`{args.config}`'s" + ("" if args.keep_dropout else ", no dropout")
    probes = content_probes(modality, tokens, mask, pooled, qformer_config, label)
    width = tokens.shape[-1]
    estimate = oracle_estimate(tokens, mask, world.signal_direction, q, train)
    rows = [
        "| oracle: knows the direction, least squares on the log variance along it per token count | "
        + " | ".join(f"{float(1 - (estimate[s] - q[s]).pow(2).mean() / q[s].var()):.3f}" for s in (train, held_out))
        + " | 0 |"
    ]
    print(rows[-1], flush=True)
    for name, (model, predict) in probes.items():
        started = time.perf_counter()
        r2_train, r2_held = fit(model, predict, q, train, held_out, args.steps, args.batch, args.lr, args.weight_decay)
        rows.append(f"| {name} | {r2_train:.3f} | {r2_held:.3f} | {time.perf_counter() - started:.0f} |")
        print(rows[-1], flush=True)
    report = "\n".join(
        [
            *report_head(f"Token-signal probe: {args.data.name}", "benchmarks.token_signal_probe", argv),
            f"Set: {cfg.items:,} items, token signal S = {cfg.token_signal}, modality `{modality}` "
            f"{cfg.tokens[0]} x {width}; {len(train):,} training and {len(held_out):,} held-out items. "
            f"Target: the latent q itself (no clicks, no IDs); AdamW lr {args.lr}, {args.steps} steps of "
            f"{args.batch} items, weight decay {args.weight_decay}; Q-Former "
            f"{qformer_config}.",
            "",
            "| model | R² train items | R² held-out items | s |",
            "|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    if args.rows:
        report += "\n".join(
            [
                "",
                f"What q is worth on the test rows of `{args.rows}`: AUC of the generator's own logit terms.",
                "",
                "| rows | n | user bias | user bias + S q | user bias + S (oracle's q) | user + item bias | "
                "user + item bias + S q |",
                "|---|---:|---:|---:|---:|---:|---:|",
                *headroom(cfg, world, args.rows, estimate),
                "",
            ]
        )
    emit(report, args.out)


if __name__ == "__main__":
    main()
