"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded model + optimiser + progress.

Layout of ``<run>/checkpoints/``::

    step_00001200/          # one checkpoint: DCP shards + .metadata, rng_rank<r>.pt,
                            #   checksums.json (size + CRC-32 of each of those), progress.json (last)
    best -> step_00000800   # a text file naming the best-on-valid checkpoint
    latest                  # a text file naming the newest complete checkpoint

A checkpoint is written to a hidden temporary folder (``.step_X.tmp``) and renamed when every rank
has finished, so a crash mid-write leaves the previous checkpoint intact; what such a crash leaves
behind is removed by :meth:`CheckpointManager.remove_partial`. Before loading, a checkpoint is
verified: complete, no file shorter than the DCP metadata says, every file matching its checksum
(the CRC work split across ranks, all ranks reaching the same verdict); a corrupt one raises
:class:`CheckpointError`, and :meth:`CheckpointManager.load_latest` falls back to the previous one.
Loading reshards: a checkpoint written by 2 ranks loads into 1 (DCP maps shards by global offsets).
The RNG state is saved as tensors and read with ``torch.load(weights_only=True)``: nothing here
unpickles.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

log = logging.getLogger(__name__)

# DCP reports a failure on any rank as CheckpointException on every rank; it derives from
# BaseException, so `except Exception` alone would let it through.
_FAILURES = (Exception, CheckpointException)

PROGRESS_FILE = "progress.json"
CHECKSUM_FILE = "checksums.json"
_PARTIAL = re.compile(r"\.(step_\d+)\.(tmp|old)")  # hidden folders a save in progress uses


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or corrupt; the message names it."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _no_dist() -> bool:
    """Whether DCP saves and loads without collectives: in a one-process group, where they have
    nothing to exchange. (They were also where a second OpenMP team was first found: their plan
    gathers ran in gloo's worker thread, and ml-100k's din_em3 steps took 76 -> 117 ms after the
    first checkpoint; ``em3rec.openmp.keep_one_openmp_team`` now keeps such threads serial in any
    group. benchmarks/results/README.md, *Cost*.)"""
    return _world_size() == 1


# What DCP warns at every save and load with ``no_dist``, which :func:`_no_dist` asks for on purpose.
_NO_DIST_WARNING = r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming the intent is to"


