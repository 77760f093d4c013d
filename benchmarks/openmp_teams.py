"""What a second OpenMP team costs the training step's small parallel ops on this CPU, and what
em3rec does about it (``em3rec.openmp.keep_one_openmp_team``, the loader's serial prefetch
thread).

Each scenario runs in a fresh process with ``--threads`` intra-op threads: time a small parallel op
(a ``(640, 2, 64)`` fill, the size of many of EM3's per-step ops), let another thread run one big
parallel op, and time the small op again. The other thread is gloo's worker (an all-gather in a
one-process gloo group: its tensor copies run there, as DCP's plan gathers and the evaluation's
gathers do) or a plain Python thread (as the loader's prefetch thread), each with its torch ops
parallel or serial.

    python -m benchmarks.openmp_teams [--threads 2] [--calls 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time

import torch

from benchmarks.machine import results_head, write_results

SCENARIOS = {  # name -> (the other thread, its ops serial)
    "gloo worker, ops parallel": ("gloo", False),
    "gloo worker, serial (keep_one_openmp_team)": ("gloo", True),
    "Python thread, ops parallel": ("thread", False),
    "Python thread, serial (keep_one_openmp_team before it starts)": ("thread", True),
}


def small_op_us(x: torch.Tensor, calls: int) -> float:
    """Median over 5 blocks of the microseconds of one ``x.fill_``."""
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            x.fill_(1.0)
        blocks.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(blocks)


def run_scenario(name: str, threads: int, calls: int, queue: mp.Queue) -> None:
    """One scenario in this (fresh) process: puts ``(name, before µs, after µs)`` on ``queue``."""
    import torch.distributed as dist

    from em3rec.openmp import keep_one_openmp_team

    other, serial = SCENARIOS[name]
    torch.set_num_threads(threads)
    x = torch.empty(640, 2, 64)
    small_op_us(x, max(1, calls // 10))  # warm-up
    before = small_op_us(x, calls)
    big = torch.randn(4_000_000)
    if other == "gloo":
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        if serial:
            keep_one_openmp_team()
        out = [torch.empty_like(big)]
        for _ in range(3):
            dist.all_gather(out, big)
    else:  # the thread stays alive while the step runs, as the prefetch thread does for an epoch
        ran, done = threading.Event(), threading.Event()

        def work() -> None:
            big.index_select(0, torch.arange(0, big.numel(), 2))
            ran.set()
            done.wait()

        if serial:  # as the loader's prefetch() does
            keep_one_openmp_team()
        thread = threading.Thread(target=work)
        thread.start()
        ran.wait()
    after = small_op_us(x, calls)
    if dist.is_initialized():
        dist.destroy_process_group()
    else:
        done.set()
        thread.join()
    queue.put((name, before, after))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="intra-op threads")
    p.add_argument("--calls", type=int, default=2000, help="fills per timed block")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    context = mp.get_context("spawn")
    lines = [
        "| the other thread | fill, before (µs) | fill, after (µs) | after / before |",
        "|---|---:|---:|---:|",
    ]
    for name in SCENARIOS:
        queue = context.Queue()
        proc = context.Process(target=run_scenario, args=(name, args.threads, args.calls, queue))
        proc.start()
        _, before, after = queue.get(timeout=300)
        proc.join()
        lines.append(f"| {name} | {before:.1f} | {after:.1f} | {after / before:.2f}x |")
    note = (
        f"{args.threads} intra-op thread(s); a fresh process per row. *fill*: `torch.empty(640, 2, 64).fill_(1.0)`, "
        f"median of 5 blocks of {args.calls:,} calls, before and after the other thread ran one big parallel op "
        "(and while it lives)."
    )
    watched = ["em3rec/openmp.py", "em3rec/distributed.py", "em3rec/data/loader.py", "benchmarks/openmp_teams.py"]
    write_results(results_head("benchmarks.openmp_teams", argv, watched, note) + "\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
