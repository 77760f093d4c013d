import pytest
import torch

from em3rec.modules.interest import TargetAttention


@pytest.mark.parametrize("softmax", [False, True])
def test_masked_positions_are_ignored(softmax):
    attention = TargetAttention(8, [16, 8], softmax=softmax)
    keys, query = torch.randn(4, 6, 8), torch.randn(4, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    before = attention(keys, query, mask)
    changed = torch.where(mask[..., None], keys, torch.randn_like(keys) * 100)
    changed.requires_grad_(True)
    after = attention(changed, query, mask)
    torch.testing.assert_close(after, before)
    assert (after[2] == 0).all()  # an all-empty history pools to zeros
    after.sum().backward()
    assert (changed.grad[~mask] == 0).all() and torch.isfinite(changed.grad).all()


def test_matches_the_din_formula():
    attention = TargetAttention(4, [8])
    keys, query = torch.randn(2, 3, 4), torch.randn(2, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    expected = torch.zeros(2, 4)
    for b in range(2):
        for l in range(3):
            if mask[b, l]:
                q, k = query[b], keys[b, l]
                w = attention.score(attention.mlp(torch.cat([q, k, q - k, q * k])[None]))[0, 0]
                expected[b] += w * k
    torch.testing.assert_close(attention(keys, query, mask), expected)


def test_softmax_weights_sum_to_one_over_real_positions():
    attention = TargetAttention(4, [8], softmax=True)
    keys = torch.ones(1, 5, 4)
    mask = torch.tensor([[1, 1, 0, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(attention(keys, torch.randn(1, 4), mask), torch.ones(1, 4))
