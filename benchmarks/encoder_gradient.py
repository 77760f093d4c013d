"""Where the text encoder's gradient comes from in the loop: the ranking loss against the item-appeal target.

    python -m benchmarks.encoder_gradient --config din_frozen --set data.path=data/ml100k_cold20 \\
        [--layers 1] [--warm-steps 0 130] [--batches 8] [--out FILE.md]

The model is built with the text encoder's top ``--layers`` in the loop and the item-appeal head
(``model.text_encoder.appeal_weight = 1``). At each ``--warm-steps`` point (the ranker trained that
many steps by the ranking loss alone: the head's weight is 0 while it trains, so neither the head
nor the target moves anything), over ``--batches`` training batches at those fixed weights, in
training mode, it takes the gradient on the encoder's trainable weights of the ranking loss (BCE)
and of the appeal loss (weight 1), and reports their norms, their cosine, and per loss the mean
cosine between two different batches' gradients (near 1: every batch asks for the same change; near
0: each asks for its own, and AdamW's normalised steps follow that noise). A diagnostic of why the
ranking loss in the loop moves the encoder without a gain (``results/README.md``, *The encoder in
the loop*); it chooses nothing.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.machine import results_head, write_results  # noqa: E402
from em3rec.config import load_config  # noqa: E402
from em3rec.data.batch import Batch  # noqa: E402
from em3rec.distributed import init_distributed  # noqa: E402
from em3rec.factory import local_model  # noqa: E402
from em3rec.modules.model import EM3Model  # noqa: E402
from em3rec.train import Recipe  # noqa: E402


def gradients(
    model: EM3Model, batch: Batch, autocast: Callable[[], AbstractContextManager]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranking loss's and the appeal loss's gradients ``(P,)`` each on the encoder's weights."""
    params = [p for p in model.text_encoder.parameters() if p.requires_grad]
    with autocast():
        out = model(batch)
    weights = batch.weights
    bce = F.binary_cross_entropy_with_logits(out.logits.float(), batch.labels, weight=weights, reduction="sum")
    bce = bce / weights.sum().clamp_min(1.0)
    flat = {}
    # The appeal loss first: its graph avoids the (compiled) backbone, whose backward runs once only.
    for name, loss, retain in (("appeal", out.appeal_loss, True), ("bce", bce, False)):
        grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        flat[name] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).float().flatten() for g, p in zip(grads, params)]
        )
    return flat["bce"], flat["appeal"]


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of ``rows`` ``(n, P)``."""
    unit = F.normalize(rows, dim=1)
    return statistics.mean(float(unit[i] @ unit[j]) for i, j in itertools.combinations(range(len(rows)), 2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="din_frozen")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--layers", type=int, default=1, help="the encoder's trainable top layers")
    p.add_argument("--warm-steps", type=int, nargs="+", default=[0, 130], help="ranking-loss steps before measuring")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    overrides = [
        *args.set,
        f"model.text_encoder.trainable_layers={args.layers}",
        "model.text_encoder.appeal_weight=1",
        "sharding.pipeline=false",
        "train.run_dir=runs/encoder_gradient",
    ]
    recipe = Recipe(load_config(args.config, overrides), init_distributed("cpu"))
    recipe.setup()
    model = local_model(recipe.model)
    head = model.appeal_head
    train_batches = (batch for _ in itertools.count() for batch in recipe.loader("train"))  # epoch after epoch
    lines = [
        "| ranking-loss steps | ‖∇ BCE‖ | ‖∇ appeal‖ | ratio | cos(∇ BCE, ∇ appeal) | batch-to-batch cos, BCE | batch-to-batch cos, appeal |",
        "|---|---|---|---|---|---|---|",
    ]
    done = 0
    for warm in sorted(args.warm_steps):
        head.weight = 0.0  # the ranking loss alone trains
        model.train()
        while done < warm:
            recipe._step(train_batches)
            done += 1
        head.weight = 1.0
        bce, appeal = zip(
            *(gradients(model, next(train_batches), recipe.precision.autocast) for _ in range(args.batches))
        )
        bce, appeal = torch.stack(bce), torch.stack(appeal)  # (n, P)
        bce_norm, appeal_norm = bce.norm(dim=1).mean().item(), appeal.norm(dim=1).mean().item()
        cross = F.cosine_similarity(bce, appeal, dim=1).mean().item()
        lines.append(
            f"| {warm} | {bce_norm:.2e} | {appeal_norm:.2e} | {appeal_norm / bce_norm:.0f}x | {cross:+.3f} | "
            f"{mean_pairwise_cosine(bce):+.3f} | {mean_pairwise_cosine(appeal):+.3f} |"
        )
        print(lines[-1], flush=True)
    note = (
        f"{args.batches} training batches per row, {sum(p.numel() for p in model.text_encoder.parameters() if p.requires_grad):,} "
        "trainable encoder weights; gradients in training mode (dropout on), the appeal loss at weight 1."
    )
    watched = ["em3rec", "benchmarks/encoder_gradient.py"]
    write_results(
        "# The text encoder's gradient in the loop: ranking loss against item-appeal target\n\n"
        + results_head("benchmarks.encoder_gradient", argv, watched, note)
        + "\n".join(lines)
        + "\n",
        args.out,
    )


if __name__ == "__main__":
    main()
