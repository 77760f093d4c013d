"""Config loading: overrides round-trip; the batch size per rank."""

from __future__ import annotations

import dataclasses

import pytest

from em3rec.config import ConfigError, as_overrides, load_config


def test_as_overrides_rebuild_the_config_from_its_dict() -> None:
    config = load_config("din_em3", ["data.pooled_content=true", "model.cic.weight=0.0", "train.run_name=x"])
    rebuilt = load_config("dlrm_id", as_overrides(dataclasses.asdict(config)))
    assert rebuilt == config


@pytest.mark.parametrize("config_name", ["din_em3", "bx_dcn_frozen", "ml1m_din_id"])
def test_bundled_configs_train_the_protocol_batch_at_any_world_size(config_name: str) -> None:
    data = load_config(config_name).data
    assert [data.rank_batch_size(w) * w for w in (1, 2, 4)] == [512, 512, 512]


def test_rank_scope_gives_every_rank_the_batch() -> None:
    data = load_config("din_em3", ["data.batch_scope=rank", "data.batch_size=96"]).data
    assert [data.rank_batch_size(w) for w in (1, 2, 3)] == [96, 96, 96]


def test_a_global_batch_that_does_not_split_evenly_is_refused() -> None:
    data = load_config("din_em3", ["data.batch_size=100"]).data
    assert data.rank_batch_size(4) == 25
    with pytest.raises(ConfigError, match=r"data.batch_size = 100 with data.batch_scope = 'global'.*3 ranks"):
        data.rank_batch_size(3)


def test_config_paths_never_fall_back_to_a_bundled_config_of_the_same_name(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    assert load_config("din_em3.toml") == load_config("din_em3")  # a bundled name, with or without .toml
    with pytest.raises(ConfigError, match=r"config 'no/such/dir/din_em3.toml': no such file"):
        load_config("no/such/dir/din_em3.toml")
    # An include is read beside the including file first, then as a bundled name.
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "base.toml").write_text("[train]\nepochs = 5\n")
    (tmp_path / "exp" / "run.toml").write_text('include = "base.toml"\n[train]\nseed = 3\n')
    (tmp_path / "exp" / "bundled.toml").write_text('include = "din_em3"\n[train]\nseed = 4\n')
    (tmp_path / "base.toml").write_text("[train]\nepochs = 7\n")  # in the working directory: not read
    monkeypatch.chdir(tmp_path)  # not the including file's folder
    run = load_config(tmp_path / "exp" / "run.toml")
    assert (run.train.epochs, run.train.seed) == (5, 3)
    assert load_config(tmp_path / "exp" / "bundled.toml").model == load_config("din_em3").model


def test_prefetch_auto_builds_batches_in_the_step_thread_on_cpu_and_ahead_on_cuda() -> None:
    import torch

    from em3rec.factory import prefetch_depth

    auto = load_config("din_em3").data
    assert auto.prefetch == -1
    assert prefetch_depth(auto, torch.device("cpu")) == 0
    assert prefetch_depth(auto, torch.device("cuda")) == 2
    for depth in (0, 3):
        assert prefetch_depth(load_config("din_em3", [f"data.prefetch={depth}"]).data, torch.device("cpu")) == depth
    with pytest.raises(ConfigError, match=r"data.prefetch = -2; expected >= -1"):
        load_config("din_em3", ["data.prefetch=-2"])
