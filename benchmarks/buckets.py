"""Test AUC by how often the item occurs in train, for every run of a quality table (and ablations).

    python benchmarks/buckets.py [--dataset bx] [--runs benchmarks/results/bx_ctr_v1.json ...] [--plot]

This splits the test rows by the item's number of train rows (0, 1-9, 10-49, 50-199, 200+), scores
each run's best-valid checkpoint on test with ``em3rec.score`` (the config rebuilt from the run's
``metrics.json``), and reports the AUC inside each bucket (mean ± std over seeds) and the paired
per-seed difference against ID + frozen content of the same backbone. Within a bucket, item
popularity can no longer separate clicks, so the AUC measures what the model knows about items of
that rarity (ml100k-ctr-v1 has only 149 cold test rows; bx-ctr-v1 has a third of test cold).
Writes ``benchmarks/results/<dataset>_buckets.md``, ``.json`` and with ``--plot`` a PNG of the mean
AUC per bucket, one line per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.quality import DATASETS, table_json  # noqa: E402
from benchmarks.throughput_plot import plot_by_category  # noqa: E402
from em3rec.config import as_overrides  # noqa: E402
from em3rec.metrics import auc  # noqa: E402

BUCKETS = ((0, 0), (1, 9), (10, 49), (50, 199), (200, None))


def _label(bucket: tuple[int, int | None]) -> str:
    lo, hi = bucket
    return f"{lo}" if lo == hi else (f"{lo}+" if hi is None else f"{lo}-{hi}")


def scores_on(run: dict, split: str = "test") -> Path:
    """The run's scores on ``split`` (scored once with its best checkpoint, then reused)."""
    train = run["config"]["train"]
    out = ROOT / train["run_dir"] / train["run_name"] / f"scores_{split}.parquet"
    if not out.exists():
        model = run["config"]["model"]
        cmd = [
            sys.executable,
            "-m",
            "em3rec.score",
            "--config",
            f"{model['backbone']}_id",
            "--split",
            split,
            "--out",
            str(out),
        ]
        for line in as_overrides(run["config"]):
            cmd += ["--set", line]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"scoring {train['run_name']} failed:\n{done.stderr[-3000:]}")
    return out


def _in_bucket(count: np.ndarray, bucket: tuple[int, int | None]) -> np.ndarray:
    lo, hi = bucket
    return (count >= lo) & (count <= hi) if hi is not None else count >= lo


def bucket_aucs(scores: Path, train_count: np.ndarray) -> dict[str, float]:
    """AUC of all test rows (``"all"``) and of the rows in each bucket (NaN where one class is missing)."""
    table = pq.read_table(scores, columns=["item_idx", "label", "logit"])
    count = train_count[table.column("item_idx").to_numpy()]
    labels = torch.tensor(table.column("label").to_numpy())
    logits = torch.tensor(table.column("logit").to_numpy())
    result = {"all": auc(logits, labels)}
    for bucket in BUCKETS:
        mask = torch.from_numpy(_in_bucket(count, bucket))
        result[_label(bucket)] = auc(logits[mask], labels[mask])
    return result


def _cell(values: list[float]) -> str:
    return f"{values[0]:.4f}" if len(values) == 1 else f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="ml100k")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[],
        help="JSON files of runs written by quality.py / ablation.py (default: the dataset's quality table)",
    )
    parser.add_argument("--data", default="", help="default: data/<dataset>")
    parser.add_argument("--out", default="", help="default: benchmarks/results/<dataset>_buckets.md")
    parser.add_argument("--plot", action="store_true", help="also a PNG of the mean AUC per bucket, one line per run")
    args = parser.parse_args()
    prefix, protocol = DATASETS[args.dataset]
    table_stem = table_json(args.dataset).stem
    args.runs = args.runs or [str(table_json(args.dataset))]
    args.data = args.data or f"data/{args.dataset}"
    args.out = args.out or str(ROOT / "benchmarks/results" / f"{args.dataset}_buckets.md")
    train_items = pq.read_table(ROOT / args.data / "train", columns=["item_idx"]).column("item_idx").to_numpy()
    test = pq.read_table(ROOT / args.data / "test", columns=["item_idx"]).column("item_idx").to_numpy()
    train_count = np.bincount(train_items, minlength=max(int(test.max()), int(train_items.max())) + 1)
    rows = {"all": int(test.shape[0])} | {_label(b): int(_in_bucket(train_count[test], b).sum()) for b in BUCKETS}
    results: dict[str, dict[int, dict[str, float]]] = {}  # run label -> seed -> column -> AUC
    backbone_of: dict[str, str] = {}
    for runs_file in args.runs:
        source = Path(runs_file).stem
        for name, runs in json.loads(Path(runs_file).read_text()).items():
            key = name if source == table_stem else f"{source}:{name}"
            for run in runs:
                seed = run["config"]["train"]["seed"]
                results.setdefault(key, {})[seed] = bucket_aucs(scores_on(run), train_count)
                backbone_of[key] = run["config"]["model"]["backbone"]
                print(key, seed, results[key][seed], flush=True)
    columns = list(rows)
    header = " | ".join(f"{c} ({rows[c]} rows)" for c in columns)
    lines = [f"| run | n | {header} |", "|---|---|" + "---|" * len(columns)]
    for key, by_seed in results.items():
        lines.append(
            f"| {key} | {len(by_seed)} | " + " | ".join(_cell([r[c] for r in by_seed.values()]) for c in columns) + " |"
        )
    deltas = [f"| run minus `<backbone>_frozen` | seeds | {header} |", "|---|---|" + "---|" * len(columns)]
    for key, by_seed in results.items():
        baseline = f"{prefix}{backbone_of[key]}_frozen"
        frozen = results.get(baseline, {})
        if key == baseline or not (seeds := sorted(set(by_seed) & set(frozen))):
            continue
        deltas.append(
            f"| {key} | {len(seeds)} | "
            + " | ".join(_cell([by_seed[s][c] - frozen[s][c] for s in seeds]) for c in columns)
            + " |"
        )
    out = Path(args.out)
    out.write_text(
        f"# {protocol}: test AUC by the item's number of train rows (best-valid checkpoints)\n\n"
        f"Command: `python benchmarks/buckets.py {' '.join(sys.argv[1:])}`\n\n"
        "Bucket = how many train rows the test row's item has (0 = cold); `all` = every test row. "
        "Mean ± std over seeds.\n\n"
        + "\n".join(lines)
        + "\n\nPaired per-seed difference to ID + frozen content of the same backbone (mean ± std; > 0 = better):\n\n"
        + "\n".join(deltas)
        + "\n"
    )
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "auc": results}, indent=2))
    if args.plot:
        series = {
            key: [(c, statistics.mean(r[c] for r in by_seed.values())) for c in columns if c != "all"]
            for key, by_seed in results.items()
        }
        png = plot_by_category(
            series,
            out.with_suffix(".png"),
            title=f"{protocol}: test AUC by item train rows (mean over seeds)",
            y_label="test AUC",
        )
        print(f"wrote {png}", file=sys.stderr)
    print(out.read_text())


if __name__ == "__main__":
    main()
