"""Select each variant's setting on a valid metric across quality tables made under different settings.

    python benchmarks/select_setting.py --setting "id_dropout=0"=benchmarks/results/ml100k_cold20.json \\
        --setting "id_dropout=0.1"=benchmarks/results/ml100k_cold20_id_dropout0.1.json ... \\
        --seeds 0 1 2 --out benchmarks/results/ml100k_cold20_id_dropout.md

Each ``--setting NAME=JSON`` is the JSON of one ``benchmarks/quality.py`` invocation (every
variant under one setting). Over the given seeds, each variant gets the setting with its best mean
valid ``--metric`` (AUC by default; ``cold_auc`` for a cold-start choice: each run's epoch stays
the one its valid AUC chose). Every variant chooses among the same settings (an equal budget);
test metrics are read only to report the chosen runs, and the EM3 - baseline differences are paired
by seed at the chosen settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.quality import BACKBONES, DATASETS, VARIANTS, _cell  # noqa: E402

METRICS = ("auc", "gauc", "cold_auc", "warm_auc")
SELECT_ON = ("auc", "gauc", "cold_auc", "warm_auc", "logloss")


def by_seed(runs: list[dict], seeds: list[int]) -> dict[int, dict]:
    """The runs of ``seeds`` keyed by seed; raises if one is missing."""
    found = {r["config"]["train"]["seed"]: r for r in runs}
    missing = sorted(set(seeds) - found.keys())
    if missing:
        raise ValueError(f"seeds {missing} missing")
    return {s: found[s] for s in seeds}


def select(
    tables: dict[str, dict[str, list[dict]]], seeds: list[int], metric: str = "auc"
) -> dict[str, tuple[str, dict[int, dict]]]:
    """config -> (the setting with the best mean valid ``metric``, its runs by seed), over the
    configs present under every setting (logloss: the lowest)."""
    if metric not in SELECT_ON:
        raise ValueError(f"select on {metric!r}: expected one of {SELECT_ON}")
    sign = -1.0 if metric == "logloss" else 1.0
    configs = set.intersection(*(set(t) for t in tables.values()))
    chosen = {}
    for config in sorted(configs):
        runs = {name: by_seed(t[config], seeds) for name, t in tables.items()}
        best = max(runs, key=lambda name: sign * statistics.mean(r["valid"][metric] for r in runs[name].values()))
        chosen[config] = (best, runs[best])
    return chosen


def report(tables: dict[str, dict[str, list[dict]]], seeds: list[int], command: str, metric: str = "auc") -> str:
    chosen = select(tables, seeds, metric)
    shown = ("auc",) if metric == "auc" else ("auc", metric)
    lines = [
        f"# Setting chosen per variant on mean valid {metric} (seeds {seeds})\n",
        f"Command: `{command}`\n",
        "Every run, mean ± std over the seeds (the chosen setting in bold):\n",
        "| variant | setting | "
        + " | ".join(f"valid {m}" for m in shown)
        + " | "
        + " | ".join(f"test {m}" for m in METRICS)
        + " |",
        "|---|---|" + "---|" * (len(shown) + len(METRICS)),
    ]
    for config, (best, _) in chosen.items():
        for name, table in tables.items():
            runs = by_seed(table[config], seeds).values()
            label = f"**{name}**" if name == best else name
            cells = [_cell([r["test"][m] for r in runs]) for m in METRICS]
            valid = [_cell([r["valid"][m] for r in runs]) for m in shown]
            lines.append(f"| {config} | {label} | " + " | ".join(valid + cells) + " |")
    lines += [
        "\nEM3 minus each baseline at the chosen settings, paired by seed:\n",
        "| backbone | difference | " + " | ".join(f"Δ test {m}" for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for prefix, _ in DATASETS.values():
        for backbone in BACKBONES:
            em3 = chosen.get(f"{prefix}{backbone}_em3")
            for baseline in ("frozen", "id"):
                other = chosen.get(f"{prefix}{backbone}_{baseline}")
                if em3 is None or other is None:
                    continue
                cells = [
                    _cell([em3[1][s]["test"][m] - other[1][s]["test"][m] for s in seeds], signed=True) for m in METRICS
                ]
                lines.append(
                    f"| {prefix}{backbone} | EM3 ({em3[0]}) − {VARIANTS[baseline]} ({other[0]}) | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", required=True, metavar="NAME=JSON", help="one per setting")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metric", choices=SELECT_ON, default="auc", help="the valid metric that selects")
    args = parser.parse_args()
    tables = {}
    for item in args.setting:
        name, sep, path = item.rpartition("=")
        if not sep or not name:
            raise SystemExit(f"--setting {item!r}: expected NAME=path/to/quality.json")
        tables[name] = json.loads(Path(path).read_text())
    text = report(tables, args.seeds, "python benchmarks/select_setting.py " + " ".join(sys.argv[1:]), args.metric)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
