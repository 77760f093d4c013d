"""The history banks (`cached` content, the LoRA token-side bank) never serve a non-finite entry."""

import torch

from em3rec.modules.context_bank import ContextBank
from em3rec.modules.fusion_qformer import TokenContext
from em3rec.modules.history_encoders import CachedHistory


def _context(n: int, fill: float) -> TokenContext:
    k = torch.full((n, 2, 3, 4), fill)  # (U, H, K, d/H)
    return TokenContext([(k, k + 1.0)], torch.ones(n, 3, dtype=torch.bool))


def test_context_bank_recomputes_an_entry_written_non_finite():
    bank = ContextBank(num_items=5, refresh_steps=10)
    targets = _context(2, 1.0)
    targets.keys_values[0][1][1, 0, 0, 0] = float("nan")  # item 1's values: one NaN
    computed = []

    def compute(rows: torch.Tensor) -> TokenContext:
        computed.append(rows.tolist())
        return _context(rows.shape[0], 2.0)

    out = bank(torch.tensor([0, 1]), targets, torch.tensor([0, 1, 3]), compute)
    assert computed == [[1, 2]]  # item 1 (non-finite) and item 3 (never written), not item 0
    k, v = out.keys_values[0]
    assert torch.isfinite(k).all() and torch.isfinite(v).all()
    assert torch.equal(k[0], torch.full((2, 3, 4), 1.0)) and torch.equal(k[1], torch.full((2, 3, 4), 2.0))
    computed.clear()
    bank(torch.tensor([4]), _context(1, 1.0), torch.tensor([0, 1, 3]), compute)
    assert computed == []  # every entry now finite and fresh


def test_cached_history_marks_a_non_finite_row_as_never_written():
    history = CachedHistory(num_items=4, dim=3, refresh_steps=10)
    content = torch.ones(2, 3)
    content[1, 2] = float("inf")
    history._write(torch.tensor([0, 2]), content, torch.tensor(7))
    assert history.bank_step.tolist() == [7, -1, -1, -1]
