"""Ablations of one backbone's EM3 on a dataset: which part of EM3 helps or hurts, over seeds.

    python benchmarks/ablation.py --backbone din --seeds 0 1 2 [--dataset bx] [--ablations cic0 pooled]

Each ablation is the bundled ``<prefix><backbone>_em3`` with a few ``--set`` overrides
(``ABLATIONS``), run exactly as the quality table runs it (``quality.run_one``: epoch chosen on
valid, test once). The table also carries the quality table's ID-only, frozen-content and
default-EM3 rows of the same backbone (from ``<protocol>.json``), so every row is read against the
same baselines. Writes ``benchmarks/results/<dataset>_ablation_<backbone>.md`` and a JSON of every
run; earlier runs of other ablations or seeds than those asked for this time are kept from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))
from benchmarks.quality import DATASETS, METRICS, VARIANTS, _cell, _metric_cell, run_one, table_json  # noqa: E402

ABLATIONS: dict[str, tuple[str, list[str]]] = {
    # Leave-one-out of the changes that made EM3 start at the two-stage baseline:
    "no_pooled_base": (
        "EM3 without the pooled baseline path (the Q-Former alone, the paper's form)",
        ["model.pooled_base=false"],
    ),
    "cic_before": (
        "CIC as before: λ = 0.1, all in-batch negatives, heads with bias",
        ["model.cic.weight=0.1", "model.cic.num_negatives=0", "model.cic.head_bias=true"],
    ),
    "drop05": (
        "Q-Former dropout 0.5 on tokens and both residual branches (as before)",
        ["model.qformer.token_dropout=0.5", "model.qformer.attention_dropout=0.5", "model.qformer.ffn_dropout=0.5"],
    ),
    "epochs3": ("3 epochs, no early stopping (as before)", ["train.epochs=3", "train.patience=0"]),
    # The method's parts:
    "no_catalogue": ("CIC over the batch's targets only (no catalogue sample)", ["model.cic.catalogue_samples=0"]),
    "cic0": ("EM3 without the CIC loss", ["model.cic.weight=0.0"]),
    "cic_content": (
        "EM3, CIC trains the content side only (ID embeddings detached)",
        ["model.cic.id_gradient=false"],
    ),
    "cic_id": (
        "EM3, CIC trains the ID side only (content embeddings detached)",
        ["model.cic.content_gradient=false"],
    ),
    "hist_none": ("EM3, no history content", ["model.seq_content_mode=none"]),
    "hist_cached": (
        "EM3, history content from a bank of Q-Former outputs refreshed every 50 steps (no gradient)",
        ["model.seq_content_mode=cached"],
    ),
    "hist_frozen": (
        "EM3, history content from the Q-Former without gradient (no LoRA)",
        ["model.seq_content_mode=frozen"],
    ),
    "hist_pooled": (
        "EM3, history content from the pooled base alone (the Q-Former reads targets only)",
        ["model.seq_content_mode=pooled"],
    ),
    "hist_pooled_no_catalogue": (
        "EM3, history content from the pooled base alone and CIC over the batch's targets only",
        ["model.seq_content_mode=pooled", "model.cic.catalogue_samples=0"],
    ),
    "lora_head": (
        "EM3, the history branch's LoRA adapters on the Q-Former's output head only",
        ['model.lora.target_modules=["head"]'],
    ),
    "hist_context_bank": (
        "EM3, the LoRA history's token side from a per-item bank refreshed every 10 steps",
        ["model.lora.context_refresh_steps=10"],
    ),
    "pooled": ("EM3 over the pooled vectors (one token per modality)", ["data.pooled_content=true"]),
    "tokens": ("EM3 over the token-level features", ["data.pooled_content=false"]),
    **{
        f"window{w}": (
            f"EM3 over tokens averaged in windows of {w} positions",
            ["data.pooled_content=false", f"data.token_window={w}"],
        )
        for w in (2, 4, 8)
    },
    # The bundled EM3 as the code now has it, paired with the reference's runs of an earlier form
    # (e.g. after a change to a default, against the runs of the table made before it):
    "rerun": ("the bundled EM3, rerun with the current code", []),
}


def _rows(label: str, runs: list[dict], em3: dict[int, dict]) -> str:
    cells = [_metric_cell(runs, "test", m) for m in METRICS]
    valid = _cell([r["valid"]["auc"] for r in runs])
    epochs = ",".join(str(r["best_epoch"]) for r in runs)
    paired = []
    for split in ("valid", "test"):
        pairs = [
            r[split]["auc"] - em3[seed][split]["auc"] for r in runs if (seed := r["config"]["train"]["seed"]) in em3
        ]
        paired.append(_cell(pairs, signed=True) if pairs else "-")
    return f"| {label} | {len(runs)} | {valid} | " + " | ".join(cells + paired) + f" | {epochs} |"


def table(backbone: str, reference: dict[str, list[dict]], results: dict[str, list[dict]], prefix: str = "") -> str:
    """The quality table's rows of ``backbone``, then every ablation; the paired column is each
    row's valid and test AUC minus the default EM3's at the same seed."""
    em3 = {r["config"]["train"]["seed"]: r for r in reference.get(f"{prefix}{backbone}_em3", [])}
    lines = [
        "| variant | n | valid auc | "
        + " | ".join(f"test {m}" for m in METRICS)
        + " | Δ valid auc vs EM3 (paired) | Δ test auc vs EM3 (paired) | best epochs |",
        "|---|---|---|" + "---|" * (len(METRICS) + 3),
    ]
    for variant, label in VARIANTS.items():
        if runs := reference.get(f"{prefix}{backbone}_{variant}"):
            lines.append(_rows(f"{label} (quality table)", runs, em3))
    for name, (label, overrides) in ABLATIONS.items():
        if runs := results.get(name):
            lines.append(_rows(f"{label}: `{' '.join(overrides)}`" if overrides else label, runs, em3))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="ml100k", help="which bundled configs")
    parser.add_argument("--backbone", default="din", choices=["dlrm", "dcn", "din"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for every run (e.g. data.path=data/ml100k_cold20)",
    )
    parser.add_argument("--run-dir", default="runs/ablation")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its checkpoints in --run-dir (a finished run is only re-read and re-scored)",
    )
    parser.add_argument("--out", default="", help="default: benchmarks/results/<dataset>_ablation_<backbone>.md")
    parser.add_argument(
        "--reference",
        default="",
        help="the quality-table JSON whose rows of the same backbone head the table (default: the dataset's)",
    )
    args = parser.parse_args()
    prefix, protocol = DATASETS[args.dataset]
    args.reference = args.reference or str(table_json(args.dataset))
    out = Path(args.out or ROOT / f"benchmarks/results/{args.dataset}_ablation_{args.backbone}.md")
    reference_json = Path(args.reference)
    reference = json.loads(reference_json.read_text()) if reference_json.exists() else {}
    results: dict[str, list[dict]] = {}
    if out.with_suffix(".json").exists():
        earlier = json.loads(out.with_suffix(".json").read_text())
        results = {
            name: kept
            for name, runs in earlier.items()  # all but the (ablation, seed) runs redone now
            if (
                kept := [
                    r for r in runs if name not in args.ablations or r["config"]["train"]["seed"] not in args.seeds
                ]
            )
        }
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:])
    for seed in args.seeds:
        for name in args.ablations:
            _, overrides = ABLATIONS[name]
            r = run_one(
                f"{prefix}{args.backbone}_em3", seed, 1, overrides + args.set, f"{args.run_dir}/{name}", args.resume
            )
            results.setdefault(name, []).append(r)
            print(
                f"{name} seed {seed}: "
                + " ".join(f"{m}={r['test'][m]:.4f}" for m in METRICS)
                + f" best_epoch={r['best_epoch']} ({r['wall_seconds']:.0f}s)",
                flush=True,
            )
            seeds = sorted({run["config"]["train"]["seed"] for runs in results.values() for run in runs})
            names = [n for n in ABLATIONS if n in results]
            extra = "".join(f" --set {o}" for o in args.set) + (f" --out {args.out}" if args.out else "")
            every_row = (
                f"python benchmarks/ablation.py --dataset {args.dataset} --backbone {args.backbone} "
                f"--seeds {' '.join(map(str, seeds))} --ablations {' '.join(names)}{extra}"
            )
            out.write_text(
                f"# {protocol} ablations of {args.backbone} + EM3: test metrics at the best-valid epoch "
                "(mean ± std over n seeds)\n\n"
                f"Command for every row: `{every_row}` (made in several invocations, the runs of earlier ones "
                f"kept from the JSON; the last: `{command}`)  \n"
                f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
                "1 process per run.\n\n" + table(args.backbone, reference, results, prefix) + "\n"
            )
            out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
