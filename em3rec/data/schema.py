"""The prepared-dataset contract: ``meta.json`` as dataclasses, and its validation.

A prepared dataset folder (written by ``data_prep``) holds::

    meta.json                      # DatasetMeta below
    train/*.parquet valid/*.parquet test/*.parquet   # impressions, one folder per split
    items/items.parquet            # item_idx, raw item_id, and the text each modality was made from
    items/<modality>.tokens.npy    # (num_items, T_m, W_m) float16 frozen token features
    items/<modality>.mask.npy      # (num_items, T_m) bool, True = real token; all False = missing
    items/<modality>.pooled.npy    # (num_items, W_m) float16 masked mean of the tokens

Impression columns: ``label`` (float32 in {0, 1}), ``user_id``, ``item_id``, ``timestamp``,
``hist_item_ids`` (raw ids, chronological), the raw side features, and for every feature in
``meta.features`` its remapped index column (``FeatureSpec.column``, int64 or list<int64>).
Index 0 of every vocabulary is reserved for unknown / padding; item index ``i`` is row ``i`` of the
item content arrays.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from em3rec.config import ConfigError
from em3rec.errors import UserError

FeatureKind = Literal["user", "item", "history", "single", "multi"]
FEATURE_KINDS: tuple[str, ...] = typing.get_args(FeatureKind)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
RESERVED_INDEX = 0


class DatasetError(UserError):
    """A prepared dataset does not match its contract; the message names the file and field."""


@dataclass(frozen=True)
class FeatureSpec:
    """One ID feature.

    Args:
        name: feature name used in the ``KeyedJaggedTensor`` (e.g. ``"gender"``).
        column: the remapped index column in the impression files (e.g. ``"gender_idx"``).
        kind: ``user`` (the user id), ``item`` (the target item), ``history`` (history item ids,
            shares the item table), ``single`` or ``multi`` (categorical side features).
        vocab_size: number of indices including the reserved index 0.
        table: embedding table name; ``item`` and ``history`` features share table ``"item"``.
        max_length: most values per row (1 for single-valued features).
    """

    name: str
    column: str
    kind: FeatureKind
    vocab_size: int
    table: str
    max_length: int = 1


@dataclass(frozen=True)
class ModalitySpec:
    """One item modality: ``tokens`` token vectors of width ``width`` per item."""

    name: str
    tokens: int
    width: int
    encoder: str
    encoder_version: str = ""


@dataclass(frozen=True)
class SplitSpec:
    rows: int
    positive_rate: float


@dataclass(frozen=True)
class DatasetMeta:
    """Everything a model and loader need to know about a prepared dataset.

    ``num_items`` / ``num_users`` count every index including the reserved 0: ``num_items`` is the
    item feature's ``vocab_size``, the row count of ``items/items.parquet`` and of every item array.
    """

    name: str
    protocol: str
    num_items: int
    num_users: int
    features: tuple[FeatureSpec, ...]
    modalities: tuple[ModalitySpec, ...]
    splits: dict[str, SplitSpec]
    synthetic: bool = False
    extra: dict = field(default_factory=dict)

    def features_of(self, *kinds: str) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind in kinds]

    def without_features(self, names: Sequence[str]) -> "DatasetMeta":
        """This dataset without the side features ``names`` (``data.drop_features``): what a model
        and loader see, so the dropped features get no table and their columns are not read.

        Raises:
            ConfigError: a name that is not a side feature (kind ``single`` / ``multi``) here.
        """
        if not names:
            return self
        side = [f.name for f in self.features_of("single", "multi")]
        unknown = [n for n in names if n not in side]
        if unknown:
            raise ConfigError(
                f"data.drop_features: {unknown} not among the side features of dataset {self.name!r} "
                f"(meta.json); expected some of {side} (the user, item and history ids cannot be dropped)"
            )
        dropped = set(names)
        return replace(self, features=tuple(f for f in self.features if f.name not in dropped))

    @property
    def max_history(self) -> int:
        return self.features_of("history")[0].max_length

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def save(self, folder: Path) -> None:
        (Path(folder) / "meta.json").write_text(self.to_json())

    @staticmethod
    def load(folder: str | Path) -> "DatasetMeta":
        path = Path(folder) / "meta.json"
        if not path.is_file():
            raise DatasetError(
                f"{path}: missing; prepare the dataset first (python -m data_prep.ml100k --out {folder})"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from e
        try:
            meta = DatasetMeta(
                name=raw["name"],
                protocol=raw["protocol"],
                num_items=int(raw["num_items"]),
                num_users=int(raw["num_users"]),
                features=tuple(FeatureSpec(**f) for f in raw["features"]),
                modalities=tuple(ModalitySpec(**m) for m in raw["modalities"]),
                splits={k: SplitSpec(**v) for k, v in raw["splits"].items()},
                synthetic=bool(raw.get("synthetic", False)),
                extra=raw.get("extra", {}),
            )
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{path}: malformed meta ({e!r})") from e
        meta.validate(path)
        return meta

    def validate(self, path: Path | str = "meta.json") -> None:
        for f in self.features:
            if f.kind not in FEATURE_KINDS:
                raise DatasetError(f"{path}: feature {f.name!r} has kind {f.kind!r}; expected one of {FEATURE_KINDS}")
            if f.vocab_size < 2:
                raise DatasetError(f"{path}: feature {f.name!r} has vocab_size {f.vocab_size}; expected >= 2")
        for kind in ("user", "item", "history"):
            if len(self.features_of(kind)) != 1:
                raise DatasetError(f"{path}: expected exactly one feature of kind {kind!r}")
        for split in SPLITS:
            if split not in self.splits:
                raise DatasetError(f"{path}: split {split!r} missing from 'splits'")
