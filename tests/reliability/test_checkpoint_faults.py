"""Checkpoint faults in one process: interrupted saves, truncated / bit-flipped / missing files, a
full disk during a save, and the recipe's fallback to the previous checkpoint.

The multi-rank, end-to-end versions (a corrupt checkpoint on --resume, a full disk under torchrun)
are in test_restarts.py.
"""

from __future__ import annotations

import logging
import resource
import shutil
from pathlib import Path

import pytest

from em3rec.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, validate_checkpoint
from em3rec.train import Recipe
from tests.reliability.conftest import in_process_recipe


@pytest.fixture(scope="module")
def solo(reliable_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    """A 1-rank recipe after 2 training steps (its weights and optimiser state are non-trivial)."""
    recipe = in_process_recipe(reliable_data, tmp_path_factory.mktemp("solo"))
    batches = iter(recipe.loader("train"))
    for _ in range(2):
        recipe._step(batches)
    return recipe


@pytest.fixture
def two_checkpoints(solo: Recipe, tmp_path: Path) -> tuple[CheckpointManager, Path, Path]:
    """A manager with complete checkpoints step 1 (older) and step 2 (latest)."""
    manager = CheckpointManager(tmp_path / "checkpoints", keep=5)
    older = manager.save("step_00000001", solo.model, solo.optimizer, {"step": 1})
    latest = manager.save("step_00000002", solo.model, solo.optimizer, {"step": 2})
    return manager, older, latest


def _latest(manager: CheckpointManager, recipe: Recipe) -> Path:
    """The checkpoint ``load_latest`` loads (falling back past refused ones)."""
    found = manager.load_latest(recipe.model, recipe.optimizer)
    assert found is not None
    return found[0]


def _shard(checkpoint: Path) -> Path:
    (shard,) = sorted(checkpoint.glob("*.distcp"))
    return shard


def test_interrupted_save_is_ignored_then_cleaned(two_checkpoints, solo: Recipe, caplog) -> None:  # noqa: ANN001
    manager, _, latest = two_checkpoints
    # What a process killed while writing step 3 leaves: a hidden folder with a partial shard and
    # no progress.json (the file written last).
    partial = manager.folder / ".step_00000003.tmp"
    shutil.copytree(latest, partial)
    (partial / "progress.json").unlink()
    shard = _shard(partial)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    (manager.folder / ".latest.tmp").write_text("step_000")  # a pointer caught mid-write

    assert manager.candidates()[0] == latest and _latest(manager, solo) == latest
    assert (manager.folder / "latest").read_text() == "step_00000002"
    with caplog.at_level(logging.WARNING, logger="em3rec.checkpoint"):
        done = manager.remove_partial()
    assert done == ["removed .latest.tmp", "removed .step_00000003.tmp (a checkpoint save that did not finish)"]
    assert "removed .step_00000003.tmp (a checkpoint save that did not finish)" in caplog.text
    assert sorted(p.name for p in manager.folder.iterdir()) == ["latest", "step_00000001", "step_00000002"]
    manager.save("step_00000003", solo.model, solo.optimizer, {"step": 3})  # the same name saves cleanly
    assert _latest(manager, solo).name == "step_00000003"


def test_crash_while_replacing_a_same_named_checkpoint_is_recovered(two_checkpoints, solo: Recipe) -> None:  # noqa: ANN001
    manager, _, latest = two_checkpoints
    # Re-saving step 2 moves the old copy to .step_00000002.old, renames the new one in, then deletes
    # the old one. Killed between the two renames, only the hidden old copy is left.
    latest.rename(manager.folder / ".step_00000002.old")
    assert _latest(manager, solo).name == "step_00000001"
    assert manager.remove_partial() == [
        "restored step_00000002 from .step_00000002.old (interrupted while being replaced)"
    ]
    assert _latest(manager, solo) == latest and validate_checkpoint(latest)["step"] == 2


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "truncate_shard",
            r"step_00000002: shard file __0_0.distcp is truncated \(\d+ bytes; the metadata needs \d+\)",
        ),
        (
            "flip_shard_byte",
            r"step_00000002: file __0_0.distcp is corrupt \(CRC-32 [0-9a-f]{8}, recorded [0-9a-f]{8} when it was written\)",
        ),
        ("delete_shard", r"step_00000002: shard file __0_0.distcp missing"),
        ("flip_rng_byte", r"step_00000002: file rng_rank0.pt is corrupt \(CRC-32"),
        ("truncate_metadata", r"step_00000002: unreadable DCP metadata"),
        ("corrupt_progress", r"step_00000002/progress.json: corrupt"),
        ("corrupt_checksums", r"step_00000002/checksums.json: corrupt"),
        ("garble_progress", r"step_00000002/progress.json: corrupt \('utf-8' codec can't decode"),
        ("garble_checksums", r"step_00000002/checksums.json: corrupt \('utf-8' codec can't decode"),
        ("grow_shard", r"step_00000002: file __0_0.distcp has \d+ bytes; checksums.json records \d+"),
    ],
)
def test_damaged_checkpoint_is_refused_and_the_previous_one_used(
    two_checkpoints, solo: Recipe, damage: str, message: str
) -> None:  # noqa: ANN001
    manager, older, latest = two_checkpoints
    shard = _shard(latest)
    if damage == "truncate_shard":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "flip_shard_byte":  # same size: only the checksum can tell
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x40
        shard.write_bytes(bytes(data))
    elif damage == "delete_shard":
        shard.unlink()
    elif damage == "flip_rng_byte":
        data = bytearray((latest / "rng_rank0.pt").read_bytes())
        data[-200] ^= 0x01
        (latest / "rng_rank0.pt").write_bytes(bytes(data))
    elif damage == "truncate_metadata":
        (latest / ".metadata").write_bytes((latest / ".metadata").read_bytes()[:50])
    elif damage == "corrupt_progress":
        (latest / "progress.json").write_text('{"step": 2, "epo')
    elif damage == "corrupt_checksums":
        (latest / "checksums.json").write_text("{")
    elif damage in ("garble_progress", "garble_checksums"):  # bytes that are not even UTF-8 text
        (latest / f"{damage.split('_')[1]}.json").write_bytes(b'{"step": \xff\xfe}')
    elif damage == "grow_shard":
        shard.write_bytes(shard.read_bytes() + b"\0" * 10)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(latest, solo.model, solo.optimizer)
    assert _latest(manager, solo) == older


