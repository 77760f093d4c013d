"""Evaluate a checkpoint: ``python -m em3rec.evaluate --config din_em3 --split test [--checkpoint DIR]``.

Any world size works: a checkpoint written by 2 ranks reshards onto 1 (or more) on load.
Prints one line ``<split> auc=... gauc=... logloss=... cold_auc=...`` and writes
``runs/<name>/eval_<split>.json``.
"""

from __future__ import annotations

import json

import torch.distributed as dist

from em3rec import cli
from em3rec.error_file import record
from em3rec.evaluation import evaluate
from em3rec.factory import load_trained
from em3rec.run_log import format_metrics


@record  # under torchrun, a rank's exception (with traceback) lands in the job's error file
@cli.user_errors
def main(argv: list[str] | None = None) -> dict:
    parser = cli.config_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    args = parser.parse_args(argv)
    trained = load_trained(cli.load(args), args.checkpoint)
    env = trained.env
    with trained.precision.autocast():
        metrics = evaluate(
            trained.model, trained.loader(args.split), env.device, trained.cold_items, trained.cold_users
        )
    metrics["checkpoint"] = str(trained.checkpoint)
    if env.is_main:
        out = trained.run_dir / f"eval_{args.split}.json"
        out.write_text(json.dumps(metrics, indent=2))
        print(f"{args.split} {format_metrics(metrics)}", flush=True)
    dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
