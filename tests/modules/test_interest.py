import pytest
import torch

from em3rec.modules.interest import TargetAttention


@pytest.mark.parametrize("softmax", [False, True])
def test_masked_positions_are_ignored(softmax):
    attention = TargetAttention(8, [16, 8], softmax=softmax)
    keys, query = torch.randn(4, 6, 8), torch.randn(4, 8)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool
    )
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
        for pos in range(3):
            if mask[b, pos]:
                q, k = query[b], keys[b, pos]
                w = attention.score(attention.mlp(torch.cat([q, k, q - k, q * k])[None]))[0, 0]
                expected[b] += w * k
    torch.testing.assert_close(attention(keys, query, mask), expected)


def test_softmax_weights_sum_to_one_over_real_positions():
    attention = TargetAttention(4, [8], softmax=True)
    keys = torch.ones(1, 5, 4)
    mask = torch.tensor([[1, 1, 0, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(attention(keys, torch.randn(1, 4), mask), torch.ones(1, 4))


@pytest.mark.parametrize("hidden", [[16, 8], [8], []])
def test_expanded_first_layer_matches_the_reference(hidden):
    attention = TargetAttention(6, hidden).double()
    keys = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    query = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, dtype=torch.float64)

    def run(fn):
        attention.zero_grad(set_to_none=True)
        keys.grad = query.grad = None
        out = fn(keys, query)
        (out * g).sum().backward()
        grads = {n: p.grad.clone() for n, p in attention.named_parameters()}
        return out.detach(), grads, keys.grad.clone(), query.grad.clone()

    fast, slow = run(attention.scores), run(attention.scores_reference)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-12, atol=1e-12)
    for name in slow[1]:
        torch.testing.assert_close(fast[1][name], slow[1][name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(fast[2], slow[2], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[3], slow[3], rtol=1e-10, atol=1e-12)


def test_under_autocast_pools_in_its_dtype_close_to_fp32():
    torch.manual_seed(0)
    attention = TargetAttention(16, [32, 16])
    keys, query = torch.randn(8, 10, 16, requires_grad=True), torch.randn(8, 16)
    mask = torch.rand(8, 10) > 0.3
    reference = attention(keys, query, mask)
    with torch.autocast("cpu", torch.bfloat16):
        pooled = attention(keys, query, mask)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), reference, rtol=0.05, atol=0.05)
    pooled.float().sum().backward()
    assert keys.grad.dtype == torch.float32 and (keys.grad[~mask] == 0).all()
