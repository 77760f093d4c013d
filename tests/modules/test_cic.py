import math

import pytest
import torch
import torch.nn.functional as F

from em3rec.config import CICConfig, ConfigError, load_config
from em3rec.modules.cic import ContentIDContrastive


def _reference(cic, id_emb, content, item_ids, valid):
    """Loop-by-loop symmetric InfoNCE with same-item and invalid rows removed from the negatives."""
    z_i = F.normalize(cic.id_head(id_emb), dim=-1)
    z_c = F.normalize(cic.content_head(content), dim=-1)
    tau = cic._temperature
    total, count = 0.0, 0
    for i in range(len(item_ids)):
        if not valid[i]:
            continue
        others = [j for j in range(len(item_ids)) if j == i or (valid[j] and item_ids[j] != item_ids[i])]
        i2c = torch.stack([z_i[i] @ z_c[j] / tau for j in others])
        c2i = torch.stack([z_c[i] @ z_i[j] / tau for j in others])
        pos = others.index(i)
        total = total + 0.5 * (-(i2c.log_softmax(0)[pos]) - c2i.log_softmax(0)[pos])
        count += 1
    return total / max(count, 1)


def test_matches_reference_with_duplicates_and_padding():
    cic = ContentIDContrastive(12, 10, CICConfig(weight=0.3, temperature=0.2, dim=6, num_negatives=0))
    id_emb, content = torch.randn(7, 12), torch.randn(7, 10)
    item_ids = torch.tensor([3, 5, 3, 8, 9, 5, 1])
    weights = torch.tensor([1, 1, 1, 1, 0, 1, 1.0])
    out = cic(id_emb, content, item_ids, weights)
    expected = _reference(cic, id_emb, content, item_ids.tolist(), (weights > 0).tolist())
    torch.testing.assert_close(out.value, expected)
    torch.testing.assert_close(out.loss, 0.3 * expected)


def test_all_distinct_equals_plain_symmetric_infonce():
    cic = ContentIDContrastive(8, 8, CICConfig(weight=1.0, temperature=0.1, dim=8, num_negatives=0))
    id_emb, content = torch.randn(5, 8), torch.randn(5, 8)
    out = cic(id_emb, content, torch.arange(5))
    logits = F.normalize(cic.id_head(id_emb), dim=-1) @ F.normalize(cic.content_head(content), dim=-1).T / 0.1
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    torch.testing.assert_close(out.value, expected)


@pytest.mark.parametrize("num_negatives", [0, 4])
@pytest.mark.parametrize("item_ids", [[4, 4, 4, 4], [7], [1, 2, 1, 2]])
def test_finite_with_duplicates_or_one_item(num_negatives, item_ids):
    cic = ContentIDContrastive(8, 8, CICConfig(weight=0.1, num_negatives=num_negatives, dim=4))
    n = len(item_ids)
    id_emb = torch.randn(n, 8, requires_grad=True)
    content = torch.randn(n, 8, requires_grad=True)
    out = cic(id_emb, content, torch.tensor(item_ids))
    out.loss.backward()
    assert torch.isfinite(out.value)
    assert torch.isfinite(id_emb.grad).all() and torch.isfinite(content.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in cic.parameters())
    if len(set(item_ids)) == 1:
        assert out.value == 0


def test_sampled_negatives_match_reference():
    torch.manual_seed(0)
    K, N, tau = 3, 6, 0.5
    cic = ContentIDContrastive(8, 8, CICConfig(temperature=tau, num_negatives=K, dim=4))
    id_emb, content = torch.randn(N, 8), torch.randn(N, 8)
    item_ids = torch.tensor([0, 1, 2, 0, 4, 5])
    torch.manual_seed(123)
    value = cic(id_emb, content, item_ids).value
    torch.manual_seed(123)
    negatives = (torch.arange(N)[:, None] + torch.randint(1, N, (N, K))) % N
    z_i = F.normalize(cic.id_head(id_emb), dim=-1)
    z_c = F.normalize(cic.content_head(content), dim=-1)
    total = 0.0
    for i in range(N):
        negs = [j for j in negatives[i].tolist() if item_ids[j] != item_ids[i]]
        for a, b in ((z_i, z_c), (z_c, z_i)):
            logits = torch.stack([a[i] @ b[i]] + [a[i] @ b[j] for j in negs]) / tau
            total = total - 0.5 * logits.log_softmax(0)[0]
    torch.testing.assert_close(value, total / N)
    assert negatives.ne(torch.arange(N)[:, None]).all()


def test_random_embeddings_give_about_log_n():
    cic = ContentIDContrastive(32, 32, CICConfig(temperature=100.0, dim=32, num_negatives=0))  # flat logits
    value = cic(torch.randn(50, 32), torch.randn(50, 32), torch.arange(50)).value
    assert abs(value.item() - math.log(50)) < 0.05


@pytest.mark.parametrize("id_gradient, content_gradient", [(True, True), (False, True), (True, False)])
def test_gradient_switches_keep_the_loss_and_stop_only_their_side(id_gradient, content_gradient):
    torch.manual_seed(0)
    id_emb = torch.randn(8, 12, requires_grad=True)
    content = torch.randn(8, 10, requires_grad=True)
    item_ids = torch.tensor([0, 1, 2, 3, 3, 4, 5, 6])
    config = CICConfig(dim=6, id_gradient=id_gradient, content_gradient=content_gradient, num_negatives=0)
    cic = ContentIDContrastive(12, 10, config)
    reference = ContentIDContrastive(12, 10, CICConfig(dim=6, num_negatives=0))
    reference.load_state_dict(cic.state_dict())
    out = cic(id_emb, content, item_ids)
    torch.testing.assert_close(out.value, reference(id_emb, content, item_ids).value)
    out.loss.backward()
    assert cic.id_head.weight.grad.abs().sum() > 0 and cic.content_head.weight.grad.abs().sum() > 0  # heads learn
    for tensor, flows in ((id_emb, id_gradient), (content, content_gradient)):
        if flows:
            assert tensor.grad is not None and tensor.grad.abs().sum() > 0
        else:
            assert tensor.grad is None


def test_config_refuses_cic_with_neither_side_trained():
    with pytest.raises(ConfigError, match="model.cic.id_gradient and model.cic.content_gradient"):
        load_config("din_em3", ["model.cic.id_gradient=false", "model.cic.content_gradient=false"])
    load_config("din_em3", ["model.cic.id_gradient=false", "model.cic.content_gradient=false", "model.cic.weight=0"])


def test_warmup_ramps_lambda_per_training_call_and_heads_have_no_bias():
    cic = ContentIDContrastive(8, 8, CICConfig(weight=0.2, warmup_steps=4, dim=4, num_negatives=0))
    assert cic.id_head.bias is None and cic.content_head.bias is None
    id_emb, content, item_ids = torch.randn(6, 8), torch.randn(6, 8), torch.arange(6)
    ratios = [(out.loss / out.value).item() for out in (cic(id_emb, content, item_ids) for _ in range(6))]
    assert ratios == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    cic.eval()
    cic(id_emb, content, item_ids)
    assert cic.steps.item() == 6  # evaluation does not advance the ramp
    assert "steps" in cic.state_dict()  # a resumed run continues the ramp
