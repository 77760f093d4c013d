"""What a person watching a run sees: log format per rank, memory, optional TensorBoard events."""

from __future__ import annotations

import importlib.util
import logging
import re
import resource
import warnings
from pathlib import Path
from typing import Any

import torch


METRIC_KEYS = ("auc", "gauc", "logloss", "cold_auc", "cold_user_auc")


def format_metrics(metrics: dict[str, Any], keys: tuple[str, ...] = METRIC_KEYS) -> str:
    """``auc=0.7312 gauc=0.6920 logloss=0.5730 cold_auc=0.6405 cold_user_auc=0.6902``: every metric
    line of a run, its summary and the evaluate command reads this way (``nan`` where a metric is
    missing). ``cold_auc``: rows whose item has no training rows; ``cold_user_auc``: whose user has none."""
    return " ".join(f"{k}={metrics.get(k, float('nan')):.4f}" for k in keys)


# What the libraries say about their own internals, which a run cannot act on: (logger name or
# warning category, the message's start). Shown with `train.library_logs = true`.
LIBRARY_NOTICES: tuple[tuple[str | type[Warning], str], ...] = (
    # DCP saving and loading TorchRec's sharded state, which TorchRec keeps as ShardedTensor.
    (FutureWarning, "Please use DTensor instead and we are deprecating ShardedTensor"),
    # TorchRec's DistributedModelParallel wraps the dense part in DDP with this argument.
    (FutureWarning, "`broadcast_buffers` is deprecated"),
    # The planner's default storage reservation, and its note for dry runs; ours plans over a
    # model whose dense part is materialised, so the heuristic's dense size is the real one.
    (FutureWarning, "HeuristicalStorageReservation is known to cause issues"),
    ("torchrec.distributed.planner.storage_reservations", "There is a known issue with TorchRec's dense tensor"),
    # TorchRec's modules call torch.fx's is_fx_tracing, which torch has since split in two.
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
)


class _RunLogFilter(logging.Filter):
    """Passes em3rec's records at the handler's level, the libraries' from WARNING up (all of them
    with ``library_logs``), and none of the :data:`LIBRARY_NOTICES` without it."""

    def __init__(self, library_logs: bool) -> None:
        super().__init__()
        self._library_logs = library_logs

    def filter(self, record: logging.LogRecord) -> bool:
        if self._library_logs or record.name == "em3rec" or record.name.startswith("em3rec."):
            return True
        return record.levelno >= logging.WARNING and not _is_notice(record.name, record.getMessage())


def _is_notice(logger_name: str, message: str) -> bool:
    return any(source == logger_name and message.startswith(start) for source, start in LIBRARY_NOTICES)


def setup_logging(rank: int, library_logs: bool = False) -> None:
    """INFO on rank 0, warnings only on the others, each line tagged with the rank.

    The libraries log their own INFO lines by the dozen per run (TorchRec's planner search, FBGEMM's
    kernel arguments, the train pipeline's end of each epoch); those, and the libraries' notices
    about their own internals (:data:`LIBRARY_NOTICES`), show only with ``library_logs``
    (``train.library_logs``); their other warnings always do.
    """
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    run_filter = _RunLogFilter(library_logs)
    logging.getLogger().handlers[0].addFilter(run_filter)
    for source, start in LIBRARY_NOTICES:
        if isinstance(source, str):  # at the logger too: torch's loggers have a handler of their own
            logger = logging.getLogger(source)
            for old in [f for f in logger.filters if isinstance(f, _RunLogFilter)]:
                logger.removeFilter(old)
            logger.addFilter(run_filter)
        else:
            warnings.filterwarnings("default" if library_logs else "ignore", message=re.escape(start), category=source)


def memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else this process's current resident set size, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LossWindow:
    """The training losses since the last log line, summed where they were computed and read once
    per line (:meth:`means`), so that a step does not wait for the device to log its loss."""

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None  # (3,): loss, bce, cic
        self.steps = 0

    def add(self, loss: torch.Tensor, aux: dict[str, torch.Tensor]) -> None:
        """One step's ``loss`` (a scalar) and its parts ``aux`` ("bce"; "cic", 0 when absent)."""
        loss = loss.detach().float()
        parts = torch.stack([loss, aux.get("bce", loss).float(), aux.get("cic", torch.zeros_like(loss)).float()])
        self._sums = parts if self._sums is None else self._sums + parts
        self.steps += 1

    def means(self) -> dict[str, float]:
        """``{"loss", "bce", "cic"}``: means over the window's steps (NaN for an empty window); resets it."""
        sums = self._sums.tolist() if self._sums is not None else [float("nan")] * 3
        means = {k: v / max(self.steps, 1) for k, v in zip(("loss", "bce", "cic"), sums)}
        self._sums, self.steps = None, 0
        return means


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
