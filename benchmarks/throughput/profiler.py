"""``--profile``: torch.profiler over a few steps of each variant, as Markdown."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.throughput.report import machine
from benchmarks.throughput.runner import build_runner, load_batches, quiet, sync
from benchmarks.throughput.variants import VARIANTS, resolve, variant_config
from em3rec.factory import dataset_meta
from em3rec.distributed import init_distributed


# The model's components whose forward is timed; dotted names are parts of a component (the
# Q-Former's row counts every call: the target branch's and the history branch's).
PARTS = (
    "id_arch",
    "content_tower",
    "content_tower.qformer",
    "content_tower.history",
    "content_tower.pooled_base",
    "content_interest",
    "backbone",
    "cic",
)

# Operator calls by self CPU time per call, for the overhead-vs-work split of a step: a call under
# SMALL_OP_US does too little to amortise dispatch, autograd and thread wake-up on CPU.
SMALL_OP_US = 20.0
LARGE_OP_US = 200.0
MATMULS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})


def operator_sizes(calls: list[tuple[str, float]], steps: int) -> list[str]:
    """Markdown table of a profile's ``aten::`` calls by self CPU time per call.

    Args:
        calls: ``(operator name, self CPU µs)`` of every profiled call (any name; only ``aten::``
            operators are counted, plus inductor's compiled graphs as one row of their own).
        steps: profiled steps, the divisor of every per-step figure.

    Returns:
        The table's lines: calls and self CPU ms per step in three size classes, the matmuls, the
        compiled graphs.
    """
    aten = [(n, us) for n, us in calls if n.startswith("aten::")]
    total_ms = sum(us for _, us in aten) / 1e3 / steps
    rows = [
        (f"aten calls under {SMALL_OP_US:.0f} µs", [us for _, us in aten if us < SMALL_OP_US]),
        (
            f"aten calls {SMALL_OP_US:.0f}-{LARGE_OP_US:.0f} µs",
            [us for _, us in aten if SMALL_OP_US <= us < LARGE_OP_US],
        ),
        (f"aten calls of {LARGE_OP_US:.0f} µs or more", [us for _, us in aten if us >= LARGE_OP_US]),
        ("all aten calls", [us for _, us in aten]),
        ("of them matmuls (mm, addmm, bmm, baddbmm)", [us for n, us in aten if n in MATMULS]),
        ("compiled graphs (inductor kernels, not in the aten rows)", [us for n, us in calls if "CompiledFxGraph" in n]),
    ]
    lines = [
        "| operator calls by self CPU time per call | calls/step | self CPU ms/step | share of the aten calls' time |",
        "|---|---:|---:|---:|",
    ]
    for label, times in rows:
        ms = sum(times) / 1e3 / steps
        share = f"{100 * ms / total_ms:.0f}%" if total_ms and "compiled" not in label else ""
        lines.append(f"| {label} | {len(times) / steps:,.0f} | {ms:,.1f} | {share} |")
    return lines


def profile_variants(args: argparse.Namespace, argv: list[str] | None = None) -> Path:
    """``--profile``: torch.profiler over ``--steps`` steps of each variant (1 process, after warm-up);
    the top operators by self CPU time and each model component's forward time, as Markdown."""
    from torch.profiler import ProfilerActivity, profile, record_function

    env = init_distributed(args.device)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = variant_config(args, None)
    meta = dataset_meta(base)
    from em3rec.data.item_store import ItemStore

    L = min(args.history[0], meta.max_history)
    lines = [
        f"# Profile: {args.name}, L={L}, batch {args.batch_size}, {torch.get_num_threads()} thread(s)",
        "",
        "Command: `python -m benchmarks.throughput "
        f"{' '.join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))}`",
        "",
        f"Machine: {machine()['nproc']} CPUs ({machine()['cpu']}), load average {machine()['load']}; "
        f"torch {torch.__version__}; commit {machine()['commit']}. {args.warmup} warm-up step(s), then "
        f"{args.steps} profiled step(s) per variant on real loader batches.",
        "",
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    for name in args.variants:
        v = resolve(args, VARIANTS[name])
        config = variant_config(args, v)
        window = config.data.token_window
        store = ItemStore(base.data.path, base.data.modalities, meta, token_window=window) if meta.modalities else None
        batches = load_batches(config, L, v.level, args.warmup + args.steps, env, store)
        runner = build_runner(v, config, meta, env)
        hooks = []
        if not v.reference:
            model = runner.model
            for part in PARTS:
                try:
                    module = model.get_submodule(part)
                except AttributeError:  # not in this variant (or None: no content tower, no history)
                    continue
                if module is None:
                    continue
                ranges: list = []
                # Eager hooks (dynamo.disable): a compiled module (model.compile_backbone) would
                # otherwise trace them into its graph, where the ranges are never entered.
                hooks.append(
                    module.register_forward_pre_hook(
                        torch._dynamo.disable(
                            lambda m, a, part=part, ranges=ranges: ranges.append(
                                record_function(f"## forward {part}").__enter__()
                            )
                        )
                    )
                )
                hooks.append(
                    module.register_forward_hook(
                        torch._dynamo.disable(lambda m, a, o, ranges=ranges: ranges.pop().__exit__(None, None, None))
                    )
                )
        # Warm up with the hooks in: a compiled module recompiles once hooks are added.
        for b in batches[: args.warmup]:
            runner.step(b)
        with profile(activities=activities, record_shapes=True) as prof:
            for b in batches[args.warmup :]:
                with record_function("## step"):
                    runner.step(b)
            sync(env.device)
        for h in hooks:
            h.remove()
        events = prof.key_averages()
        step_ms = sum(e.cpu_time_total for e in events if e.key == "## step") / 1e3 / args.steps
        parts = sorted((e for e in events if e.key.startswith("## forward")), key=lambda e: -e.cpu_time_total)
        lines += [
            f"## {name}",
            "",
            f"Step: {step_ms:,.0f} ms CPU per step (profiled). Forward of each component, ms per step:",
            "",
        ]
        lines += ["| component (forward only) | ms/step | share of step |", "|---|---:|---:|"]
        for e in parts:
            ms = e.cpu_time_total / 1e3 / args.steps
            lines.append(f"| {e.key[11:]} | {ms:,.1f} | {100 * ms / step_ms:.0f}% |")
        lines += ["", "Operator calls by size (forward and backward, per step):", ""]
        lines += operator_sizes([(e.name, e.self_cpu_time_total) for e in prof.events()], args.steps)
        lines += ["", "Top operators by self CPU time (forward and backward):", "", "```"]
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows, max_name_column_width=60))
        lines += ["```", "", "Top operators by self CPU time, by input shape:", "", "```"]
        lines.append(
            prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total",
                row_limit=args.profile_rows,
                max_name_column_width=40,
                max_shapes_column_width=70,
            )
        )
        lines += ["```", ""]
        del runner, batches
    dist.destroy_process_group()
    out = Path(args.out) / f"throughput_profile_{args.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}", file=sys.stderr)
    return out
