"""Does training the text encoder itself find item signal that its frozen features miss?

    python -m benchmarks.encoder_probe --data data/ml100k [--modality meta] [--modes lora full]
        [--seeds 0 1 2 3 4] [--epochs 12] [--out FILE.md]

EM3 keeps the heavy encoder frozen and trains what reads its outputs (DESIGN.md §1): the
Fusion-Q-Former over pre-extracted MiniLM tokens. :mod:`benchmarks.item_signal_probe` showed that on
the real sets nothing trained over those tokens predicts an item's appeal better than a ridge
regression on their pooled vector. This probe asks the next question: is the frozen encoder the cap?
It fine-tunes all-MiniLM-L6-v2 itself on the item texts (``lora``: peft adapters on every Linear of
its six layers; ``full``: every weight), mean-pooled as the stored vectors are, plus a Linear head,
regressing the same target on the same items and splits as the item-signal probe (70 % of the
items train, 10 % pick the epoch, 20 % held out), and reports held-out R² paired by seed with the
pooled-vector ridge. The target is told directly here, a far stronger signal about each item than
what the ranking loss passes to its content; if the fine-tuned encoder does not beat the ridge
either, end-to-end training through the encoder has nothing of the item's main effect to find.
(It does not probe user x content interactions, only the item's appeal.)
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.content_probes import emit, report_head
from benchmarks.item_signal_probe import mean_std, ridge_scores, split_half_reliability
from data_prep.text_encoder import load_model
from em3rec.data.item_appeal import item_targets, train_rows
from em3rec.data.item_texts import tokenise_item_texts
from em3rec.data.schema import DatasetMeta
from em3rec.precision import Precision

MODES = ("lora", "full", "top1", "top2")
BERT_LINEARS = ["query", "key", "value", "dense"]  # every nn.Linear of a BertLayer (attention and MLP)


class EncoderRegressor(nn.Module):
    """A text encoder's masked-mean hidden states through a Linear: ``(n, t)`` token ids -> ``(n,)``."""

    def __init__(self, encoder: nn.Module, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(width, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (n, t, W)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (n, t, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)  # (n, W)
        return self.head(pooled.float()).squeeze(-1)  # (n,)


def build(mode: str, base: nn.Module, lora_rank: int) -> EncoderRegressor:
    """A fresh trainable copy of ``base`` for ``mode`` (``lora``: peft adapters, base frozen;
    ``top<k>``: only the last ``k`` layers train)."""
    encoder = copy.deepcopy(base).train()
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=BERT_LINEARS)
        encoder = inject_adapter_in_model(config, encoder)
    elif mode == "full":
        for p in encoder.parameters():
            p.requires_grad_(True)
    else:
        for layer in encoder.encoder.layer[-int(mode.removeprefix("top")) :]:
            for p in layer.parameters():
                p.requires_grad_(True)
    return EncoderRegressor(encoder, encoder.config.hidden_size)


def fit_encoder(
    model: EncoderRegressor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target: torch.Tensor,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    epochs: int,
    batch: int,
    lr: float,
    head_lr: float,
    precision: Precision,
) -> tuple[float, float, float, int]:
    """AdamW on the squared error against ``target (I,)`` (standardised on the train items), whole
    epochs over the train items in random order; the epoch with the best R² on the valid items is
    kept. Returns R² on the train, valid and held-out items and that epoch (1-based)."""
    train, valid, held_out = splits
    mean, std = target[train].mean(), target[train].std()
    scaled = (target - mean) / std
    head = list(model.head.parameters())
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": encoder, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.01)

    def predict(items: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids[items], attention_mask[items]
        width = int(mask.sum(1).max())  # right padding: trim the batch's all-padding columns
        with precision.autocast():
            return model(ids[:, :width], mask[:, :width])

    def r2(items: torch.Tensor) -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([predict(part) for part in items.split(256)])
        return float(1 - (pred - scaled[items]).pow(2).mean() / scaled[items].var())

    best, best_epoch, best_state = -math.inf, 0, None
    for epoch in range(1, epochs + 1):
        model.train()
        for items in train[torch.randperm(len(train))].split(batch):
            loss = (predict(items) - scaled[items]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = r2(valid)
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return r2(train), best, r2(held_out), best_epoch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a prepared set (meta.json, train/, items/)")
    p.add_argument("--modality", default="meta", help="the text modality (items.parquet column <modality>_text)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="repeat a mode to try several --lr")
    p.add_argument("--min-rows", type=int, default=20, help="items with fewer train rows take no part")
    p.add_argument("--prior-rows", type=float, default=10.0, help="pseudo-rows shrinking a user's click rate")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=32, help="items per step")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--lr", type=float, nargs="+", default=None, help="encoder lr per mode (default lora 3e-4, others 5e-5)"
    )
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = p.parse_args(argv)
    default_lr = {"lora": 3e-4, "full": 5e-5, "top1": 5e-5, "top2": 5e-5}
    if args.lr is not None and len(args.lr) != len(args.modes):
        raise SystemExit(f"--lr takes one value per --modes entry ({len(args.modes)}), got {len(args.lr)}")
    runs = list(zip(args.modes, args.lr)) if args.lr else [(m, default_lr[m]) for m in args.modes]
    precision = Precision.resolve(args.precision, torch.device("cpu"))
    print(precision.describe(), flush=True)

    meta = DatasetMeta.load(args.data)
    users, items, labels = train_rows(args.data, meta)
    target_np, count = item_targets(users, items, labels, meta.num_items, args.prior_rows)
    eligible = np.flatnonzero(count >= args.min_rows)
    folder = args.data / "items"
    mask_all = np.load(folder / f"{args.modality}.mask.npy", mmap_mode="r")  # (I, T)
    max_tokens = mask_all.shape[1]
    usable = eligible[np.asarray(mask_all[eligible]).any(1)]  # as item_signal_probe: items with a token
    pooled = np.load(folder / f"{args.modality}.pooled.npy", mmap_mode="r")[usable].astype(np.float64)
    tokenizer, base = load_model()
    try:  # every item, checked against the stored masks; then the probe's items
        input_ids, attention_mask = tokenise_item_texts(folder, args.modality, max_tokens, tokenizer)  # (I, T)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    input_ids, attention_mask = input_ids[usable], attention_mask[usable]  # (n, T) each
    target = torch.from_numpy(target_np[usable]).float()
    reliability = [
        split_half_reliability(
            users, items, labels, meta.num_items, args.prior_rows, eligible, np.random.default_rng([s, 7])
        )
        for s in args.seeds
    ]
    print(f"{len(usable)} items; ceiling (split-half reliability) {mean_std(reliability)}", flush=True)

    results: dict[str, list[tuple[float, float]]] = {}
    valid_r2: dict[str, list[float]] = {}
    epochs_chosen: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    ridge_name = "frozen MiniLM: pooled vector, ridge (penalty chosen on the valid items)"
    for seed in args.seeds:
        torch.manual_seed(seed)
        order = torch.randperm(len(usable))  # the item-signal probe's split of the same items
        n = len(order)
        splits = (order[: n * 7 // 10], order[n * 7 // 10 : n * 8 // 10], order[n * 8 // 10 :])
        train_r2, valid_score, held_r2 = ridge_scores(pooled, target_np[usable], *(s.numpy() for s in splits))
        results.setdefault(ridge_name, []).append((train_r2, held_r2))
        valid_r2.setdefault(ridge_name, []).append(valid_score)
        print(f"seed {seed} ridge: held-out {results[ridge_name][-1][1]:.3f}", flush=True)
        for mode, lr in runs:
            name = (
                f"MiniLM fine-tuned ({mode}"
                + (f", rank {args.lora_rank}" if mode == "lora" else "")
                + f", lr {lr:g}) + Linear"
            )
            torch.manual_seed(seed)
            model = build(mode, base, args.lora_rank)
            started = time.perf_counter()
            train_r2, valid_score, held_r2, epoch = fit_encoder(
                model, input_ids, attention_mask, target, splits, args.epochs, args.batch, lr, args.head_lr, precision
            )
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            results.setdefault(name, []).append((train_r2, held_r2))
            valid_r2.setdefault(name, []).append(valid_score)
            epochs_chosen.setdefault(name, []).append(epoch)
            print(f"seed {seed} {name}: R² train {train_r2:.3f} held-out {held_r2:.3f} (epoch {epoch})", flush=True)

    reference = results[ridge_name]
    lines = [
        f"| {name} | {mean_std([s[0] for s in scores])} | {mean_std(valid_r2[name])} | **{mean_std([s[1] for s in scores])}** "
        f"| {mean_std([s[1] - r[1] for s, r in zip(scores, reference)])} "
        f"| {sum(s[1] > r[1] for s, r in zip(scores, reference))}/{len(scores)} "
        f"| {' '.join(map(str, epochs_chosen.get(name, []))) or '-'} | {seconds.get(name, 0.0):.0f} |"
        for name, scores in results.items()
    ]
    report = "\n".join(
        [
            *report_head(f"Encoder probe: {args.data.name}, {args.modality}", "benchmarks.encoder_probe", argv),
            f"Target: an item's mean of `label - user rate` over its train rows (as `benchmarks.item_signal_probe`), "
            f"for the {len(usable):,} items with >= {args.min_rows} train rows and a {args.modality} text; per seed the "
            f"item-signal probe's split: 70 % train, 10 % pick the epoch, 20 % held out. Texts tokenised as the stored "
            f"features were ({max_tokens} tokens at most). AdamW, batches of {args.batch} items, at most {args.epochs} "
            f"epochs, head lr {args.head_lr:g}, weight decay 0.01, target standardised on the train items; "
            f"{precision.describe()}; seeds {args.seeds} (split and initialisation).",
            "",
            f"Ceiling: the target's split-half reliability (Spearman-Brown) {mean_std(reliability)}.",
            "",
            "| model | R² train items | R² valid items (best) | R² held-out items | held-out − ridge, paired | seeds ahead "
            "| epoch chosen | s (all seeds) |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
            *lines,
            "",
        ]
    )
    emit(report, args.out)


if __name__ == "__main__":
    main()
