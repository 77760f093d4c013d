"""The Q-Former's building blocks (em3rec.modules.qformer_layers): the CPU dropout, the explicit attention."""

import pytest
import torch
import torch.nn.functional as F

from em3rec.modules.qformer_layers import attention, dropout, explicit_attention


def test_cpu_dropout_keeps_the_rate_and_the_scale():
    x = torch.ones(200_000)
    y = dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert torch.equal(dropout(x, 0.3, training=False), x)


@pytest.mark.parametrize("rows", [2, 7])
def test_explicit_attention_matches_sdpa_in_values_and_gradients(rows):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, n, 8, generator=g, dtype=torch.float64) for n in (rows, 9, 9))
    mask = torch.rand(6, 1, 1, 9, generator=g) > 0.4
    mask[..., 0] = True  # every row attends somewhere
    for m in (mask, None):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        reference = [t.clone().requires_grad_() for t in (q, k, v)]
        out = explicit_attention(*inputs, m)
        expected = F.scaled_dot_product_attention(*reference, attn_mask=m)
        torch.testing.assert_close(out, expected)
        out.pow(2).sum().backward()
        expected.pow(2).sum().backward()
        for a, b in zip(inputs, reference):
            torch.testing.assert_close(a.grad, b.grad)


def test_cpu_bf16_attention_stays_within_bf16_rounding_of_fp32():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(50, 4, n, 16, generator=g) for n in (2, 50, 50))
    mask = torch.rand(50, 1, 1, 50, generator=g) > 0.3
    mask[..., 0] = True
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=2e-2)
