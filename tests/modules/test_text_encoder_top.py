"""The text encoder's trainable top layers: where they start, what trains, the bank, bad sets refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from em3rec.config import ConfigError, load_config
from em3rec.modules.text_encoder_top import TextEncoderTop, build_text_encoder_top
from em3rec.testing.text_set import TEXTLESS_ITEM, write_text_set

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def text_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text_set")
    return write_text_set(root / "set", root / "cache")


def stored(text_set: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(text_set / "items" / "title.pooled.npy")).float()  # (I, W)


@pytest.mark.parametrize("layers", [1, 2])
def test_it_starts_at_the_stored_vectors(text_set: Path, layers: int) -> None:
    top = build_text_encoder_top(text_set, {"title": 8}, layers)
    assert sum(p.requires_grad for p in top.parameters()) == len(list(top.parameters())) > 0
    out = top.encode_all("title", CPU)  # fp32 over bf16 lower states
    torch.testing.assert_close(out, stored(text_set), atol=0.01, rtol=0)
    assert (out[0] == 0).all() and (out[TEXTLESS_ITEM] == 0).all(), "no text: a zero vector, as stored"


def pooled_tokens(text_set: Path, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"title": stored(text_set)[ids].half().unsqueeze(1)}  # (U, 1, W), as pooled batches carry them


def perturb(top: TextEncoderTop) -> None:
    with torch.no_grad():
        top.layers[0].output.dense.weight.mul_(1.5)


def test_training_encodes_the_rows_with_gradient_and_reads_the_bank_for_the_rest(text_set: Path) -> None:
    top = build_text_encoder_top(text_set, {"title": 8}, 1).train()
    top.layers.eval()  # no dropout: values comparable across calls
    ids = torch.tensor([3, 9, 12, 20, 31])
    rows = torch.tensor([1, 3])
    top.reencode(pooled_tokens(text_set, ids), ids, rows)  # builds the bank from the pretrained weights
    perturb(top)
    out = top.reencode(pooled_tokens(text_set, ids), ids, rows)["title"][:, 0].float()  # (U, W)
    fresh = top.encode("title", ids[rows]).detach()
    torch.testing.assert_close(out[rows], fresh.half().float())
    others = torch.tensor([0, 2, 4])
    torch.testing.assert_close(out[others], stored(text_set)[ids[others]], atol=0.02, rtol=0)  # the bank
    # Only the fresh rows carry gradient into the layers.
    grad_others = torch.autograd.grad(out[others].sum(), top.layers[0].output.dense.weight, allow_unused=True)[0]
    assert grad_others is None or grad_others.abs().max() == 0
    out = top.reencode(pooled_tokens(text_set, ids), ids, rows)["title"][:, 0].float()
    out[rows].sum().backward()
    assert top.layers[0].output.dense.weight.grad.abs().max() > 0
    # The bank now holds the fresh rows' new vectors: another batch reading them without gradient.
    again = top.reencode(pooled_tokens(text_set, ids), ids, torch.tensor([0]))["title"][:, 0].float()
    torch.testing.assert_close(again[rows], fresh.half().float())


def test_evaluation_and_a_new_epoch_see_the_current_weights(text_set: Path) -> None:
    top = build_text_encoder_top(text_set, {"title": 8}, 1).train()
    top.layers.eval()
    ids = torch.tensor([3, 9, 12])
    top.reencode(pooled_tokens(text_set, ids), ids, torch.tensor([0]))
    perturb(top)
    current = top.encode("title", ids).detach().half().float()
    top.eval()
    torch.testing.assert_close(top.reencode(pooled_tokens(text_set, ids), ids)["title"][:, 0].float(), current)
    top.train()  # a new epoch: the bank is rebuilt from the current weights
    top.layers.eval()
    out = top.reencode(pooled_tokens(text_set, ids), ids, torch.tensor([0]))["title"][:, 0].float()
    torch.testing.assert_close(out, current, atol=1e-3, rtol=0)
    assert "cosine 1.0000" not in top.drift()["title"], "the perturbed layer moved the vectors"


def test_a_set_whose_vectors_are_not_the_encoders_output_is_refused(text_set: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"title\.mask\.npy: tokenising items\.parquet's title_text to 6 tokens"):
        build_text_encoder_top(text_set, {"title": 6}, 1)
    with pytest.raises(ValueError, match="trainable_layers = 7; expected 1 .. 6"):
        build_text_encoder_top(text_set, {"title": 8}, 7)
    other = tmp_path / "other"
    shutil.copytree(text_set, other)  # as a set whose features came from another (a fine-tuned) encoder
    np.save(other / "items" / "title.pooled.npy", (stored(text_set) * 1.2).half().numpy())
    with pytest.raises(ValueError, match=r"title\.pooled\.npy: the stored vectors are not the text encoder's own"):
        build_text_encoder_top(other, {"title": 8}, 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.pooled_content=false"], "needs data.pooled_content = true"),
        (["model.content=none"], "model.content = 'none' reads none"),
        (['model.text_encoder.modalities=["poster"]'], r"\['poster'\] are not in data.modalities"),
        (["optim.encoder_lr=0"], "optim.encoder_lr = 0.0; expected > 0"),
        (["model.text_encoder.appeal_weight=-1"], r"model.text_encoder.appeal_weight = -1.0"),
        (["model.text_encoder.appeal_min_rows=0"], r"appeal_min_rows = 0"),
        (["model.text_encoder.trainable_layers=0", "model.text_encoder.appeal_weight=1"], "set trainable_layers > 0"),
    ],
)
def test_config_errors_name_the_option(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("din_frozen", ["model.text_encoder.trainable_layers=1", *overrides])
