"""A prepared set whose text features come from MiniLM fine-tuned on the train split's item appeal.

    python -m benchmarks.tuned_content --data data/ml100k_cold20 --out data/ml100k_cold20_tuned_s0 \\
        [--modality meta] [--seed 0] [--epochs 10] [--lr 5e-5] [--mode full]

The test of whether the frozen encoder caps what content gives the ranker
(:mod:`benchmarks.encoder_probe` found that MiniLM fine-tuned on an item's appeal predicts it for
unseen items better than its frozen pooled vector). The encoder is fine-tuned (every weight, or
with ``--mode top1`` / ``top2`` only its last layers, or peft LoRA adapters: ``--mode lora``) on the
appeal of the items with at least ``--min-rows`` rows in the *train* split (the mean of ``label -
user rate`` over them: :func:`em3rec.data.item_appeal.item_targets`); 90 % of those items fit,
10 % pick the epoch. Valid and test rows are never read, and an item without train rows (every
cold item) is only encoded. Every item's text is then encoded again by the tuned encoder, and
``--out`` gets the set with that modality's tokens, mask and pooled vectors replaced (the splits,
vocabularies and other modalities linked, not copied). Any variant then trains on it unchanged: the
frozen-content baseline reads these vectors as its frozen content.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.encoder_probe import MODES, build, fit_encoder
from data_prep.text_encoder import load_model
from data_prep.writer import masked_mean
from em3rec.data.item_appeal import item_targets, train_rows
from em3rec.data.item_texts import tokenise_item_texts
from em3rec.data.schema import DatasetMeta
from em3rec.precision import Precision


@torch.no_grad()
def encode(
    encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: int = 256
) -> np.ndarray:
    """``(N, T, W)`` float16 last hidden states of the texts ``input_ids`` / ``attention_mask``
    ``(N, T)``, padded positions zeroed (as the stored features are)."""
    encoder.eval()
    parts = []
    for lo in range(0, len(input_ids), batch):
        mask = attention_mask[lo : lo + batch]
        hidden = encoder(input_ids=input_ids[lo : lo + batch], attention_mask=mask).last_hidden_state  # (b, T, W)
        parts.append((hidden * mask[..., None]).to(torch.float16).numpy())
    return np.concatenate(parts)


def link_set(source: Path, out: Path, replaced: set[str]) -> None:
    """``out`` as a copy of the prepared set ``source`` by symbolic links, except ``meta.json`` and
    the ``items/`` files named in ``replaced`` (written by the caller)."""
    out.mkdir(parents=True, exist_ok=False)
    for entry in source.iterdir():
        if entry.name in ("items", "meta.json"):
            continue
        os.symlink(entry.resolve(), out / entry.name)
    (out / "items").mkdir()
    for entry in (source / "items").iterdir():
        if entry.name not in replaced:
            os.symlink(entry.resolve(), out / "items" / entry.name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a prepared set (meta.json, train/, items/)")
    p.add_argument("--out", type=Path, required=True, help="the new set's folder (must not exist)")
    p.add_argument("--modality", default="meta", help="the text modality to re-encode (items.parquet <modality>_text)")
    p.add_argument("--min-rows", type=int, default=20, help="items with fewer train rows are not fitted on")
    p.add_argument("--prior-rows", type=float, default=10.0, help="pseudo-rows shrinking a user's click rate")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5, help="the encoder's AdamW lr (encoder_probe's pick on ml-100k)")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--mode", choices=MODES, default="full", help="what of the encoder trains (encoder_probe's modes)")
    p.add_argument("--lora-rank", type=int, default=8, help="the adapters' rank with --mode lora")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"--out {args.out}: exists; give a new folder")
    meta = DatasetMeta.load(args.data)
    modality = next((m for m in meta.modalities if m.name == args.modality), None)
    if modality is None:
        raise SystemExit(
            f"--modality {args.modality}: not in {args.data}/meta.json ({[m.name for m in meta.modalities]})"
        )
    target_np, count = item_targets(*train_rows(args.data, meta), meta.num_items, args.prior_rows)

    folder = args.data / "items"
    tokenizer, base = load_model()
    try:
        input_ids, attention_mask = tokenise_item_texts(folder, args.modality, modality.tokens, tokenizer)  # (I, T)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    stored_mask = attention_mask.bool().numpy()  # (I, T): equal to the stored mask (checked)

    fitted = torch.from_numpy(np.flatnonzero((count >= args.min_rows) & stored_mask.any(1)))
    torch.manual_seed(args.seed)
    order = fitted[torch.randperm(len(fitted))]
    fit_items, pick_items = order[: len(order) * 9 // 10], order[len(order) * 9 // 10 :]
    precision = Precision.resolve("auto", torch.device("cpu"))
    model = build(args.mode, base, lora_rank=args.lora_rank)
    started = time.perf_counter()
    target = torch.from_numpy(target_np).float()
    fit_r2, pick_r2, _, epoch = fit_encoder(
        model,
        input_ids,
        attention_mask,
        target,
        (fit_items, pick_items, pick_items),
        args.epochs,
        args.batch,
        args.lr,
        args.head_lr,
        precision,
    )
    print(
        f"fitted on {len(fit_items)} items: R² {fit_r2:.3f}, on the {len(pick_items)} picking items {pick_r2:.3f} (epoch {epoch})"
    )

    tokens = encode(model.encoder, input_ids, attention_mask)  # (I, T, W)
    names = {f"{args.modality}.{kind}.npy" for kind in ("tokens", "mask", "pooled")}
    link_set(args.data, args.out, names)
    np.save(args.out / "items" / f"{args.modality}.tokens.npy", tokens)
    np.save(args.out / "items" / f"{args.modality}.mask.npy", stored_mask)
    np.save(args.out / "items" / f"{args.modality}.pooled.npy", masked_mean(tokens, stored_mask))
    record = json.loads((args.data / "meta.json").read_text())
    record["name"] = args.out.name
    record.setdefault("extra", {})["tuned_content"] = {
        "source": str(args.data),
        "modality": args.modality,
        "target": f"item appeal: mean of label - user rate (prior {args.prior_rows:g} rows) over train rows",
        "items_fitted": len(fit_items),
        "items_picking_the_epoch": len(pick_items),
        "min_rows": args.min_rows,
        "epoch": epoch,
        "r2_fit": round(fit_r2, 4),
        "r2_pick": round(pick_r2, 4),
        "mode": args.mode + (f" (rank {args.lora_rank})" if args.mode == "lora" else ""),
        "lr": args.lr,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for entry in record["modalities"]:
        if entry["name"] == args.modality:
            entry["encoder"] += f" (fine-tuned on {args.data.name}'s train item appeal, seed {args.seed})"
    (args.out / "meta.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
