"""The model: ID side (``sparse``), content side (``fusion_qformer``, ``content_tower``), user
interest (``interest``), CIC loss (``cic``), ranking backbones (``backbones``), and their assembly
(``model``: ``build_model``, ``EM3Model``, ``EM3Train``). FLOPs per component: ``benchmarks/flops.py``;
test fixtures: ``em3rec.testing``."""

from em3rec.modules.model import EM3Model, EM3Output, EM3Train, build_model

__all__ = ["EM3Model", "EM3Output", "EM3Train", "build_model"]
