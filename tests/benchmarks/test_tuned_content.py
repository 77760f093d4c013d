"""Fine-tuning the text encoder: which weights train, the probe's table, and the set written from the tuned encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.encoder_probe import build
from benchmarks.encoder_probe import main as probe
from benchmarks.tuned_content import main
from data_prep.text_encoder import load_model
from em3rec.data.validation import validate_dataset
from em3rec.testing.text_set import TEXTLESS_ITEM, write_text_set


@pytest.mark.parametrize(
    ("mode", "trained"),
    [
        ("full", {"embeddings", "layer.0", "layer.5", "head"}),
        ("top1", {"layer.5", "head"}),
        ("lora", {"lora_", "head"}),
    ],
)
def test_each_mode_trains_only_its_weights(mode: str, trained: set[str]) -> None:
    _, base = load_model()
    names = [n for n, p in build(mode, base, lora_rank=4).named_parameters() if p.requires_grad]
    assert all(any(part in n for n in names) for part in trained)
    if mode == "top1":
        assert not any("layer.4." in n or "embeddings" in n for n in names)
    if mode == "lora":
        assert all("lora_" in n or n.startswith("head.") for n in names)
    assert all(not p.requires_grad for p in base.parameters()), "the shared frozen model is never touched"


@pytest.fixture
def text_set(tmp_path: Path) -> Path:
    """A tiny prepared set whose ``title`` features are real MiniLM outputs of real texts."""
    return write_text_set(tmp_path / "set", tmp_path / "cache")


def tune(data: Path, out: Path, epochs: int, lr: str, mode: str = "full") -> None:
    main(["--data", str(data), "--out", str(out), "--modality", "title", "--min-rows", "5"]
         + ["--epochs", str(epochs), "--lr", lr, "--mode", mode])  # fmt: skip


def test_an_untrained_encoder_writes_back_the_stored_features(text_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    tune(text_set, out, epochs=1, lr="0")
    validate_dataset(out)
    for kind in ("mask", "pooled", "tokens"):
        written, stored = (
            np.load(out / "items" / f"title.{kind}.npy"),
            np.load(text_set / "items" / f"title.{kind}.npy"),
        )
        np.testing.assert_allclose(written.astype(np.float32), stored.astype(np.float32), atol=2e-3)
    assert (out / "train").is_symlink() and not (out / "items" / "title.pooled.npy").is_symlink()
    record = json.loads((out / "meta.json").read_text())["extra"]["tuned_content"]
    assert record["modality"] == "title" and record["items_fitted"] > 0


@pytest.mark.parametrize("mode", ["full", "top1"])
def test_a_trained_encoder_changes_the_features(text_set: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "tuned"
    tune(text_set, out, epochs=2, lr="1e-3", mode=mode)
    written, stored = np.load(out / "items" / "title.pooled.npy"), np.load(text_set / "items" / "title.pooled.npy")
    assert np.abs(written.astype(np.float32) - stored.astype(np.float32)).max() > 0.05
    assert (written[TEXTLESS_ITEM] == 0).all(), "an item without text keeps zero features"
    assert json.loads((out / "meta.json").read_text())["extra"]["tuned_content"]["mode"] == mode


def test_it_names_what_is_wrong(text_set: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--modality image"):
        main(["--data", str(text_set), "--out", str(tmp_path / "a"), "--modality", "image"])
    with pytest.raises(SystemExit, match="exists"):
        main(["--data", str(text_set), "--out", str(text_set), "--modality", "title"])


def test_the_probe_pairs_each_mode_with_the_ridge(text_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.md"
    probe(["--data", str(text_set), "--modality", "title", "--min-rows", "5", "--modes", "top1", "full"]
          + ["--epochs", "1", "--seeds", "0", "1", "--out", str(out)])  # fmt: skip
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "R²" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| frozen MiniLM: pooled vector, ridge (penalty chosen on the valid items)",
                                                 "| MiniLM fine-tuned (top1, lr 5e-05) + Linear",
                                                 "| MiniLM fine-tuned (full, lr 5e-05) + Linear"]  # fmt: skip
    assert rows[0].split(" | ")[4] == "0.000 ± 0.000", "the ridge against itself"
    assert all(np.isfinite(float(r.split(" | ")[3].strip("*").split(" ± ")[0])) for r in rows)
