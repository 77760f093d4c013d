"""The benchmark's results as Markdown tables, JSON and a plot."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torchrec

from benchmarks.machine import describe_machine
from benchmarks.throughput.variants import BASELINE, TORCHREC_IDS, VARIANTS, variant_config
from em3rec.data.schema import DatasetMeta


def machine() -> dict[str, str]:
    import fbgemm_gpu

    return describe_machine(
        {"torchrec": torchrec.__version__, "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?")},
        watched=["em3rec", "benchmarks/throughput", "benchmarks/reference_din.py"],
    )


@dataclass
class Summary:
    """Medians of one block over the rounds."""

    seconds: float  # wall seconds per step (slowest rank)
    cpu_seconds: float  # process CPU seconds per step (all threads, busiest rank)
    spread: float  # (max - min) / median of the wall times
    samples_per_s: float  # all ranks, wall clock


def summarise(world: dict[str, Any], batch_size: int) -> dict[tuple[str, int], Summary]:
    out = {}
    for b in world["blocks"]:
        if not b["seconds"]:
            continue
        med = statistics.median(b["seconds"])
        spread = (max(b["seconds"]) - min(b["seconds"])) / med if med else 0.0
        cpu = statistics.median(b["cpu_seconds"]) if b.get("cpu_seconds") else float("nan")
        out[(b["name"], b["L"])] = Summary(med, cpu, spread, world["world_size"] * batch_size / med)
    return out


def matmul_peak(world: dict[str, Any], clock: str = "wall", dtype: str = "") -> tuple[float, dict[str, float]]:
    """Per-rank matmul GFLOP/s per shape (median over rounds, slowest rank) and their max, of the
    matmuls in ``dtype`` (``fp32``/``bf16``; "" = all); ``clock = "cpu"``: FLOPs per process-CPU
    second instead of per wall second."""
    key = "seconds_by_rank" if clock == "wall" else "cpu_seconds_by_rank"
    each = {}
    for k, m in world["matmul"].items():
        if dtype and f" {dtype} " not in k:
            continue
        each[k] = min(m["flops"] / statistics.median(s) / 1e9 for s in m[key])
    return (max(each.values()) if each else float("nan")), each


def _fmt(x: float, digits: int = 0) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:,.{digits}f}"


def markdown(args: argparse.Namespace, worlds: list[dict[str, Any]], command: str, meta: DatasetMeta) -> str:
    m = machine()
    mods = ", ".join(f"{x.name} {x.tokens}x{x.width}" for x in meta.modalities)
    lines = [
        f"# Training-step throughput: {args.name}",
        "",
        ("**SYNTHETIC dataset** (random ids, tokens and labels; throughput only). " if meta.synthetic else "")
        + f"Dataset `{args.data}` ({meta.name}, protocol `{meta.protocol}`): {meta.num_items:,} items, "
        f"{meta.splits['train'].rows:,} train rows, dataset history up to {meta.max_history}; modalities {mods}.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}); Python {m['python']}, torch {m['torch']}, torchrec "
        f"{m['torchrec']}, fbgemm_gpu {m['fbgemm_gpu']}; commit {m['commit']}; {m['date']}; load average at "
        "the end " + m["load"] + " (the machine is shared with other jobs: absolute numbers carry that noise; "
        "ratios within the run much less, and CPU-time ratios least).",
        "",
        f"Per rank: batch {args.batch_size} rows; model config `{args.config}`"
        + (f" with `--set {' '.join(args.set)}`" if args.set else "")
        + f"; {args.warmup} warm-up step(s) per block (the first counts FLOPs), then {args.rounds} rounds x "
        f"{args.steps} step(s) per block, blocks interleaved (order rotated per round); median over rounds. "
        "A step = forward, backward (fused embedding optimiser inside), dense AdamW step, on real loader "
        "batches held in memory (the loader is not timed). *Wall* = elapsed time of the slowest rank; "
        "*CPU* = process CPU time (all threads) of the busiest rank, which other jobs on the machine do not "
        "stretch.",
        "",
        "Baseline of every ratio: `frozen` = ID + frozen content (the `din_frozen` model: pooled "
        "pre-extracted vectors through a trainable Linear, history content by target attention), same L, "
        "same world size, same run.",
        "",
    ]
    for world in worlds:
        lines += _world_tables(args, world)
    lines += _legend()
    return "\n".join(lines)


def _world_tables(args: argparse.Namespace, world: dict[str, Any]) -> list[str]:
    ws = world["world_size"]
    summary = summarise(world, args.batch_size)
    histories = world["histories"]
    names = [b["name"] for b in world["blocks"]]
    names = sorted(set(names), key=names.index)
    model_names = [n for n in names if not n.startswith("tower:")]
    by = {(b["name"], b["L"]): b for b in world["blocks"]}
    _, each_peak = matmul_peak(world)
    _, each_cpu_peak = matmul_peak(world, "cpu")
    precision = world.get("precision", {})

    def peaks_of(name: str) -> tuple[float, float]:
        """The wall and CPU matmul peaks in the precision variant ``name`` ran in."""
        dtype = precision.get(name, "")
        return matmul_peak(world, "wall", dtype)[0], matmul_peak(world, "cpu", dtype)[0]

    def ratio(n: str, L: int, attr: str, invert: bool = False) -> str:
        s, base = summary.get((n, L)), summary.get((BASELINE, L))
        if s is None or base is None:
            return "n/a"
        x = getattr(s, attr) / getattr(base, attr)
        return f"{1 / x if invert else x:.2f}"

    lines = [
        f"## World size {ws} ({world['device']}, {world['threads']} torch thread(s) per rank)",
        "",
        "Precision of the dense forward per variant (`train.precision` of its config; bf16 = torch.autocast, "
        f"embeddings and parameters fp32): {', '.join(f'`{k}` {v}' for k, v in precision.items()) or 'fp32'}. "
        f"What torch reports of this device: {world.get('bf16_report', 'n/a')}.",
        "",
        "Batch statistics (per rank, mean over the run's batches): "
        + "; ".join(
            f"L={L}: {s['distinct_items']:,.0f} distinct items of which {s['distinct_history_items']:,.0f} in "
            f"histories, {s['history_positions_per_row']:.1f} real history positions per row"
            for L, s in ((int(k), v) for k, v in world["batch_stats"].items())
        ),
        "",
        "### Samples/s (all ranks, wall clock) and ratio to `frozen` (> 1 = faster than the baseline)",
        "",
        "| variant | " + " | ".join(f"L={L} samples/s | L={L} x frozen" for L in histories) + " | spread |",
        "|---|" + "---:|---:|" * len(histories) + "---:|",
    ]
    for n in model_names:
        cells, spreads = [], []
        for L in histories:
            s = summary.get((n, L))
            if s is None:
                cells += ["not run", ""]
                continue
            cells += [_fmt(s.samples_per_s), ratio(n, L, "samples_per_s")]
            spreads.append(s.spread)
        spread = f"{100 * max(spreads):.0f}%" if spreads else ""
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {spread} |")
    lines += [
        "",
        "*spread*: largest (max - min) / median of the per-round wall times over the row's cells.",
        "",
        "### Step time per rank: wall and CPU ms (median), and step-time ratio to `frozen` (> 1 = slower)",
        "",
        "| variant | "
        + " | ".join(f"L={L} wall ms | L={L} CPU ms | L={L} wall x frozen | L={L} CPU x frozen" for L in histories)
        + " |",
        "|---|" + "---:|---:|---:|---:|" * len(histories),
    ]
    for n in model_names:
        cells = []
        for L in histories:
            s = summary.get((n, L))
            if s is None:
                cells += ["not run", "", "", ""]
                continue
            cells += [
                _fmt(1e3 * s.seconds),
                _fmt(1e3 * s.cpu_seconds),
                ratio(n, L, "seconds"),
                ratio(n, L, "cpu_seconds"),
            ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    mem_kind = "CUDA allocator peak" if world["device"].startswith("cuda") else "peak RSS (VmHWM)"
    lines += [
        "",
        f"### Memory per rank: {mem_kind} during the variant's timed steps, MB (rise over the block's start)",
        "",
        "| variant | " + " | ".join(f"L={L}" for L in histories) + " |",
        "|---|" + "---:|" * len(histories),
    ]
    for n in model_names:
        cells = []
        for L in histories:
            b = by.get((n, L))
            cells.append("not run" if not b or not b["seconds"] else f"{b['peak_mb']:,.0f} (+{b['rise_mb']:,.0f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if not world["memory_reset_ok"]:
        lines += ["", "(/proc/self/clear_refs was not writable: peaks are the process's lifetime peaks.)"]
    lines += [
        "",
        "### FLOPs per sample (forward + backward, `em3rec.modules.flops`, counted on the first warm-up "
        "batch) and achieved step GFLOP/s per rank (wall)",
        "",
        "| variant | " + " | ".join(f"L={L} total MFLOP | L={L} tower MFLOP | L={L} GFLOP/s" for L in histories) + " |",
        "|---|" + "---:|---:|---:|" * len(histories),
    ]
    for n in model_names:
        cells = []
        for L in histories:
            b, s = by.get((n, L)), summary.get((n, L))
            if not b or not b["flops"] or s is None:
                cells += ["", "", ""]
                continue
            total, tower = b["flops"].get("total_flops", 0.0), b["flops"].get("tower_flops", 0.0)
            cells += [f"{total / 1e6:.2f}", f"{tower / 1e6:.2f}", f"{total * args.batch_size / s.seconds / 1e9:.1f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    cached = [
        (n, L) for n in model_names for L in histories if by.get((n, L)) and by[(n, L)]["extra"].get("history_items")
    ]
    if cached:
        refresh = variant_config(args, None).model.cache_refresh_steps
        lines += [
            "",
            "`cached` bank: share of the distinct history items recomputed per timed step: "
            + "; ".join(
                f"{n} L={L}: {100 * by[(n, L)]['extra']['refreshed'] / by[(n, L)]['extra']['history_items']:.0f}%"
                for n, L in cached
            )
            + f" (an entry is recomputed when older than {refresh} steps).",
        ]
        if args.warmup <= refresh:
            lines.append(
                f"Warm-up ({args.warmup} steps) <= {refresh}: no bank entry was old enough to be recomputed, so this "
                f"understates a training step's refresh work; rerun with `--warmup {refresh + 10}`."
            )
    towers = [n for n in names if n.startswith("tower:")]
    lines += [
        "",
        "### Content tower alone (forward + backward) vs the matmul peak in its precision, per rank",
        "",
        "Matmul GFLOP/s measured in the same rounds (per wall s / per CPU s): "
        + ", ".join(f"{k}: {v:.1f} / {each_cpu_peak[k]:.1f}" for k, v in each_peak.items())
        + "; peak = "
        + ", ".join(
            f"{d} {matmul_peak(world, 'wall', d)[0]:.1f} / {matmul_peak(world, 'cpu', d)[0]:.1f}"
            for d in sorted(set(precision.values()) or {"fp32"}, reverse=True)
        )
        + ".",
        "",
    ]
    if towers:
        lines += [
            "| tower | precision | L | MFLOP/sample | wall ms/step | GFLOP/s (wall) | % of peak (wall) | CPU ms/step | "
            "GFLOP per CPU s | % of peak (CPU) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for n in towers:
        for L in histories:
            b, s = by.get((n, L)), summary.get((n, L))
            if not b or s is None or not b["flops"]:
                continue
            flops = b["flops"]["tower_flops"] * args.batch_size
            wall, cpu = flops / s.seconds / 1e9, flops / s.cpu_seconds / 1e9
            peak, cpu_peak = peaks_of(n)
            lines.append(
                f"| {n[6:]} | {precision.get(n, 'fp32')} | {L} | {b['flops']['tower_flops'] / 1e6:.2f} | {1e3 * s.seconds:,.0f} | {wall:.1f} | "
                f"{100 * wall / peak:.0f}% | {1e3 * s.cpu_seconds:,.0f} | {cpu:.1f} | {100 * cpu / cpu_peak:.0f}% |"
            )
    refs = [n for n in model_names if VARIANTS.get(n) and VARIANTS[n].reference]
    ids = [n for n in TORCHREC_IDS if n in model_names]
    pairs = [(i, r) for i in ids for r in refs]
    if pairs:
        lines += [
            "",
            "### TorchRec ID-only DIN vs the plain-PyTorch reference (same model, same batches; > 1 = TorchRec faster)",
            "",
            "| L | " + " | ".join(f"{i} vs {r} (samples/s) | {i} vs {r} (CPU)" for i, r in pairs) + " |",
            "|---:|" + "---:|---:|" * len(pairs),
        ]
        for L in histories:
            cells = []
            for i, r in pairs:
                s, ref = summary.get((i, L)), summary.get((r, L))
                cells += (
                    [f"{s.samples_per_s / ref.samples_per_s:.2f}", f"{ref.cpu_seconds / s.cpu_seconds:.2f}"]
                    if s and ref
                    else ["n/a", "n/a"]
                )
            lines.append(f"| {L} | " + " | ".join(cells) + " |")
    lines += [""] + _targets(args, world, summary, by, peaks_of) + [""]
    return lines


def _targets(args: argparse.Namespace, world: dict[str, Any], summary: dict, by: dict, peaks_of: Any) -> list[str]:
    """The cost targets that this run's cells can check (verdict on wall clock; CPU alongside)."""
    ws = world["world_size"]
    rows = []

    def get(name: str, L: int) -> Summary | None:
        return summary.get((name, L))

    def verdict(ok: bool) -> str:
        return "holds" if ok else "does not hold"

    at = 50 if 50 in world["histories"] else max(world["histories"])  # the L, or the run's longest
    em3, base, ids = get("em3", at), get(BASELINE, at), get("id", at)
    if em3 and base:
        r, c = em3.seconds / base.seconds, em3.cpu_seconds / base.cpu_seconds
        rows.append(f"| 1. `em3` step time <= 1.3x `frozen` at L={at} | {r:.2f}x | {c:.2f}x | {verdict(r <= 1.3)} |")
    if em3 and ids:
        r, c = em3.samples_per_s / ids.samples_per_s, ids.cpu_seconds / em3.cpu_seconds
        rows.append(f"| 2. `em3` samples/s >= 0.5x `id` at L={at} | {r:.2f}x | {c:.2f}x | {verdict(r >= 0.5)} |")
    tower, b = get("tower:em3", at), by.get(("tower:em3", at))
    if tower and b and b["flops"]:
        peak, cpu_peak = peaks_of("tower:em3")
        flops = b["flops"]["tower_flops"] * args.batch_size / 1e9
        share, cpu_share = flops / tower.seconds / peak, flops / tower.cpu_seconds / cpu_peak
        rows.append(
            f"| 3. `em3` content tower (L={at}) >= 25% of the matmul peak in its precision | {100 * share:.0f}% | "
            f"{100 * cpu_share:.0f}% | {verdict(share >= 0.25)} |"
        )
    em3_mem, base_mem = by.get(("em3", at)), by.get((BASELINE, at))
    if em3 and base and em3_mem and base_mem and base_mem["peak_mb"]:
        r = em3_mem["peak_mb"] / base_mem["peak_mb"]
        rows.append(f"| 4. `em3` peak memory <= 1.5x `frozen` at L={at} | {r:.2f}x | | {verdict(r <= 1.5)} |")
    naive = get("em3-full-nodedup", 200)
    fast = [x for x in (get("em3-lora", 200), get("em3-cached", 200)) if x]
    if naive and fast:
        r = max(x.samples_per_s for x in fast) / naive.samples_per_s
        c = naive.cpu_seconds / min(x.cpu_seconds for x in fast)
        rows.append(
            f"| 5. dedup + lora/cached >= 5x naive samples/s at L=200 | {r:.1f}x | {c:.1f}x | {verdict(r >= 5)} |"
        )
    c50, c1000 = get("em3-cached", 50), get("em3-cached", 1000)
    if c50 and c1000:
        r, c = c1000.seconds / c50.seconds, c1000.cpu_seconds / c50.cpu_seconds
        rows.append(f"| 6. cached time(L=1000) / time(L=50) <= 4 | {r:.1f} | {c:.1f} | {verdict(r <= 4)} |")
    for name in TORCHREC_IDS:
        for ref in ("ref-sparse", "ref-dense"):
            for L in world["histories"]:
                i, r = get(name, L), get(ref, L)
                if i and r:
                    x, c = i.samples_per_s / r.samples_per_s, r.cpu_seconds / i.cpu_seconds
                    need = "> 1" if ws > 1 else ">= 1"
                    rows.append(
                        f"| 7. TorchRec {name} vs {ref} ({ws} rank(s), L={L}): {need} | {x:.2f}x | {c:.2f}x | "
                        f"{verdict(x > 1 if ws > 1 else x >= 1)} |"
                    )
    if not rows:
        return []
    return [
        "### Targets this run can check (1-4: the cost issue; 5-7: the scaling issue)",
        "",
        "| target | measured (wall) | measured (CPU) | verdict (wall) |",
        "|---|---:|---:|---|",
        *rows,
    ]


