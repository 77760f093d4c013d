"""What a person watching a run sees: log format per rank, memory, optional TensorBoard events."""

from __future__ import annotations

import importlib.util
import logging
import resource
from pathlib import Path
from typing import Any

import torch


def setup_logging(rank: int) -> None:
    """INFO on rank 0, warnings only on the others, each line tagged with the rank."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else this process's current resident set size, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricWriter:
    """TensorBoard event files under ``<run>/tb`` when ``tensorboard`` is installed; else nothing."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self._writer: Any = None
        if enabled and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self._writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
