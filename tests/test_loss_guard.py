"""The non-finite-loss policy on its own (one rank; the 2-rank agreement runs in tests/reliability)."""

from __future__ import annotations

import logging

import pytest
import torch

from em3rec.loss_guard import BatchIds, NonFiniteLossError, NonFiniteLossGuard
from em3rec.run_log import LossWindow

IDS = BatchIds(torch.tensor([3, 4]), torch.tensor([7, 8]), torch.tensor([7, 8, 9]))
NAN, INF = float("nan"), float("inf")


def test_finite_losses_pass() -> None:
    guard = NonFiniteLossGuard("stop")
    assert guard.check(0.69, IDS, "step 1 (epoch 0, batch 1)")
    assert guard.nonfinite_ranks(0.5) == [] and guard.nonfinite_ranks(NAN) == [0]


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_stop_names_the_step_and_the_batch(value: float) -> None:
    guard = NonFiniteLossGuard("stop")
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 5 \(epoch 1, batch 2\) on rank\(s\) \[0\]: "
        r"loss .* on rank 0, batch user_ids=\[3, 4\] item_ids=\[7, 8\] "
        r"target\+history item ids=\[7, 8, 9\]",
    ):
        guard.check(value, IDS, "step 5 (epoch 1, batch 2)")


def test_skip_drops_the_batch_and_logs_the_count(caplog: pytest.LogCaptureFixture) -> None:
    guard = NonFiniteLossGuard("skip", skip_limit=0)
    with caplog.at_level(logging.WARNING, logger="em3rec.train"):
        assert not guard.check(NAN, IDS, "step 3 (epoch 0, batch 3)", skipped_so_far=4)
    assert "batch skipped (train.nan_policy = 'skip'; 5 skipped so far)" in caplog.text
    for _ in range(50):  # no limit
        assert not guard.check(NAN, IDS, "step 3 (epoch 0, batch 3)")


def test_skip_limit_counts_batches_in_a_row() -> None:
    guard = NonFiniteLossGuard("skip", skip_limit=3)
    assert not guard.check(NAN, IDS, "s") and not guard.check(NAN, IDS, "s")
    assert guard.check(0.7, IDS, "s")  # a finite loss resets the run of skips
    assert not guard.check(NAN, IDS, "s") and not guard.check(INF, IDS, "s")
    with pytest.raises(
        NonFiniteLossError, match=r"3 batches in a row had a non-finite loss \(train.nan_skip_limit = 3\)"
    ):
        guard.check(NAN, IDS, "s")


def test_deferred_losses_pass_until_one_is_not_finite() -> None:
    guard = NonFiniteLossGuard("stop")
    for step in range(3):
        guard.defer(torch.tensor(0.69 - step / 10), IDS, f"step {step + 1}")
    guard.flush()  # all finite
    guard.flush()  # nothing deferred: nothing to read
    later = BatchIds(torch.tensor([5]), torch.tensor([6]), torch.tensor([6]))
    for step, value in enumerate([0.5, NAN, INF, 0.4], start=4):
        guard.defer(torch.tensor(value), IDS if step == 5 else later, f"step {step} (epoch 0, batch {step})")
    with pytest.raises(
        NonFiniteLossError,
        match=r"^non-finite loss at step 5 \(epoch 0, batch 5\) on rank\(s\) \[0\]: loss nan on rank 0, "
        r"batch user_ids=\[3, 4\] item_ids=\[7, 8\]",
    ):
        guard.flush()  # the first bad step of the window, not the last
    guard.flush()  # the window was consumed


def test_the_loss_window_reads_means_once_and_resets() -> None:
    window = LossWindow()
    assert window.means() == pytest.approx({"loss": NAN, "bce": NAN, "cic": NAN}, nan_ok=True)
    window.add(torch.tensor(1.0), {"bce": torch.tensor(0.75), "cic": torch.tensor(2.5)})
    window.add(torch.tensor(3.0, dtype=torch.bfloat16), {})  # no parts: bce = loss, cic = 0
    assert window.steps == 2
    assert window.means() == {"loss": 2.0, "bce": 1.875, "cic": 1.25}
    assert window.steps == 0
