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
