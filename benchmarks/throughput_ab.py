"""Before/after step times of two ``em3rec`` source trees, interleaved in one run.

Each tree (a folder holding an ``em3rec`` package: this checkout, and e.g. a copy or a
``git worktree`` of the commit before a change) gets one worker process that imports ``em3rec``
from it, loads the same real loader batches and builds the same variants with
``benchmarks.throughput``'s builders. The driver then alternates blocks between the workers:
only one worker computes at a time, so they never compete for cores, and both see the same machine
load. Reported: the median over rounds of each side's step time and the ratio before / after
(> 1 = the change made it faster).

Example::

    cp -r em3rec /tmp/before/         # before editing em3rec/modules
    python -m benchmarks.throughput_ab --before /tmp/before --data data/ml100k \\
        --variants em3-lora,tower:em3-lora,frozen --history 50 --rounds 5 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.throughput.variants import Variant

ROOT = Path(__file__).resolve().parents[1]


def block_variant(args: argparse.Namespace, name: str) -> Variant:
    """The variant a block ``name`` (``em3``, ``tower:em3``) runs, with the batches' level (pooled
    vectors or tokens), history mode and dedup that its bundled config reads. (Imported here: a
    worker must not import ``em3rec`` before it picks its tree.)"""
    from benchmarks.throughput.variants import VARIANTS, resolve

    return resolve(args, VARIANTS[name.removeprefix("tower:")])


def _worker(args: argparse.Namespace) -> None:
    """Serve blocks on stdin: ``run NAME L`` -> seconds per step on stdout (one JSON line each)."""
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import em3rec  # noqa: F401  (from the tree: its submodules resolve through its own __path__)
    import em3rec.modules.content_tower  # noqa: F401
    import torch

    from benchmarks.throughput.runner import build_runner, build_tower_runner, load_batches, quiet, sync
    from benchmarks.throughput.variants import variant_config
    from em3rec.config import load_config
    from em3rec.data.schema import DatasetMeta
    from em3rec.distributed import init_distributed

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = init_distributed("cpu" if args.device == "cpu" else "auto")
    base = load_config(
        args.config,
        list(args.set) + [f"data.path={args.data}", f"data.batch_size={args.batch_size}", "data.batch_scope=rank"],
    )
    meta = DatasetMeta.load(args.data)
    count = args.warmup + args.rounds * args.steps
    histories = [int(h) for h in args.history.split(",")]
    names = args.variants.split(",")
    from em3rec.data.item_store import ItemStore

    store = ItemStore(base.data.path, base.data.modalities, meta, token_window=base.data.token_window)
    runners, batches, cursor = {}, {}, {}
    fake = argparse.Namespace(
        set=args.set,
        data=args.data,
        batch_size=args.batch_size,
        config=args.config,
        bundled_prefix=args.bundled_prefix,
    )
    for name in names:
        tower = name.startswith("tower:")
        variant = block_variant(fake, name)
        cfg = variant_config(fake, variant)
        for L in histories:
            if (L, variant.level) not in batches:
                batches[(L, variant.level)] = load_batches(base, L, variant.level, count, env, store)
            key = (name, L)
            runners[key] = (
                build_tower_runner(variant, cfg, meta, env.device) if tower else build_runner(variant, cfg, meta, env)
            )
            for i in range(args.warmup):
                runners[key].step(batches[(L, variant.level)][i])
            cursor[key] = args.warmup
    print(json.dumps({"ready": em3rec.__file__}), flush=True)
    for line in sys.stdin:
        _, name, L = line.split()
        key = (name, int(L))
        level = block_variant(fake, name).level
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            runners[key].step(batches[(key[1], level)][cursor[key]])
            cursor[key] += 1
        sync(env.device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(json.dumps({"seconds": wall / args.steps, "cpu_seconds": cpu / args.steps}), flush=True)


def main(argv: list[str] | None = None) -> None:
    # Its own parser, not em3rec.cli's: a worker must not import em3rec before it picks its tree.
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="folder holding the 'before' em3rec package")
    p.add_argument(
        "--after", default=str(ROOT), help="folder holding the 'after' em3rec package (default: this checkout)"
    )
    p.add_argument("--data", default="data/ml100k")
    p.add_argument("--config", default="din_em3")
    p.add_argument("--bundled-prefix", default="", help="as benchmarks.throughput's (bx_: bx_din_em3, ...)")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--history", default="50")
    p.add_argument(
        "--variants",
        default="em3-lora,tower:em3-lora",
        help="throughput.py variant names; tower:NAME = its tower alone",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--out", default="", help="append the Markdown table to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    passthrough = [x for x in (argv if argv is not None else sys.argv[1:])]
    workers = {}
    for side in ("before", "after"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.throughput_ab",
            *passthrough,
            "--worker",
            "--tree",
            getattr(args, side),
        ]
        # A 1-process group per worker: no launcher variables, so no TCP store (em3rec.distributed).
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        workers[side] = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        ready = json.loads(workers[side].stdout.readline())  # build one at a time: no overlap
        print(f"{side}: em3rec from {ready['ready']}", file=sys.stderr, flush=True)
    names = args.variants.split(",")
    histories = [int(h) for h in args.history.split(",")]
    times: dict[tuple[str, int, str], list[float]] = {}
    cpu_times: dict[tuple[str, int, str], list[float]] = {}
    for r in range(args.rounds):
        for name in names:
            for L in histories:
                sides = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in sides:
                    w = workers[side]
                    w.stdin.write(f"run {name} {L}\n")
                    w.stdin.flush()
                    reply = json.loads(w.stdout.readline())
                    times.setdefault((name, L, side), []).append(reply["seconds"])
                    cpu_times.setdefault((name, L, side), []).append(reply["cpu_seconds"])
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, ROOT), *passthrough])
    lines = [
        f"Command: `{command}` ({args.rounds} rounds x {args.steps} steps, sides alternating; load average at the "
        f"end {' '.join(f'{x:.2f}' for x in os.getloadavg())})",
        "",
        "Wall: median step time; CPU: median process CPU time per step (all threads; robust to other jobs "
        "on a shared machine, which stretch wall time but not the work done).",
        "",
        "| block | L | before wall ms | after wall ms | before / after (wall) | before CPU ms | after CPU ms | "
        "before / after (CPU) | wall ms per round, before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        for L in histories:
            b, a = times[(name, L, "before")], times[(name, L, "after")]
            mb, ma = statistics.median(b), statistics.median(a)
            cb, ca = statistics.median(cpu_times[(name, L, "before")]), statistics.median(cpu_times[(name, L, "after")])
            lines.append(
                f"| {name} | {L} | {1e3 * mb:,.0f} | {1e3 * ma:,.0f} | {mb / ma:.2f} | {1e3 * cb:,.0f} | "
                f"{1e3 * ca:,.0f} | {cb / ca:.2f} | {' '.join(f'{1e3 * x:.0f}' for x in b)} / "
                f"{' '.join(f'{1e3 * x:.0f}' for x in a)} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
