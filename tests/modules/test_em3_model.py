import dataclasses
import itertools

import pytest
import torch

from em3rec.config import BACKBONES, CONTENT_VARIANTS, SEQ_CONTENT_MODES, CICConfig, QFormerConfig
from em3rec.modules.model import EM3Model, EM3Train, build_model

CONTENTS = CONTENT_VARIANTS
SEQ_MODES = SEQ_CONTENT_MODES


@pytest.mark.parametrize("backbone,content,mode", list(itertools.product(BACKBONES, CONTENTS, SEQ_MODES)))
def test_every_variant_runs_and_trains_every_parameter(meta, data_config, batch, backbone, content, mode, model_config):
    config = model_config(backbone=backbone, content=content, seq_content_mode=mode)
    train = EM3Train(build_model(config, meta, data_config))
    loss, (loss_detached, logits, labels, aux) = train(batch)
    B = batch.batch_size
    assert logits.shape == (B,) and labels is batch.labels and loss.shape == ()
    assert set(aux) == {"bce", "cic", "appeal"} and torch.isfinite(loss)
    assert not loss_detached.requires_grad and not logits.requires_grad
    out = train.model(batch)
    if content == "none":
        assert out.item_ids is None and out.item_content is None and aux["cic"] == 0
    else:
        V = batch.target_content_index.unique().numel()
        assert out.item_ids.shape == (V,) and out.item_content.shape == (V, 16)
        assert (aux["cic"] > 0) == (content == "em3")
    # DDP under DMP needs a gradient for every trainable dense parameter on every step
    loss.backward()
    missing = [n for n, p in train.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in train.parameters() if p.grad is not None)


@pytest.mark.parametrize("content", ["none", "frozen", "em3"])
def test_dlrm_raw_content_trains_every_parameter(meta, data_config, batch, content, model_config):
    config = model_config(backbone="dlrm", content=content, seq_content_mode="lora", dlrm_raw_content=True)
    model = build_model(config, meta, data_config)
    plain = build_model(dataclasses.replace(config, dlrm_raw_content=False), meta, data_config)
    C = {"none": 0, "frozen": 2, "em3": 2}[content]  # target content and content interest

    def over_arch_inputs(m: EM3Model) -> int:
        return m.backbone.over_arch.model[0]._mlp[0]._linear.in_features

    assert over_arch_inputs(model) - over_arch_inputs(plain) == 16 * C
    loss, _ = EM3Train(model)(batch)
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_only_the_modules_a_variant_uses_are_built(meta, data_config, model_config):
    model = build_model(model_config(content="none"), meta, data_config)
    assert model.content_tower is None and model.content_interest is None and model.cic is None
    model = build_model(model_config(seq_content_mode="none", cic=CICConfig(weight=0.0)), meta, data_config)
    assert model.content_interest is None and model.cic is None
    assert not any("lora_" in n for n, _ in model.named_parameters())
    model = build_model(model_config(seq_content_mode="lora"), meta, data_config)
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_padding_rows_do_not_count(meta, data_config, batch, model_config):
    train = EM3Train(build_model(model_config(), meta, data_config)).eval()
    loss, (_, _, _, aux) = train(batch)
    batch.labels[-2:] = 1.0 - batch.labels[-2:]  # the 2 padding rows
    loss2, (_, _, _, aux2) = train(batch)
    torch.testing.assert_close(aux["bce"], aux2["bce"])


