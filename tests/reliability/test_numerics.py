"""Numerical guards with real data: an item whose frozen tokens hold NaN (or inf), and a learning rate
that blows the weights up. No part of the model is patched.

``stop`` (the default) raises NonFiniteLossError naming the step and the batch's ids; ``skip`` drops
the batch before backward and the optimiser step and counts it (log, metrics.json, summary.txt).
The expected step numbers and counts come from an oracle: the same loader, iterated on its own.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from em3rec.config import load_config
from em3rec.data.loader import ImpressionLoader
from em3rec.factory import batch_options
from em3rec.loss_guard import NonFiniteLossError
from em3rec.modules.cic import ContentIDContrastive
from em3rec.train import write_results
from tests.data.conftest import rewrite_split
from tests.reliability.conftest import (
    SHORT,
    copy_dataset,
    in_process_recipe,
    launch,
    metrics,
    overrides,
    poison_item,
    torchrun,
)

EPOCHS, STEPS = 2, 12  # from SHORT


def _train_batches(data: Path, world_size: int) -> dict[tuple[int, int], list[set[int]]]:
    """``{(epoch, rank): [distinct item ids of each training batch]}`` as the trainer will see them."""
    config = load_config("din_em3", [*SHORT, f"data.path={data}"])
    out = {}
    for rank in range(world_size):
        loader = ImpressionLoader.from_config(
            config.data,
            "train",
            rank=rank,
            world_size=world_size,
            seed=0,
            max_batches=STEPS,
            modalities=(),
            prefetch=0,
            **batch_options(config.model, "train"),
        )
        for epoch in range(EPOCHS):
            loader.set_epoch(epoch)
            out[epoch, rank] = [set(b.content_item_ids.tolist()) for b in loader]
    return out


@dataclass(frozen=True)
class Poisoned:
    """A dataset copy where one item's title tokens are NaN, and where that item shows up."""

    data: Path
    item: int
    one_rank: list[list[int]]  # per epoch: 0-based indices of the batches that hold the item
    two_ranks: dict[tuple[int, int], list[int]]  # (epoch, rank) -> batch indices


def _replace_item(table: pa.Table, item: int, other: int) -> pa.Table:
    """``item`` -> ``other`` as target and in every history."""
    for column in ("item_id_idx", "hist_item_ids_idx"):
        values = table.column(column).to_pylist()
        if column == "item_id_idx":
            values = [other if v == item else v for v in values]
        else:
            values = [[other if v == item else v for v in h] for h in values]
        table = table.set_column(
            table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
        )
    return table


