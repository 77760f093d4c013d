import pytest
import torch

from em3rec.config import CICConfig
from em3rec.modules import content_tower, frozen_content, fusion_qformer, shape_buckets
from em3rec.modules.cic import ContentIDContrastive
from em3rec.modules.content_io import DistinctTargets
from em3rec.modules.frozen_content import PooledContentProjection
from em3rec.modules.shape_buckets import bucket_size, pad_index, wants_buckets
from tests.modules.test_content_tower import QUERY_SIDE_LORA, _grads, _loss, _tower


def test_bucket_sizes_cover_every_count_with_little_padding():
    for n in range(1, 5000):
        b = bucket_size(n)
        assert b >= n and bucket_size(b) == b, n  # a bucket is its own bucket
        assert b - n < max(8, n / shape_buckets.PER_OCTAVE), n
    assert len({bucket_size(n) for n in range(1025, 2049)}) == shape_buckets.PER_OCTAVE  # (1024, 2048]
    assert bucket_size(0) == 0  # nothing to encode: no padding (and no endless re-padding)


def test_pad_index_repeats_the_first_row():
    assert pad_index(torch.tensor([4, 2, 7]), 5).tolist() == [4, 2, 7, 4, 4]
    assert pad_index(torch.tensor([], dtype=torch.long), 8).numel() == 0


def test_buckets_only_under_cpu_low_precision_autocast():
    x = torch.zeros(3)
    assert not wants_buckets(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert wants_buckets(x)
    assert not wants_buckets(torch.fx.Proxy(torch.fx.Graph().placeholder("x")))


@pytest.mark.parametrize(
    "mode,attention,num_layers",
    [("lora", "self", 1), ("lora", "cross", 2), ("lora", "self", 2), ("full", "self", 1), ("frozen", "cross", 1)],
)
def test_bucketed_rows_change_no_value_and_no_gradient(batch, monkeypatch, mode, attention, num_layers):
    # float64 with the buckets forced on: the padded rows are computed and dropped, so outputs and
    # every gradient equal the unpadded run's.
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    kwargs = dict(attention=attention, num_layers=num_layers, pooled_base=True, lora=QUERY_SIDE_LORA)
    plain = _tower(mode, **kwargs).eval().double()
    bucketed = _tower(mode, **kwargs).eval().double()
    bucketed.load_state_dict(plain.state_dict())
    out_plain = plain(batch, targets)
    _loss(out_plain).backward()

    padded_to = []

    def spy(index, size):
        padded_to.append((index.shape[0], size))
        return pad_index(index, size)

    for module in (fusion_qformer, content_tower):
        monkeypatch.setattr(module, "wants_buckets", lambda x: True)
        monkeypatch.setattr(module, "pad_index", spy)
    out = bucketed(batch, targets)
    _loss(out).backward()
    assert any(size > n for n, size in padded_to)  # rows were padded
    for field in ("target", "item_content", "catalogue", "history"):
        torch.testing.assert_close(getattr(out, field), getattr(out_plain, field), rtol=1e-12, atol=1e-12)
    grads, grads_plain = _grads(bucketed), _grads(plain)
    assert grads.keys() == grads_plain.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads_plain[name], rtol=1e-10, atol=1e-10, msg=name)


def test_no_items_need_no_padding(monkeypatch):
    # A batch whose histories are all empty asks the history branch to decode 0 items.
    from tests.modules.test_fusion_qformer import _inputs, _qformer

    monkeypatch.setattr(fusion_qformer, "wants_buckets", lambda x: True)
    qformer = _qformer("self", num_layers=1)
    tokens, mask = _inputs()
    context = qformer.context(tokens, mask, torch.zeros(0, dtype=torch.long))
    assert qformer.decode(context).pooled.shape == (0, 16)
    assert qformer(tokens, mask, torch.tensor([3, 1, 3])).pooled.shape == (3, 16)  # padded to 8, cut to 3


