"""The README's quality table from quality-table JSONs: one block of rows per set and backbone.

    python benchmarks/summary.py --table ml100k-ctr-v1=benchmarks/results/ml100k_ctr_v1_bf16.json \
        --table cold20=benchmarks/results/ml100k_cold20_id_dropout0.json [--out summary.md]

Each row is one metric (valid AUC, then test AUC, GAUC, cold-item and warm-item AUC) of one set and
backbone: the mean ± std over seeds of ID only, ID + frozen content and EM3 (the highest mean in
bold), then EM3 minus each baseline paired by seed. Reads the JSONs ``benchmarks/quality.py``
writes; trains nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.quality import BACKBONES, VARIANTS, _cell  # noqa: E402

BACKBONE_NAMES = {"dlrm": "DLRM", "dcn": "DCN-v2", "din": "DIN"}
# (split, metric, label) of each row
ROWS = (
    ("valid", "auc", "valid AUC"),
    ("test", "auc", "test AUC"),
    ("test", "gauc", "test GAUC"),
    ("test", "cold_auc", "test cold-item AUC"),
    ("test", "warm_auc", "test warm-item AUC"),
)


def _runs_by_variant(results: dict[str, list[dict]], backbone: str) -> dict[str, dict[int, dict]]:
    """variant -> seed -> run, for the configs ``[<prefix>]<backbone>_<variant>`` in ``results``."""
    by_variant: dict[str, dict[int, dict]] = {}
    for config, runs in results.items():
        for variant in VARIANTS:
            suffix = f"{backbone}_{variant}"
            if config == suffix or config.endswith(f"_{suffix}"):
                by_variant[variant] = {r["config"]["train"]["seed"]: r for r in runs}
    return by_variant


def rows(set_name: str, results: dict[str, list[dict]]) -> list[str]:
    """The table rows of one set: for each backbone with every variant present, one row per metric."""
    lines = []
    for backbone in BACKBONES:
        runs = _runs_by_variant(results, backbone)
        if set(runs) != set(VARIANTS):
            continue
        counts = sorted({len(seeds) for seeds in runs.values()})
        n = "/".join(map(str, counts))
        for split, metric, label in ROWS:
            values = {v: [r[split][metric] for r in runs[v].values()] for v in VARIANTS}
            means = {v: statistics.mean(x) for v, x in values.items()}
            best = max(means, key=means.__getitem__)
            cells = [f"**{_cell(values[v])}**" if v == best else _cell(values[v]) for v in VARIANTS]
            paired = []
            if split == "test":
                for baseline in ("frozen", "id"):
                    seeds = sorted(runs["em3"].keys() & runs[baseline].keys())
                    diffs = [runs["em3"][s][split][metric] - runs[baseline][s][split][metric] for s in seeds]
                    paired.append(_cell(diffs, signed=True))
            else:
                paired = ["", ""]
            name = f"{set_name}, {BACKBONE_NAMES[backbone]} ({n} seeds)"
            lines.append(f"| {name} | {label} | " + " | ".join(cells + paired) + " |")
    return lines


def summary(tables: list[tuple[str, dict[str, list[dict]]]]) -> str:
    """The whole markdown table of ``(set name, quality JSON)`` pairs, in that order."""
    header = [
        "| set | metric | " + " | ".join(VARIANTS.values()) + " | EM3 − frozen (paired) | EM3 − ID only (paired) |",
        "|---|---|" + "---|" * (len(VARIANTS) + 2),
    ]
    return "\n".join(header + [line for name, results in tables for line in rows(name, results)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--table",
        action="append",
        required=True,
        metavar="SET=JSON",
        help="a set's name and its quality JSON (repeat; rows keep this order)",
    )
    parser.add_argument("--out", default="", help="also write the table here")
    args = parser.parse_args()
    tables = []
    for spec in args.table:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--table {spec!r}: expected SET=JSON, e.g. cold20=benchmarks/results/x.json")
        if not Path(path).is_file():
            parser.error(f"--table {spec!r}: no file {path}")
        tables.append((name, json.loads(Path(path).read_text())))
    text = summary(tables)
    print(text)
    if args.out:
        command = "python benchmarks/summary.py " + " ".join(sys.argv[1:])
        Path(args.out).write_text(f"Command: `{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