@pytest.fixture(scope="module")
def poisoned(reliable_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Poisoned:
    """The poisoned item is in a few training batches and, so that evaluation stays finite, replaced
    by another item in valid and test (a NaN item there would give NaN scores, not a NaN loss)."""
    one, two = _train_batches(reliable_data, 1), _train_batches(reliable_data, 2)
    no_title = set(np.nonzero(~np.load(reliable_data / "items" / "title.mask.npy").any(axis=1))[0].tolist())

    def where(item: int, batches: list[set[int]]) -> list[int]:
        return [i for i, ids in enumerate(batches) if item in ids]

    def suitable(item: int) -> bool:
        """In 1 to 4 batches of a 1-rank run, one in epoch 0; on 2 ranks, first in epoch 0 on one
        rank only (the other rank's loss is finite at that step)."""
        hits = sum(len(where(item, one[e, 0])) for e in range(EPOCHS))
        firsts = [min(where(item, two[0, r]), default=STEPS) for r in (0, 1)]
        return 1 <= hits <= 4 and bool(where(item, one[0, 0])) and min(firsts) < STEPS and firsts[0] != firsts[1]

    item = min(i for i in range(1, 301) if i not in no_title and suitable(i))
    data = copy_dataset(reliable_data, tmp_path_factory.mktemp("poisoned") / "data")
    poison_item(data, item)
    for split in ("valid", "test"):
        rewrite_split(data, split, lambda t: _replace_item(t, item, item + 1 if item < 300 else item - 1))
    return Poisoned(
        data, item, [where(item, one[e, 0]) for e in range(EPOCHS)], {k: where(item, v) for k, v in two.items()}
    )


def _ids_in(message: str, name: str) -> list[int]:
    return json.loads(re.search(rf"{re.escape(name)}=(\[[^\]]*\])", message).group(1))


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan_tokens", "inf_tokens"])
def test_nonfinite_loss_stops_naming_the_step_and_the_batch(poisoned: Poisoned, tmp_path: Path, value: float) -> None:
    data = poisoned.data
    if math.isinf(value):
        data = copy_dataset(poisoned.data, tmp_path / "inf")
        poison_item(data, poisoned.item, value)
    recipe = in_process_recipe(data, tmp_path)
    first = poisoned.one_rank[0][0]  # 0-based batch of epoch 0
    batch = list(recipe.loader("train", 0))[first]
    with pytest.raises(NonFiniteLossError) as caught:
        recipe.train()
    message = str(caught.value)
    assert message.startswith(
        f"non-finite loss at step {first + 1} (epoch 0, batch {first + 1}) on rank(s) [0]: "
        f"loss nan on rank 0, batch user_ids="
    )
    assert _ids_in(message, "user_ids") == batch.user_ids.tolist()
    assert _ids_in(message, "item_ids") == batch.item_ids.tolist()
    assert poisoned.item in _ids_in(message, "target+history item ids")
    assert not list((tmp_path / "runs").rglob("step_*")), "nothing was checkpointed after the bad step"


def test_exploding_learning_rate_stops_the_run(reliable_data: Path, tmp_path: Path) -> None:
    recipe = in_process_recipe(reliable_data, tmp_path, "optim.dense_lr=1e30", "optim.embedding_lr=1e30")
    with pytest.raises(
        NonFiniteLossError, match=r"^non-finite loss at step 2 \(epoch 0, batch 2\) on rank\(s\) \[0\]: loss nan"
    ):
        recipe.train()


def test_stop_reads_the_losses_at_log_lines_and_checkpoints_not_every_step(
    reliable_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``stop`` a step hands its loss to the guard unread; the guard reads them in one go at
    each log line (every 4 steps here), before each checkpoint (every 5) and at the epoch's end."""
    recipe = in_process_recipe(reliable_data, tmp_path, "train.log_every=4")
    guard = recipe.guard
    monkeypatch.setattr(guard, "check", lambda *a, **k: pytest.fail("a per-step read under nan_policy = 'stop'"))
    read: list[int] = []
    flush = guard.flush
    monkeypatch.setattr(guard, "flush", lambda: (read.append(len(guard._deferred)), flush())[1])
    recipe._train_epoch(0)
    assert read == [4, 1, 3, 2, 2, 0]  # steps 1-4 (log), 5 (checkpoint), 6-8, 9-10, 11-12, the end
    assert recipe.progress.step == STEPS


def test_skip_policy_stops_a_diverged_run_after_the_limit(reliable_data: Path, tmp_path: Path) -> None:
    recipe = in_process_recipe(
        reliable_data,
        tmp_path,
        "optim.dense_lr=1e30",
        "optim.embedding_lr=1e30",
        "train.nan_policy=skip",
        "train.nan_skip_limit=3",
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"^3 batches in a row had a non-finite loss \(train.nan_skip_limit = 3\); "
        r"the model has probably diverged. Last at step 2 \(epoch 0, batch 4\)",
    ):
        recipe.train()


def test_nan_scores_in_evaluation_are_refused(reliable_data: Path, poisoned: Poisoned, tmp_path: Path) -> None:
    """Skipping keeps training finite, but an item with NaN content in *valid* gives NaN scores:
    the run stops instead of reporting an AUC over them."""
    data = copy_dataset(reliable_data, tmp_path / "data")
    poison_item(data, poisoned.item)  # not scrubbed from valid/test this time
    recipe = in_process_recipe(data, tmp_path, "train.nan_policy=skip")
    with pytest.raises(
        NonFiniteLossError,
        match=r"^non-finite predictions on valid after epoch 0 \(logloss nan\): "
        r"an item's content tokens or a weight is NaN/inf",
    ):
        recipe.train()


def test_skip_policy_counts_and_reports_skipped_batches(poisoned: Poisoned, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    expected = sum(len(b) for b in poisoned.one_rank)
    with caplog.at_level(logging.INFO, logger="em3rec.train"):
        recipe = in_process_recipe(poisoned.data, tmp_path, "train.nan_policy=skip", "sharding.pipeline=true")
        assert recipe.pipeline is None
        recipe.train()
    (cic,) = [m for m in recipe.model.modules() if isinstance(m, ContentIDContrastive)]
    assert cic.steps.item() == recipe.progress.step  # CIC's warm-up ramp counts steps taken, not batches read
    test = recipe.test()
    write_results(recipe, test, seconds=1.0)
    assert "train.nan_policy = 'skip': training without TrainPipelineSparseDist" in caplog.text
    skips = [r.getMessage() for r in caplog.records if "batch skipped" in r.getMessage()]
    assert len(skips) == expected
    assert skips[0].startswith(
        f"non-finite loss at step {poisoned.one_rank[0][0] + 1} (epoch 0, batch "
        f"{poisoned.one_rank[0][0] + 1}) on rank(s) [0]: batch skipped "
        f"(train.nan_policy = 'skip'; 1 skipped so far); loss nan on rank 0, batch user_ids="
    )
    result = json.loads((recipe.run_dir / "metrics.json").read_text())
    assert result["skipped_batches"] == expected
    assert result["precision"] == recipe.precision.name and result["train_samples_per_s"] > 0
    assert recipe.progress.step == EPOCHS * STEPS - expected  # optimiser steps: the skipped ones not taken
    assert (
        f"skipped batches (non-finite loss, train.nan_policy = 'skip'): {expected}"
        in (recipe.run_dir / "summary.txt").read_text()
    )
    assert all(math.isfinite(result["test"][k]) for k in ("auc", "gauc", "logloss"))


# ------------------------------------------------------------------------- 2 ranks, end to end


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_stop_together_on_a_nan_loss(poisoned: Poisoned, tmp_path: Path) -> None:
    """Only one rank's batch holds the NaN item, yet both ranks stop at the same step (the check is
    collective), promptly, and the message with the ids reaches the output."""
    index, bad = min((b[0], r) for (e, r), b in poisoned.two_ranks.items() if e == 0 and b)
    good = 1 - bad
    job = launch(torchrun(2, overrides(poisoned.data, tmp_path, "nan_stop")), tmp_path / "nan_stop.log")
    assert job.wait() != 0
    elapsed = time.monotonic() - job.started
    out = job.output()
    where = f"non-finite loss at step {index + 1} (epoch 0, batch {index + 1}) on rank(s) [{bad}]: "
    assert f"[rank{bad}]: em3rec.loss_guard.NonFiniteLossError: {where}loss nan on rank {bad}, batch user_ids=[" in out
    assert (
        f"[rank{good}]: em3rec.loss_guard.NonFiniteLossError: {where}this rank's loss was finite (" in out
        and f"); the batch ids are in rank {bad}'s log" in out
    )
    assert poisoned.item in json.loads(
        re.search(
            rf"\[rank{bad}\]: em3rec.loss_guard.NonFiniteLossError: .*target\+history item ids=(\[[^\]]*\])", out
        ).group(1)
    )
    assert not (tmp_path / "nan_stop" / "metrics.json").exists()
    assert elapsed < 150


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_skip_together_and_finish(poisoned: Poisoned, tmp_path: Path) -> None:
    """A rank with a finite loss must skip too (else its backward would wait for the other rank's
    gradients forever): the run finishes and counts each step where any rank's loss was NaN."""
    steps = {(e, i) for (e, _), batches in poisoned.two_ranks.items() for i in batches}
    start = time.monotonic()
    job = launch(
        torchrun(2, overrides(poisoned.data, tmp_path, "nan_skip", "train.nan_policy=skip")), tmp_path / "nan_skip.log"
    )
    assert job.wait() == 0, job.output()[-6000:]
    result = metrics(tmp_path / "nan_skip")
    assert result["skipped_batches"] == len(steps), (steps, result["skipped_batches"])
    out = job.output()
    assert out.count("batch skipped (train.nan_policy = 'skip'") >= len(steps)
    assert f"skipped batches (non-finite loss, train.nan_policy = 'skip'): {len(steps)}" in out
    assert time.monotonic() - start < 240
