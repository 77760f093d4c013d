"""The synthetic generator writes the contract, labelled synthetic, with the asked-for shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import SyntheticConfig, generate, history_lengths, main, zipf_ranks
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


def test_token_signal_lives_in_the_token_spread_only(tmp_path: Path) -> None:
    # The control set: labels carry S * q per item, the first modality's tokens carry q in their
    # spread along one direction, and the pooled vectors are those of the set without the signal.
    common = dict(rows=4000, items=400, users=50, modalities=("title",), tokens=(6,), width=(8,), missing=0.0, seed=5)
    generate(SyntheticConfig(out=tmp_path / "plain", **common))
    generate(SyntheticConfig(out=tmp_path / "signal", token_signal=2.0, **common))

    def items(name: str, kind: str) -> np.ndarray:
        return np.load(tmp_path / name / "items" / f"title.{kind}.npy")

    np.testing.assert_allclose(items("signal", "pooled"), items("plain", "pooled"), atol=2e-3)
    assert not np.array_equal(items("signal", "tokens"), items("plain", "tokens"))
    ids = {n: pq.read_table(tmp_path / n / "train").column("item_id_idx").to_numpy() for n in ("plain", "signal")}
    np.testing.assert_array_equal(ids["plain"], ids["signal"])  # the rows are the same draws

    # q read back from the tokens: the log-ratio of the spreads along the direction of largest change.
    tokens, mask = items("signal", "tokens").astype(np.float32), items("signal", "mask")
    change = (tokens - items("plain", "tokens").astype(np.float32)).reshape(-1, 8)
    direction = np.linalg.svd(change, full_matrices=False)[2][0]
    along, base = tokens @ direction, items("plain", "tokens").astype(np.float32) @ direction

    def spread(x: np.ndarray) -> np.ndarray:
        mean = (x * mask).sum(1, keepdims=True) / np.maximum(mask.sum(1, keepdims=True), 1)
        return np.sqrt((((x - mean) * mask) ** 2).sum(1))

    real = mask.sum(1) >= 2
    q = 2 * np.log(spread(along)[real] / spread(base)[real])
    labels = pq.read_table(tmp_path / "signal" / "train").column("label").to_numpy()
    row_q = np.full(401, np.nan)
    row_q[np.flatnonzero(real)] = q
    known = ~np.isnan(row_q[ids["signal"]])
    high = labels[known][row_q[ids["signal"]][known] > 0].mean()
    low = labels[known][row_q[ids["signal"]][known] <= 0].mean()
    assert high - low > 0.3, f"click rate of items with q > 0: {high:.2f}, q <= 0: {low:.2f}"
    # ... and the pooled vectors know nothing of it: a linear probe explains ~ nothing.
    pooled = np.c_[items("signal", "pooled").astype(np.float32)[real], np.ones(real.sum())]
    fit = pooled @ np.linalg.lstsq(pooled, q, rcond=None)[0]
    assert 1 - ((q - fit) ** 2).mean() / q.var() < 0.1


def test_token_signal_needs_a_modality(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--token-signal"):
        SyntheticConfig(out=tmp_path, modalities=(), token_signal=1.0)
