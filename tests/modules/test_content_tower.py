import dataclasses

import pytest
import torch

from em3rec.config import LoraConfig, ModelConfig, QFormerConfig
from em3rec.modules.content_io import DistinctTargets, distinct_rows
from em3rec.modules.content_tower import ContentTower
from em3rec.modules.frozen_content import FrozenContentTower, PooledContentProjection
from em3rec.modules.fusion_qformer import FusionQFormer
from em3rec.modules.model import build_history_encoder

WIDTHS = {"title": 24, "meta": 20}
LORA = LoraConfig(rank=2, alpha=4.0, target_modules=["attn", "cross_attn", "token_proj"])
QUERY_SIDE_LORA = LoraConfig(rank=2, alpha=4.0)  # the default targets: q_proj, out_proj, mlp
HEAD_LORA = LoraConfig(rank=2, alpha=4.0, target_modules=["head"])  # din_em3's: the output head only


def _tower(
    mode: str,
    dedup: bool = True,
    attention: str = "self",
    pooled_base: bool = False,
    num_items: int = 0,
    cache_refresh_steps: int = 50,
    num_layers: int = 2,
    lora: LoraConfig = LORA,
) -> ContentTower:
    torch.manual_seed(0)
    config = QFormerConfig(
        dim=16,
        num_heads=2,
        num_layers=num_layers,
        token_dropout=0.0,
        attention_dropout=0.0,
        ffn_dropout=0.0,
        attention=attention,
    )
    qformer = FusionQFormer(WIDTHS, config, gated=pooled_base)
    model_config = ModelConfig(seq_content_mode=mode, lora=lora, cache_refresh_steps=cache_refresh_steps)
    history = build_history_encoder(model_config, qformer, num_items)
    base = PooledContentProjection(WIDTHS, 16) if pooled_base else None
    tower = ContentTower(qformer, history, base, dedup=dedup)
    with torch.no_grad():  # LoRA B and the gate start at 0; make the adapters and the Q-Former matter
        for name, p in tower.named_parameters():
            if "lora_B" in name or name == "qformer.gate":
                p.normal_(0, 0.3)
    return tower


