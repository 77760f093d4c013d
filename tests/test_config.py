"""Config loading: overrides round-trip."""

from __future__ import annotations

import dataclasses

from em3rec.config import as_overrides, load_config


def test_as_overrides_rebuild_the_config_from_its_dict() -> None:
    config = load_config("din_em3", ["data.pooled_content=true", "model.cic.weight=0.0", "train.run_name=x"])
    rebuilt = load_config("dlrm_id", as_overrides(dataclasses.asdict(config)))
    assert rebuilt == config
