"""The loader benchmark end to end on a tiny synthetic dataset, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

from benchmarks.loader_throughput import main as loader_main
from data_prep.synthetic import SyntheticConfig, generate


def test_loader_benchmark_writes_a_table_with_its_command(tmp_path: Path) -> None:
    data = tmp_path / "syn"
    generate(
        SyntheticConfig(
            out=data,
            rows=1200,
            items=50,
            users=20,
            history_mean=4.0,
            history_max=8,
            modalities=("title",),
            tokens=(3,),
            width=(8,),
            seed=1,
        )
    )
    out = tmp_path / "loader.md"
    loader_main(
        [
            "--data",
            str(data),
            "--batch-size",
            "32",
            "--max-history",
            "8",
            "--content",
            "none,tokens,targets",
            "--catalogue",
            "4",
            "--ranks",
            "1",
            "--prefetch",
            "0",
            "--batches",
            "4",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    text = out.read_text()
    assert "benchmarks.loader_throughput" in text and "--content none,tokens,targets" in text
    assert "commit" in text.lower() and "torch" in text
    table = [line for line in text.splitlines() if line.startswith("| 1 | ")]
    assert len(table) >= 3, text
    cells = {row.split("|")[2].strip(): row.split("|") for row in table}
    # the `targets` batches carry tokens of fewer items than `tokens` (targets + catalogue only); RSS is measured
    assert int(cells["targets"][-4].replace(",", "")) < int(cells["tokens"][-4].replace(",", ""))
    assert float(cells["tokens"][-2].replace(",", "")) > 0
