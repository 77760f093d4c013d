"""The throughput harness on a tiny dataset (so it cannot rot) and the plain-PyTorch reference DIN
against the TorchRec ID-only model it stands in for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from benchmarks.reference_din import ReferenceDIN
from benchmarks.throughput import main as throughput_main
from benchmarks.throughput.variants import VARIANTS, resolve, variant_config
from data_prep.synthetic import SyntheticConfig, generate
from em3rec.config import Config, DataConfig, ModelConfig
from em3rec.testing.example_batch import example_batch, example_meta
from em3rec.modules.model import EM3Train, build_model

TINY_MODEL = [
    "--set",
    "model.embedding_dim=8",
    "--set",
    "model.qformer.dim=8",
    "--set",
    "model.qformer.num_heads=2",
    "--set",
    "model.attention_hidden=[8]",
    "--set",
    "model.over_layers=[8]",
    "--set",
    "model.cic.dim=8",
]


def test_reference_din_matches_the_torchrec_id_model():
    meta = example_meta()
    config = ModelConfig(
        backbone="din",
        content="none",
        seq_content_mode="none",
        embedding_dim=16,
        attention_hidden=[8],
        over_layers=[16, 8],
    )
    torch.manual_seed(0)
    torchrec_model = EM3Train(build_model(config, meta, DataConfig())).eval()
    reference = ReferenceDIN(meta, config, sparse=True).eval()
    ids = torchrec_model.model.id_arch
    with torch.no_grad():
        for name, bag in ids.embedding_bag_collection.embedding_bags.items():
            reference.id_arch.bags[name].weight.copy_(bag.weight)
        reference.id_arch.items.weight.copy_(ids.embedding_collection.embeddings["item"].weight)
    reference.backbone.load_state_dict(torchrec_model.model.backbone.state_dict())
    batch = example_batch(meta, 12, padding_rows=2)
    expected, _ = torchrec_model(batch)
    torch.testing.assert_close(reference(batch), expected)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    generate(
        SyntheticConfig(
            out=out,
            rows=1200,
            items=150,
            users=60,
            history_mean=8.0,
            history_max=20,
            modalities=("title", "meta"),
            tokens=(3, 5),
            width=(8, 4),
            chunk_rows=600,
            row_group_rows=300,
            seed=3,
        )
    )
    return out


def _tiny_data(dataset: Path, history: str) -> list[str]:
    """The harnesses' data options on the tiny dataset: 16 rows per batch, ``history`` as given."""
    return ["--data", str(dataset), "--batch-size", "16", "--history", history]


