"""Loader throughput: batches/s and rows/s of ``ImpressionLoader`` on a prepared folder.

Every scenario (ranks x content mode x prefetch x step time) runs in fresh spawned processes; with 2
ranks, 2 processes read their own shards concurrently (``torch`` threads set to 1 per rank, as
``torchrun`` does), start timing together after a barrier, and rows/s is their total over the
slower rank's time. Results are printed and written as Markdown to
``benchmarks/results/loader_<dataset>.md``.

Hook for comparing with the model: ``--step MODULE:FUNCTION`` calls ``FUNCTION(batch)`` on every
batch (e.g. a real training step); ``--model-step-ms`` burns that many ms of torch matmuls per
batch instead. Either way the table's ``wait ms/batch`` column is the time the consumer stood
waiting for data, i.e. the data stall a training step would see.

Example::

    python -m benchmarks.loader_throughput --data data/synthetic_10m --batches 400
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import multiprocessing as mp
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import torch
import torchrec

from benchmarks.machine import describe_machine
from em3rec.data.batch import Batch
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import DatasetMeta

ROOT = Path(__file__).resolve().parents[1]
# none: ID only; pooled: one vector per modality; tokens: every distinct item's tokens; targets:
# tokens of the targets and a catalogue sample, pooled vectors of all (EM3, seq_content_mode = pooled)
CONTENT_MODES = ("none", "pooled", "tokens", "targets")


@dataclass(frozen=True)
class Scenario:
    ranks: int
    content: str  # one of CONTENT_MODES
    prefetch: int
    step_ms: float


@dataclass
class RankResult:
    batches: int
    rows: int
    seconds: float
    wait_seconds: float
    open_seconds: float
    distinct_items: int
    history_positions: int
    token_items: int = 0  # distinct items whose tokens the batches carried
    peak_rss_mb: float = 0.0  # the process's peak resident set (VmHWM), memory-mapped item pages included


def _model_step(ms: float, kind: str) -> Callable[[Batch], None]:
    """A stand-in model step of ``ms`` per batch.

    ``cpu``: a fixed amount of torch matmul work that takes ``ms`` on an idle machine (a CPU
    training step; it competes with the loader for cores). ``sleep``: ``ms`` of idle waiting (an
    accelerator step, where the host mostly waits). Both release the GIL, as a real step does.
    """
    if ms <= 0:
        return lambda batch: None
    if kind == "sleep":
        return lambda batch: time.sleep(ms / 1e3)
    a = torch.randn(128, 128)
    for _ in range(50):  # warm up
        a @ a
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(100):
            a @ a
        timings.append((time.perf_counter() - start) / 100)
    reps = max(1, round(ms / 1e3 / min(timings)))

    def step(batch: Batch) -> None:
        for _ in range(reps):
            a @ a

    return step


def _peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``), MB; 0 where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _load_step(spec: str) -> Callable[[Batch], None]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _epochs(loader: ImpressionLoader, total: int) -> Iterator[Batch]:
    """``total`` batches over as many epochs as it takes (small splits), reshuffled each epoch."""
    epoch = 0
    while total > 0:
        loader.set_epoch(epoch)
        for batch in itertools.islice(loader, total):
            total -= 1
            yield batch
        epoch += 1


def _rank_main(rank: int, scenario: Scenario, args: dict[str, Any], barrier: Any, results: Any) -> None:
    try:
        if scenario.ranks > 1:
            torch.set_num_threads(1)  # what torchrun does with several ranks per machine
        step = _load_step(args["step"]) if args["step"] else _model_step(scenario.step_ms, args["step_kind"])
        modalities = [] if scenario.content == "none" else args["modalities"]
        started = time.perf_counter()
        targets = scenario.content == "targets"
        loader = ImpressionLoader(
            args["data"], args["split"], batch_size=args["batch_size"], max_history=args["max_history"],
            modalities=modalities, pooled_content=scenario.content == "pooled", rank=rank,
            world_size=scenario.ranks, prefetch=scenario.prefetch, seed=args["seed"],
            pooled_vectors=targets, history_tokens=not targets,
            catalogue_samples=args["catalogue"] if targets else None,
        )  # fmt: skip
        open_seconds = time.perf_counter() - started
        batches = _epochs(loader, args["warmup"] + args["batches"])
        for _ in range(args["warmup"]):
            step(next(batches))
        barrier.wait()
        result = RankResult(0, 0, 0.0, 0.0, open_seconds, 0, 0)
        started = time.perf_counter()
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            result.wait_seconds += time.perf_counter() - asked
            if batch is None:
                break
            step(batch)
            result.batches += 1
            result.rows += int(batch.weights.sum())
            result.distinct_items += len(batch.content_item_ids)
            result.history_positions += int(batch.history_mask.sum())
            result.token_items += next((t.shape[0] for t in batch.content_tokens.values()), 0)
        result.seconds = time.perf_counter() - started
        result.peak_rss_mb = _peak_rss_mb()
        batches.close()
        results.put((rank, asdict(result)))
    except BaseException as e:  # report instead of hanging the parent at the barrier
        barrier.abort()
        results.put((rank, repr(e)))
        raise


def run_scenario(scenario: Scenario, args: dict[str, Any]) -> list[RankResult]:
    """Run one scenario in ``scenario.ranks`` fresh spawned processes; results by rank."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(scenario.ranks), ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, scenario, args, barrier, results)) for r in range(scenario.ranks)]
    for p in procs:
        p.start()
    out: dict[int, RankResult] = {}
    for _ in procs:
        rank, value = results.get(timeout=1800)
        if isinstance(value, str):
            raise RuntimeError(f"{scenario}: rank {rank} failed: {value}")
        out[rank] = RankResult(**value)
    for p in procs:
        p.join()
    return [out[r] for r in range(scenario.ranks)]


