"""The quality-table tooling: seed merging, bucket AUCs and selecting a setting on valid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.buckets import BUCKETS, bucket_aucs
from benchmarks.quality import _earlier_runs, _metric_cell, paired_table, table
from benchmarks.select_setting import report, select
from benchmarks.summary import summary
from benchmarks.throughput_plot import plot_by_category


def test_earlier_runs_keep_only_other_seeds(tmp_path: Path) -> None:
    def run(seed: int) -> dict:
        return {"config": {"train": {"seed": seed}}, "test": {}}

    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"din_em3": [run(0), run(1)], "din_id": [run(1)]}))
    # an invocation redoing seeds 1 and 2 of din_em3 and din_id keeps seed 0 of din_em3 only
    kept = _earlier_runs(path, {"din_em3", "din_id"}, {1, 2})
    assert kept == {"din_em3": [run(0)]}
    # ... and one redoing din_em3 alone keeps every run of the other configs
    assert _earlier_runs(path, {"din_em3"}, {1}) == {"din_em3": [run(0)], "din_id": [run(1)]}
    assert _earlier_runs(tmp_path / "missing.json", {"din_em3"}, {0}) == {}


def test_bucket_aucs_split_rows_by_train_count(tmp_path: Path) -> None:
    # items 0 (cold), 1 (5 train rows), 2 (300 train rows); scores perfect on item 1, reversed on 2.
    train_count = np.array([0, 5, 300])
    items = np.array([0, 0, 1, 1, 1, 2, 2])
    labels = np.array([0, 1, 0, 1, 1, 0, 1], dtype=np.float32)
    logits = np.array([0.1, 0.2, -1.0, 1.0, 2.0, 1.0, -1.0], dtype=np.float32)
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"item_idx": items, "label": labels, "logit": logits}), path)
    result = bucket_aucs(path, train_count)
    assert set(result) == {"all", "0", "1-9", "10-49", "50-199", "200+"} and len(result) == len(BUCKETS) + 1
    assert result["0"] == 1.0 and result["1-9"] == 1.0 and result["200+"] == 0.0
    assert np.isnan(result["10-49"])  # no rows


def test_quality_table_reads_the_dataset_prefix() -> None:
    def run(seed: int, auc: float) -> dict:
        test = {"auc": auc, "gauc": auc, "logloss": 0.5, "cold_auc": auc - 0.1, "warm_auc": auc}
        return {
            "config": {"train": {"seed": seed}},
            "test": test,
            "valid": {"auc": auc},
            "best_epoch": 0,
            "wall_seconds": 1.0,
            "train_samples_per_s": 1000.0,
        }

    results = {"bx_din_em3": [run(0, 0.70), run(1, 0.72)], "bx_din_frozen": [run(0, 0.69), run(1, 0.70)]}
    text = table(results, prefix="bx_")
    assert "| din | EM3 | 2 | 0.7100 ± 0.0141 |" in text and "| 1,000 |" in text
    assert "| din | ID + frozen content | 2 |" in text
    assert table(results).count("| din |") == 0  # ml100k configs carry no prefix
    paired = paired_table(results, prefix="bx_")
    assert "| din | EM3 − ID + frozen content | 2 | +0.0150 ± 0.0071 |" in paired


def test_plot_by_category_writes_a_png(tmp_path: Path) -> None:
    path = plot_by_category(
        {"em3": [("0", 0.61), ("1-9", 0.64), ("10+", float("nan"))], "frozen": [("0", 0.6), ("1-9", 0.62)]},
        tmp_path / "auc.png",
        title="t",
        y_label="test AUC",
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_select_setting_chooses_on_valid_and_pairs_at_the_chosen_settings() -> None:
    def run(seed: int, valid: float, test: float) -> dict:
        metrics = {"auc": test, "gauc": test, "cold_auc": test, "warm_auc": test}
        return {"config": {"train": {"seed": seed}}, "valid": {"auc": valid}, "test": metrics}

    tables = {
        # under "a" EM3 is better on valid, under "b" frozen content is; the test values say otherwise
        "a": {
            "din_em3": [run(0, 0.70, 0.60), run(1, 0.70, 0.60)],
            "din_frozen": [run(0, 0.60, 0.90), run(1, 0.60, 0.90)],
        },
        "b": {
            "din_em3": [run(0, 0.60, 0.90), run(1, 0.60, 0.90)],
            "din_frozen": [run(0, 0.70, 0.50), run(1, 0.70, 0.52)],
        },
    }
    chosen = select(tables, [0, 1])
    assert {config: setting for config, (setting, _) in chosen.items()} == {"din_em3": "a", "din_frozen": "b"}
    text = report(tables, [0, 1], "cmd")
    assert "| din | EM3 (a) − ID + frozen content (b) | +0.0900 ± 0.0141 |" in text
    with pytest.raises(ValueError, match=r"seeds \[2\] missing"):
        select(tables, [0, 2])


def test_select_setting_on_the_valid_cold_item_auc() -> None:
    def run(seed: int, valid_auc: float, valid_cold: float) -> dict:
        metrics = {"auc": 0.7, "gauc": 0.7, "cold_auc": 0.6, "warm_auc": 0.7}
        return {
            "config": {"train": {"seed": seed}},
            "valid": {"auc": valid_auc, "cold_auc": valid_cold},
            "test": metrics,
        }

    # "a" wins on valid AUC, "b" on the valid cold-item AUC
    tables = {"a": {"din_em3": [run(0, 0.70, 0.60)]}, "b": {"din_em3": [run(0, 0.69, 0.65)]}}
    assert select(tables, [0])["din_em3"][0] == "a"
    assert select(tables, [0], "cold_auc")["din_em3"][0] == "b"
    assert "| din_em3 | **b** | 0.6900 | 0.6500 |" in report(tables, [0], "cmd", "cold_auc")
    with pytest.raises(ValueError, match="select on 'coldauc'"):
        select(tables, [0], "coldauc")


def test_summary_bolds_the_best_mean_and_pairs_em3_by_seed() -> None:
    def run(seed: int, auc: float) -> dict:
        test = {"auc": auc, "gauc": auc, "logloss": 0.5, "cold_auc": auc - 0.1, "warm_auc": auc}
        return {"config": {"train": {"seed": seed}}, "test": test, "valid": {"auc": auc}}

    results = {
        "bx_dcn_id": [run(0, 0.70), run(1, 0.70)],
        "bx_dcn_frozen": [run(0, 0.71), run(1, 0.74)],
        "bx_dcn_em3": [run(0, 0.72), run(1, 0.72), run(2, 0.90)],  # seed 2 has no baseline to pair with
        "bx_din_em3": [run(0, 0.80)],  # a backbone without its baselines has no rows
    }
    lines = summary([("bx", results)]).splitlines()
    rows = [line for line in lines if line.startswith("| bx, DCN-v2 (2/3 seeds) | test AUC |")]
    assert len(rows) == 1 and not any("DIN" in line for line in lines)
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # EM3's mean includes seed 2 (0.78 > frozen's 0.725), the paired differences do not
    assert cells[2:] == [
        "0.7000 ± 0.0000",
        "0.7250 ± 0.0212",
        "**0.7800 ± 0.1039**",
        "-0.0050 ± 0.0212",
        "+0.0200 ± 0.0000",
    ]
    valid = next(line for line in lines if "| valid AUC |" in line)
    assert valid.rstrip().endswith("|  |  |")  # valid has no paired columns


def test_epoch_test_finds_end_of_epoch_checkpoints_and_pairs_by_seed(tmp_path: Path) -> None:
    from benchmarks.epoch_test import epoch_checkpoints
    from benchmarks.epoch_test import table as epoch_table

    # end of epoch 0 (step 10), a mid-epoch save (step 15), end of epoch 1 (step 20)
    for step, epoch, done in ((10, 1, 0), (15, 1, 5), (20, 2, 0)):
        folder = tmp_path / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "progress.json").write_text(json.dumps({"epoch": epoch, "batches_done": done}))
    found = epoch_checkpoints(tmp_path)
    assert {e: f.name for e, f in found.items()} == {0: "step_00000010", 1: "step_00000020"}

    def run(best: int, valid: list[float], test: list[float]) -> dict:
        metrics = lambda a: {"auc": a, "gauc": a, "cold_auc": a, "warm_auc": a}  # noqa: E731
        return {"best_epoch": best, "valid": [metrics(v) for v in valid], "test": [metrics(t) for t in test]}

    runs = {
        "a": {0: run(0, [0.70, 0.69], [0.72, 0.71]), 1: run(1, [0.70, 0.71, 0.70], [0.72, 0.70, 0.69])},
        "b": {0: run(1, [0.70, 0.72, 0.71], [0.72, 0.70, 0.70]), 1: run(0, [0.71, 0.70], [0.73, 0.72])},
    }
    rows = {line.split(" | ")[0].strip("| "): line for line in epoch_table(runs, "a", "b").splitlines()[2:]}
    # epoch 0: b − a test = 0.00 (seed 0) and +0.01 (seed 1); epoch 2 ran in one config per seed
    # only (seed 0 in b, seed 1 in a), so it has no pair and no row
    assert rows["0"].split(" | ")[1] == "2" and "+0.0050 ± 0.0071" in rows["0"]
    assert "2" not in rows
    # chosen: a picks epochs 0 / 1 (test 0.72, 0.70), b picks 1 / 0 (test 0.70, 0.73): −0.02, +0.03
    chosen = rows["chosen (best valid)"].split(" | ")
    assert chosen[1] == "2" and chosen[5] == "+0.0050 ± 0.0354"


def test_a_metric_over_few_rows_shows_its_row_count() -> None:
    runs = [
        {"test": {"auc": 0.70, "cold_user_auc": 0.0, "cold_user_rows": 2, "cold_auc": 0.60, "cold_rows": 1500}},
        {"test": {"auc": 0.72, "cold_user_auc": 1.0, "cold_user_rows": 3, "cold_auc": 0.62, "cold_rows": 1700}},
    ]
    assert _metric_cell(runs, "test", "cold_user_auc") == "0.5000 ± 0.7071 (2 rows)"
    assert _metric_cell(runs, "test", "cold_auc") == "0.6100 ± 0.0141"
    assert _metric_cell(runs, "test", "auc") == "0.7100 ± 0.0141"
    assert _metric_cell(runs, "test", "warm_auc") == "n/a"
    # an AUC over no rows is NaN: n/a, not a crash of the table (statistics.stdev fails on NaN)
    runs = [{"test": {"cold_user_auc": float("nan"), "cold_user_rows": 0}} for _ in range(2)]
    assert _metric_cell(runs, "test", "cold_user_auc") == "n/a (0 rows)"
