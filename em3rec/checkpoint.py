"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded model + optimiser + progress.

Layout of ``<run>/checkpoints/``::

    step_00001200/          # one checkpoint: DCP shards + .metadata, progress.json, rng_rank<r>.pt
    best -> step_00000800   # a text file naming the best-on-valid checkpoint
    latest                  # a text file naming the newest complete checkpoint

A checkpoint is written to a hidden temporary folder and renamed when every rank has finished, so a
crash mid-write leaves the previous checkpoint intact. Loading reshards: a checkpoint written by 2
ranks loads into 1 (DCP maps shards by global offsets).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or corrupt; the message names it."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class CheckpointManager:
    """Save, find, validate and load the checkpoints of one run.

    Args:
        folder: ``<run>/checkpoints``.
        keep: how many recent checkpoints to keep (the best one is always kept).
    """

    def __init__(self, folder: str | Path, keep: int = 2) -> None:
        self._folder = Path(folder)
        self._keep = keep

    @property
    def folder(self) -> Path:
        return self._folder

    def save(self, name: str, model: nn.Module, optimizer: Any, progress: dict[str, Any], best: bool = False) -> Path:
        """Write checkpoint ``name`` collectively (all ranks call this)."""
        final = self._folder / name
        tmp = self._folder / f".{name}.tmp"
        if _rank() == 0:
            self._folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(tmp))
        torch.save(_rng_state(), tmp / f"rng_rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            (tmp / PROGRESS_FILE).write_text(json.dumps({**progress, "world_size": _world_size()}, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # atomic: the checkpoint exists complete or not at all
            self._write_pointer("latest", name)
            if best:
                self._write_pointer("best", name)
            self._prune()
        _barrier()
        return final

    def _write_pointer(self, pointer: str, name: str) -> None:
        tmp = self._folder / f".{pointer}.tmp"
        tmp.write_text(name)
        os.replace(tmp, self._folder / pointer)

    def _read_pointer(self, pointer: str) -> Path | None:
        file = self._folder / pointer
        if not file.is_file():
            return None
        path = self._folder / file.read_text().strip()
        return path if path.is_dir() else None

    def _prune(self) -> None:
        protected = {p for p in (self._read_pointer("best"), self._read_pointer("latest")) if p}
        complete = sorted(p for p in self._folder.glob("step_*") if p.is_dir())
        for old in complete[: max(0, len(complete) - self._keep)]:
            if old not in protected:
                shutil.rmtree(old, ignore_errors=True)

    def best(self) -> Path | None:
        return self._read_pointer("best")

    def candidates(self) -> list[Path]:
        """Complete checkpoints, newest first (the ``latest`` pointer's first)."""
        found = sorted((p for p in self._folder.glob("step_*") if p.is_dir()), reverse=True)
        latest = self._read_pointer("latest")
        if latest in found:
            found.remove(latest)
            found.insert(0, latest)
        return found

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that validates; corrupt ones are logged and skipped."""
        for path in self.candidates():
            try:
                validate_checkpoint(path)
                return path
            except CheckpointError as e:
                log.warning("skipping checkpoint: %s", e)
        return None


def validate_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check a checkpoint folder is complete and readable; return its progress record."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    progress_file = path / PROGRESS_FILE
    if not progress_file.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint ({PROGRESS_FILE} missing)")
    try:
        progress = json.loads(progress_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{progress_file}: corrupt ({e})") from e
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 - any read failure means the metadata is unusable
        raise CheckpointError(f"{path}: unreadable DCP metadata ({type(e).__name__}: {e})") from e
    for file in {item.relative_path for item in metadata.storage_data.values()}:
        if not (path / file).is_file():
            raise CheckpointError(f"{path}: shard file {file} missing")
    return progress


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: Any | None = None, restore_rng: bool = True
) -> dict[str, Any]:
    """Load model (and optimiser) state in place, resharding as needed; return the progress record.

    Pass ``optimizer=None`` to load weights only (evaluation, or a different world size).
    """
    path = Path(path)
    progress = validate_checkpoint(path)
    if optimizer is not None and hasattr(optimizer, "init_state"):
        # Optimiser state is created lazily by the first step; DCP loads in place, so a fresh
        # optimiser needs its state tensors first (a zero-grad step; the weights it touches are
        # overwritten by the model load below).
        optimizer.init_state()
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # noqa: BLE001 - surface as a checkpoint error naming the folder
        raise CheckpointError(f"{path}: failed to load ({type(e).__name__}: {e})") from e
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    rng_file = path / f"rng_rank{_rank()}.pt"
    if restore_rng and progress.get("world_size") == _world_size() and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return progress
