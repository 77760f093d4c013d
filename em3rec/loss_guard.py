"""What a NaN or inf loss does: stop every rank naming the step and the batch's ids, or skip the
batch on every rank (``train.nan_policy``), decided the same way on all ranks.

:class:`NonFiniteLossGuard` is the policy, :class:`TrackedBatches` keeps the ids of the batches a
pipelined step has read ahead, so the guard can name the batch whose loss it sees. Under ``stop``
the guard reads the losses in batches (:meth:`NonFiniteLossGuard.defer` / ``flush``): training
does not wait for the device, nor all-reduce, every step.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, NoReturn

import torch
import torch.distributed as dist

from em3rec.config import NanPolicy
from em3rec.data.batch import Batch

log = logging.getLogger("em3rec.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the batch's ids (training) or
    the split (evaluation, where NaN scores would make AUC meaningless)."""


@dataclass(frozen=True)
class BatchIds:
    """The ids of one training batch, kept to name it if its loss is not finite."""

    user_ids: torch.Tensor  # (B,)
    item_ids: torch.Tensor  # (B,) target items
    content_item_ids: torch.Tensor  # (U,) distinct target and history items

    @staticmethod
    def of(batch: Batch) -> "BatchIds":
        return BatchIds(batch.user_ids, batch.item_ids, batch.content_item_ids)

    def describe(self) -> str:
        return (
            f"user_ids={self.user_ids.tolist()} item_ids={self.item_ids.tolist()} "
            f"target+history item ids={self.content_item_ids.tolist()}"
        )


class TrackedBatches:
    """An iterator over batches that remembers the ids of those handed out but not yet trained.

    ``TrainPipelineSparseDist`` reads up to two batches ahead and trains them in order, so the
    batch whose loss ``progress()`` returns is the oldest one handed out (:meth:`trained`).
    """

    def __init__(self, batches: Iterator[Batch]) -> None:
        self._batches = batches
        self._pending: deque[BatchIds] = deque()

    def __iter__(self) -> "TrackedBatches":
        return self

    def __next__(self) -> Batch:
        batch = next(self._batches)
        self._pending.append(BatchIds.of(batch))
        return batch

    def trained(self) -> BatchIds:
        """The ids of the batch just trained (the oldest pending one)."""
        return self._pending.popleft()


