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
- FLOPs per sample of each variant (``em3rec.modules.flops``), the content tower's achieved FLOP/s
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

    python benchmarks/throughput.py --data data/ml100k --history 10,50 --ranks 1
    python benchmarks/throughput.py --data data/synthetic_longhist --history 10,50,200,1000 \\
        --batch-size 128 --variants id,frozen,em3-lora,em3-cached,em3-full,em3-full-nodedup
    torchx run -s local_cwd torchx/em3rec.py:bench -j 1x2 -- --data data/ml100k --history 50

Results: ``benchmarks/results/throughput_<name>.md`` (tables), ``.json`` (every round's raw time)
and ``throughput_<name>_ws<N>.png`` (samples/s against history length per variant).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import logging
import os
import shlex
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torchrec  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402
from benchmarks.reference_din import ReferenceDIN, reference_optimizer  # noqa: E402
from em3rec.config import Config, load_config  # noqa: E402
from em3rec.data.batch import Batch  # noqa: E402
from em3rec.data.loader import ImpressionLoader  # noqa: E402
from em3rec.data.schema import DatasetMeta  # noqa: E402
from em3rec.distributed import DistEnv, build_optimizer, init_distributed, shard_model  # noqa: E402
from em3rec.modules import flops as flops_module  # noqa: E402
from em3rec.modules.content_io import DistinctTargets  # noqa: E402
from em3rec.modules.model import EM3Train, build_model  # noqa: E402

BASELINE = "frozen"


@dataclass(frozen=True)
class Variant:
    """One model variant.

    Fields:
        name: table row name.
        content: ``ModelConfig.content``: none | frozen | em3.
        seq_content_mode: ``ModelConfig.seq_content_mode``.
        dedup: ``ModelConfig.dedup``.
        level: the item features its batches carry: ``none`` (ID only, as the recipe loads them),
            ``pooled`` (one vector per modality) or ``tokens``.
        reference: ``""`` (TorchRec, DMP) or the plain-PyTorch DIN: ``sparse`` | ``dense`` gradients.
        pipeline: TorchRec variant stepped by ``TrainPipelineSparseDist`` (as the recipe trains):
            the next batch's input all-to-all overlaps this step's compute.
    """

    name: str
    content: str
    seq_content_mode: str
    dedup: bool = True
    level: str = "tokens"
    reference: str = ""
    pipeline: bool = False

    def overrides(self) -> list[str]:
        return [
            f"model.content={self.content}",
            f"model.seq_content_mode={self.seq_content_mode}",
            f"model.dedup={'true' if self.dedup else 'false'}",
            f"data.pooled_content={'true' if self.level == 'pooled' else 'false'}",
        ]


def _variants() -> dict[str, Variant]:
    out = [
        Variant("id", "none", "none", level="none"),
        Variant("id-pipeline", "none", "none", level="none", pipeline=True),
        Variant(BASELINE, "frozen", "frozen", level="pooled"),  # the two-stage baseline (din_frozen)
    ]
    for level, suffix in (("tokens", ""), ("pooled", "/pooled")):
        for mode in ("none", "frozen", "lora", "full", "cached"):
            out.append(Variant(f"em3-{mode}{suffix}", "em3", mode, level=level))
        for mode in ("none", "frozen", "lora", "full"):
            out.append(Variant(f"em3-{mode}-nodedup{suffix}", "em3", mode, dedup=False, level=level))
    out += [
        Variant("ref-sparse", "none", "none", level="none", reference="sparse"),
        Variant("ref-dense", "none", "none", level="none", reference="dense"),
    ]
    return {v.name: v for v in out}


VARIANTS = _variants()
TORCHREC_IDS = ("id", "id-pipeline")  # the TorchRec ID-only DIN, plain and pipelined steps
DEFAULT_VARIANTS = (
    "id,frozen,em3-none,em3-frozen,em3-lora,em3-full,em3-cached,em3-lora-nodedup,em3-full-nodedup,"
    "em3-lora/pooled,em3-cached/pooled,em3-full-nodedup/pooled,ref-sparse,ref-dense"
)
# The content tower alone (forward + backward) is timed for these, next to the matmul peak.
DEFAULT_TOWER_VARIANTS = "em3-lora,em3-full"


# ------------------------------------------------------------------------------------ measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MemoryProbe:
    """Peak memory of a block: CUDA allocator stats, or the kernel's peak RSS (``VmHWM``).

    On CPU, ``reset()`` returns freed heap pages to the kernel (``malloc_trim``) and resets
    ``VmHWM`` to the current RSS (``/proc/self/clear_refs``), so ``peak()`` is this block's peak.
    Where that file is not writable the peak is the process's lifetime peak (``reset_ok`` False).
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.reset_ok = device.type == "cuda"
        self._trim: Callable[[int], int] | None = None
        if device.type != "cuda":
            try:
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except OSError:
                self._trim = None
        self._start = 0.0

    def _status_mb(self, key: str) -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def reset(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
            torch.cuda.reset_peak_memory_stats(self._device)
            self._start = torch.cuda.memory_allocated(self._device) / 2**20
            return
        if self._trim is not None:
            self._trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self._start = self._status_mb("VmRSS")

    def peak(self) -> tuple[float, float]:
        """``(peak MB, peak - start MB)`` since :meth:`reset`."""
        if self._device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self._device) / 2**20
        else:
            peak = self._status_mb("VmHWM")
        return peak, peak - self._start


class _FlopShim:
    """What ``flops.measure`` calls: ``.model`` (the inner EM3Model) and ``(batch)`` (the DMP)."""

    def __init__(self, dmp: torch.nn.Module) -> None:
        self._dmp = dmp
        self.model = dmp.module.model

    def __call__(self, batch: Batch) -> Any:
        return self._dmp(batch)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._dmp.zero_grad(set_to_none=set_to_none)


@dataclass
class Runner:
    """A built variant: ``step(batch)`` runs one training step; ``count(batch)`` one counted step."""

    step: Callable[[Batch], None]
    count: Callable[[Batch], dict[str, float]]
    after_step: Callable[[Batch], dict[str, float]] = lambda batch: {}
    model: Any = None  # the EM3Model (TorchRec variants)


def build_runner(
    variant: Variant, config: Config, meta: DatasetMeta, env: DistEnv, batches: list[Batch] | None = None
) -> Runner:
    """Build ``variant`` the way the recipe does (TorchRec) or the plain-PyTorch reference.

    A ``pipeline`` variant reads ``batches`` itself, in a cycle (the pipeline holds the next ones
    in flight), so its ``step`` ignores the batch it is given: the same batches, in the same order.
    """
    torch.manual_seed(config.train.seed)  # identical dense init on every rank
    if variant.reference:
        model = ReferenceDIN(meta, config.model, sparse=variant.reference == "sparse").to(env.device)
        ddp = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
        optimizer = reference_optimizer(ddp, config.optim)

        def reference_step(batch: Batch) -> None:
            loss = ddp(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def reference_count(batch: Batch) -> dict[str, float]:
            with FlopCounterMode(display=False) as counter:
                reference_step(batch)
            return {"total_flops": counter.get_total_flops() / batch.batch_size}

        return Runner(reference_step, reference_count)

    model = EM3Train(
        build_model(config.model, meta, config.data, sparse_device=torch.device("meta"), dense_device=env.device)
    )
    dmp = shard_model(model, env, config.sharding, config.optim, config.data.batch_size)
    optimizer = build_optimizer(dmp, config.optim)
    inner = dmp.module.model

    def step(batch: Batch) -> None:
        loss, _ = dmp(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    run_step = step
    if variant.pipeline:
        if not batches:
            raise ValueError(f"{variant.name}: a pipelined variant needs its batches")
        pipeline = TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True)
        feed = itertools.cycle(batches)

        def pipelined_step(batch: Batch) -> None:
            """One pipelined step; ``batch`` is ignored (the pipeline reads ``feed``, two batches ahead)."""
            pipeline.progress(feed)

        run_step = pipelined_step

    def count(batch: Batch) -> dict[str, float]:
        rows = {r.name: r for r in flops_module.measure(_FlopShim(dmp), batch)}
        tower = rows.get("content_tower")
        return {
            "total_flops": rows["total"].forward_flops + rows["total"].backward_flops,
            "tower_flops": (tower.forward_flops + tower.backward_flops) if tower else 0.0,
        }

    def after_step(batch: Batch) -> dict[str, float]:
        if variant.seq_content_mode != "cached" or variant.content != "em3":
            return {}
        history = int(torch.unique(batch.history_content_index[batch.history_mask]).numel())
        return {"refreshed": float(inner.content_tower.history.last_refresh_count), "history_items": float(history)}

    return Runner(run_step, count, after_step, inner)


def build_tower_runner(variant: Variant, config: Config, meta: DatasetMeta, device: torch.device) -> Runner:
    """The content tower of ``variant`` alone: forward + backward of its outputs (no optimiser)."""
    torch.manual_seed(config.train.seed)
    tower = build_model(config.model, meta, config.data, sparse_device=torch.device("meta"), dense_device=device).content_tower
    tower.train()

    def step(batch: Batch) -> None:
        targets = DistinctTargets.of(batch.target_content_index, batch.weights)
        out = tower(batch, targets)
        loss = out.target.sum() + out.item_content.sum()
        if out.history is not None and out.history.requires_grad:
            loss = loss + out.history.sum()
        tower.zero_grad(set_to_none=True)
        loss.backward()

    def count(batch: Batch) -> dict[str, float]:
        with FlopCounterMode(display=False) as counter:
            step(batch)
        return {"tower_flops": counter.get_total_flops() / batch.batch_size}

    return Runner(step, count)


def matmul_runner(size: tuple[int, int, int], device: torch.device) -> Callable[[], float]:
    """``fn()`` -> FLOPs of one fp32 ``(m, k) @ (k, n)`` matmul, run on ``device``."""
    m, k, n = size
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g).to(device), torch.randn(k, n, generator=g).to(device)

    def run() -> float:
        torch.mm(a, b)
        return 2.0 * m * k * n

    return run


# --------------------------------------------------------------------------------------- data


def load_batches(
    config: Config, history: int, level: str, count: int, env: DistEnv, item_store: Any = None
) -> list[Batch]:
    """``count`` real training batches of this rank at history length ``history``, in memory."""
    data = config.data
    loader = ImpressionLoader(
        data.path, "train", batch_size=data.batch_size, max_history=history,
        modalities=[] if level == "none" else data.modalities, pooled_content=level == "pooled",
        shuffle_buffer=min(data.shuffle_buffer, max(8 * data.batch_size * count, 4096)),
        seed=config.train.seed, rank=env.rank, world_size=env.world_size, max_batches=count, prefetch=0,
        item_store=item_store if level != "none" else None,
    )  # fmt: skip
    batches = [b.to(env.device) for b in loader]
    if len(batches) < count:
        raise SystemExit(
            f"{data.path}: only {len(batches)} training batches of {data.batch_size} rows per rank; "
            f"{count} needed (lower --batch-size, --rounds or --steps)"
        )
    return batches


def batch_stats(batches: list[Batch]) -> dict[str, float]:
    """Mean per batch: distinct items ``U``, distinct history items, real history positions per row."""
    distinct, history_items, positions = [], [], []
    for b in batches:
        distinct.append(b.content_item_ids.numel())
        history_items.append(torch.unique(b.history_content_index[b.history_mask]).numel())
        positions.append(float(b.history_mask.sum()) / b.batch_size)
    return {
        "distinct_items": float(np.mean(distinct)),
        "distinct_history_items": float(np.mean(history_items)),
        "history_positions_per_row": float(np.mean(positions)),
    }


# --------------------------------------------------------------------------------- the run


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


def _config(args: argparse.Namespace, variant: Variant | None) -> Config:
    overrides = list(args.set) + [f"data.path={args.data}", f"data.batch_size={args.batch_size}"]
    if variant is not None:
        overrides += variant.overrides()
    return load_config(args.config, overrides)


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("torchrec", "torch.distributed", "torch.fx", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_world(args: argparse.Namespace, env: DistEnv) -> dict[str, Any] | None:
    """Run every block on this process group; rank 0 returns the results (others None)."""
    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    elif env.world_size > 1 and env.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.world_size))  # as torchrun does
    base = _config(args, None)
    meta = DatasetMeta.load(base.data.path)
    histories = [min(h, meta.max_history) for h in args.history]
    histories = sorted(set(histories), key=histories.index)
    variants = [VARIANTS[v] for v in args.variants]
    tower_variants = [VARIANTS[v] for v in args.tower_variants]
    count = args.warmup + args.rounds * args.steps
    probe = MemoryProbe(env.device)
    log = _Log(env.rank == 0)

    # Real loader batches for every (L, level), all in memory before any timing.
    from em3rec.data.item_store import ItemStore

    store = ItemStore(base.data.path, base.data.modalities, meta) if meta.modalities else None
    levels = sorted({v.level for v in variants + tower_variants})
    batches: dict[tuple[int, str], list[Batch]] = {}
    started = time.perf_counter()
    for L in histories:
        for level in levels:
            batches[(L, level)] = load_batches(base, L, level, count, env, store)
    stats = {L: batch_stats(batches[(L, levels[-1])]) for L in histories}
    log(f"loaded {len(batches)} x {count} batches in {time.perf_counter() - started:.1f}s; stats {stats}")

    # One model per variant (shared by every L), except `cached`, whose bank is per-L state.
    runners: dict[tuple[str, int], Runner] = {}

    def runner_for(v: Variant, L: int, tower: bool = False) -> Runner:
        per_L = v.seq_content_mode == "cached" or v.pipeline  # bank / in-flight batches are per-L state
        key = (("tower:" if tower else "") + v.name, L if per_L else 0)
        if key not in runners:
            cfg = _config(args, v)
            runners[key] = (build_tower_runner(v, cfg, meta, env.device) if tower
                            else build_runner(v, cfg, meta, env, batches[(L, v.level)]))
        return runners[key]

    blocks: list[tuple[str, int, Callable[[], Runner], str]] = []  # (name, L, runner factory, level)
    for L in histories:
        for v in variants:
            if args.skip_naive_above and not v.dedup and L > args.skip_naive_above:
                continue
            blocks.append((v.name, L, (lambda v=v, L=L: runner_for(v, L)), v.level))
        for v in tower_variants:
            blocks.append((f"tower:{v.name}", L, (lambda v=v, L=L: runner_for(v, L, tower=True)), v.level))
    results: dict[tuple[str, int], BlockResult] = {(name, L): BlockResult() for name, L, _, _ in blocks}
    for v in variants:
        for L in histories:
            if args.skip_naive_above and not v.dedup and L > args.skip_naive_above:
                results[(v.name, L)] = BlockResult(skipped=f"not run: no-dedup above L={args.skip_naive_above}")
    cursor: dict[tuple[str, int], int] = {}

    def next_batch(name: str, L: int, level: str) -> Batch:
        i = cursor.get((name, L), 0)
        cursor[(name, L)] = i + 1
        return batches[(L, level)][i]

    # Warm-up (the first step of each block is the FLOP-counted one).
    for name, L, factory, level in blocks:
        runner = factory()
        for i in range(args.warmup):
            batch = next_batch(name, L, level)
            if i == 0 and args.count_flops:
                results[(name, L)].flops = runner.count(batch)
            else:
                runner.step(batch)
        _sync(env.device)
        log(f"warm {name} L={L}")

    matmuls = {f"matmul {m}x{k}x{n}": matmul_runner((m, k, n), env.device) for m, k, n in args.matmul}
    matmul_seconds: dict[str, list[float]] = {k: [] for k in matmuls}
    matmul_cpu: dict[str, list[float]] = {k: [] for k in matmuls}
    for fn in matmuls.values():
        fn()
    matmul_flops = {k: fn() for k, fn in matmuls.items()}
    for r in range(args.rounds):
        gc.collect()
        order = blocks[r % len(blocks):] + blocks[: r % len(blocks)]  # rotate: no block always first
        for name, L, factory, level in order:
            runner = factory()
            result = results[(name, L)]
            extras: dict[str, float] = {}
            probe.reset()
            _barrier(env)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                batch = next_batch(name, L, level)
                runner.step(batch)
                for k, x in runner.after_step(batch).items():
                    extras[k] = extras.get(k, 0.0) + x
            _sync(env.device)
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
            _sync(env.device)
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
        "blocks": [
            {"name": name, "L": L, **asdict(res)} for (name, L), res in results.items()
        ],
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


def profile_variants(args: argparse.Namespace, argv: list[str] | None = None) -> Path:
    """``--profile``: torch.profiler over ``--steps`` steps of each variant (1 process, after warm-up);
    the top operators by self CPU time and each model component's forward time, as Markdown."""
    from torch.profiler import ProfilerActivity, profile, record_function

    env = init_distributed(args.device)
    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = _config(args, None)
    meta = DatasetMeta.load(base.data.path)
    from em3rec.data.item_store import ItemStore

    store = ItemStore(base.data.path, base.data.modalities, meta) if meta.modalities else None
    L = min(args.history[0], meta.max_history)
    lines = [
        f"# Profile: {args.name}, L={L}, batch {args.batch_size}, {torch.get_num_threads()} thread(s)",
        "",
        f"Command: `python {os.path.relpath(__file__, ROOT)} "
        f"{' '.join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))}`",
        "",
        f"Machine: {machine()['nproc']} CPUs ({machine()['cpu']}), load average {machine()['load']}; "
        f"torch {torch.__version__}; commit {machine()['commit']}. {args.warmup} warm-up step(s), then "
        f"{args.steps} profiled step(s) per variant on real loader batches.",
        "",
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    for name in args.variants:
        v = VARIANTS[name]
        batches = load_batches(base, L, v.level, args.warmup + args.steps, env, store)
        runner = build_runner(v, _config(args, v), meta, env)
        for b in batches[: args.warmup]:
            runner.step(b)
        hooks = []
        if not v.reference:
            model = runner.model
            for part in ("id_arch", "content_tower", "content_interest", "backbone", "cic"):
                module = getattr(model, part, None)
                if module is None:
                    continue
                ranges: list = []
                hooks.append(module.register_forward_pre_hook(
                    lambda m, a, part=part, ranges=ranges: ranges.append(record_function(f"## forward {part}").__enter__())
                ))
                hooks.append(module.register_forward_hook(
                    lambda m, a, o, ranges=ranges: ranges.pop().__exit__(None, None, None)
                ))
        with profile(activities=activities, record_shapes=True) as prof:
            for b in batches[args.warmup :]:
                with record_function("## step"):
                    runner.step(b)
            _sync(env.device)
        for h in hooks:
            h.remove()
        events = prof.key_averages()
        step_ms = sum(e.cpu_time_total for e in events if e.key == "## step") / 1e3 / args.steps
        parts = sorted((e for e in events if e.key.startswith("## forward")), key=lambda e: -e.cpu_time_total)
        lines += [f"## {name}", "", f"Step: {step_ms:,.0f} ms CPU per step (profiled). Forward of each component, ms per step:", ""]
        lines += ["| component (forward only) | ms/step | share of step |", "|---|---:|---:|"]
        for e in parts:
            ms = e.cpu_time_total / 1e3 / args.steps
            lines.append(f"| {e.key[11:]} | {ms:,.1f} | {100 * ms / step_ms:.0f}% |")
        lines += ["", "Top operators by self CPU time (forward and backward):", "", "```"]
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows, max_name_column_width=60))
        lines += ["```", "", "Top operators by self CPU time, by input shape:", "", "```"]
        lines.append(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=args.profile_rows, max_name_column_width=40, max_shapes_column_width=70
        ))
        lines += ["```", ""]
        del runner, batches
    dist.destroy_process_group()
    out = Path(args.out) / f"throughput_profile_{args.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}", file=sys.stderr)
    return out


