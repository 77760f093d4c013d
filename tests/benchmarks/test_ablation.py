"""The ablation table's variants: the bundled EM3 with overrides that its config accepts."""

from __future__ import annotations

import pytest

from benchmarks.ablation import ABLATIONS
from em3rec.config import load_config


@pytest.mark.parametrize("name", sorted(n for n in ABLATIONS if n != "rerun"))
def test_every_ablation_is_a_valid_change_of_the_bundled_em3(name: str) -> None:
    _, overrides = ABLATIONS[name]
    assert load_config("din_em3", overrides) != load_config("din_em3")
    load_config("bx_din_em3", overrides)  # bx's form accepts it too (some equal bx's own values)


def test_only_the_rerun_is_the_bundled_em3_itself() -> None:
    assert [name for name, (_, overrides) in ABLATIONS.items() if not overrides] == ["rerun"]
