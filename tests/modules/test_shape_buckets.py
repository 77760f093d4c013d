import pytest
import torch

from em3rec.modules import content_tower, fusion_qformer, shape_buckets
from em3rec.modules.content_io import DistinctTargets
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
