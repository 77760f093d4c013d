import pytest
import torch

from em3rec.modules.backbones import DLRMBackbone, RankingInputs, masked_mean


def _inputs(B: int = 6, F: int = 2, L: int = 5, C: int = 2, D: int = 16) -> RankingInputs:
    mask = torch.rand(B, L) > 0.3
    mask[:, 0] = True
    return RankingInputs(
        pooled=torch.randn(B, F, D),
        target_id=torch.randn(B, D),
        history_ids=torch.randn(B, L, D) * mask[..., None],
        history_mask=mask,
        content=torch.randn(B, 2, D)[:, :C],
    )


def _orthogonal_to_the_others(inputs: RankingInputs) -> torch.Tensor:
    """``(B, D)`` per row, a unit vector orthogonal to every vector DLRM dots the target content with."""
    history = masked_mean(inputs.history_ids, inputs.history_mask).unsqueeze(1)
    others = torch.cat([inputs.pooled, history, inputs.content, inputs.target_id.unsqueeze(1)], dim=1)  # (B, N, D)
    q, _ = torch.linalg.qr(others.transpose(1, 2), mode="complete")  # (B, D, D)
    return q[:, :, -1]  # outside the span of the N < D vectors


@pytest.mark.parametrize("raw_content", [False, True])
def test_dlrm_sees_content_only_through_dot_products_unless_raw(raw_content):
    torch.manual_seed(0)
    inputs = _inputs()
    backbone = DLRMBackbone(num_pooled=2, num_content=2, dim=16, over_layers=[32], dropout=0.0, raw_content=raw_content)
    backbone.eval()
    # Moving the target content along a direction orthogonal to every other vector keeps every dot
    # product except its own with the moved vector, which DLRM does not compute.
    moved = inputs.content.clone()
    moved[:, 0] += 3.0 * _orthogonal_to_the_others(inputs)
    shifted = RankingInputs(inputs.pooled, inputs.target_id, inputs.history_ids, inputs.history_mask, moved)
    before, after = backbone(inputs), backbone(shifted)
    assert before.shape == (6,)
    if raw_content:
        assert (before - after).abs().min() > 1e-4
    else:
        torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)


def test_dlrm_raw_content_without_content_is_the_plain_backbone():
    torch.manual_seed(0)
    plain = DLRMBackbone(num_pooled=2, num_content=0, dim=16, over_layers=[32], dropout=0.0)
    torch.manual_seed(0)
    raw = DLRMBackbone(num_pooled=2, num_content=0, dim=16, over_layers=[32], dropout=0.0, raw_content=True)
    inputs = _inputs(C=0)
    torch.testing.assert_close(plain(inputs), raw(inputs), rtol=0, atol=0)
