"""The synthetic generator writes the contract, labelled synthetic, with the asked-for shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import SyntheticConfig, history_lengths, main, zipf_ranks
from em3rec.data.schema import DatasetMeta
from em3rec.data.validation import validate_dataset


def test_meta_is_labelled_synthetic(tiny_dataset: Path) -> None:
    meta = DatasetMeta.load(tiny_dataset)
    assert meta.synthetic and meta.protocol == "synthetic"
    assert {s: meta.splits[s].rows for s in meta.splits} == {"train": 2401, "valid": 300, "test": 300}
    assert [(m.name, m.tokens, m.width) for m in meta.modalities] == [("title", 3, 8), ("meta", 5, 4)]
    assert meta.max_history == 30 and meta.features_of("item")[0].vocab_size == meta.num_items == 201
    assert meta.num_users == 81, "num_items / num_users count the reserved index 0"
    assert len(list((tiny_dataset / "train").glob("*.parquet"))) == 4  # 2401 rows in 700-row chunks


def test_item_arrays(tiny_dataset: Path) -> None:
    tokens = np.load(tiny_dataset / "items" / "meta.tokens.npy").astype(np.float32)
    mask = np.load(tiny_dataset / "items" / "meta.mask.npy")
    pooled = np.load(tiny_dataset / "items" / "meta.pooled.npy").astype(np.float32)
    assert not mask[0].any() and not tokens[0].any(), "row 0 is the reserved item"
    assert (tokens[~mask] == 0).all()
    assert mask.any(1).mean() > 0.8, "only --missing (5%) of items lack the modality"
    expected = (tokens * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]
    np.testing.assert_allclose(pooled, expected, atol=2e-3)


def test_zipf_and_history_distributions() -> None:
    rng = np.random.default_rng(0)
    ranks = zipf_ranks(rng, 1000, 200_000, 1.1)
    counts = np.bincount(ranks, minlength=1000)
    assert ranks.min() >= 0 and ranks.max() < 1000
    assert counts[0] > 10 * np.median(counts), "a few items dominate"
    for dist in ("lognormal", "geometric", "uniform", "fixed"):
        lengths = history_lengths(rng, 100_000, 20.0, 1000, dist)
        assert lengths.min() >= 0 and lengths.max() <= 1000
        assert abs(lengths.mean() - 20.0) < 1.0, dist
    assert history_lengths(rng, 1000, 50.0, 30, "lognormal").max() == 30


def test_cli_small_run_validates(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    main(
        [
            "--out",
            str(out),
            "--rows",
            "500",
            "--items",
            "50",
            "--users",
            "20",
            "--history-mean",
            "4",
            "--history-max",
            "12",
            "--history-dist",
            "geometric",
            "--modalities",
            "text",
            "--tokens",
            "2",
            "--width",
            "6",
            "--row-group-rows",
            "100",
        ]
    )
    meta = validate_dataset(out)
    assert meta.modalities[0].name == "text" and meta.extra["config"]["history_dist"] == "geometric"
    table = pq.read_table(out / "train")
    assert pc.max(pc.list_value_length(table.column("hist_item_ids_idx"))).as_py() <= 12
    assert pq.ParquetFile(next((out / "train").glob("*.parquet"))).metadata.num_row_groups == 4


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="--tokens"):
        SyntheticConfig(out=Path("x"), modalities=("a", "b", "c"), tokens=(1, 2), width=(3,))
    with pytest.raises(ValueError, match="--history-dist"):
        SyntheticConfig(out=Path("x"), history_dist="zipf")
