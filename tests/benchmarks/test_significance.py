import numpy as np
import pytest
import torch

from benchmarks.significance import compare, user_bootstrap_weights, weighted_auc
from em3rec.metrics import auc


def test_weighted_auc_is_the_auc_of_the_rows_repeated_by_their_weight() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(np.float32)  # many ties
    labels = (rng.random(200) < 0.4).astype(np.float32)
    weights = np.stack([np.ones(200), rng.integers(0, 3, 200).astype(np.float64)])
    got = weighted_auc(scores, labels, weights)
    assert got[0] == pytest.approx(auc(torch.tensor(scores), torch.tensor(labels)), abs=1e-6)
    repeat = weights[1].astype(int)
    expected = auc(torch.tensor(np.repeat(scores, repeat)), torch.tensor(np.repeat(labels, repeat)))
    assert got[1] == pytest.approx(expected, abs=1e-6)
    assert np.isnan(weighted_auc(scores, np.zeros(200, np.float32), weights[:1]))[0]


def test_user_bootstrap_moves_a_users_rows_together() -> None:
    users = np.array([7, 7, 3, 9, 3, 7])
    w = user_bootstrap_weights(users, 50, np.random.default_rng(0))
    assert w.shape == (50, 6) and (w[0] == 1).all()
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 0] == w[:, 5]).all() and (w[:, 2] == w[:, 4]).all()
    # each resample draws as many users as there are: 3 users, so a row weight sum of 3 "users"
    per_user = w[:, [0, 2, 3]]
    assert (per_user.sum(axis=1) == 3).all()


def _scores(logit: np.ndarray, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    return {"user_idx": users, "item_idx": items, "label": labels, "logit": logit}


def test_compare_separates_a_real_gain_from_noise() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    users, items = rng.integers(0, 100, n), rng.integers(0, 50, n)
    labels = (rng.random(n) < 0.5).astype(np.float32)
    train_count = np.r_[np.zeros(10), np.full(40, 5)].astype(int)  # items 0-9 cold
    signal = labels + rng.normal(0, 1.0, n)

    def noisy(scale: float, s: int) -> np.ndarray:
        return signal + np.random.default_rng(s).normal(0, scale, n)

    better = {s: _scores(noisy(0.1, s), users, items, labels) for s in range(3)}
    worse = {s: _scores(noisy(3.0, 10 + s), users, items, labels) for s in range(3)}
    result = compare(better, worse, train_count, resamples=200)
    assert set(result) == {"all", "cold", "warm"} and result["cold"]["rows"] == int((items < 10).sum())
    assert result["all"]["ci_low"] > 0 and result["all"]["share_ahead"] == 1.0
    cold_users = np.arange(100) >= 70  # users 70-99 have no train rows
    by_user = compare(better, worse, train_count, resamples=50, cold_users=cold_users)
    assert by_user["cold users"]["rows"] == int((users >= 70).sum())
    assert by_user["warm users"]["rows"] == int((users < 70).sum())
    assert by_user["all"] == compare(better, worse, train_count, resamples=50)["all"]
    same = compare(better, better, train_count, resamples=50)
    assert same["all"]["mean"] == 0 and same["all"]["bootstrap_std"] == 0 and same["all"]["total_se"] == 0
    shuffled = dict(worse) | {1: _scores(worse[1]["logit"], users[::-1].copy(), items, labels)}
    with pytest.raises(ValueError, match="seed 1: scores are not of the same test rows"):
        compare(better, shuffled, train_count, resamples=10)