_HOOK: dict[str, Any] = {}


def training_step(batch: Batch) -> None:
    """One real training step on ``batch``: the model-step hook of the loader benchmark.

    ``python benchmarks/loader_throughput.py --data data/ml100k --content tokens --step
    throughput:training_step`` then reports how long the loader keeps a real step waiting. The
    model is built on first use from ``$EM3REC_BENCH_CONFIG`` (default ``din_em3``) with the
    ``;``-separated overrides in ``$EM3REC_BENCH_SET`` (set ``data.path`` to the loader's
    ``--data``), in a 1-process group unless one is initialised.
    """
    if "step" not in _HOOK:
        _quiet()
        overrides = [x for x in os.environ.get("EM3REC_BENCH_SET", "").split(";") if x]
        config = load_config(os.environ.get("EM3REC_BENCH_CONFIG", "din_em3"), overrides)
        env = init_distributed(config.train.device)
        meta = DatasetMeta.load(config.data.path)
        variant = Variant("hook", config.model.content, config.model.seq_content_mode, config.model.dedup)
        _HOOK["step"], _HOOK["device"] = build_runner(variant, config, meta, env).step, env.device
    _HOOK["step"](batch.to(_HOOK["device"]))


# -------------------------------------------------------------------------------- launching


def _spawned_rank(rank: int, world_size: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )  # fmt: skip
    try:
        env = init_distributed(args.device)
        result = run_world(args, env)
        dist.destroy_process_group()
        queue.put((rank, "ok", result))
    except BaseException:  # report instead of hanging the parent
        queue.put((rank, "error", traceback.format_exc()))


