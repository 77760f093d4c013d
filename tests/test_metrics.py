"""Metric correctness against direct references (torchmetrics per group, brute-force pair counts)."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from em3rec.metrics import Predictions, auc, compute_metrics, group_auc
from em3rec.testing.multiprocess import run_ranks


def _pairwise_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_auc_matches_pair_counting_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (300,), generator=g).double() / 4  # many ties
    labels = (torch.rand(300, generator=g) < 0.4).double()
    assert math.isclose(auc(scores, labels), _pairwise_auc(scores, labels), abs_tol=1e-9)


def test_group_auc_is_row_weighted_mean_of_per_user_auc() -> None:
    g = torch.Generator().manual_seed(1)
    users = torch.randint(0, 30, (2000,), generator=g)
    scores = torch.randint(0, 8, (2000,), generator=g).double() / 7
    labels = (torch.rand(2000, generator=g) < 0.5).double()
    total, weight, counted = 0.0, 0, 0
    for u in users.unique():
        m = users == u
        if labels[m].min() == labels[m].max():
            continue
        total += float(binary_auroc(scores[m], labels[m].long())) * int(m.sum())
        weight += int(m.sum())
        counted += 1
    gauc, n = group_auc(scores, labels, users)
    assert n == counted
    assert math.isclose(gauc, total / weight, abs_tol=1e-6)  # torchmetrics returns float32


def test_group_auc_skips_single_class_users_and_perfect_ranking_is_one() -> None:
    users = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    scores = torch.tensor([0.9, 0.1, 0.2, 0.0, 0.0])
    assert group_auc(scores, labels, users) == (1.0, 1)


def test_compute_metrics_cold_rows_and_logloss() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -0.5])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    pred = Predictions(logits, labels, torch.tensor([1, 1, 2, 2]), torch.tensor([3, 4, 5, 6]))
    cold = torch.zeros(10, dtype=torch.bool)
    cold[[5, 6]] = True
    m = compute_metrics(pred, cold)
    expected_logloss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))
    assert math.isclose(m["logloss"], expected_logloss, rel_tol=1e-9)
    assert m["cold_rows"] == 2 and m["cold_auc"] == 0.0  # item 5 (neg) scored above item 6 (pos)
    assert m["warm_rows"] == 2 and m["warm_auc"] == 1.0  # item 3 (pos) scored above item 4 (neg)
    assert m["auc"] == _pairwise_auc(logits, labels)
    # one user per split: user 1 holds the warm rows, user 2 the cold ones
    assert m["warm_gauc"] == 1.0 and m["cold_gauc"] == 0.0


def test_compute_metrics_splits_rows_by_cold_users() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -0.5, 0.3])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    pred = Predictions(logits, labels, torch.tensor([1, 1, 2, 2, 2]), torch.tensor([3, 4, 5, 6, 7]))
    cold_users = torch.tensor([False, False, True])  # user 2 has no training rows
    m = compute_metrics(pred, cold_users=cold_users)
    assert "cold_auc" not in m  # no item mask given
    assert m["warm_user_rows"] == 2 and m["warm_user_auc"] == 1.0
    # user 2: positives -0.5 and 0.3 against the negative 0.5: both below it
    assert m["cold_user_rows"] == 3 and m["cold_user_auc"] == 0.0 and m["cold_user_gauc"] == 0.0
    no_cold = compute_metrics(pred, cold_users=torch.zeros(3, dtype=torch.bool))  # an empty subset is NaN, not an error
    assert (
        no_cold["cold_user_rows"] == 0
        and math.isnan(no_cold["cold_user_auc"])
        and math.isnan(no_cold["cold_user_gauc"])
    )


def _rows(rank: int) -> Predictions:
    """Uneven, overlapping users on each rank: rank 0 holds 7 rows, rank 1 holds 12."""
    g = torch.Generator().manual_seed(rank)
    n = 7 + 5 * rank
    return Predictions(
        torch.randn(n, generator=g),
        torch.randint(0, 2, (n,), generator=g).float(),
        torch.randint(0, 4, (n,), generator=g),
        torch.randint(0, 6, (n,), generator=g),
    )


def _metrics_on_rank(rank: int, world_size: int) -> tuple[dict[str, float], bool]:
    from em3rec.metrics import gather_predictions, metrics_on_every_rank

    cold = torch.tensor([True, False, False, True, False, False])
    gathered_here = gather_predictions(_rows(rank)) is not None
    return metrics_on_every_rank(_rows(rank), cold_items=cold, cold_users=None), gathered_here


@pytest.mark.multiprocess
def test_metrics_over_two_ranks_are_those_of_all_rows_on_every_rank() -> None:
    (first, on_0), (second, on_1) = run_ranks(_metrics_on_rank)
    assert (on_0, on_1) == (True, False)  # the rows go to rank 0 only
    cold = torch.tensor([True, False, False, True, False, False])
    expected = compute_metrics(Predictions.cat([_rows(0), _rows(1)]), cold_items=cold)
    assert first == second == pytest.approx(expected, nan_ok=True)
    assert first["rows"] == 19
