"""``data.drop_features``: a side feature left out of a run has no table and no column read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp

from em3rec.config import ConfigError
from em3rec.data.schema import DatasetMeta
from tests.train.conftest import TINY, metrics, run, train_command


def test_a_dropped_side_feature_gets_no_table_and_the_run_trains_and_tests(tiny_prepared: Path, tmp_path: Path):
    overrides = [
        *TINY,
        f"data.path={tiny_prepared}",
        f"train.run_dir={tmp_path}",
        "train.run_name=dropped",
        "train.epochs=1",
        "train.max_steps_per_epoch=4",
        'data.drop_features=["item_tags"]',
    ]
    out = run(train_command(1, "din_frozen", overrides))
    assert "data.drop_features: item_tags left out; side features used: user_group, item_category" in out.stderr
    assert 0.0 < metrics(tmp_path / "dropped")["test"]["auc"] < 1.0
    checkpoint = next((tmp_path / "dropped" / "checkpoints").glob("step_*"))
    keys = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    tables = {
        k.split("embedding_bags.")[1].split(".")[0] for k in keys if "embedding_bags." in k and k.startswith("model.")
    }
    assert "item_category" in tables and "item_tags" not in tables


def test_only_side_features_can_be_dropped(tiny_prepared: Path):
    meta = DatasetMeta.load(tiny_prepared)
    assert [f.name for f in meta.without_features(["item_tags", "user_group"]).features] == [
        "user_id",
        "item_id",
        "hist_item_ids",
        "item_category",
    ]
    assert meta.without_features([]) is meta
    for name in ("item_id", "hist_item_ids", "user_id", "item_tag"):
        with pytest.raises(ConfigError, match=rf"data.drop_features: \['{name}'\] not among the side features"):
            meta.without_features([name])
