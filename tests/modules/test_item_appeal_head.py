"""The item-appeal head: the MSE over fitted rows only, weighted; nothing from the others."""

from __future__ import annotations

import pytest
import torch

from em3rec.modules.item_appeal_head import ItemAppealHead


def test_the_loss_is_the_weighted_mse_over_the_fitted_rows_only() -> None:
    torch.manual_seed(0)
    appeal = torch.tensor([0.0, 0.3, -0.2, 0.5, 0.1])  # (I,)
    fitted = torch.tensor([False, True, True, False, True])
    head = ItemAppealHead({"meta": 4}, appeal, fitted, weight=3.0)
    vectors = torch.randn(4, 1, 4, requires_grad=True)  # (U_t, 1, W): rows of items 3, 1, 4, 2
    item_ids = torch.tensor([3, 1, 4, 2])
    rows = torch.tensor([0, 1, 3])  # items 3 (not fitted), 1, 2
    loss = head({"meta": vectors}, item_ids, rows)
    with torch.no_grad():
        pred = head.heads["meta"](vectors[:, 0]).squeeze(-1)  # (U_t,)
        expected = 3.0 * ((pred[1] - 0.3) ** 2 + (pred[3] + 0.2) ** 2) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert vectors.grad[0].abs().sum() == 0, "an item without enough train rows gets no gradient"
    assert vectors.grad[2].abs().sum() == 0, "a row not asked for gets no gradient"
    assert vectors.grad[1].abs().sum() > 0 and vectors.grad[3].abs().sum() > 0


def test_no_fitted_row_gives_zero() -> None:
    head = ItemAppealHead({"meta": 4}, torch.ones(3), torch.zeros(3, dtype=torch.bool), weight=1.0)
    loss = head({"meta": torch.randn(3, 1, 4)}, torch.arange(3), torch.arange(3))
    assert loss.item() == 0.0


def test_it_names_mismatched_targets() -> None:
    with pytest.raises(ValueError, match="appeal"):
        ItemAppealHead({"meta": 4}, torch.ones(3), torch.ones(4, dtype=torch.bool), weight=1.0)
