import pytest
import torch

from em3rec.config import QFormerConfig
from em3rec.modules.history_encoders import lora_target_names
from em3rec.modules.fusion_qformer import FusionQFormer

WIDTHS = {"title": 24, "meta": 20}


def _inputs(U: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = {"title": torch.randn(U, 4, 24, generator=g).half(), "meta": torch.randn(U, 6, 20, generator=g).half()}
    mask = {"title": torch.ones(U, 4, dtype=torch.bool), "meta": torch.ones(U, 6, dtype=torch.bool)}
    mask["title"][:, 3:] = False
    if U > 1:
        mask["meta"][1, 2:] = False
    return tokens, mask


def _qformer(attention: str, num_layers: int = 2, num_queries: int = 2, out_dim=None) -> FusionQFormer:
    config = QFormerConfig(
        dim=16,
        num_queries=num_queries,
        num_layers=num_layers,
        num_heads=2,
        token_dropout=0.1,
        attention_dropout=0.1,
        ffn_dropout=0.1,
        attention=attention,
    )
    return FusionQFormer(WIDTHS, config, out_dim=out_dim).eval()


@pytest.mark.parametrize("attention", ["self", "cross"])
@pytest.mark.parametrize("num_layers,num_queries", [(1, 1), (2, 3)])
def test_shapes(attention, num_layers, num_queries):
    out = _qformer(attention, num_layers, num_queries, out_dim=12)(*_inputs())
    assert out.query_embeddings.shape == (5, num_queries, 16)
    assert out.pooled.shape == (5, 12)


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_padded_tokens_change_nothing(attention):
    qformer = _qformer(attention)
    tokens, mask = _inputs()
    before = qformer(tokens, mask).query_embeddings
    tokens["title"][:, 3:] = 100.0  # padded positions
    tokens["meta"][1, 2:] = -50.0
    after = qformer(tokens, mask).query_embeddings
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_missing_modality_changes_nothing(attention):
    qformer = _qformer(attention)
    tokens, mask = _inputs()
    mask["meta"][2] = False  # item 2 has no meta modality
    before = qformer(tokens, mask).pooled
    tokens["meta"][2] = torch.randn(6, 20).half() * 10
    after = qformer(tokens, mask).pooled
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # masking is not zero-filling: zero tokens that take part in attention give another result
    tokens["meta"][2] = 0.0
    mask["meta"][2] = True
    assert not torch.allclose(qformer(tokens, mask).pooled[2], before[2])


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_item_without_tokens_is_finite(attention):
    qformer = _qformer(attention).train()
    tokens, mask = _inputs()
    for m in mask:
        mask[m][0] = False
    tokens["title"][0] = float("nan")  # never read: every token of item 0 is masked
    out = qformer(tokens, mask)
    assert torch.isfinite(out.pooled).all()
    out.pooled.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in qformer.parameters() if p.grad is not None)


def test_no_items():
    tokens, mask = _inputs(U=0)
    assert _qformer("self")(tokens, mask).pooled.shape == (0, 16)


def test_lora_targets_name_linears():
    names = lora_target_names(_qformer("cross", num_layers=1), ["attn", "token_proj"])
    assert "token_proj.title" in names and "layers.0.attn.q_proj" in names
    assert not any("cross_attn" in n or "mlp" in n for n in names)
    with pytest.raises(ValueError):
        lora_target_names(_qformer("self"), ["nothing"])


def test_compiles_without_graph_breaks():
    qformer = _qformer("self")
    tokens, mask = _inputs()
    compiled = torch.compile(qformer, backend="eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(tokens, mask).pooled, qformer(tokens, mask).pooled)


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_packed_token_embedding_matches_the_dense_reference(attention):
    # The fast path reads only real tokens; the dense path (kept as the reference, and what
    # torch.compile uses) projects every position. float64 and eval: outputs and grads must agree.
    qformer = _qformer(attention).double()
    tokens, mask = _inputs(U=6)
    mask["meta"][4] = False  # a missing modality
    index = torch.tensor([5, 0, 2, 2, 4])  # rows to encode, with a repeat

    def run(dense: bool):
        qformer.zero_grad(set_to_none=True)
        if dense:
            qformer.embed_tokens = qformer.embed_tokens_dense  # instance override
        try:
            out = qformer(tokens, mask, index)
        finally:
            qformer.__dict__.pop("embed_tokens", None)
        out.pooled.pow(2).sum().backward()
        return out.pooled.detach(), {n: p.grad.clone() for n, p in qformer.named_parameters() if p.grad is not None}

    (fast, fast_grads), (slow, slow_grads) = run(dense=False), run(dense=True)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-10, atol=1e-12, msg=name)
    x_fast, mask_fast = qformer.embed_tokens(tokens, mask, index)
    x_slow, mask_slow = qformer.embed_tokens_dense(tokens, mask, index)
    assert torch.equal(mask_fast, mask_slow)
    torch.testing.assert_close(x_fast[mask_fast], x_slow[mask_slow], rtol=0, atol=1e-12)
    assert (x_fast[~mask_fast] == 0).all()


def test_packed_token_embedding_never_reads_padded_tokens():
    qformer = _qformer("self").train()
    tokens, mask = _inputs()
    tokens["title"][:, 3:] = float("nan")  # padding of every item
    out = qformer(tokens, mask)
    out.pooled.sum().backward()
    assert torch.isfinite(out.pooled).all()
    assert all(torch.isfinite(p.grad).all() for p in qformer.parameters() if p.grad is not None)


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_flop_counter_module_hooks_run_under_no_grad(attention):
    # FlopCounterMode(module) hooks every submodule's inputs for the backward; under no_grad a view
    # of a parameter as an input (requires_grad without a grad_fn) makes those hooks fail.
    from torch.utils.flop_counter import FlopCounterMode

    qformer = _qformer(attention, num_layers=1)
    with FlopCounterMode(qformer, display=False) as counter, torch.no_grad():
        qformer(*_inputs())
    assert counter.get_total_flops() > 0


@pytest.mark.parametrize("num_queries", [1, 3])
def test_one_self_attention_layer_in_two_parts_matches_the_layer_over_all_rows(num_queries):
    # The separable path runs the token side (projections, keys, values) and then the queries'
    # decode over it, as the history branch and the context bank reuse it; the reference is the
    # layer over each item's [queries; tokens] (the several-layer code). float64 and eval: outputs
    # and every parameter's gradient must agree.
    qformer = _qformer("self", num_layers=1, num_queries=num_queries).double()
    tokens, mask = _inputs(U=6)
    mask["meta"][4] = False  # a missing modality
    Q = num_queries

    def run(reference: bool):
        qformer.zero_grad(set_to_none=True)
        if reference:
            x_tokens, token_mask = qformer.embed_tokens(tokens, mask)
            U = x_tokens.shape[0]
            x = torch.cat([qformer.queries.expand(U, -1, -1), x_tokens], dim=1)  # (U, Q + T, d)
            key_mask = torch.cat([token_mask.new_ones(U, Q), token_mask], dim=1)
            pooled = qformer._output(qformer.layers[0](x, key_mask, num_out=Q), None).pooled
        else:
            pooled = qformer(tokens, mask).pooled
        pooled.pow(2).sum().backward()
        return pooled.detach(), {n: p.grad.clone() for n, p in qformer.named_parameters() if p.grad is not None}

    (fast, fast_grads), (ref, ref_grads) = run(reference=False), run(reference=True)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    assert fast_grads.keys() == ref_grads.keys() and "queries" in fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)