def _legend() -> list[str]:
    return [
        "## Variants",
        "",
        "- `id`: ID features only (the bundled `din_id`); `frozen`: ID + frozen content (`din_frozen`, the "
        "baseline); `em3`: the bundled `din_em3` exactly (its content form, history mode, CIC and catalogue sample, precision): "
        "what a user pays (with `--bundled-prefix bx_`: `bx_din_id`, ...).",
        "- `em3-no-catalogue` / `em3-hist-cached` / `em3-unmerged`: the bundled `em3` with one override: no CIC "
        "catalogue sample (`model.cic.catalogue_samples = 0`) / history content from the `cached` bank "
        "(`model.seq_content_mode = cached`) / the history adapters through peft's low-rank forward instead of "
        "folded into their Linears (`model.lora.merge = false`).",
        "- `em3-no-cic` / `em3-hist-pooled` / `em3-hist-pooled-no-cic`: the bundled `em3` with CIC off "
        "(`model.cic.weight = 0`, so no catalogue sample either) / its history content from the pooled base "
        "(`model.seq_content_mode = pooled`) / both: where EM3's step goes, part by part.",
        "- `em3-window<w>`: the bundled `em3` over token-level item features (`data.pooled_content = false`), "
        "averaged in windows of `w` consecutive positions per modality (`data.token_window = w`; 1 = the tokens "
        "as stored).",
        "- `id-pipeline`: `id` stepped by TorchRec's `TrainPipelineSparseDist`, as the recipe trains (the next "
        "batch's input all-to-all is started before this step's forward and waited on after it).",
        "- `em3-<mode>`: EM3 (Fusion-Q-Former + CIC) with `seq_content_mode = <mode>` on token-level item "
        "features, dedup on; `-nodedup`: every target row and history position encoded separately (the naive "
        "path; `em3-full-nodedup` = full gradient through every history position); `/pooled`: one pooled "
        "token per modality (`data.pooled_content = true`).",
        "- `ref-sparse` / `ref-dense`: the same ID-only DIN in plain PyTorch (`benchmarks/reference_din.py`: "
        "`nn.EmbeddingBag`/`nn.Embedding` with sparse / dense gradients, DDP, Adagrad + AdamW), no TorchRec.",
        "- `tower:<variant>`: that variant's content tower alone (forward + backward of its outputs).",
        "",
    ]


def write_results(args: argparse.Namespace, worlds: list[dict[str, Any]], command: str) -> Path:
    meta = DatasetMeta.load(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"throughput_{args.name}"
    text = markdown(args, worlds, command, meta)
    stem.with_suffix(".md").write_text(text)
    payload = {
        "command": command,
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine(),
        "worlds": worlds,
    }
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    if args.plot:
        from benchmarks.throughput_plot import plot_samples_per_s

        for world in worlds:
            summary = summarise(world, args.batch_size)
            series: dict[str, list[tuple[float, float]]] = {}
            for (name, L), s in summary.items():
                if not name.startswith("tower:"):
                    series.setdefault(name, []).append((L, s.samples_per_s))
            png = out / f"throughput_{args.name}_ws{world['world_size']}.png"
            plot_samples_per_s(
                {k: sorted(v) for k, v in series.items()},
                png,
                title=f"{args.name}: samples/s vs history length, {world['world_size']} rank(s), batch {args.batch_size}/rank",
            )
    print(text)
    print(f"wrote {stem}.md", file=sys.stderr)
    return stem.with_suffix(".md")
