"""How much of a trained EM3 model's item content comes from the end-to-end Q-Former path.

    python -m benchmarks.content_share runs/quality/din_em3_seed0 [runs/... ...] [--out FILE.md]

With ``model.pooled_base`` an item's content embedding is ``base + gate * qformer`` (the baseline's
projection of the pooled pretrained vectors plus the gated Q-Former output). For every item of the
catalogue this reports the norm of the Q-Former part relative to the base part, for items with
training rows (warm) and without (cold), and the gate's mean absolute value: 0 means the ranking
loss kept EM3 at the two-stage baseline. One process, the run's best checkpoint, eval mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from em3rec.config import as_overrides, load_config
from em3rec.factory import load_trained


def content_share(run: Path, chunk: int = 4096) -> dict[str, float]:
    """``{gate_abs_mean, ratio_warm, ratio_cold, items_warm, items_cold}`` for one run folder, its
    items encoded ``chunk`` at a time."""
    saved = json.loads((run / "metrics.json").read_text())["config"]
    config = load_config(None, as_overrides(saved))
    trained = load_trained(config)
    tower = trained.em3_model.content_tower
    if tower is None or tower.pooled_base is None:
        raise SystemExit(f"{run}: not an EM3 model with model.pooled_base = true")
    ids = np.arange(1, trained.item_store.num_rows)  # (N,): index 0 is padding
    ratios = []
    tower.eval()
    for start in range(0, len(ids), chunk):  # bx: 131 k items would not fit in one call
        tokens, mask = trained.item_store.gather(ids[start : start + chunk], config.data.modalities)
        with torch.no_grad():
            qformer = tower.qformer(tokens, mask).pooled  # (n, D), gate included
            base = tower.pooled_base(tokens, mask)  # (n, D)
        ratios.append((qformer.norm(dim=1) / base.norm(dim=1).clamp_min(1e-12)).numpy())  # (n,)
    ratio = np.concatenate(ratios)  # (N,)
    cold = trained.cold_items[torch.from_numpy(ids)].numpy()
    return {
        "gate_abs_mean": float(tower.qformer.gate.detach().abs().mean()),
        "ratio_warm": float(ratio[~cold].mean()),
        "ratio_cold": float(ratio[cold].mean()) if cold.any() else float("nan"),
        "items_warm": int((~cold).sum()),
        "items_cold": int(cold.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<set>/<name>) of EM3 runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()
    rows = {run: content_share(run) for run in args.runs}
    lines = [
        "| run | mean abs gate | ‖gate·Q-Former‖ / ‖base‖, warm items | same, cold items | warm / cold items |",
        "|---|---|---|---|---|",
    ]
    for run, r in rows.items():
        lines.append(
            f"| {run} | {r['gate_abs_mean']:.4f} | {r['ratio_warm']:.3f} | {r['ratio_cold']:.3f} | "
            f"{r['items_warm']} / {r['items_cold']} |"
        )
    if len(rows) > 1:
        values = list(rows.values())
        cell = lambda k: f"{statistics.mean(v[k] for v in values):.3f} ± {statistics.stdev(v[k] for v in values):.3f}"  # noqa: E731
        lines.append(f"| mean ± std | {cell('gate_abs_mean')} | {cell('ratio_warm')} | {cell('ratio_cold')} | |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "python -m benchmarks.content_share " + " ".join(sys.argv[1:])
        args.out.write_text(
            f"# Share of the end-to-end Q-Former path in EM3's item content\n\nCommand: `{command}`\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
