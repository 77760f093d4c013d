"""Run a function on several ranks in spawned processes: the multi-process tests and the throughput
benchmark's world sizes share this one spawner.

The ranks rendezvous through a ``FileStore`` in a fresh temporary folder, not a TCP port: picking a
free port and binding it again later races with other processes (EADDRINUSE), which is why
``em3rec.distributed`` no longer does it either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp


class RankFailed(AssertionError):
    """A rank raised; the message holds its rank and traceback."""


def _worker(
    rank: int, world_size: int, store_file: str, backend: str, fn: Callable[..., Any], args: tuple, queue: Any
) -> None:
    # What torchrun would set: em3rec reads these (the planner's topology, the CUDA device).
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size)
    )
    try:
        store = dist.FileStore(store_file, world_size)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
        queue.put((rank, "ok", fn(rank, world_size, *args)))
    except BaseException:  # report to the parent instead of hanging it
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any], *args: Any, world_size: int = 2, backend: str = "gloo", timeout_s: float | None = 300
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks of a ``backend`` process group
    (initialised before ``fn`` runs); return the results by rank.

    ``fn`` and ``args`` must be picklable (``fn`` at module level). A failure on any rank raises
    :class:`RankFailed` with its traceback, and the other ranks are stopped.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    folder = Path(tempfile.mkdtemp(prefix="em3rec-ranks-"))
    store_file = str(folder / "store")
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, store_file, backend, fn, args, queue))
        for r in range(world_size)
    ]
    try:
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        errors = []
        for _ in procs:
            rank, status, value = queue.get()
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
                break
            results[rank] = value
        for p in procs:
            p.join(timeout=5 if errors else timeout_s)
            if p.is_alive():
                p.kill()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if errors:
        raise RankFailed("\n".join(errors))
    return [results[r] for r in range(world_size)]
