"""Training-step throughput and peak memory of every EM3 variant, side by side, in one run.

What one run measures, on real loader batches prefetched into memory before any timing (the loader
has its own benchmark, ``benchmarks/loader_throughput.py``):

- samples/s of a full training step (forward, backward with the fused embedding optimiser, dense
  AdamW step) under ``DistributedModelParallel``, for the variants in :data:`VARIANTS`: ID only,
  ID + frozen content (the baseline every ratio divides by), EM3 with every ``seq_content_mode``,
  with dedup on and off, on token-level or pooled item features; and the plain-PyTorch reference
  ID-only DIN (``benchmarks/reference_din.py``: ``nn.EmbeddingBag`` + DDP, no TorchRec);
- for every history length ``L`` in ``--history`` and every world size in ``--ranks``;
- peak memory per variant: on CPU the peak resident set size while its steps run (the kernel's
  ``VmHWM``, reset before each block) and its rise over the RSS before the block; on CUDA the
  allocator's peak and its rise;
- FLOPs per sample of each variant (``benchmarks/flops.py``), the content tower's achieved FLOP/s
  (the tower alone, forward + backward, timed in the same rounds) against a matmul peak measured in
  the same rounds.

Variants and history lengths are interleaved: every round runs every (L, variant) block of
``--steps`` steps in turn (the order rotates per round), after ``--warmup`` untimed steps each; the
median over ``--rounds`` rounds is reported, and every number is also given as a ratio to
``frozen`` (ID + frozen content) measured in the same cell of the same run. Compare ratios, never
absolute numbers across runs.

World sizes: without torchrun, each world size in ``--ranks`` runs in turn (1 in this process, more
as spawned gloo/nccl processes) and one report covers all. Under torchrun (or the ``bench`` torchx
component) the script runs at the launcher's world size only.

Examples::

    python -m benchmarks.throughput --data data/ml100k --history 10,50 --ranks 1
    python -m benchmarks.throughput --data data/synthetic_longhist --history 10,50,200,1000 \\
        --batch-size 128 --variants id,frozen,em3-lora,em3-cached,em3-full,em3-full-nodedup
    torchx run -s local_cwd torchx/em3rec.py:bench -j 1x2 -- --data data/ml100k --history 50

The package's modules, one job each: ``variants`` (what is compared), ``runner`` (building a variant
into a training step, the batches), ``memory`` (the peak-memory probe), ``run`` (the interleaved
timing over world sizes, the command line), ``profiler`` (``--profile``), ``report`` (Markdown, JSON,
plot).

Results: ``benchmarks/results/throughput_<name>.md`` (tables), ``.json`` (every round's raw time)
and ``throughput_<name>_ws<N>.png`` (samples/s against history length per variant).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from benchmarks.throughput.memory import MemoryProbe
from benchmarks.throughput.profiler import profile_variants
from benchmarks.throughput.report import write_results
from benchmarks.throughput.runner import (
    Runner,
    batch_stats,
    build_runner,
    build_tower_runner,
    load_batches,
    matmul_runner,
    quiet,
    sync,
)
from benchmarks.throughput.variants import (
    BASELINE,
    DEFAULT_TOWER_VARIANTS,
    DEFAULT_VARIANTS,
    VARIANTS,
    Variant,
    resolve,
    variant_config,
)
from em3rec import cli, factory
from em3rec.config import Config, Device, choices
from em3rec.data.batch import Batch
from em3rec.distributed import DistEnv, init_distributed
from em3rec.openmp import keep_one_openmp_team
from em3rec.precision import DTYPES, Precision, fast_bf16
from em3rec.testing.multiprocess import run_ranks

ROOT = Path(__file__).resolve().parents[2]  # the repository


@dataclass
class BlockResult:
    """Every round's wall and process-CPU seconds per step (slowest rank), peak memory, counted
    FLOPs, extras."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    rise_mb: float = 0.0
    flops: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    skipped: str = ""