def test_loss_is_bce_plus_weighted_cic(meta, data_config, batch, model_config):
    train = EM3Train(build_model(model_config(cic=CICConfig(weight=0.5, dim=8)), meta, data_config)).eval()
    loss, (_, logits, labels, aux) = train(batch)
    w = batch.weights
    bce = (torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none") * w).sum() / w.sum()
    torch.testing.assert_close(aux["bce"], bce)
    torch.testing.assert_close(loss, bce + 0.5 * aux["cic"])


def test_cross_attention_variant_and_export(meta, data_config, batch, model_config):
    config = model_config(
        qformer=QFormerConfig(
            dim=16,
            num_heads=2,
            num_layers=2,
            token_dropout=0.0,
            attention_dropout=0.0,
            ffn_dropout=0.0,
            attention="cross",
        )
    )
    model = build_model(config, meta, data_config).eval()
    out = model(batch)
    exported = model.encode_items(
        {m: t[batch.target_content_index.unique()] for m, t in batch.content_tokens.items()},
        {m: t[batch.target_content_index.unique()] for m, t in batch.content_token_mask.items()},
    )
    torch.testing.assert_close(exported, out.item_content)


def test_dedup_off_gives_the_same_logits(meta, data_config, batch, model_config):
    fast = build_model(model_config(dedup=True), meta, data_config).eval()
    slow = build_model(model_config(dedup=False), meta, data_config).eval()
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(batch).logits, slow(batch).logits, rtol=1e-5, atol=1e-6)


def test_sparse_on_meta_device(meta, data_config, model_config):
    model = build_model(model_config(), meta, data_config, sparse_device=torch.device("meta"))
    assert isinstance(model, EM3Model)
    assert all(p.is_meta for p in model.id_arch.parameters())
    assert not any(p.is_meta for n, p in model.named_parameters() if not n.startswith("id_arch."))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(backbone="xdeepfm"), "backbone"),
        (dict(content="clip"), "content"),
        (dict(seq_content_mode="sometimes"), "seq_content_mode"),
        (dict(seq_content_mode="cached", dedup=False), "dedup"),
        (dict(seq_content_mode="pooled", pooled_base=False), "pooled_base"),
    ],
)
def test_bad_configs_are_rejected(meta, data_config, overrides, match, model_config):
    with pytest.raises(ValueError, match=match):
        build_model(model_config(**overrides), meta, data_config)


@pytest.mark.parametrize(
    "content,mode,catalogue",
    [
        ("none", "none", 0),
        ("frozen", "none", 0),
        ("frozen", "full", 0),
        ("em3", "none", 0),
        ("em3", "lora", 0),
        ("em3", "lora", 8),
        ("em3", "cached", 8),
        ("em3", "pooled", 8),
    ],
)
def test_fx_traceable_for_the_train_pipeline(meta, data_config, content, mode, catalogue, model_config):
    """TorchRec's TrainPipelineSparseDist fx-traces the model with every sharding-free child as a
    leaf; the EBC and EC must then take the batch's KJTs unchanged (so they can be pipelined)."""
    from torchrec.distributed.train_pipeline.tracing import Tracer

    cic = CICConfig(weight=0.5, dim=8, catalogue_samples=catalogue)
    train = EM3Train(build_model(model_config(content=content, seq_content_mode=mode, cic=cic), meta, data_config))
    collections = ["model.id_arch.embedding_bag_collection", "model.id_arch.embedding_collection"]
    leaves = [f"model.{n}" for n, _ in train.model.named_children() if n != "id_arch"] + collections
    graph = Tracer(leaf_modules=leaves).trace(train)
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    for name, feature in zip(collections, ["sparse_features", "sequence_features"]):
        (arg,) = calls[name].args
        assert arg.op == "call_function" and arg.args[1] == feature  # getattr(batch, feature)


def test_catalogue_items_join_cic_and_train_their_id_rows(meta, data_config, model_config):
    from em3rec.testing.example_batch import example_batch

    config = model_config(cic=CICConfig(weight=0.5, dim=8, num_negatives=0, catalogue_samples=6))
    model = build_model(config, meta, data_config)
    batch = example_batch(meta, 12, num_item_choices=5, catalogue_samples=6, seed=4)
    sampled = batch.content_item_ids[batch.catalogue_content_index]
    outside = sampled[
        ~torch.isin(sampled, batch.content_item_ids[batch.history_content_index[batch.history_mask]])
        & ~torch.isin(sampled, batch.item_ids)
    ]
    assert outside.numel() > 0  # items that only the catalogue sample brings into the batch
    loss, _ = EM3Train(model)(batch)
    loss.backward()
    grad = model.id_arch.embedding_collection.embeddings["item"].weight.grad  # (num_items, D)
    assert grad[outside].abs().sum(1).gt(0).all()  # CIC reaches their ID rows, no label needed
    # without the sample, the same batch leaves those rows alone
    plain = build_model(model_config(cic=CICConfig(weight=0.5, dim=8, num_negatives=0)), meta, data_config)
    loss, _ = EM3Train(plain)(example_batch(meta, 12, num_item_choices=5, seed=4))
    loss.backward()
    assert plain.id_arch.embedding_collection.embeddings["item"].weight.grad[outside].abs().sum() == 0