class NonFiniteLossGuard:
    """Checks the training loss on every rank at once and applies ``train.nan_policy``: ``skip``
    each step before backward (:meth:`check`); ``stop`` every few steps (:meth:`defer`, then
    :meth:`flush` at a log line, a checkpoint or the epoch's end), naming the first bad step.

    Args:
        policy: ``"stop"``: raise :class:`NonFiniteLossError` on every rank; ``"skip"``: the caller
            drops the batch (before backward) on every rank.
        skip_limit: with ``"skip"``, raise after this many skipped batches in a row (0 = no limit).
        rank, world_size, device: this process's place in the group (one all-reduce of a flag per
            rank and checked step makes every rank reach the same decision).

    Example::

        guard = NonFiniteLossGuard("skip", skip_limit=20)
        if not guard.check(float(loss), BatchIds.of(batch), "step 7 (epoch 0, batch 7)", skipped_so_far=0):
            ...  # skip this batch: no backward, no optimiser step

        guard = NonFiniteLossGuard("stop")
        guard.defer(loss, BatchIds.of(batch), "step 7 (epoch 0, batch 7)")  # the loss stays on the device
        guard.flush()  # every deferred loss read at once: raises at the first non-finite one
    """

    def __init__(
        self,
        policy: NanPolicy,
        skip_limit: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self._policy = policy
        self._skip_limit = skip_limit
        self._rank = rank
        self._world_size = world_size
        self._device = device if device is not None else torch.device("cpu")
        self._skipped_in_a_row = 0
        self._deferred: list[tuple[torch.Tensor, BatchIds, str]] = []

    def nonfinite_ranks(self, value: float) -> list[int]:
        """The ranks whose loss this step is NaN or inf; every rank gets the same list."""
        flags = torch.zeros(self._world_size, device=self._device)
        flags[self._rank] = 0.0 if math.isfinite(value) else 1.0
        if self._world_size > 1:
            dist.all_reduce(flags)  # one float per rank: all ranks stop or skip together
        return [r for r, bad in enumerate(flags.tolist()) if bad]

    def check(self, value: float, ids: BatchIds, position: str, skipped_so_far: int = 0) -> bool:
        """True if every rank's loss is finite. Otherwise raise :class:`NonFiniteLossError` on every
        rank (``stop``, or ``skip`` past the limit), or return False: skip this batch (``skip``).

        ``position`` names the step (``"step 7 (epoch 0, batch 7)"``); ``skipped_so_far`` is the
        run's count of skipped batches before this one (for the log line).
        """
        bad = self.nonfinite_ranks(value)
        if not bad:
            self._skipped_in_a_row = 0
            return True
        where, batch = self._describe(bad, value, ids, position)
        if self._policy == "skip":
            self._skipped_in_a_row += 1
            if self._rank in bad or self._rank == 0:
                log.warning(
                    "non-finite loss at %s: batch skipped (train.nan_policy = 'skip'; %d skipped so far); %s",
                    where,
                    skipped_so_far + 1,
                    batch,
                )
            if self._skip_limit and self._skipped_in_a_row >= self._skip_limit:
                raise NonFiniteLossError(
                    f"{self._skipped_in_a_row} batches in a row had a non-finite loss (train.nan_skip_limit = "
                    f"{self._skip_limit}); the model has probably diverged. Last at {where}: {batch}"
                )
            return False
        self._stop(where, batch)

    def defer(self, loss: torch.Tensor, ids: BatchIds, position: str) -> None:
        """``stop``: keep this step's loss, a device scalar not read now, for the next :meth:`flush`."""
        self._deferred.append((loss.detach(), ids, position))

    def flush(self) -> None:
        """``stop``: check the deferred losses at once, one read from the device and one all-reduce of
        ``(ranks, steps)`` flags, and raise :class:`NonFiniteLossError` on every rank at the first
        step where a rank's loss was not finite, naming it as :meth:`check` does. Every rank calls it
        after the same steps (before a checkpoint, so none holds the weights of a non-finite step)."""
        deferred, self._deferred = self._deferred, []
        if not deferred:
            return
        losses = torch.stack([loss for loss, _, _ in deferred]).float()  # (S,)
        flags = torch.zeros(self._world_size, len(deferred), device=self._device)  # (ranks, S)
        flags[self._rank] = (~torch.isfinite(losses)).float().to(self._device)
        if self._world_size > 1:
            dist.all_reduce(flags)
        flags_by_step = flags.t().tolist()  # (S, ranks)
        first = next((i for i, row in enumerate(flags_by_step) if any(row)), None)
        if first is None:
            return
        bad = [r for r, flag in enumerate(flags_by_step[first]) if flag]
        _, ids, position = deferred[first]
        self._stop(*self._describe(bad, float(losses[first]), ids, position))

    def _describe(self, bad: list[int], value: float, ids: BatchIds, position: str) -> tuple[str, str]:
        """(where: the step and the ranks, batch: this rank's loss and the batch's ids)."""
        where = f"{position} on rank(s) {bad}"
        if self._rank in bad:
            return where, f"loss {value} on rank {self._rank}, batch {ids.describe()}"
        return where, f"this rank's loss was finite ({value:.6g}); the batch ids are in rank {bad[0]}'s log"

    def _stop(self, where: str, batch: str) -> NoReturn:
        message = f"non-finite loss at {where}: {batch}"
        log.error("%s", message)
        raise NonFiniteLossError(message)


def check_predictions(metrics: dict[str, Any], split: str, epoch: int) -> None:
    """A non-finite logloss means some score is NaN/inf: refuse to report AUCs computed over it."""
    if not math.isfinite(metrics["logloss"]):
        raise NonFiniteLossError(
            f"non-finite predictions on {split} after epoch {epoch} (logloss {metrics['logloss']}): an item's "
            f"content tokens or a weight is NaN/inf; the metrics would be meaningless"
        )