@contextlib.contextmanager
def _dcp_no_dist_quiet() -> Iterator[None]:
    """DCP's warning that it runs without collectives, silenced: :func:`_no_dist` chose that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_DIST_WARNING, category=UserWarning)
        yield


def _all_gather(obj: Any) -> list[Any]:
    """``obj`` from every rank (rank order); ``[obj]`` without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _reason(error: BaseException) -> str:
    """``Type: message`` of the root cause (a DCP CheckpointException wraps each rank's error)."""
    if isinstance(error, CheckpointException):
        causes = [e[0] if isinstance(e, tuple) else e for e in error.failures.values()]
        if causes and isinstance(causes[0], BaseException):
            return f"{type(causes[0]).__name__}: {causes[0]} (on rank(s) {sorted(error.failures)})"
    return f"{type(error).__name__}: {error}"


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors only, so that loading needs no pickle
    (``torch.load(weights_only=True)``): ``torch`` (the CPU generator) and ``cuda`` (one row per
    visible device)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _restore_rng(file: Path) -> None:
    rng = torch.load(file, weights_only=True)  # tensors only: a checkpoint from elsewhere runs no code
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


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
        """Write checkpoint ``name`` collectively (all ranks call this).

        A failed write (a full disk, an I/O error) raises :class:`CheckpointError` on every rank
        that saw it, removes the temporary folder and leaves the previous checkpoints as they were.
        """
        final = self._folder / name
        tmp = self._folder / f".{name}.tmp"
        if _rank() == 0:
            self._folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        try:
            state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
            with _dcp_no_dist_quiet():
                dcp.save(state, checkpoint_id=str(tmp), no_dist=_no_dist())
            torch.save(_rng_state(), tmp / f"rng_rank{_rank()}.pt")
            _barrier()
            # Each rank checksums a share of the files (all are written now); rank 0 records them all.
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            mine = {f: [(tmp / f).stat().st_size, _crc32(tmp / f)] for f in files[_rank() :: _world_size()]}
            checksums = {k: v for part in _all_gather(mine) for k, v in part.items()}
            if _rank() == 0:
                (tmp / CHECKSUM_FILE).write_text(json.dumps(checksums, indent=1, sort_keys=True))
                # progress.json is written last: a folder without it is incomplete.
                (tmp / PROGRESS_FILE).write_text(json.dumps({**progress, "world_size": _world_size()}, indent=2))
        except _FAILURES as e:  # reported as a checkpoint error naming what is intact
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = next(iter(self.candidates()), None)
            intact = (
                f"earlier checkpoints are untouched (newest: {previous.name})"
                if previous
                else "there is no earlier checkpoint"
            )
            raise CheckpointError(f"{final}: save failed ({_reason(e)}); {intact}") from e
        if _rank() == 0:
            self._install(tmp, final)
            self._write_pointer("latest", name)
            if best:
                self._write_pointer("best", name)
            self._prune()
        _barrier()
        return final

    def _install(self, tmp: Path, final: Path) -> None:
        """Rename the finished ``tmp`` to ``final``; a same-named older one is moved aside first
        (``.old``) so that a crash at any point leaves one complete copy to recover."""
        old = tmp.with_name(f".{final.name}.old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)  # atomic: the checkpoint exists complete or not at all
        shutil.rmtree(old, ignore_errors=True)

    def remove_partial(self) -> list[str]:
        """Clean up after a save that was interrupted (rank 0, before anything reads the folder).

        A ``.step_X.tmp`` folder is a save that never finished: removed. A ``.step_X.old`` folder
        whose ``step_X`` is missing is a complete checkpoint caught mid-replace: put back. Returns
        what was done, one line each (also logged).
        """
        done: list[str] = []
        if not self._folder.is_dir():
            return done
        for path in sorted(self._folder.iterdir()):
            match = _PARTIAL.fullmatch(path.name)
            if match and path.is_dir():
                final = self._folder / match.group(1)
                if match.group(2) == "old" and not final.exists():
                    os.replace(path, final)
                    done.append(f"restored {final.name} from {path.name} (interrupted while being replaced)")
                else:
                    shutil.rmtree(path, ignore_errors=True)
                    done.append(f"removed {path.name} (a checkpoint save that did not finish)")
            elif path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file():
                path.unlink()  # a pointer file caught mid-write; the pointer itself is intact
                done.append(f"removed {path.name}")
        for line in done:
            log.warning("%s: %s", self._folder, line)
        return done

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

    def load_latest(
        self, model: nn.Module, optimizer: Any | None = None, restore_rng: bool = True
    ) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest checkpoint that verifies and loads, falling back to older ones; return
        its folder and progress record.

        Collective (every rank calls it and loads the same checkpoint). Returns None (a fresh
        start) only if there is no checkpoint at all; if there are checkpoints but every one is
        refused, raises :class:`CheckpointError` rather than silently start over.
        """
        candidates = self.candidates()
        for i, path in enumerate(candidates):
            try:
                progress = load_checkpoint(path, model, optimizer, restore_rng=restore_rng)
            except CheckpointError as e:
                after = (
                    f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "no older checkpoint"
                )
                log.warning("checkpoint refused: %s; %s", e, after)
                continue
            if i and _rank() == 0:
                log.warning(
                    "resumed from %s, an older checkpoint: the newer one(s) %s were refused",
                    path.name,
                    [p.name for p in candidates[:i]],
                )
            return path, progress
        if candidates:
            raise CheckpointError(
                f"{self._folder}: every checkpoint was refused ({[p.name for p in candidates]}; reasons "
                "above); not starting from scratch over them: move them away to start a fresh run"
            )
        return None


def _read_checksums(path: Path) -> dict[str, list[int]]:
    """``{file: [bytes, crc32]}``; empty for a checkpoint written before checksums were recorded."""
    file = path / CHECKSUM_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # garbled bytes are not even text
        raise CheckpointError(f"{file}: corrupt ({e})") from e


def _check_crc(path: Path, checksums: dict[str, list[int]], files: list[str]) -> None:
    for name in files:
        size, crc = checksums[name]
        actual = _crc32(path / name)
        if actual != crc:
            raise CheckpointError(
                f"{path}: file {name} is corrupt (CRC-32 {actual:08x}, recorded {crc:08x} when it was written)"
            )


def validate_checkpoint(path: str | Path, verify_data: bool = True) -> dict[str, Any]:
    """Check a checkpoint folder is complete and intact; return its progress record.

    Always: ``progress.json`` and readable DCP metadata, every file the metadata names present and
    long enough, every file in ``checksums.json`` present with its recorded size. With
    ``verify_data``: every file's CRC-32 too (reads the whole checkpoint).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    progress_file = path / PROGRESS_FILE
    if not progress_file.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint ({PROGRESS_FILE} missing)")
    try:
        progress = json.loads(progress_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # garbled bytes are not even text
        raise CheckpointError(f"{progress_file}: corrupt ({e})") from e
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001 - any read failure means the metadata is unusable
        raise CheckpointError(f"{path}: unreadable DCP metadata ({type(e).__name__}: {e})") from e
    needed: dict[str, int] = {}
    for item in metadata.storage_data.values():
        needed[item.relative_path] = max(needed.get(item.relative_path, 0), item.offset + item.length)
    for file, length in sorted(needed.items()):
        if not (path / file).is_file():
            raise CheckpointError(f"{path}: shard file {file} missing")
        size = (path / file).stat().st_size
        if size < length:
            raise CheckpointError(f"{path}: shard file {file} is truncated ({size} bytes; the metadata needs {length})")
    checksums = _read_checksums(path)
    for file, (size, _) in sorted(checksums.items()):
        if not (path / file).is_file():
            raise CheckpointError(f"{path}: file {file} missing (listed in {CHECKSUM_FILE})")
        actual = (path / file).stat().st_size
        if actual != size:
            raise CheckpointError(f"{path}: file {file} has {actual} bytes; {CHECKSUM_FILE} records {size}")
    if verify_data:
        _check_crc(path, checksums, sorted(checksums))
    return progress


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`validate_checkpoint` for all ranks at once (collective under a process group).

    Every rank checks the structure; the CRC reads are split across ranks; every rank raises the
    same :class:`CheckpointError` if any rank found a problem, so all ranks agree on which
    checkpoint they load.
    """
    path = Path(path)
    progress: dict[str, Any] = {}
    error = None
    try:
        progress = validate_checkpoint(path, verify_data=False)
        checksums = _read_checksums(path)
        _check_crc(path, checksums, sorted(checksums)[_rank() :: _world_size()])
    except CheckpointError as e:
        error = str(e)
    first = next((e for e in _all_gather(error) if e is not None), None)
    if first is not None:
        raise CheckpointError(first)
    return progress


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: Any | None = None, restore_rng: bool = True
) -> dict[str, Any]:
    """Load model (and optimiser) state in place, resharding as needed; return the progress record.

    Pass ``optimizer=None`` to load weights only (evaluation, or a different world size).
    Collective: every rank calls it; the checkpoint is verified first (:func:`verify_checkpoint`),
    and a refused or failed load raises :class:`CheckpointError` on every rank.
    """
    path = Path(path)
    progress = verify_checkpoint(path)
    if optimizer is not None and hasattr(optimizer, "init_state"):
        # Optimiser state is created lazily by the first step; DCP loads in place, so a fresh
        # optimiser needs its state tensors first (a zero-grad step; the weights it touches are
        # overwritten by the model load below).
        optimizer.init_state()
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    try:
        with _dcp_no_dist_quiet():
            dcp.load(state, checkpoint_id=str(path), no_dist=_no_dist())
    except _FAILURES as e:  # surface as a checkpoint error naming the folder
        raise CheckpointError(f"{path}: failed to load ({_reason(e)})") from e
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    rng_file = path / f"rng_rank{_rank()}.pt"
    if restore_rng and progress.get("world_size") == _world_size() and rng_file.is_file():
        _restore_rng(rng_file)
    return progress