def _rows_per_second(results: list[RankResult]) -> float:
    """All ranks' rows over the slower rank's time."""
    return sum(r.rows for r in results) / max(r.seconds for r in results)


def _machine() -> dict[str, str]:
    return describe_machine(
        {"torchrec": torchrec.__version__, "pyarrow": pa.__version__, "numpy": np.__version__},
        watched=["em3rec/data", "benchmarks/loader_throughput.py"],
    )


def _markdown(
    meta: DatasetMeta,
    args: dict[str, Any],
    rows: list[tuple[Scenario, list[RankResult], tuple[float, float]]],
    command: str,
) -> str:
    m = _machine()
    mods = ", ".join(f"{x.name} {x.tokens}x{x.width}" for x in meta.modalities if x.name in args["modalities"])
    lines = [
        f"# Loader throughput: {meta.name}",
        "",
        ("**SYNTHETIC dataset** (random ids, tokens and labels; throughput only). " if meta.synthetic else "")
        + f"Protocol `{meta.protocol}`; split `{args['split']}` ({meta.splits[args['split']].rows:,} rows); "
        f"{meta.num_items:,} item indices; dataset history up to {meta.max_history}.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}); Python {m['python']}, torch {m['torch']}, torchrec {m['torchrec']}, "
        f"pyarrow {m['pyarrow']}, numpy {m['numpy']}; commit {m['commit']}; {m['date']}; load average at the "
        f"end {m['load']} (the machine is shared: numbers carry that noise).",
        "",
        f"Per rank: batch {args['batch_size']} rows, L = {args['max_history']} history positions, "
        f"{args['warmup']} warm-up + {args['batches']} timed batches (over several epochs if the shard is "
        f"smaller); content modalities: {mods or 'none'}.",
        "",
        "| ranks | content | prefetch | step ms | batches/s per rank | rows/s total | rows/s range | wait ms/batch "
        "| open s | distinct items/batch | items with tokens/batch | history items/row | peak RSS MB/rank |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, results, (lo, hi) in rows:
        per_rank = np.mean([r.batches / r.seconds for r in results])
        total_rows = _rows_per_second(results)
        wait = 1e3 * sum(r.wait_seconds for r in results) / sum(r.batches for r in results)
        distinct = sum(r.distinct_items for r in results) / sum(r.batches for r in results)
        hist = sum(r.history_positions for r in results) / sum(r.rows for r in results)
        with_tokens = sum(r.token_items for r in results) / sum(r.batches for r in results)
        rss = max(r.peak_rss_mb for r in results)
        open_s = max(r.open_seconds for r in results)
        step = "custom" if args["step"] else f"{s.step_ms:g}" + (f" ({args['step_kind']})" if s.step_ms else "")
        lines.append(
            f"| {s.ranks} | {s.content} | {s.prefetch} | {step} | {per_rank:,.1f} | {total_rows:,.0f} | "
            f"{lo / 1e3:,.0f}k-{hi / 1e3:,.0f}k | {wait:.2f} | "
            f"{open_s:.2f} | {distinct:,.0f} | {with_tokens:,.0f} | {hist:.1f} | {rss:,.0f} |"
        )
    lines += [
        "",
        "Columns: *content* `none` = ID features only, `pooled` = one pooled vector per modality, `tokens` = "
        "all modality tokens of the batch's distinct items, `targets` = tokens of the targets and a "
        f"{args['catalogue']}-item catalogue sample, pooled vectors of every item (what EM3 with "
        "`seq_content_mode = pooled` reads); *peak RSS* = the rank process's VmHWM (memory-mapped item pages "
        "it touched included); *prefetch* = batches built ahead in a background "
        "thread (0 = in the consumer's thread); *step ms* = simulated model step per batch (`cpu`: fixed torch "
        "matmul work; `sleep`: idle wait, like a GPU step); "
        "*wait ms/batch* = time the consumer waited for each batch (the data stall a training step would see); "
        "*open s* = loader construction incl. validation; *rows/s total* = all ranks' rows over the slower "
        f"rank's time, the median of {args['repeats']} run(s) (*rows/s range*: slowest-fastest run).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-history", type=int, default=50)
    p.add_argument("--modalities", default="", help="comma-separated (default: all in meta.json)")
    p.add_argument("--content", default="none,pooled,tokens", help=f"comma-separated subset of {CONTENT_MODES}")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--prefetch", default="0,2", help="comma-separated prefetch depths")
    p.add_argument("--model-step-ms", default="0", help="comma-separated simulated step times (ms)")
    p.add_argument("--step-kind", choices=("cpu", "sleep"), default="cpu", help="simulated step: CPU work or idle wait")
    p.add_argument("--step", default="", help="MODULE:FUNCTION called on every batch instead (model-step hook)")
    p.add_argument("--batches", type=int, default=400, help="timed batches per rank")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--catalogue", type=int, default=256, help="catalogue sample per batch of the `targets` content")
    p.add_argument("--repeats", type=int, default=1, help="runs per scenario; the median (by rows/s) is reported")
    p.add_argument("--out", default="", help="Markdown file (default benchmarks/results/loader_<dataset>.md)")
    a = p.parse_args(argv)

    meta = DatasetMeta.load(a.data)
    args = dict(
        data=a.data,
        split=a.split,
        batch_size=a.batch_size,
        max_history=min(a.max_history, meta.max_history),
        modalities=[m for m in a.modalities.split(",") if m] or [m.name for m in meta.modalities],
        batches=a.batches,
        warmup=a.warmup,
        seed=a.seed,
        catalogue=a.catalogue,
        step=a.step,
        step_kind=a.step_kind,
        repeats=a.repeats,
    )
    scenarios = [
        Scenario(int(r), c, int(f), float(s))
        for r in a.ranks.split(",") for s in a.model_step_ms.split(",") for c in a.content.split(",")
        for f in a.prefetch.split(",")
    ]  # fmt: skip
    results = []
    for s in scenarios:
        if s.content not in CONTENT_MODES:
            raise SystemExit(f"--content: {s.content!r} is not one of {CONTENT_MODES}")
        if s.content != "none" and not meta.modalities:
            continue
        runs = sorted((run_scenario(s, args) for _ in range(a.repeats)), key=_rows_per_second)
        median = runs[len(runs) // 2]
        results.append((s, median, (_rows_per_second(runs[0]), _rows_per_second(runs[-1]))))
        all_runs = [round(_rows_per_second(r)) for r in runs]
        print(f"{s}: median {_rows_per_second(median):,.0f} rows/s of {all_runs}", flush=True)
    words = ["-m", "benchmarks.loader_throughput", *(argv if argv is not None else sys.argv[1:])]
    command = "python " + " ".join(shlex.quote(x) for x in words)
    text = _markdown(meta, args, results, command)
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"loader_{meta.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