def test_recipe_resume_falls_back_and_refuses_to_start_over(solo: Recipe, tmp_path: Path, caplog) -> None:  # noqa: ANN001
    recipe = Recipe(solo.config, solo.env)
    recipe.setup()
    recipe.checkpoints = CheckpointManager(tmp_path / "checkpoints", keep=5)
    recipe._step(iter(recipe.loader("train")))  # creates the optimiser state a checkpoint holds
    recipe.progress.step = 1
    recipe._save(best=False)
    recipe.progress.step = 2
    recipe._save(best=False)
    newest = recipe.checkpoints.folder / "step_00000002"
    data = bytearray(_shard(newest).read_bytes())
    data[100] ^= 0xFF
    _shard(newest).write_bytes(bytes(data))
    recipe.progress.step = 0
    with caplog.at_level(logging.WARNING, logger="em3rec.checkpoint"):
        assert recipe.resume_latest().name == "step_00000001"
    assert recipe.progress.step == 1
    assert "checkpoint refused: " in caplog.text and "is corrupt (CRC-32" in caplog.text
    assert "falling back to step_00000001" in caplog.text
    assert (
        "resumed from step_00000001, an older checkpoint: the newer one(s) ['step_00000002'] were refused"
        in caplog.text
    )

    (recipe.checkpoints.folder / "step_00000001" / "progress.json").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"every checkpoint was refused \(\['step_00000002', 'step_00000001'\]; "
        r"reasons above\); not starting from scratch over them",
    ):
        recipe.resume_latest()


def test_full_disk_during_save_keeps_the_previous_checkpoint(two_checkpoints, solo: Recipe) -> None:  # noqa: ANN001
    """A real failing write: a file-size limit (RLIMIT_FSIZE) makes write(2) fail with EFBIG the
    way a full disk fails with ENOSPC (Python ignores SIGXFSZ, so it surfaces as OSError), or cuts
    a write short, which torch's zip writer reports as "unexpected pos" (where the limit falls
    depends on the checkpoint's byte layout)."""
    manager, _, latest = two_checkpoints
    limit = _shard(latest).stat().st_size // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(
            CheckpointError,
            match=r"step_00000003: save failed \(.*(File too large|unexpected pos).*\); "
            r"earlier checkpoints are untouched \(newest: step_00000002\)",
        ):
            manager.save("step_00000003", solo.model, solo.optimizer, {"step": 3})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not (manager.folder / ".step_00000003.tmp").exists(), "the failed save's folder is removed"
    assert _latest(manager, solo) == latest and (manager.folder / "latest").read_text() == "step_00000002"
    load_checkpoint(latest, solo.model, solo.optimizer)


def test_a_clipped_run_checkpoints_the_same_optimiser_state_and_resumes(
    reliable_data: Path, solo: Recipe, tmp_path: Path
) -> None:
    """``optim.grad_clip`` wraps the dense AdamW in TorchRec's GradientClippingOptimizer: the
    optimiser state keeps its keys, so checkpoints move between clipped and unclipped runs."""
    clipped = in_process_recipe(reliable_data, tmp_path / "run", "optim.grad_clip=1.0")
    batches = iter(clipped.loader("train"))
    for _ in range(2):
        clipped._step(batches)
    assert clipped.optimizer.state_dict()["state"].keys() == solo.optimizer.state_dict()["state"].keys()
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    saved = manager.save("step_00000002", clipped.model, clipped.optimizer, {"step": 2})
    assert _latest(manager, solo) == saved  # a clipped run's checkpoint loads into an unclipped one
    assert _latest(manager, clipped) == saved  # and into a clipped one (resume)
    assert clipped.optimizer.state_dict()["state"].keys() == solo.optimizer.state_dict()["state"].keys()
