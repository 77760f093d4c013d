"""train.precision: what auto picks, and the bf16 forward against the fp32 one."""

from __future__ import annotations

import pytest
import torch

from em3rec.modules.model import EM3Train, build_model
from em3rec.precision import Precision, fast_bf16


def test_auto_follows_what_torch_reports_of_the_cpu():
    precision = Precision.resolve("auto", torch.device("cpu"))
    fast = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert precision.dtype == (torch.bfloat16 if fast else torch.float32)
    assert fast_bf16(torch.device("cpu"))[1] in precision.describe()


def test_fixed_settings_and_bad_ones():
    assert Precision.resolve("fp32", torch.device("cpu")).dtype == torch.float32
    assert Precision.resolve("bf16", torch.device("cpu")).name == "bf16"
    with pytest.raises(ValueError, match="train.precision"):
        Precision.resolve("fp16", torch.device("cpu"))  # type: ignore[arg-type]


def test_fp32_has_no_autocast_and_bf16_computes_the_dense_layers_in_bf16():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with Precision.resolve("fp32", torch.device("cpu")).autocast():
        assert not torch.is_autocast_enabled("cpu") and layer(x).dtype == torch.float32
    with Precision.resolve("bf16", torch.device("cpu")).autocast():
        assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["lora", "pooled"])
def test_bf16_forward_stays_close_to_fp32_and_keeps_fp32_parameters(meta, data_config, model_config, mode):
    from em3rec.testing.example_batch import example_batch

    batch = example_batch(meta, 32, catalogue_samples=6, pooled_vectors=True, seed=3)
    model = EM3Train(build_model(model_config(seq_content_mode=mode), meta, data_config)).eval()
    losses, grads = {}, {}
    for name in ("fp32", "bf16"):
        model.zero_grad()
        with Precision.resolve(name, torch.device("cpu")).autocast():
            loss, (_, logits, _, _) = model(batch)
        loss.backward()  # outside the autocast region, as the recipe does
        losses[name], grads[name] = (
            loss.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 for g in grads["bf16"].values())
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=2e-2, atol=2e-2)
    assert grads["bf16"].keys() == grads["fp32"].keys()
    # bf16 keeps 8 bits of mantissa: the gradient directions agree, not the last digits. On tiny
    # random models the whole gradient's cosine is 0.92-0.97 and a small gradient summed over the
    # batch with cancellation (the Q-Former gate, biases) goes down to ~0.68 (3 init seeds measured).
    flat = {name: torch.cat([g.flatten() for g in grads[name].values()]) for name in grads}
    assert torch.nn.functional.cosine_similarity(flat["bf16"], flat["fp32"], dim=0) > 0.9
    for n in grads["fp32"]:
        a, b = grads["bf16"][n].flatten(), grads["fp32"][n].flatten()
        if b.norm() > 1e-6:
            assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.5, n


def test_auto_on_a_gpu_that_only_emulates_bf16_is_not_fast(monkeypatch):
    """Pre-Ampere GPUs (V100, T4) report bf16 support through emulation: ``auto`` must not pick it."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    ok, why = fast_bf16(torch.device("cuda"))
    assert not ok and why == "CUDA does not support bf16 natively"
