"""The ablation table's variants: the bundled EM3 with overrides that its config accepts."""

from __future__ import annotations

import pytest

from benchmarks.ablation import ABLATIONS
from em3rec.config import load_config


@pytest.mark.parametrize("name", sorted(n for n in ABLATIONS if n != "rerun"))
def test_every_ablation_is_a_valid_change_of_the_bundled_em3(name: str) -> None:
    _, overrides = ABLATIONS[name]
    forms = ("din_em3", "bx_din_em3", "ml1m_din_em3")  # pooled-vector forms, and a token-level one (ml1m)
    changed = [load_config(n, overrides) != load_config(n) for n in forms]
    assert any(changed)  # each form accepts it; some equal a form's own values (`pooled`: the DIN forms')


def test_only_the_rerun_is_the_bundled_em3_itself() -> None:
    assert [name for name, (_, overrides) in ABLATIONS.items() if not overrides] == ["rerun"]
