"""The item-signal probe: its target, its ceiling, its ridge rows and the table it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.item_signal_probe import main, ridge, split_half_reliability, token_moments
from em3rec.data.item_appeal import item_targets
from data_prep.synthetic import SyntheticConfig, generate


def test_item_target_takes_out_the_raters_generosity() -> None:
    # user 0 clicks everything, user 1 nothing; item 1 is rated by both, item 2 only by user 0
    users, items = np.array([0, 0, 0, 1, 1, 1]), np.array([1, 2, 2, 1, 1, 3])
    labels = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    target, count = item_targets(users, items, labels, num_items=4, prior_rows=0.0)
    assert count.tolist() == [0, 3, 2, 1]
    np.testing.assert_allclose(target, [0.0, 0.0, 0.0, 0.0])  # every label is its user's rate
    # 6 pseudo-rows at the global rate 0.5: user rates 6/9 and 3/9, residuals +1/3 and -1/3
    target, _ = item_targets(users, items, labels, num_items=4, prior_rows=6.0)
    np.testing.assert_allclose(target[1:], [-1 / 9, 1 / 3, -1 / 3])


def test_reliability_tells_an_item_signal_from_row_noise() -> None:
    rng = np.random.default_rng(0)
    items = rng.integers(0, 200, 40_000)
    users = rng.integers(0, 50, 40_000)
    appeal = rng.normal(0, 1.5, 200)
    eligible = np.arange(200)
    with_signal = (rng.random(40_000) < 1 / (1 + np.exp(-appeal[items]))).astype(float)
    noise = (rng.random(40_000) < 0.5).astype(float)
    assert split_half_reliability(users, items, with_signal, 200, 10.0, eligible, rng) > 0.8
    assert abs(split_half_reliability(users, items, noise, 200, 10.0, eligible, rng)) < 0.3


def test_ridge_recovers_a_linear_target_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 20))
    order = rng.permutation(600)
    splits = order[:400], order[400:480], order[480:]
    _, held_out = ridge(x, x @ rng.normal(size=20) + 0.1 * rng.normal(size=600), *splits)
    assert held_out > 0.95
    _, held_out = ridge(x, rng.normal(size=600), *splits)
    assert held_out < 0.05


def test_token_moments_are_over_real_tokens_only() -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 2.0], [100.0, 100.0]]])  # (1, 3, 2), the last is padding
    mask = torch.tensor([[True, True, False]])
    np.testing.assert_allclose(token_moments(tokens, mask), [[2.0, 2.0, 1.0, 0.0]])


def test_probe_writes_every_row(tmp_path: Path) -> None:
    data = tmp_path / "set"
    generate(
        SyntheticConfig(
            out=data, rows=3000, items=80, users=40, modalities=("title",), tokens=(4,), width=(8,), missing=0.0, seed=3
        )
    )  # fmt: skip
    out = tmp_path / "probe.md"
    main(
        ["--data", str(data), "--min-rows", "5", "--steps", "4", "--batch", "8", "--seeds", "0", "1", "--out", str(out)]
    )
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| title |")]
    assert len(rows) == 6, "two ridge rows and four trained probes"
    assert all(np.isfinite(float(r.split(" | ")[3].strip("*").split(" ± ")[0])) for r in rows)
    assert rows[0].split(" | ")[4] == "0.000 ± 0.000", "the pooled ridge against itself"
    assert "split-half reliability" in text


def test_probe_names_an_unknown_modality(tmp_path: Path) -> None:
    data = tmp_path / "set"
    generate(SyntheticConfig(out=data, rows=3000, items=80, users=40, modalities=("title",), tokens=(4,), width=(8,)))
    with pytest.raises(SystemExit, match="image"):
        main(["--data", str(data), "--min-rows", "5", "--modalities", "image"])


@pytest.mark.slow
def test_probe_finds_the_control_sets_token_signal_from_clicks(tmp_path: Path) -> None:
    # A positive control for the probe itself: on a set whose click signal lives in the tokens'
    # spread (invisible in their mean), the Q-Former must beat the pooled vector on held-out items.
    data = tmp_path / "control"
    generate(
        SyntheticConfig(
            out=data, rows=60_000, items=3_000, users=1_000, modalities=("title",), tokens=(8,), width=(32,),
            missing=0.0, history_mean=5, history_max=10, seed=0, token_signal=1.5,
        )
    )  # fmt: skip
    out = tmp_path / "probe.md"
    main(["--data", str(data), "--min-rows", "5", "--steps", "600", "--seeds", "0", "--out", str(out)])
    rows = {
        line.split(" | ")[1]: line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| title |")
    }
    q_former = next(v for k, v in rows.items() if k.startswith("Fusion-Q-Former"))
    assert float(q_former[4]) > 0.05, "the Q-Former beats the pooled-vector ridge on held-out items"
    pooled = float(rows["pooled vector, ridge (penalty chosen on the stopping slice)"][3].strip("*"))
    assert pooled < 0.05, "the pooled vector is independent of the signal"
