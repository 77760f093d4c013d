"""The variants the throughput benchmark compares, and the config each one runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

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
        precision: ``train.precision`` for this variant (``""``: the config's); ``<name>@fp32`` /
            ``<name>@bf16`` variants of the bundled ones compare precisions in one run.
        bundled: a bundled config stem (``din_em3``): the variant is that config exactly (its
            history mode, CIC, precision, ...), prefixed with ``--bundled-prefix`` (``bx_``), and the
            fields above are read from it (:func:`resolve`). ``""``: the ``--config`` base with the
            fields above as overrides.
        compile: ``model.qformer.compile`` on (``<name>+compile`` of every EM3 variant): the
            Q-Former under torch.compile; the warm-up steps pay the compile.
        extra: further config overrides (``em3-no-catalogue``: the bundled EM3 without CIC's
            catalogue sample; ``em3-eager``: its Q-Former not compiled; ``em3-window<w>``: its tokens averaged in windows of ``w``;
            ``frozen-text<k>`` / ``em3-text<k>``: the text encoder's top ``k`` layers in the loop).
    """

    name: str
    content: str
    seq_content_mode: str
    dedup: bool = True
    level: str = "tokens"
    reference: str = ""
    pipeline: bool = False
    bundled: str = ""
    precision: str = ""
    compile: bool = False
    extra: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        return [
            f"model.content={self.content}",
            f"model.seq_content_mode={self.seq_content_mode}",
            f"model.dedup={'true' if self.dedup else 'false'}",
            f"data.pooled_content={'true' if self.level == 'pooled' else 'false'}",
        ]


def _variants() -> dict[str, Variant]:
    out = [  # what a user runs: the bundled ID-only, two-stage baseline and EM3 DIN configs
        Variant("id", "none", "none", level="none", bundled="din_id"),
        Variant("id-pipeline", "none", "none", level="none", pipeline=True, bundled="din_id"),
        Variant(BASELINE, "frozen", "frozen", level="pooled", bundled="din_frozen"),
        Variant("em3", "em3", "lora", bundled="din_em3"),
        Variant("em3-no-catalogue", "em3", "lora", bundled="din_em3", extra=("model.cic.catalogue_samples=0",)),
        Variant("em3-hist-cached", "em3", "cached", bundled="din_em3", extra=("model.seq_content_mode=cached",)),
        Variant("em3-context-bank", "em3", "lora", bundled="din_em3", extra=("model.lora.context_refresh_steps=10",)),
        Variant("em3-unmerged", "em3", "lora", bundled="din_em3", extra=("model.lora.merge=false",)),
        # LoRA on the Q-Former's output head only: the history branch's Q-Former runs without a graph
        Variant("em3-lora-head", "em3", "lora", bundled="din_em3", extra=('model.lora.target_modules=["head"]',)),
        # the bundled EM3 with its Q-Former eager (bx and ml1m compile it: is that still faster?)
        Variant("em3-eager", "em3", "lora", bundled="din_em3", extra=("model.qformer.compile=false",)),
        # EM3's parts switched off in turn, to read where its step goes
        Variant("em3-no-cic", "em3", "lora", bundled="din_em3", extra=("model.cic.weight=0",)),
        Variant("em3-hist-pooled", "em3", "pooled", bundled="din_em3", extra=("model.seq_content_mode=pooled",)),
        Variant(
            "em3-hist-pooled-no-cic",
            "em3",
            "pooled",
            bundled="din_em3",
            extra=("model.seq_content_mode=pooled", "model.cic.weight=0"),
        ),
    ]
    out += [  # the text encoder's top k layers in the loop (model.text_encoder), over the meta texts
        Variant(
            f"{name}-text{k}",
            content,
            mode,
            level="pooled",
            bundled=f"din_{content}",
            extra=(f"model.text_encoder.trainable_layers={k}", 'model.text_encoder.modalities=["meta"]'),
        )
        for name, content, mode in ((BASELINE, "frozen", "frozen"), ("em3", "em3", "lora"))
        for k in (1, 2, 6)
    ]
    out += [  # the bundled EM3 over token-level features averaged in windows of w positions (1: as stored)
        Variant(
            f"em3-window{w}",
            "em3",
            "lora",
            bundled="din_em3",
            extra=("data.pooled_content=false", f"data.token_window={w}"),
        )
        for w in (1, 2, 4, 8)
    ]
    out += [replace(v, name=f"{v.name}@{p}", precision=p) for v in list(out) for p in ("fp32", "bf16")]
    for level, suffix in (("tokens", ""), ("pooled", "/pooled")):
        for mode in SEQ_CONTENT_MODES:
            out.append(Variant(f"em3-{mode}{suffix}", "em3", mode, level=level))
        for mode in (m for m in SEQ_CONTENT_MODES if m != "cached"):  # the bank needs dedup
            out.append(Variant(f"em3-{mode}-nodedup{suffix}", "em3", mode, dedup=False, level=level))
    out += [
        Variant("ref-sparse", "none", "none", level="none", reference="sparse"),
        Variant("ref-dense", "none", "none", level="none", reference="dense"),
    ]
    out += [replace(v, name=f"{v.name}+compile", compile=True) for v in list(out) if v.content == "em3"]
    return {v.name: v for v in out}


VARIANTS = _variants()
TORCHREC_IDS = ("id", "id-pipeline")  # the TorchRec ID-only DIN, plain and pipelined steps
DEFAULT_VARIANTS = (
    "id,frozen,em3,em3-none,em3-frozen,em3-lora,em3-full,em3-cached,em3-lora-nodedup,em3-full-nodedup,"
    "em3-lora/pooled,em3-cached/pooled,em3-full-nodedup/pooled,ref-sparse,ref-dense"
)
# The content tower alone (forward + backward) is timed for these, next to the matmul peak.
DEFAULT_TOWER_VARIANTS = "em3,em3-full"


def variant_config(args: argparse.Namespace, variant: Variant | None) -> Config:
    """``variant``'s config: its bundled config, or the base (``--config``) with its overrides; either
    with ``--set``, ``--data`` and ``--batch-size`` (``variant=None``: the base)."""
    overrides = list(args.set) + [
        f"data.path={args.data}",
        f"data.batch_size={args.batch_size}",
        "data.batch_scope=rank",
    ]
    if variant is not None and variant.precision:
        overrides.append(f"train.precision={variant.precision}")
    if variant is not None and variant.compile:
        overrides.append("model.qformer.compile=true")
    if variant is not None:
        overrides += variant.extra
    if variant is not None and variant.bundled:
        return load_config(args.bundled_prefix + variant.bundled, overrides)
    if variant is not None:
        overrides += variant.overrides()
    return load_config(args.config, overrides)


def level_of(config: Config) -> str:
    """The item features a config's batches carry: ``none``, ``pooled`` or ``tokens``."""
    if config.model.content == "none":
        return "none"
    return "pooled" if config.data.pooled_content else "tokens"


def resolve(args: argparse.Namespace, variant: Variant) -> Variant:
    """``variant`` with content, history mode, dedup and level read from its bundled config."""
    if not variant.bundled:
        return variant
    model = (config := variant_config(args, variant)).model
    return replace(
        variant,
        content=model.content,
        seq_content_mode=model.seq_content_mode,
        dedup=model.dedup,
        level=level_of(config),
    )