def run_world(args: argparse.Namespace, env: DistEnv) -> dict[str, Any] | None:
    """Run every block on this process group; rank 0 returns the results (others None)."""
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    elif env.world_size > 1 and env.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.world_size))  # as torchrun does
    keep_one_openmp_team()  # again: set_num_threads above made its count the process-wide one
    base = variant_config(args, None)
    meta = factory.dataset_meta(base)
    histories = [min(h, meta.max_history) for h in args.history]
    histories = sorted(set(histories), key=histories.index)
    variants = [resolve(args, VARIANTS[v]) for v in args.variants]
    tower_variants = [resolve(args, VARIANTS[v]) for v in args.tower_variants]
    configs = {v.name: variant_config(args, v) for v in variants + tower_variants}
    precisions = {  # by block name: a variant's, and its tower's (`tower:<name>`)
        prefix + v.name: Precision.resolve(configs[v.name].train.precision, env.device)
        for prefix, vs in (("", variants), ("tower:", tower_variants))
        for v in vs
    }
    count = args.warmup + args.rounds * args.steps
    probe = MemoryProbe(env.device)
    log = _Log(env.rank == 0)

    # Real loader batches for every (L, feed), all in memory before any timing; a feed is what a
    # variant's batches carry: item features (level) and the catalogue sample for CIC.
    from em3rec.data.item_store import ItemStore

    stores: dict[int, ItemStore] = {}  # by data.token_window

    def store_for(config: Config) -> ItemStore | None:
        window = config.data.token_window
        if meta.modalities and window not in stores:
            stores[window] = ItemStore(base.data.path, base.data.modalities, meta, token_window=window)
        return stores.get(window)

    def feed(v: Variant) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """What ``v``'s batches carry: its level, the model's batch options, the token dtype and window."""
        config = configs[v.name]
        options = factory.batch_options(config.model, "train") | {
            "tokens": Precision.resolve(config.train.precision, env.device).name,  # also for a tower-only variant
            "token_window": config.data.token_window,
        }
        return v.level, tuple(sorted(options.items()))

    feeds = {feed(v): configs[v.name] for v in variants + tower_variants}
    batches: dict[tuple[int, tuple[str, tuple[tuple[str, Any], ...]]], list[Batch]] = {}
    started = time.perf_counter()
    for L in histories:
        for key, config in feeds.items():
            batches[(L, key)] = load_batches(config, L, key[0], count, env, store_for(config))
    widest = max(feeds, key=lambda k: (k[0] == "tokens", dict(k[1]).get("history_tokens", True)))
    stats = {L: batch_stats(batches[(L, widest)]) for L in histories}
    log(f"loaded {len(batches)} x {count} batches in {time.perf_counter() - started:.1f}s; stats {stats}")

    # One model per variant (shared by every L), except `cached`, whose bank is per-L state.
    runners: dict[tuple[str, int], Runner] = {}

    def runner_for(v: Variant, L: int, tower: bool = False) -> Runner:
        per_L = v.seq_content_mode == "cached" or v.pipeline  # bank / in-flight batches are per-L state
        key = (("tower:" if tower else "") + v.name, L if per_L else 0)
        if key not in runners:
            cfg = configs[v.name]
            runners[key] = (
                build_tower_runner(v, cfg, meta, env.device)
                if tower
                else build_runner(v, cfg, meta, env, batches[(L, feed(v))])
            )
        return runners[key]

    blocks: list[
        tuple[str, int, Callable[[], Runner], tuple[str, tuple[tuple[str, Any], ...]]]
    ] = []  # (name, L, runner, feed)
    for L in histories:
        for v in variants:
            if args.skip_naive_above and not v.dedup and L > args.skip_naive_above:
                continue
            blocks.append((v.name, L, (lambda v=v, L=L: runner_for(v, L)), feed(v)))
        for v in tower_variants:
            blocks.append((f"tower:{v.name}", L, (lambda v=v, L=L: runner_for(v, L, tower=True)), feed(v)))
    results: dict[tuple[str, int], BlockResult] = {(name, L): BlockResult() for name, L, _, _ in blocks}
    for v in variants:
        for L in histories:
            if args.skip_naive_above and not v.dedup and L > args.skip_naive_above:
                results[(v.name, L)] = BlockResult(skipped=f"not run: no-dedup above L={args.skip_naive_above}")
    cursor: dict[tuple[str, int], int] = {}

    def next_batch(name: str, L: int, key: tuple[str, tuple[tuple[str, Any], ...]]) -> Batch:
        i = cursor.get((name, L), 0)
        cursor[(name, L)] = i + 1
        return batches[(L, key)][i]

    # Warm-up (the first step of each block is the FLOP-counted one).
    for name, L, make, key in blocks:
        runner = make()
        for i in range(args.warmup):
            batch = next_batch(name, L, key)
            if i == 0 and args.count_flops:
                results[(name, L)].flops = runner.count(batch)
            else:
                runner.step(batch)
        sync(env.device)
        log(f"warm {name} L={L}")

    dtypes = sorted({p.name for p in precisions.values()}, reverse=True)  # the peak in every precision run
    matmuls = {
        f"matmul {d} {m}x{k}x{n}": matmul_runner((m, k, n), env.device, DTYPES[d])
        for d in dtypes
        for m, k, n in args.matmul
    }
    matmul_seconds: dict[str, list[float]] = {k: [] for k in matmuls}
    matmul_cpu: dict[str, list[float]] = {k: [] for k in matmuls}
    for fn in matmuls.values():
        fn()
    matmul_flops = {k: fn() for k, fn in matmuls.items()}
    for r in range(args.rounds):
        gc.collect()
        order = blocks[r % len(blocks) :] + blocks[: r % len(blocks)]  # rotate: no block always first
        for name, L, make, key in order:
            runner = make()
            result = results[(name, L)]
            extras: dict[str, float] = {}
            probe.reset()
            _barrier(env)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                batch = next_batch(name, L, key)
                runner.step(batch)
                for k, x in runner.after_step(batch).items():
                    extras[k] = extras.get(k, 0.0) + x
            sync(env.device)
            seconds = _max_over_ranks((time.perf_counter() - start) / args.steps, env)
            cpu_seconds = _max_over_ranks((time.process_time() - cpu_start) / args.steps, env)
            peak, rise = probe.peak()
            result.seconds.append(seconds)
            result.cpu_seconds.append(cpu_seconds)
            result.peak_mb = max(result.peak_mb, _max_over_ranks(peak, env))
            result.rise_mb = max(result.rise_mb, _max_over_ranks(rise, env))
            for k, x in extras.items():
                result.extra[k] = result.extra.get(k, 0.0) + x
        for key, fn in matmuls.items():
            _barrier(env)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.matmul_reps):
                fn()
            sync(env.device)
            matmul_seconds[key].append((time.perf_counter() - start) / args.matmul_reps)
            matmul_cpu[key].append((time.process_time() - cpu_start) / args.matmul_reps)
        log(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f}s since start)")

    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, {"wall": matmul_seconds, "cpu": matmul_cpu})
    if env.rank != 0:
        return None
    return {
        "world_size": env.world_size,
        "device": str(env.device),
        "threads": torch.get_num_threads(),
        "histories": histories,
        "batch_stats": {str(L): s for L, s in stats.items()},
        "memory_reset_ok": probe.reset_ok,
        "precision": {name: p.name for name, p in precisions.items()},
        "bf16_report": fast_bf16(env.device)[1],
        "blocks": [{"name": name, "L": L, **asdict(res)} for (name, L), res in results.items()],
        "matmul": {
            k: {
                "flops": matmul_flops[k],
                "seconds_by_rank": [g["wall"][k] for g in gathered],
                "cpu_seconds_by_rank": [g["cpu"][k] for g in gathered],
            }
            for k in matmuls
        },
    }


