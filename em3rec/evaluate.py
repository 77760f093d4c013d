"""Evaluate a checkpoint: ``python -m em3rec.evaluate --config din_em3 --split test [--checkpoint DIR]``.

Any world size works: a checkpoint written by 2 ranks reshards onto 1 (or more) on load.
Prints one line ``<split> auc=... gauc=... logloss=... cold_auc=...`` and writes
``runs/<name>/eval_<split>.json``.
"""

from __future__ import annotations

import argparse
import json

import torch.distributed as dist

from em3rec.config import load_config
from em3rec.evaluation import evaluate
from em3rec.train import load_trained


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="din_em3")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--checkpoint", default="", help="checkpoint folder (default: the run's best)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    recipe, path = load_trained(config, args.checkpoint)
    env = recipe.env
    metrics = evaluate(recipe.model, recipe.loader(args.split), env.device, recipe.cold_items)
    metrics["checkpoint"] = str(path)
    if env.is_main:
        out = recipe.run_dir / f"eval_{args.split}.json"
        out.write_text(json.dumps(metrics, indent=2))
        print(f"{args.split} auc={metrics['auc']:.4f} gauc={metrics['gauc']:.4f} logloss={metrics['logloss']:.4f} "
              f"cold_auc={metrics.get('cold_auc', float('nan')):.4f}", flush=True)
    dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
