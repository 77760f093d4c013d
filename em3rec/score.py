"""Score impressions with a trained checkpoint.

    python -m em3rec.score --config din_em3 --split test [--checkpoint DIR] [--out FILE.parquet]

Reads a split of the prepared dataset (any rows in the prepared-folder contract: put new
impressions in a split folder of a prepared dataset to score them), runs the model on every rank,
and writes one row per impression, in file order: ``user_idx``, ``item_idx``, ``label``, ``logit``,
``score`` (the click probability).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from em3rec.config import load_config
from em3rec.evaluation import predict
from em3rec.metrics import Predictions, gather_predictions
from em3rec.train import load_trained


def write_scores(path: Path, pred: Predictions) -> None:
    """Rows in loader order: every rank reads a contiguous shard in order, gathered by rank."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({
            "user_idx": pred.user_ids.numpy(),
            "item_idx": pred.item_ids.numpy(),
            "label": pred.labels.float().numpy(),
            "logit": pred.logits.float().numpy(),
            "score": torch.sigmoid(pred.logits.float()).numpy(),
        }),
        path,
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    parser.add_argument("--config", default="din_em3")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default="", help="checkpoint folder (default: the run's best)")
    parser.add_argument("--out", default="", help="default: runs/<name>/scores_<split>.parquet")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    recipe, path = load_trained(config, args.checkpoint)
    env = recipe.env
    pred = gather_predictions(predict(recipe.model, recipe.loader(args.split), env.device))
    out = Path(args.out) if args.out else recipe.run_dir / f"scores_{args.split}.parquet"
    if env.is_main:
        write_scores(out, pred)
        print(f"wrote {pred.labels.numel()} scores to {out}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