def run_spawned(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """Run :func:`run_world` on ``world_size`` fresh processes; rank 0's result."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_spawned_rank, args=(r, world_size, port, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    result, errors = None, []
    for _ in procs:
        rank, status, value = queue.get()
        if status == "error":
            errors.append(f"rank {rank}:\n{value}")
            break
        if rank == 0:
            result = value
    for p in procs:
        p.join(timeout=10 if errors else None)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return result


def run_in_process(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run at the launcher's world size (torchrun), or as a 1-process group."""
    env = init_distributed(args.device)
    try:
        return run_world(args, env)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    import fbgemm_gpu

    return describe_machine(
        {"torchrec": torchrec.__version__, "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?")},
        watched=["em3rec", "benchmarks/throughput.py", "benchmarks/reference_din.py"],
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


def matmul_peak(world: dict[str, Any], clock: str = "wall") -> tuple[float, dict[str, float]]:
    """Per-rank fp32 matmul GFLOP/s per shape (median over rounds, slowest rank) and their max;
    ``clock = "cpu"``: FLOPs per process-CPU second instead of per wall second."""
    key = "seconds_by_rank" if clock == "wall" else "cpu_seconds_by_rank"
    each = {}
    for k, m in world["matmul"].items():
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
    peak, each_peak = matmul_peak(world)
    cpu_peak, each_cpu_peak = matmul_peak(world, "cpu")

    def ratio(n: str, L: int, attr: str, invert: bool = False) -> str:
        s, base = summary.get((n, L)), summary.get((BASELINE, L))
        if s is None or base is None:
            return "n/a"
        x = getattr(s, attr) / getattr(base, attr)
        return f"{1 / x if invert else x:.2f}"

    lines = [
        f"## World size {ws} ({world['device']}, {world['threads']} torch thread(s) per rank)",
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
        "| variant | " + " | ".join(f"L={L} wall ms | L={L} CPU ms | L={L} wall x frozen | L={L} CPU x frozen" for L in histories) + " |",
        "|---|" + "---:|---:|---:|---:|" * len(histories),
    ]
    for n in model_names:
        cells = []
        for L in histories:
            s = summary.get((n, L))
            if s is None:
                cells += ["not run", "", "", ""]
                continue
            cells += [_fmt(1e3 * s.seconds), _fmt(1e3 * s.cpu_seconds), ratio(n, L, "seconds"), ratio(n, L, "cpu_seconds")]
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
    cached = [(n, L) for n in model_names for L in histories if by.get((n, L)) and by[(n, L)]["extra"].get("history_items")]
    if cached:
        lines += ["", "`cached` bank: share of the distinct history items recomputed per timed step: " + "; ".join(
            f"{n} L={L}: {100 * by[(n, L)]['extra']['refreshed'] / by[(n, L)]['extra']['history_items']:.0f}%"
            for n, L in cached
        ) + f" (an entry is recomputed when older than {_config(args, None).model.cache_refresh_steps} steps)."]
    towers = [n for n in names if n.startswith("tower:")]
    lines += [
        "",
        "### Content tower alone (forward + backward) vs the fp32 matmul peak, per rank",
        "",
        "Matmul GFLOP/s measured in the same rounds (per wall s / per CPU s): "
        + ", ".join(f"{k}: {v:.1f} / {each_cpu_peak[k]:.1f}" for k, v in each_peak.items())
        + f"; peak = {peak:.1f} / {cpu_peak:.1f}.",
        "",
    ]
    if towers:
        lines += [
            "| tower | L | MFLOP/sample | wall ms/step | GFLOP/s (wall) | % of peak (wall) | CPU ms/step | "
            "GFLOP per CPU s | % of peak (CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for n in towers:
        for L in histories:
            b, s = by.get((n, L)), summary.get((n, L))
            if not b or s is None or not b["flops"]:
                continue
            flops = b["flops"]["tower_flops"] * args.batch_size
            wall, cpu = flops / s.seconds / 1e9, flops / s.cpu_seconds / 1e9
            lines.append(
                f"| {n[6:]} | {L} | {b['flops']['tower_flops'] / 1e6:.2f} | {1e3 * s.seconds:,.0f} | {wall:.1f} | "
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
                    if s and ref else ["n/a", "n/a"]
                )
            lines.append(f"| {L} | " + " | ".join(cells) + " |")
    lines += [""] + _targets(args, world, summary, by, peak, cpu_peak) + [""]
    return lines


def _targets(
    args: argparse.Namespace, world: dict[str, Any], summary: dict, by: dict, peak: float, cpu_peak: float
) -> list[str]:
    """The issue's targets that this run's cells can check (verdict on wall clock; CPU alongside)."""
    ws = world["world_size"]
    rows = []

    def get(name: str, L: int) -> Summary | None:
        return summary.get((name, L))

    def verdict(ok: bool) -> str:
        return "holds" if ok else "does not hold"

    em3, base = get("em3-lora", 50), get(BASELINE, 50)
    if em3 and base:
        r, c = em3.seconds / base.seconds, em3.cpu_seconds / base.cpu_seconds
        rows.append(f"| 1. EM3 (lora) step time <= 1.3x frozen at L=50 | {r:.2f}x | {c:.2f}x | {verdict(r <= 1.3)} |")
    naive = get("em3-full-nodedup", 200)
    fast = [x for x in (get("em3-lora", 200), get("em3-cached", 200)) if x]
    if naive and fast:
        r = max(x.samples_per_s for x in fast) / naive.samples_per_s
        c = naive.cpu_seconds / min(x.cpu_seconds for x in fast)
        rows.append(f"| 2. dedup + lora/cached >= 5x naive samples/s at L=200 | {r:.1f}x | {c:.1f}x | {verdict(r >= 5)} |")
    c50, c1000 = get("em3-cached", 50), get("em3-cached", 1000)
    if c50 and c1000:
        r, c = c1000.seconds / c50.seconds, c1000.cpu_seconds / c50.cpu_seconds
        rows.append(f"| 3. cached time(L=1000) / time(L=50) <= 4 | {r:.1f} | {c:.1f} | {verdict(r <= 4)} |")
    tower, b = get("tower:em3-lora", 50), by.get(("tower:em3-lora", 50))
    if tower and b and b["flops"]:
        flops = b["flops"]["tower_flops"] * args.batch_size / 1e9
        share, cpu_share = flops / tower.seconds / peak, flops / tower.cpu_seconds / cpu_peak
        rows.append(
            f"| 4. content tower (lora, L=50) >= 25% of the matmul peak | {100 * share:.0f}% | {100 * cpu_share:.0f}% | "
            f"{verdict(share >= 0.25)} |"
        )
    for name in TORCHREC_IDS:
        for ref in ("ref-sparse", "ref-dense"):
            for L in world["histories"]:
                i, r = get(name, L), get(ref, L)
                if i and r:
                    x, c = i.samples_per_s / r.samples_per_s, r.cpu_seconds / i.cpu_seconds
                    need = "> 1" if ws > 1 else ">= 1"
                    rows.append(
                        f"| 5. TorchRec {name} vs {ref} ({ws} rank(s), L={L}): {need} | {x:.2f}x | {c:.2f}x | "
                        f"{verdict(x > 1 if ws > 1 else x >= 1)} |"
                    )
    if not rows:
        return []
    return [
        "### Targets (issue 6) this run can check",
        "",
        "| target | measured (wall) | measured (CPU) | verdict (wall) |",
        "|---|---:|---:|---|",
        *rows,
    ]


def _legend() -> list[str]:
    return [
        "## Variants",
        "",
        "- `id`: ID features only (`din_id`); `frozen`: ID + frozen content (`din_frozen`, the baseline).",
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


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/ml100k", help="prepared dataset folder")
    p.add_argument("--config", default="din_em3", help="base config (the variants override content/history/dedup)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every variant")
    p.add_argument("--batch-size", type=int, default=512, help="rows per rank")
    p.add_argument("--history", default="10,50", help="comma-separated history lengths L (capped at the dataset's)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}; or 'all'")
    p.add_argument("--tower-variants", default=DEFAULT_TOWER_VARIANTS, help="content towers timed alone ('' = none)")
    p.add_argument("--ranks", default="1", help="comma-separated world sizes (ignored under torchrun)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per block per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per block (>= 1: the first counts FLOPs)")
    p.add_argument("--skip-naive-above", type=int, default=0, help="skip no-dedup variants for L above this (0 = never)")
    p.add_argument("--no-flops", dest="count_flops", action="store_false", help="skip the FLOP counts")
    p.add_argument("--matmul", default="2048x2048x2048,32768x384x64", help="fp32 matmul shapes MxKxN for the peak")
    p.add_argument("--matmul-reps", type=int, default=3)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: torch's default, or "
                   "cpus / world size with several ranks, as torchrun)")
    p.add_argument("--name", default="", help="results name (default: the dataset folder's name)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--profile", action="store_true", help="profile --variants at the first --history instead "
                   "(torch.profiler; writes throughput_profile_<name>.md)")
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    _quiet()
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
    command = "python " + " ".join(
        shlex.quote(x) for x in [os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]
    )
    if under_launcher:
        command = f"torchrun --nproc-per-node {worlds[0]['world_size']} {command[len('python '):]}"
    write_results(args, worlds, command)
    return worlds


def write_results(args: argparse.Namespace, worlds: list[dict[str, Any]], command: str) -> Path:
    meta = DatasetMeta.load(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"throughput_{args.name}"
    text = markdown(args, worlds, command, meta)
    stem.with_suffix(".md").write_text(text)
    payload = {"command": command, "args": {k: v for k, v in vars(args).items()}, "machine": machine(), "worlds": worlds}
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
                {k: sorted(v) for k, v in series.items()}, png,
                title=f"{args.name}: samples/s vs history length, {world['world_size']} rank(s), batch {args.batch_size}/rank",
            )
    print(text)
    print(f"wrote {stem}.md", file=sys.stderr)
    return stem.with_suffix(".md")


if __name__ == "__main__":
    main()