def _loss(out, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)

    def weighted(x: torch.Tensor) -> torch.Tensor:
        return (x * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)).sum()

    loss = weighted(out.target) + weighted(out.item_content)
    if out.history is not None and out.history.requires_grad:
        loss = loss + weighted(out.history)
    return loss


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _lora_pair(**kwargs) -> tuple[ContentTower, ContentTower]:
    """A LoRA-history tower (dedup, its fast paths) and the per-position reference with the same
    weights, both in eval mode and float64."""
    fast = _tower("lora", dedup=True, **kwargs).eval().double()
    slow = _tower("lora", dedup=False, **kwargs).eval().double()
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def _assert_lora_history_matches(fast, slow, out_fast, out_slow) -> None:
    """A fast LoRA history path against the per-position reference (float64): the same history
    content and the same gradient on every parameter, the adapters' included."""
    torch.testing.assert_close(out_fast.history, out_slow.history, rtol=1e-12, atol=1e-12)
    _loss(out_fast).backward()
    _loss(out_slow).backward()
    grads_fast, grads_slow = _grads(fast), _grads(slow)
    assert grads_fast.keys() == grads_slow.keys()
    assert any("lora_" in name for name in grads_fast)
    for name in grads_fast:
        torch.testing.assert_close(grads_fast[name], grads_slow[name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("mode", ["none", "frozen", "lora", "full"])
@pytest.mark.parametrize("attention", ["self", "cross"])
@pytest.mark.parametrize("pooled_base", [False, True])
def test_dedup_matches_per_position_reference(batch, mode, attention, pooled_base):
    # float64, so that the only difference (summation order of duplicate gradients) is invisible
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    fast = _tower(mode, dedup=True, attention=attention, pooled_base=pooled_base).eval().double()
    slow = _tower(mode, dedup=False, attention=attention, pooled_base=pooled_base).eval().double()
    slow.load_state_dict(fast.state_dict())
    out_fast, out_slow = fast(batch, targets), slow(batch, targets)
    exact = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_fast.target, out_slow.target, **exact)
    torch.testing.assert_close(out_fast.item_content, out_slow.item_content, **exact)
    if mode == "none":
        assert out_fast.history is None and out_slow.history is None
    else:
        torch.testing.assert_close(out_fast.history, out_slow.history, **exact)
        assert (out_fast.history[~batch.history_mask] == 0).all()
    _loss(out_fast).backward()
    _loss(out_slow).backward()
    grads_fast, grads_slow = _grads(fast), _grads(slow)
    assert grads_fast.keys() == grads_slow.keys() and grads_fast
    for name in grads_fast:
        torch.testing.assert_close(grads_fast[name], grads_slow[name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("attention,num_layers", [("self", 1), ("cross", 1), ("cross", 2)])
@pytest.mark.parametrize("pooled_base", [False, True])
@pytest.mark.parametrize("lora", [QUERY_SIDE_LORA, HEAD_LORA], ids=["query_side", "head"])
def test_lora_history_on_the_shared_token_side_matches_the_full_call(batch, attention, num_layers, pooled_base, lora):
    # Query-side adapters: the history branch decodes over the target branch's token side
    # (detached) and a no-gradient one for the other items; the per-position reference runs the
    # whole adapted Q-Former per position. float64: values and every gradient agree.
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    fast, slow = _lora_pair(attention=attention, num_layers=num_layers, pooled_base=pooled_base, lora=lora)
    assert fast.history.shares_context
    history_items = torch.unique(batch.history_content_index[batch.history_mask])
    is_target = torch.isin(history_items, targets.index)
    assert is_target.any() and not is_target.all()  # both halves of the shared path run
    out_fast, out_slow = fast(batch, targets), slow(batch, targets)
    _assert_lora_history_matches(fast, slow, out_fast, out_slow)


@pytest.mark.parametrize(
    "attention,num_layers,targets,shares",
    [
        ("self", 1, ["q_proj", "out_proj", "mlp"], True),
        ("self", 1, ["head"], True),  # din_em3's: after every layer
        ("self", 2, ["q_proj", "out_proj", "mlp"], False),  # token rows change from layer to layer
        ("self", 1, ["attn"], False),  # adapters on the token keys and values
        ("cross", 2, ["attn", "mlp", "head"], True),  # the self-attention over the queries only
        ("cross", 2, ["cross_attn"], False),
        ("cross", 1, ["q_proj", "token_proj"], False),
    ],
)
def test_which_adapters_keep_the_token_side_shared(attention, num_layers, targets, shares):
    lora = LoraConfig(rank=2, alpha=4.0, target_modules=targets)
    tower = _tower("lora", attention=attention, num_layers=num_layers, lora=lora)
    assert tower.history.shares_context is shares


def test_lora_history_branch_trains_only_adapters(batch):
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    tower = _tower("lora").eval()
    adapters = {n for n, _ in tower.named_parameters() if "lora_" in n}
    assert adapters and any("token_proj" in n for n in adapters) and any("attn.q_proj" in n for n in adapters)
    assert all(p.requires_grad for p in tower.parameters())  # peft turned the base off; we turn it back on

    out = tower(batch, targets)
    assert out.history.requires_grad
    g = torch.Generator().manual_seed(3)
    w_target, w_history = torch.randn(out.target.shape, generator=g), torch.randn(out.history.shape, generator=g)
    ((out.target * w_target).sum() + (out.history * w_history).sum()).backward()
    both = _grads(tower)
    tower.zero_grad(set_to_none=True)

    out = tower(batch, targets)
    (out.target * w_target).sum().backward()  # target branch only
    target_only = _grads(tower)
    tower.zero_grad(set_to_none=True)

    for name, grad in target_only.items():
        assert name not in adapters, f"target branch reached adapter {name}"
        torch.testing.assert_close(both[name], grad, rtol=0, atol=0, msg=name)
    for name in adapters:
        assert both[name].abs().sum() > 0, name


def test_lora_history_differs_from_target_branch(batch):
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    lora = _tower("lora").eval()
    frozen = _tower("frozen").eval()
    # base weights live under ".base_layer." in the adapted Q-Former
    state = {k.replace(".base_layer", ""): v for k, v in lora.state_dict().items() if "lora_" not in k}
    frozen.load_state_dict(state)
    out_lora, out_frozen = lora(batch, targets), frozen(batch, targets)
    torch.testing.assert_close(out_lora.target, out_frozen.target)  # adapters are off for the target
    assert not torch.allclose(out_lora.history, out_frozen.history)


def test_frozen_history_has_no_gradient(batch):
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    out = _tower("frozen")(batch, targets)
    assert out.target.requires_grad and not out.history.requires_grad


def test_cached_refreshes_stale_entries(batch):
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    tower = _tower("cached", num_items=41, cache_refresh_steps=2).train()
    history_items = batch.content_item_ids[torch.unique(batch.history_content_index[batch.history_mask])]
    history_only = history_items[~torch.isin(history_items, batch.item_ids)]

    assert not any(k.startswith("history.") for k in tower.state_dict())  # per rank, not checkpointed
    out = tower(batch, targets)  # step 0: targets are written first; the other history items computed
    assert 0 < history_only.numel() < history_items.numel()
    assert tower.history.last_refresh_count == history_only.numel()
    assert not out.history.requires_grad
    with torch.no_grad():
        reference = tower.eval()(batch, targets).history  # fresh encodings (dropout is 0)
    tower.train()
    torch.testing.assert_close(out.history, reference)

    with torch.no_grad():  # change the Q-Former: the bank now holds stale values
        for p in tower.qformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with torch.no_grad():
        fresh = tower.eval()(batch, targets).history
    tower.train()
    for _step in (1, 2):  # entries written at step 0 are read through step 2
        out = tower(batch, targets)
        assert tower.history.last_refresh_count == 0
        # targets are rewritten each step, so only history-only items keep the old values
        keep = torch.isin(batch.content_item_ids[batch.history_content_index], history_only) & batch.history_mask
        torch.testing.assert_close(out.history[keep], reference[keep])
        moved = torch.isin(batch.content_item_ids[batch.history_content_index], batch.item_ids) & batch.history_mask
        torch.testing.assert_close(out.history[moved], fresh[moved])
    out = tower(batch, targets)  # step 3: the history-only entries are 3 steps old -> recomputed
    assert tower.history.last_refresh_count == history_only.numel()
    torch.testing.assert_close(out.history, fresh)


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_lora_token_side_bank_matches_the_fresh_token_side_and_ages(batch, attention):
    # While the base weights stay put, the bank's token sides equal fresh ones: values and every
    # gradient (float64). Once they move, history-only items keep the old token side until it is
    # older than context_refresh_steps; targets are rewritten from the target branch every step.
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    lora = dataclasses.replace(QUERY_SIDE_LORA, context_refresh_steps=2)
    banked = _tower("lora", attention=attention, num_layers=1, num_items=41, lora=lora).double().train()
    fresh = _tower("lora", attention=attention, num_layers=1, lora=QUERY_SIDE_LORA).double().train()
    fresh.load_state_dict(banked.state_dict())
    assert fresh.history.bank is None
    assert not any(k.startswith("history.bank") for k in banked.state_dict())  # per rank, not checkpointed
    history_items = batch.content_item_ids[torch.unique(batch.history_content_index[batch.history_mask])]
    history_only = history_items[~torch.isin(history_items, batch.item_ids)]
    assert 0 < history_only.numel() < history_items.numel()

    for step in (0, 1):  # step 0 computes the history-only items; step 1 reads them all from the bank
        banked.zero_grad()
        fresh.zero_grad()
        out_banked, out_fresh = banked(batch, targets), fresh(batch, targets)
        assert banked.history.bank.last_refresh_count == (history_only.numel() if step == 0 else 0)
        torch.testing.assert_close(out_banked.history, out_fresh.history, rtol=1e-12, atol=1e-12)
        _loss(out_banked).backward()
        _loss(out_fresh).backward()
        grads_banked, grads_fresh = _grads(banked), _grads(fresh)
        assert grads_banked.keys() == grads_fresh.keys() and any("lora_" in n for n in grads_banked)
        for name in grads_banked:
            torch.testing.assert_close(grads_banked[name], grads_fresh[name], rtol=1e-10, atol=1e-10, msg=name)

    with torch.no_grad():  # move the base weights of the token side: the bank now holds stale entries
        for tower in (banked, fresh):
            torch.manual_seed(1)
            for name, p in tower.qformer.named_parameters():
                if "token_proj" in name and "lora_" not in name:
                    p.add_(0.2 * torch.randn_like(p))
    position_item = batch.content_item_ids[batch.history_content_index]  # (B, L)
    keep = torch.isin(position_item, history_only) & batch.history_mask
    moved = torch.isin(position_item, batch.item_ids) & batch.history_mask
    out_banked, out_fresh = banked(batch, targets), fresh(batch, targets)  # step 2: entries 2 steps old
    assert banked.history.bank.last_refresh_count == 0
    assert not torch.allclose(out_banked.history[keep], out_fresh.history[keep])
    torch.testing.assert_close(out_banked.history[moved], out_fresh.history[moved], rtol=1e-12, atol=1e-12)
    out_banked = banked(batch, targets)  # step 3: 3 steps old -> recomputed
    assert banked.history.bank.last_refresh_count == history_only.numel()
    torch.testing.assert_close(out_banked.history, out_fresh.history.detach(), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # evaluation computes the token side fresh
        torch.testing.assert_close(banked.eval()(batch, targets).history, fresh.eval()(batch, targets).history)


def test_lora_token_side_bank_needs_a_shared_token_side():
    lora = LoraConfig(rank=2, alpha=4.0, target_modules=["attn"], context_refresh_steps=5)
    with pytest.raises(ValueError, match="context_refresh_steps > 0 needs a token side the adapters do not change"):
        _tower("lora", num_layers=1, num_items=41, lora=lora)


def test_cached_needs_dedup():
    with pytest.raises(ValueError, match="dedup"):
        _tower("cached", dedup=False, num_items=41)


def test_frozen_baseline_tower(batch):
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    tower = FrozenContentTower(PooledContentProjection(WIDTHS, 16), use_history=True)
    out = tower(batch, targets)
    B, L = batch.history_mask.shape
    assert out.target.shape == (B, 16) and out.history.shape == (B, L, 16)
    assert out.item_content.shape == (targets.index.numel(), 16)
    # the pooled vector is the masked mean: a missing modality is zeros, padded tokens are ignored
    tokens = {m: t.clone() for m, t in batch.content_tokens.items()}
    for m in tokens:
        tokens[m][~batch.content_token_mask[m]] = 7.0
    torch.testing.assert_close(
        tower.projection(tokens, batch.content_token_mask),
        tower.projection(batch.content_tokens, batch.content_token_mask),
    )


@pytest.mark.parametrize("attention", ["self", "cross"])
def test_merged_history_adapters_match_peft_forward(batch, attention):
    # The history branch folds W + s B A into each adapted Linear (`model.lora.merge`, the default);
    # peft's own forward (x W^T plus the low-rank passes) is the reference. Two towers with the same
    # weights, float64: outputs and every gradient agree.
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)

    def run(merge: bool):
        tower = _tower("lora", attention=attention, lora=dataclasses.replace(LORA, merge=merge)).eval().double()
        assert tower.history.merge == merge and tower.history._adapted
        out = tower(batch, targets)
        _loss(out).backward()
        return out.history.detach(), _grads(tower)

    (merged, merged_grads), (reference, reference_grads) = run(True), run(False)
    torch.testing.assert_close(merged, reference, rtol=1e-12, atol=1e-12)
    assert merged_grads.keys() == reference_grads.keys()
    for name in reference_grads:
        torch.testing.assert_close(merged_grads[name], reference_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_adapter_dropout_runs_peft_forward():
    # Dropout on the adapters' input cannot be folded into a weight: peft's forward runs.
    assert not _tower("lora", lora=dataclasses.replace(LORA, dropout=0.1)).history.merge


@pytest.mark.parametrize("mode", ["none", "frozen", "lora", "full", "cached"])
def test_em3_with_pooled_base_starts_at_the_frozen_baseline(batch, mode):
    # The gate starts at 0: the EM3 tower's target, history and item content equal the two-stage
    # baseline's (same projection weights) exactly, and training then adds the Q-Former's part.
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    torch.manual_seed(0)
    config = QFormerConfig(dim=16, num_heads=2, token_dropout=0.5, attention_dropout=0.5, ffn_dropout=0.5)
    qformer = FusionQFormer(WIDTHS, config, out_dim=16, gated=True)
    history = build_history_encoder(ModelConfig(seq_content_mode=mode, lora=LORA), qformer, num_items=41)
    em3 = ContentTower(qformer, history, PooledContentProjection(WIDTHS, 16)).train()
    baseline = FrozenContentTower(PooledContentProjection(WIDTHS, 16), use_history=mode != "none")
    baseline.projection.load_state_dict(em3.pooled_base.state_dict())
    out_em3, out_baseline = em3(batch, targets), baseline(batch, targets)
    for field in ("target", "item_content", "history"):
        expected = getattr(out_baseline, field)
        if expected is None:
            assert getattr(out_em3, field) is None
        else:
            torch.testing.assert_close(getattr(out_em3, field), expected, rtol=0, atol=0, msg=field)
    # ... and the gate is trainable from the first step, which opens the Q-Former path.
    (out_em3.target**2).sum().backward()
    assert qformer.gate.grad is not None and qformer.gate.grad.abs().sum() > 0


@pytest.mark.parametrize("dedup", [True, False])
def test_catalogue_rows_and_stored_pooled_vectors(meta, items, dedup):
    from em3rec.testing.example_batch import example_batch

    # The catalogue sample goes through the target branch (one Q-Former call with the targets);
    # the pooled base reads the stored pooled vectors instead of pooling the tokens each step.
    batch = example_batch(meta, 12, items, catalogue_samples=5, pooled_vectors=True, seed=2)
    plain = dataclasses.replace(batch, content_pooled={})
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    tower = _tower("lora", dedup=dedup, pooled_base=True).eval().double()
    with torch.no_grad():
        out, pooled_here = tower(batch, targets), tower(plain, targets)
        expected = tower.encode_items(plain.content_tokens, plain.content_token_mask, batch.catalogue_content_index)
    assert out.catalogue.shape == (5, 16)
    torch.testing.assert_close(pooled_here.catalogue, expected, rtol=1e-12, atol=1e-12)
    for field in ("target", "item_content", "history", "catalogue"):  # fp16 rounding of the stored means
        torch.testing.assert_close(getattr(out, field), getattr(pooled_here, field), rtol=2e-3, atol=2e-3, msg=field)


def test_pooled_history_reads_no_history_tokens(meta, items):
    from em3rec.modules.history_encoders import PooledHistory
    from em3rec.testing.example_batch import example_batch

    # seq_content_mode = "pooled": history content is the pooled base alone (the two-stage
    # baseline's), and the Q-Former reads the targets and the catalogue sample only: poisoning the
    # tokens of every other item changes nothing.
    batch = example_batch(meta, 12, items, catalogue_samples=4, pooled_vectors=True, seed=5)
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    torch.manual_seed(0)
    qformer = FusionQFormer(WIDTHS, QFormerConfig(dim=16, num_heads=2), out_dim=16, gated=True)
    with torch.no_grad():
        qformer.gate.normal_(0, 0.3)
    tower = ContentTower(qformer, PooledHistory(), PooledContentProjection(WIDTHS, 16)).eval()
    read = torch.zeros(batch.content_item_ids.shape[0], dtype=torch.bool)
    read[batch.target_content_index] = read[batch.catalogue_content_index] = True
    assert (~read).any()
    poisoned = dataclasses.replace(
        batch,
        content_tokens={m: t.masked_fill(~read[:, None, None], float("nan")) for m, t in batch.content_tokens.items()},
    )
    with torch.no_grad():
        out, out_poisoned = tower(batch, targets), tower(poisoned, targets)
        base = tower.pooled_base.project(batch.content_pooled)  # (U, D)
    for field in ("target", "item_content", "history", "catalogue"):
        torch.testing.assert_close(getattr(out_poisoned, field), getattr(out, field), rtol=0, atol=0, msg=field)
    mask = batch.history_mask
    torch.testing.assert_close(out.history[mask], base[batch.history_content_index[mask]], rtol=0, atol=0)


@pytest.mark.parametrize("num_rows", [1, 7, 40])
def test_distinct_rows_equal_torch_unique(num_rows: int):
    torch.manual_seed(num_rows)
    index = torch.randint(0, num_rows, (3 * num_rows,))  # some rows repeated, some absent
    distinct, inverse = distinct_rows(index, num_rows)
    expected, expected_inverse = torch.unique(index, return_inverse=True)
    assert torch.equal(distinct, expected) and torch.equal(inverse, expected_inverse)
    assert distinct_rows(index[:0], num_rows)[0].numel() == 0


@pytest.mark.parametrize("attention,num_layers", [("self", 1), ("self", 2), ("cross", 2)])
@pytest.mark.parametrize("pooled_base", [False, True])
def test_head_only_history_adapters_reuse_the_targets_query_vectors(batch, attention, num_layers, pooled_base):
    # Adapters on the head only: shared items take the target branch's final query vectors, the
    # others are decoded without gradient, and only the adapted head runs with autograd. float64:
    # values and every gradient agree with the per-position reference (the full adapted call).
    targets = DistinctTargets.of(batch.target_content_index, batch.weights)
    fast, slow = _lora_pair(attention=attention, num_layers=num_layers, pooled_base=pooled_base, lora=HEAD_LORA)
    assert fast.history.head_only
    decoded = []
    hook = fast.qformer.register_forward_hook(lambda m, args, out: decoded.append(out.pooled.shape[0]))
    out_fast, out_slow = fast(batch, targets), slow(batch, targets)
    hook.remove()
    history_items = torch.unique(batch.history_content_index[batch.history_mask])
    shared = int(torch.isin(history_items, targets.index).sum())
    assert 0 < shared < history_items.numel()
    # the target branch, then one decode of the history items that are no targets
    assert decoded[1] == history_items.numel() - shared
    _assert_lora_history_matches(fast, slow, out_fast, out_slow)