def test_bucket_rows_pads_with_the_first_row_only_when_wanted(monkeypatch):
    x = torch.arange(30.0).view(10, 3)
    assert shape_buckets.bucket_rows(x) is x  # no autocast: no padding
    monkeypatch.setattr(shape_buckets, "wants_buckets", lambda x: True)
    padded = shape_buckets.bucket_rows(x)
    assert padded.shape == (16, 3) and torch.equal(padded[:10], x) and torch.equal(padded[10:], x[:1].expand(6, 3))
    assert shape_buckets.bucket_rows(torch.zeros(16, 3)).shape == (16, 3)
    assert shape_buckets.bucket_rows(torch.zeros(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("num_negatives", [0, 5])
def test_bucketed_cic_and_pooled_projection_change_no_value_and_no_gradient(monkeypatch, num_negatives):
    # float64, buckets forced on: the heads, the similarity and the projection run over 16 rows for 10.
    cic = ContentIDContrastive(6, 5, CICConfig(weight=0.5, dim=4, num_negatives=num_negatives)).double()
    projection = PooledContentProjection({"title": 7, "meta": 3}, 6).double()
    ids, content = torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    pooled = {"title": torch.randn(10, 7, dtype=torch.float64), "meta": torch.randn(10, 3, dtype=torch.float64)}
    item_ids, weights = torch.tensor([0, 1, 2, 3, 1, 5, 6, 7, 8, 9]), torch.tensor([1.0] * 9 + [0.0])
    masks = {"title": torch.ones(10, 1, dtype=torch.bool), "meta": torch.arange(10)[:, None] != 4}

    def run() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        for module in (cic, projection):
            module.zero_grad()
        a, b = ids.clone().requires_grad_(), content.clone().requires_grad_()
        torch.manual_seed(0)  # the same sampled negatives
        loss = cic(a, b, item_ids, weights).loss
        projected = projection.project(pooled)
        # The loader's pooled level: one token per modality; the missing one (mask 0) reads as 0.
        forwarded = projection({m: v[:, None] for m, v in pooled.items()}, masks)
        (loss + projected.square().sum() + forwarded.square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in [*cic.named_parameters(), *projection.named_parameters()]}
        return loss.detach(), torch.cat([projected, forwarded]).detach(), {"ids": a.grad, "content": b.grad, **grads}

    plain = run()
    widths = []
    real_linear = torch.nn.functional.linear
    for module in (shape_buckets, frozen_content):
        monkeypatch.setattr(module, "wants_buckets", lambda x: True)
    monkeypatch.setattr(
        torch.nn.functional, "linear", lambda x, *args: widths.append(x.shape[0]) or real_linear(x, *args)
    )
    bucketed = run()
    assert widths == [16, 16, 16, 16]  # both CIC heads and both projections saw the padded rows
    missing = {"title": pooled["title"], "meta": pooled["meta"] * masks["meta"]}
    torch.testing.assert_close(plain[1][10:], projection.project(missing).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bucketed[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bucketed[1], plain[1], rtol=1e-12, atol=1e-12)
    assert bucketed[2].keys() == plain[2].keys()
    for name in plain[2]:
        torch.testing.assert_close(bucketed[2][name], plain[2][name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_off_the_buckets_the_projection_casts_once_to_the_autocast_dtype(monkeypatch, stored) -> None:
    """Where autocast runs without buckets (CUDA; here CPU with buckets switched off) the parts go
    straight to the autocast dtype: the same values as through fp32, and no fp32 copy of the input."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.to: list[torch.dtype] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func is torch.ops.aten._to_copy.default and args[0].dim() == 2 and args[0].shape[0] == 37:
                self.to.append(kwargs["dtype"])
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(frozen_content, "wants_buckets", lambda x: False)
    torch.manual_seed(0)
    projection = PooledContentProjection({"title": 24, "meta": 16}, out_dim=8)
    pooled = {"title": torch.randn(37, 24).to(stored), "meta": torch.randn(37, 16).to(stored)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = projection.proj(torch.cat([pooled["title"].float(), pooled["meta"].float()], dim=-1))
        with Casts() as casts:
            out = projection.project(pooled)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert torch.float32 not in casts.to
