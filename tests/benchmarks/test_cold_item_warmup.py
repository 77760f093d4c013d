import numpy as np
import pytest

from benchmarks.cold_item_warmup import summarise
from benchmarks.id_from_content_probe import probe


def test_probe_finds_nothing_in_noise():
    rng = np.random.default_rng(1)
    result = probe(rng.normal(size=(500, 8)), rng.normal(size=(500, 4)), seed=0)
    assert result["r2"] < 0.05 and abs(result["cos"]) < 0.2


def _record(config: str, seed: int, before: float, after: float) -> dict:
    split = lambda auc: {"auc": auc, "cold_auc": auc - 0.1, "warm_auc": auc + 0.01}  # noqa: E731
    return {
        "run": f"{config}_seed{seed}",
        "config": config,
        "held_out_r2": 0.2,
        "before": {"valid": split(before), "test": split(before)},
        "after": {"valid": split(after), "test": split(after)},
    }


def test_summary_pairs_configs_by_seed():
    records = [_record("a", 0, 0.70, 0.72), _record("a", 1, 0.71, 0.72), _record("b", 1, 0.70, 0.70)]
    records.append(_record("b", 0, 0.69, 0.71))
    table = summarise(records)
    assert "| a | 2 | +0.0150 ± 0.0071 (2/2)" in table
    assert "Paired by seed (a − b, seeds [0, 1])" in table
    after = next(line for line in table.splitlines() if line.startswith("| after"))
    assert after.split(" | ")[1] == "+0.0150 ± 0.0071 (2/2)"  # (0.72 - 0.71, 0.72 - 0.70)
    with pytest.raises(ValueError, match="no seed in this name"):
        summarise([{**_record("a", 0, 0.7, 0.7), "run": "no seed in this name"}])
