"""Score impressions with a trained checkpoint.

    python -m em3rec.score --config din_em3 --split test [--checkpoint DIR] [--out FILE.parquet]

Reads a split of the prepared dataset (any rows in the prepared-folder contract: put new
impressions in a split folder of a prepared dataset to score them), runs the model on every rank,
and writes one row per impression, in file order: ``user_idx``, ``item_idx``, ``label``, ``logit``,
``score`` (the click probability).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from em3rec import cli
from em3rec.error_file import record
from em3rec.evaluation import predict
from em3rec.factory import load_trained
from em3rec.metrics import Predictions, gather_predictions


def write_scores(path: Path, pred: Predictions) -> None:
    """Rows in loader order: every rank reads a contiguous shard in order, gathered by rank."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_idx": pred.user_ids.numpy(),
                "item_idx": pred.item_ids.numpy(),
                "label": pred.labels.float().numpy(),
                "logit": pred.logits.float().numpy(),
                "score": torch.sigmoid(pred.logits.float()).numpy(),
            }
        ),
        path,
    )


@record  # under torchrun, a rank's exception (with traceback) lands in the job's error file
@cli.user_errors
def main(argv: list[str] | None = None) -> Path:
    parser = cli.config_parser(__doc__.splitlines()[0].strip(), checkpoint=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="", help="default: runs/<name>/scores_<split>.parquet")
    args = parser.parse_args(argv)
    trained = load_trained(cli.load(args), args.checkpoint)
    env = trained.env
    with trained.precision.autocast():
        pred = gather_predictions(predict(trained.model, trained.loader(args.split), env.device))
    out = Path(args.out) if args.out else trained.run_dir / f"scores_{args.split}.parquet"
    if pred is not None:  # rank 0: every rank's rows
        write_scores(out, pred)
        print(f"wrote {pred.labels.numel()} scores to {out}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
