"""Regression probes of a per-item target from item content: what tokens hold beyond their pooled vector.

Shared by :mod:`benchmarks.token_signal_probe` (the control set's latent) and
:mod:`benchmarks.item_signal_probe` (a real set's item click signal). Each probe maps item indices
``(n,)`` to predictions ``(n,)``: EM3's ``FusionQFormer`` plus a Linear and a DeepSets model over the
tokens, and the pooled vector through a Linear and through an MLP. Held-out R² is what could reach
an unseen item.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from em3rec.config import QFormerConfig
from em3rec.modules.fusion_qformer import FusionQFormer

Predict = Callable[[torch.Tensor], torch.Tensor]


def without_dropout(config: QFormerConfig) -> QFormerConfig:
    """``config`` with every dropout at 0 (a probe of what can be learned, not of regularisation)."""
    return dataclasses.replace(config, token_dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0)


def content_probes(
    modality: str,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    pooled: torch.Tensor,
    qformer_config: QFormerConfig,
    qformer_label: str,
) -> dict[str, tuple[nn.Module, Predict]]:
    """Name -> (trainable module, predict) for one modality's ``tokens (I, T, W)``, ``mask (I, T)``
    and ``pooled (I, W)``; the Q-Former is built from ``qformer_config`` and named by
    ``qformer_label``. Tokens may be stored in fp16: each call casts the rows it reads."""
    width = tokens.shape[-1]
    qformer = FusionQFormer({modality: width}, qformer_config, out_dim=qformer_config.dim)
    head = nn.Linear(qformer_config.dim, 1)
    linear = nn.Linear(width, 1)
    mlp = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 1))
    per_token = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 64))  # DeepSets' phi
    set_head = nn.Linear(64, 1)

    def q_former(s: torch.Tensor) -> torch.Tensor:
        return head(qformer({modality: tokens[s].float()}, {modality: mask[s]}).pooled).squeeze(-1)

    def deep_sets(s: torch.Tensor) -> torch.Tensor:
        """A per-token MLP, then the masked mean over the tokens, then a Linear: ``(n,)``."""
        m = mask[s].unsqueeze(-1).float()  # (n, T, 1)
        return set_head((per_token(tokens[s].float()) * m).sum(1) / m.sum(1).clamp(min=1)).squeeze(-1)

    return {
        f"Fusion-Q-Former over the tokens ({qformer_label}) + Linear": (
            nn.ModuleList([qformer, head]),
            q_former,
        ),
        "DeepSets over the tokens (per-token MLP 64-64, mean, Linear)": (
            nn.ModuleList([per_token, set_head]),
            deep_sets,
        ),
        "pooled vector, Linear": (linear, lambda s: linear(pooled[s].float()).squeeze(-1)),
        "pooled vector, MLP (256 hidden)": (mlp, lambda s: mlp(pooled[s].float()).squeeze(-1)),
    }


def r_squared(predict: Predict, target: torch.Tensor, items: torch.Tensor) -> float:
    """``1 - MSE / Var`` of ``predict`` on the item indices ``items``."""
    with torch.no_grad():
        return float(1 - (predict(items) - target[items]).pow(2).mean() / target[items].var())


def fit(
    model: nn.Module,
    predict: Predict,
    target: torch.Tensor,
    train: torch.Tensor,
    held_out: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    weight_decay: float,
    valid: torch.Tensor | None = None,
    eval_every: int = 100,
) -> tuple[float, float]:
    """AdamW on the squared error of ``predict(items) (n,)`` against ``target (I,)``; R² on the
    ``train`` and ``held_out`` item indices. With ``valid`` (item indices apart from both), the model
    is scored there every ``eval_every`` steps and the best state is the one reported (early
    stopping, so a small set's probes are not judged after they memorised it)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state = -float("inf"), None
    for step in range(1, steps + 1):
        model.train()
        items = train[torch.randint(len(train), (batch,))]
        loss = (predict(items) - target[items]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if valid is not None and (step % eval_every == 0 or step == steps):
            model.eval()
            score = r_squared(predict, target, valid)
            if score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return r_squared(predict, target, train), r_squared(predict, target, held_out)


def report_head(title: str, module: str, argv: list[str] | None) -> list[str]:
    """A results file's first lines: ``title``, the command that ran ``module`` with ``argv``
    (None: this process's arguments) and the machine."""
    command = f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)
    return [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        "",
    ]


def emit(report: str, out: Path | None) -> None:
    """Write ``report`` to ``out``, or print it when there is none."""
    if out is None:
        print(report)
        return
    out.write_text(report)
    print(f"wrote {out}")
