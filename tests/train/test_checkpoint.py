"""Checkpoint round trips in one process: optimiser state, corrupt and incomplete checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from em3rec.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from em3rec.train import Recipe


def _flat(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(state, torch.Tensor):
        t = state.local_tensor() if hasattr(state, "local_tensor") else state
        out[prefix] = t.detach().clone()
    elif hasattr(state, "local_shards"):
        out[prefix] = torch.cat([s.tensor.flatten() for s in state.local_shards()]).clone()
    return out


def test_optimizer_and_model_state_round_trip(recipe: Recipe, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints")
    path = manager.save("step_00000003", recipe.model, recipe.optimizer, {"step": 3})
    saved_model, saved_optim = _flat(recipe.model.state_dict()), _flat(recipe.optimizer.state_dict())
    assert any("exp_avg" in k for k in saved_optim), "AdamW state must be in the checkpoint"

    fresh = Recipe(recipe.config, recipe.env)  # new weights, empty (lazy) optimiser state
    fresh.setup()
    load_checkpoint(path, fresh.model, fresh.optimizer)
    loaded_model, loaded_optim = _flat(fresh.model.state_dict()), _flat(fresh.optimizer.state_dict())
    assert saved_model.keys() == loaded_model.keys() and saved_optim.keys() == loaded_optim.keys()
    for k in saved_model:
        assert torch.equal(saved_model[k], loaded_model[k]), k
    for k in saved_optim:
        assert torch.equal(saved_optim[k], loaded_optim[k]), k


def test_incomplete_and_corrupt_checkpoints_are_refused_and_skipped(recipe: Recipe, tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", keep=5)
    good = manager.save("step_00000001", recipe.model, recipe.optimizer, {"step": 1})
    bad = manager.save("step_00000002", recipe.model, recipe.optimizer, {"step": 2})
    (bad / ".metadata").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"step_00000002: unreadable DCP metadata"):
        load_checkpoint(bad, recipe.model)
    assert manager.load_latest(recipe.model, recipe.optimizer)[0] == good  # falls back to the previous checkpoint

    (good / "progress.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint \(progress.json missing\)"):
        load_checkpoint(good, recipe.model)
    with pytest.raises(CheckpointError, match=r"every checkpoint was refused"):
        manager.load_latest(recipe.model, recipe.optimizer)


def test_a_model_loaded_for_inference_holds_no_optimiser_state(recipe: Recipe) -> None:
    """``load_trained`` (evaluate, export, score) shards the model without the fused embedding
    optimiser, so no optimiser state is allocated, and loads the training checkpoint's weights."""
    from em3rec.factory import load_trained

    saved = recipe.checkpoints.save("step_00000003", recipe.model, recipe.optimizer, {"step": 3}, best=True)
    assert _flat(recipe.model.fused_optimizer.state_dict()["state"])  # training: row-wise Adagrad state
    trained = load_trained(recipe.config, saved)
    assert not _flat(trained.model.fused_optimizer.state_dict()["state"])
    weights, loaded = _flat(recipe.model.state_dict()), _flat(trained.model.state_dict())
    assert weights.keys() == loaded.keys() and all(torch.equal(weights[k], loaded[k]) for k in weights)


def test_one_process_saves_and_loads_without_collectives(
    recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a one-process group DCP runs no collective: gloo would run its plan gathers' torch ops
    in a worker thread of its own, whose OpenMP team slows every later step (``_no_dist``)."""
    import torch.distributed as dist

    calls: list[str] = []
    for name in ("gather_object", "all_gather_object", "broadcast_object_list", "scatter_object_list", "all_reduce"):
        real = getattr(dist, name)
        monkeypatch.setattr(dist, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    assert recipe.env.world_size == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = CheckpointManager(tmp_path / "checkpoints").save(
            "step_00000003", recipe.model, recipe.optimizer, {"step": 3}
        )
        load_checkpoint(path, recipe.model, recipe.optimizer)
    assert calls == []
    # DCP's warning that it runs without collectives is not printed: that was asked for.
    assert not [w for w in caught if "assuming the intent is to" in str(w.message)], [str(w.message) for w in caught]
