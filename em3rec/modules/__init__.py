"""The model: ID side (``sparse``), content side (``fusion_qformer``, ``content_tower`` with its
``history_encoders``, the baseline's ``frozen_content``, their inputs/outputs in ``content_io``), user
interest (``interest``), CIC loss (``cic``), ranking backbones (``backbones``), and their assembly
(``model``: ``build_model``, ``EM3Model``, ``EM3Train``). FLOPs per component: ``benchmarks/flops.py``;
test fixtures: ``em3rec.testing``."""

from em3rec.modules.model import EM3Model, EM3Output, EM3Train, build_model

__all__ = ["EM3Model", "EM3Output", "EM3Train", "build_model"]
