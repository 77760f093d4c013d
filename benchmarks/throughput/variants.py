"""The variants the throughput benchmark compares, and the config each one runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from em3rec.config import SEQ_CONTENT_MODES, Config, load_config

BASELINE = "frozen"


@dataclass(frozen=True)
class Variant:
    """One model variant.

    Fields:
        name: table row name.
        content: ``ModelConfig.content``: none | frozen | em3.
        seq_content_mode: ``ModelConfig.seq_content_mode``.
        dedup: ``ModelConfig.dedup``.
        level: the item features its batches carry: ``none`` (ID only, as the recipe loads them),
            ``pooled`` (one vector per modality) or ``tokens``.
        reference: ``""`` (TorchRec, DMP) or the plain-PyTorch DIN: ``sparse`` | ``dense`` gradients.
        pipeline: TorchRec variant stepped by ``TrainPipelineSparseDist`` (as the recipe trains):
            the next batch's input all-to-all overlaps this step's compute.
    """

    name: str
    content: str
    seq_content_mode: str
    dedup: bool = True
    level: str = "tokens"
    reference: str = ""
    pipeline: bool = False

    def overrides(self) -> list[str]:
        return [
            f"model.content={self.content}",
            f"model.seq_content_mode={self.seq_content_mode}",
            f"model.dedup={'true' if self.dedup else 'false'}",
            f"data.pooled_content={'true' if self.level == 'pooled' else 'false'}",
        ]


def _variants() -> dict[str, Variant]:
    out = [
        Variant("id", "none", "none", level="none"),
        Variant("id-pipeline", "none", "none", level="none", pipeline=True),
        Variant(BASELINE, "frozen", "frozen", level="pooled"),  # the two-stage baseline (din_frozen)
    ]
    for level, suffix in (("tokens", ""), ("pooled", "/pooled")):
        for mode in SEQ_CONTENT_MODES:
            out.append(Variant(f"em3-{mode}{suffix}", "em3", mode, level=level))
        for mode in (m for m in SEQ_CONTENT_MODES if m != "cached"):  # the bank needs dedup
            out.append(Variant(f"em3-{mode}-nodedup{suffix}", "em3", mode, dedup=False, level=level))
    out += [
        Variant("ref-sparse", "none", "none", level="none", reference="sparse"),
        Variant("ref-dense", "none", "none", level="none", reference="dense"),
    ]
    return {v.name: v for v in out}


VARIANTS = _variants()
TORCHREC_IDS = ("id", "id-pipeline")  # the TorchRec ID-only DIN, plain and pipelined steps
DEFAULT_VARIANTS = (
    "id,frozen,em3-none,em3-frozen,em3-lora,em3-full,em3-cached,em3-lora-nodedup,em3-full-nodedup,"
    "em3-lora/pooled,em3-cached/pooled,em3-full-nodedup/pooled,ref-sparse,ref-dense"
)
# The content tower alone (forward + backward) is timed for these, next to the matmul peak.
DEFAULT_TOWER_VARIANTS = "em3-lora,em3-full"


def variant_config(args: argparse.Namespace, variant: Variant | None) -> Config:
    """The base config (``--config``, ``--set``, ``--data``, ``--batch-size``) with ``variant``'s overrides."""
    overrides = list(args.set) + [f"data.path={args.data}", f"data.batch_size={args.batch_size}"]
    if variant is not None:
        overrides += variant.overrides()
    return load_config(args.config, overrides)