class _Log:
    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self._enabled:
            print(f"[throughput {time.perf_counter() - self._start:6.1f}s] {message}", file=sys.stderr, flush=True)


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def _max_over_ranks(value: float, env: DistEnv) -> float:
    if env.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _spawned_world(rank: int, world_size: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """One spawned rank: the process group is up (``run_ranks``); run every block on it."""
    return run_world(args, init_distributed(args.device))


def run_spawned(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """Run :func:`run_world` on ``world_size`` fresh processes (gloo, or nccl on CUDA); rank 0's result."""
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return run_ranks(_spawned_world, args, world_size=world_size, backend="nccl" if cuda else "gloo", timeout_s=None)[0]


def run_in_process(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run at the launcher's world size (torchrun), or as a 1-process group."""
    env = init_distributed(args.device)
    try:
        return run_world(args, env)
    finally:
        dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.config_parser(__doc__.split("\n\n")[0])  # --config: the base the variants override; --set: for all
    p.add_argument("--data", default="data/ml100k", help="prepared dataset folder")
    p.add_argument(
        "--bundled-prefix",
        default="",
        help="prefix of the bundled configs of the id / frozen / em3 variants for --data (e.g. bx_ for data/bx)",
    )
    p.add_argument("--batch-size", type=int, default=512, help="rows per rank")
    p.add_argument("--history", default="10,50", help="comma-separated history lengths L (capped at the dataset's)")
    p.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}; or 'all'"
    )
    p.add_argument("--tower-variants", default=DEFAULT_TOWER_VARIANTS, help="content towers timed alone ('' = none)")
    p.add_argument("--ranks", default="1", help="comma-separated world sizes (ignored under torchrun)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per block per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per block (>= 1: the first counts FLOPs)")
    p.add_argument(
        "--skip-naive-above", type=int, default=0, help="skip no-dedup variants for L above this (0 = never)"
    )
    p.add_argument("--no-flops", dest="count_flops", action="store_false", help="skip the FLOP counts")
    p.add_argument(
        "--matmul",
        default="2048x2048x2048,32768x384x64",
        help="matmul shapes MxKxN for the peak (in every precision a variant runs in)",
    )
    p.add_argument("--matmul-reps", type=int, default=3)
    p.add_argument("--device", default="auto", choices=choices(Device))
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per rank (0: torch's default, or cpus / world size with several ranks, as torchrun)",
    )
    p.add_argument("--name", default="", help="results name (default: the dataset folder's name)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile --variants at the first --history instead (torch.profiler; writes throughput_profile_<name>.md)",
    )
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args(argv)
    args.history = [int(x) for x in args.history.split(",") if x]
    args.variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    args.tower_variants = [v for v in args.tower_variants.split(",") if v]
    unknown = [v for v in args.variants + args.tower_variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if BASELINE not in args.variants and not args.profile:
        args.variants.insert(0, BASELINE)  # every ratio needs it
    if args.warmup < 1 and args.count_flops:
        p.error("--warmup must be >= 1 to count FLOPs (or pass --no-flops)")
    args.ranks = [int(x) for x in args.ranks.split(",") if x]
    args.matmul = [tuple(int(d) for d in s.split("x")) for s in args.matmul.split(",") if s]
    args.name = args.name or Path(args.data).name
    return args


@cli.user_errors
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    quiet()
    if args.profile:
        profile_variants(args, argv)
        return []
    under_launcher = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    worlds = []
    if under_launcher:
        world = run_in_process(args)
        if world is None:
            return []
        worlds.append(world)
    else:
        for ws in args.ranks:
            worlds.append(run_in_process(args) if ws == 1 else run_spawned(args, ws))
    command = "python -m benchmarks.throughput " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    if under_launcher:
        command = f"torchrun --nproc-per-node {worlds[0]['world_size']} {command[len('python ') :]}"
    write_results(args, worlds, command)
    return worlds