def test_harness_runs_every_kind_of_block(tiny_dataset: Path, tmp_path: Path):
    worlds = throughput_main(
        [
            *_tiny_data(tiny_dataset, history="5,20"),
            "--variants",
            "id,id-pipeline,frozen,em3,em3@fp32,em3-lora,em3-cached/pooled,em3-full-nodedup,ref-sparse",
            "--tower-variants",
            "em3,em3-full",  # em3-full: a tower whose variant is not among --variants
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--matmul",
            "64x64x64",
            "--out",
            str(tmp_path),
            "--name",
            "tiny",
            *TINY_MODEL,
        ]
    )
    (world,) = worlds
    blocks = {(b["name"], b["L"]): b for b in world["blocks"]}
    assert len(blocks) == 11 * 2
    assert all(len(b["seconds"]) == 1 and b["seconds"][0] > 0 for b in blocks.values())
    assert blocks[("em3-lora", 20)]["flops"]["tower_flops"] > 0
    assert blocks[("tower:em3", 20)]["flops"]["tower_flops"] > 0 and blocks[("tower:em3-full", 20)]["seconds"][0] > 0
    # `em3` is the bundled din_em3 (a catalogue sample for CIC; the others' batches carry none)
    assert world["precision"]["em3"] in ("fp32", "bf16") and world["bf16_report"]
    assert world["precision"]["em3@fp32"] == "fp32"  # a precision compared in the same run
    text = (tmp_path / "throughput_tiny.md").read_text()
    assert "| frozen | " in text and "Targets" in text and "x frozen" in text
    assert "`em3` step time <= 1.3x `frozen`" in text and "`em3` samples/s >= 0.5x `id`" in text
    assert "id-pipeline vs ref-sparse" in text
    assert json.loads((tmp_path / "throughput_tiny.json").read_text())["worlds"][0]["world_size"] == 1
    assert (tmp_path / "throughput_tiny_ws1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_mode_writes_a_table(tiny_dataset: Path, tmp_path: Path):
    throughput_main(
        [
            "--profile",
            *_tiny_data(tiny_dataset, history="20"),
            "--variants",
            "em3-lora",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
            "--name",
            "tiny",
            "--profile-rows",
            "5",
            *TINY_MODEL,
        ]
    )
    text = (tmp_path / "throughput_profile_tiny.md").read_text()
    assert "## em3-lora" in text and "| content_tower |" in text and "Top operators" in text
    assert "| backbone |" in text  # compiled (model.compile_backbone in the bundled base): its range still recorded
    assert "--profile" in text  # the command line is recorded
    assert "| all aten calls |" in text


def test_operator_sizes_splits_calls_by_self_time_per_step():
    from benchmarks.throughput.profiler import operator_sizes

    calls = [("aten::add", 5.0)] * 6 + [("aten::mm", 100.0)] * 2 + [("aten::mm", 1000.0)] * 2
    calls += [("## Call CompiledFxGraph abc", 4000.0), ("## step", 9999.0)]  # not aten: own row / left out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in operator_sizes(calls, steps=2)[2:]]
    rows = {c[0]: c[1:] for c in cells}
    assert rows["aten calls under 20 µs"] == ["3", "0.0", "1%"]  # 6 x 5 µs over 2 steps: 0.015 ms
    assert rows["aten calls 20-200 µs"] == ["1", "0.1", "9%"]
    assert rows["aten calls of 200 µs or more"] == ["1", "1.0", "90%"]
    assert rows["all aten calls"] == ["5", "1.1", "100%"]
    assert rows["of them matmuls (mm, addmm, bmm, baddbmm)"] == ["2", "1.1", "99%"]
    assert rows["compiled graphs (inductor kernels, not in the aten rows)"] == ["0", "2.0", ""]


@pytest.mark.slow
def test_counting_flops_leaves_a_compiled_qformer_compiled():
    """Dynamo never compiles a frame it first meets under a dispatch mode (FlopCounterMode), so the
    count runs eager and the timed steps after it run the compiled Q-Former."""
    from torch._dynamo.utils import counters

    from benchmarks.throughput.runner import flops_per_sample
    from em3rec.config import QFormerConfig
    from em3rec.modules.fusion_qformer import FusionQFormer

    qformer = FusionQFormer({"title": 16}, QFormerConfig(dim=8, num_heads=2))
    qformer.compile(dynamic=True)
    tokens, mask = {"title": torch.randn(6, 4, 16)}, {"title": torch.ones(6, 4, dtype=torch.bool)}

    def step(batch) -> None:
        qformer(tokens, mask).pooled.sum().backward()

    counters.clear()
    assert flops_per_sample(step, "flops")(example_batch(example_meta(), 4))["flops"] > 0
    assert counters["stats"]["unique_graphs"] == 0  # the count ran eager
    step(None)
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("em3-no-catalogue+compile", "cic.catalogue_samples", 0),
        ("em3-hist-cached", "seq_content_mode", "cached"),
        ("em3-no-cic", "cic.weight", 0),
        ("em3-hist-pooled", "seq_content_mode", "pooled"),
    ],
)
def test_ablated_em3_variants_are_the_bundled_em3_with_one_change(name: str, field: str, value: object) -> None:
    args = argparse.Namespace(set=[], data="data/ml100k", batch_size=512, bundled_prefix="", config="din_em3")
    bundled = variant_config(args, VARIANTS["em3"])
    ablated = variant_config(args, VARIANTS[name])
    *path, leaf = field.split(".")

    def owner(config: Config) -> object:
        node: object = config.model
        for part in path:
            node = getattr(node, part)
        return node

    assert getattr(owner(bundled), leaf) != value and getattr(owner(ablated), leaf) == value
    assert resolve(args, VARIANTS[name]).seq_content_mode == ablated.model.seq_content_mode  # what the runner keys on
    setattr(owner(ablated), leaf, getattr(owner(bundled), leaf))
    ablated.model.qformer.compile = bundled.model.qformer.compile
    assert ablated == bundled


@pytest.mark.parametrize(("name", "level"), [("em3", "pooled"), ("tower:em3", "pooled"), ("frozen", "pooled")])
def test_before_after_blocks_read_the_batches_their_bundled_config_reads(name: str, level: str) -> None:
    from benchmarks.throughput_ab import block_variant

    args = argparse.Namespace(set=[], data="data/ml100k", batch_size=512, bundled_prefix="", config="din_em3")
    assert block_variant(args, name).level == level  # din_em3 reads the pooled vectors, not the tokens
    args.set = ["data.pooled_content=false"]
    assert block_variant(args, "em3").level == "tokens"


@pytest.mark.slow
def test_before_after_harness_runs_two_trees(tiny_dataset: Path, tmp_path: Path):
    from benchmarks.throughput_ab import ROOT
    from benchmarks.throughput_ab import main as ab_main

    out = tmp_path / "ab.md"
    ab_main(
        [
            "--before",
            str(ROOT),  # this checkout on both sides: the harness is what is tested
            *_tiny_data(tiny_dataset, history="20"),
            "--variants",
            "em3,tower:em3",
            "--rounds",
            "1",
            "--steps",
            "1",
            *TINY_MODEL,
            "--out",
            str(out),
        ]
    )
    text = out.read_text()
    assert "| em3 | 20 |" in text and "| tower:em3 | 20 |" in text