@pytest.mark.parametrize("backbone,raw", [(b, False) for b in BACKBONES] + [("dlrm", True)])
def test_em3_starts_at_the_frozen_baseline(meta, data_config, batch, model_config, backbone, raw):
    # With the baseline's weights, EM3's logits at initialisation are the two-stage baseline's,
    # exactly: the Q-Former's gate starts at 0 and the pooled projection is the baseline's Linear.
    em3 = build_model(
        model_config(backbone=backbone, content="em3", seq_content_mode="lora", dlrm_raw_content=raw), meta, data_config
    )
    frozen = build_model(
        model_config(backbone=backbone, content="frozen", seq_content_mode="frozen", dlrm_raw_content=raw),
        meta,
        data_config,
    )
    state = {
        k.replace("content_tower.projection.", "content_tower.pooled_base."): v for k, v in frozen.state_dict().items()
    }
    missing, unexpected = em3.load_state_dict(state, strict=False)
    assert not unexpected and missing
    assert all(k.startswith(("content_tower.qformer.", "cic.")) for k in missing)
    torch.testing.assert_close(em3.eval()(batch).logits, frozen.eval()(batch).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_qformer_gives_the_eager_values_and_gradients(meta, data_config, batch, model_config):
    """``qformer.compile``: torch.compile (dynamic shapes) of the Q-Former, target branch and the
    LoRA history branch's functional call alike; same loss and gradients, same state_dict keys."""
    qformer = QFormerConfig(dim=16, num_heads=2, attention_dropout=0.0)
    eager = build_model(model_config(seq_content_mode="lora", qformer=qformer), meta, data_config)
    compiled_qformer = QFormerConfig(dim=16, num_heads=2, attention_dropout=0.0, compile=True)
    compiled = build_model(model_config(seq_content_mode="lora", qformer=compiled_qformer), meta, data_config)
    compiled.load_state_dict(eager.state_dict())  # strict: compiling in place renames nothing
    assert compiled.content_tower.qformer._compiled_call_impl is not None  # nn.Module.compile's hook
    assert eager.content_tower.qformer._compiled_call_impl is None
    with torch.no_grad():  # open the gate, so the Q-Former reaches the logits
        for m in (eager, compiled):
            m.content_tower.qformer.gate.fill_(0.5)
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(0)  # the same CIC negatives; eval: no dropout draws
        loss, _ = EM3Train(model.eval())(batch)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    grads = [
        {n: p.grad for n, p in m.content_tower.named_parameters() if p.grad is not None} for m in (eager, compiled)
    ]
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_compiled_backbone_gives_the_eager_values_and_gradients(meta, data_config, batch, model_config, backbone):
    """``model.compile_backbone``: torch.compile of the backbone and the content-interest attention,
    in place; same loss and gradients, same state_dict keys."""
    eager = build_model(model_config(backbone=backbone, content="frozen", seq_content_mode="frozen"), meta, data_config)
    compiled = build_model(
        model_config(backbone=backbone, content="frozen", seq_content_mode="frozen", compile_backbone=True),
        meta,
        data_config,
    )
    compiled.load_state_dict(eager.state_dict())  # strict: compiling in place renames nothing
    assert compiled.backbone._compiled_call_impl is not None and eager.backbone._compiled_call_impl is None
    assert compiled.content_interest._compiled_call_impl is not None
    losses = []
    for model in (eager, compiled):
        loss, _ = EM3Train(model.eval())(batch)  # eval: no dropout draws
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (eager, compiled)]
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("backbone.") for n in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-5, msg=name)
