"""Building what a job needs from its config, in one place: the sharded model and its optimiser,
the validated loaders, and a trained model loaded for inference.

The training recipe (``em3rec.train``), ``evaluate``, ``export``, ``score`` and the throughput
benchmark all build through here, so a model is sharded, seeded and given its optimisers one way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import KeyedOptimizer

from em3rec.checkpoint import CheckpointManager, load_checkpoint
from em3rec.config import Config, DataConfig, ModelConfig
from em3rec.data.batch import CATALOGUE_FEATURE
from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import DatasetMeta
from em3rec.data.stats import mean_ids_per_row
from em3rec.distributed import DistEnv, allowed_sharding_types, build_optimizer, init_distributed, shard_model
from em3rec.errors import UsageError
from em3rec.evaluation import cold_item_mask, cold_user_mask
from em3rec.modules.model import (
    EM3Model,
    EM3Train,
    build_model,
    reads_history_tokens,
    uses_catalogue,
    uses_pooled_vectors,
)
from em3rec.precision import Precision
from em3rec.run_log import setup_logging


def run_dir(config: Config) -> Path:
    """``<train.run_dir>/<train.run_name>``: where a run writes its checkpoints and results."""
    return Path(config.train.run_dir) / config.train.run_name


def checkpoint_manager(config: Config) -> CheckpointManager:
    return CheckpointManager(run_dir(config) / "checkpoints", config.train.keep_checkpoints)


def dataset_meta(config: Config) -> DatasetMeta:
    """The prepared dataset's ``meta.json`` as this run uses it: without ``data.drop_features``."""
    return DatasetMeta.load(config.data.path).without_features(config.data.drop_features)


def open_item_store(config: Config, meta: DatasetMeta, device: torch.device) -> ItemStore | None:
    """The item content arrays, validated against ``meta``; None for an ID-only model. A model that
    reads tokens gets them held in memory in the dtype it computes in on ``device``
    (``data.resident_tokens_mb``)."""
    if config.model.content == "none":
        return None
    resident = None if config.data.pooled_content else Precision.resolve(config.train.precision, device).dtype
    return ItemStore(
        config.data.path, config.data.modalities, meta,
        resident_dtype=resident, resident_max_mb=config.data.resident_tokens_mb,
        token_window=config.data.token_window,
    )  # fmt: skip


def open_loader(
    config: Config, split: str, env: DistEnv, item_store: ItemStore | None, training: bool | None = None
) -> ImpressionLoader:
    """Open (and validate) this rank's loader for ``split``; ID-only models read no content tensors.
    ``training`` (default: ``split == "train"``): shuffled, whole batches, CIC's catalogue sample,
    at most ``train.max_steps_per_epoch`` batches per epoch; else every row once, in file order
    (inference reads the train split this way too). Item tokens arrive in the dtype the model
    computes in (``train.precision`` on this device), pinned for a CUDA device."""
    training = split == "train" if training is None else training
    data = config.data
    if config.model.content == "none":
        data = dataclasses.replace(data, modalities=[])
    return ImpressionLoader.from_config(
        data,
        split,
        rank=env.rank,
        world_size=env.world_size,
        seed=config.train.seed,
        training=training,
        max_batches=(config.train.max_steps_per_epoch or None) if training else None,
        item_store=item_store,
        scan_rows=data.scan_rows,
        token_dtype=Precision.resolve(config.train.precision, env.device).dtype,
        pin_memory=env.device.type == "cuda",
        prefetch=prefetch_depth(data, env.device),
        **batch_options(config.model, split, training),
    )


def prefetch_depth(data: DataConfig, device: torch.device) -> int:
    """Batches the loader builds ahead in its background thread: ``data.prefetch``, or where it is
    -1 (auto) 2 on CUDA and 0 (built in the consumer's thread) on CPU."""
    if data.prefetch >= 0:
        return data.prefetch
    return 2 if device.type == "cuda" else 0


def batch_options(model: ModelConfig, split: str, training: bool | None = None) -> dict[str, Any]:
    """What ``model`` needs in its batches of ``split`` (read for ``training``; default: ``split ==
    "train"``), as :class:`ImpressionLoader` options:

    - ``catalogue_samples``: None when the model samples no catalogue items for CIC, else
      ``model.cic.catalogue_samples`` in training and 0 in evaluation (the batches keep the feature
      the model's item table expects);
    - ``pooled_vectors``: the stored pooled vectors beside the tokens (EM3's pooled base);
    - ``history_tokens``: tokens of history items too (not for EM3 with ``none``/``pooled`` history).
    """
    catalogue = None
    if uses_catalogue(model):
        catalogue = model.cic.catalogue_samples if (split == "train" if training is None else training) else 0
    return {
        "catalogue_samples": catalogue,
        "pooled_vectors": uses_pooled_vectors(model),
        "history_tokens": reads_history_tokens(model),
    }


def build_sharded_model(
    config: Config,
    meta: DatasetMeta,
    env: DistEnv,
    cold_items: torch.Tensor | None = None,
    cold_users: torch.Tensor | None = None,
    for_training: bool = True,
) -> DistributedModelParallel:
    """``EM3Train`` built with its embedding tables on ``meta``, given the fused embedding
    optimiser (``for_training``; inference needs none, and none of its state in memory) and
    sharded by ``DistributedModelParallel``. Seeds torch with ``train.seed`` first, so
    every rank starts from the same dense weights. ``cold_items`` / ``cold_users``: ``(vocab_size,)``
    bool, the items / users without training rows that ``model.id_dropout`` /
    ``model.user_id_dropout`` need (read from the train split if not given)."""
    torch.manual_seed(config.train.seed)
    if config.model.id_dropout > 0 and cold_items is None:
        cold_items = cold_item_mask(config.data.path, meta)
    if config.model.user_id_dropout > 0 and cold_users is None:
        cold_users = cold_user_mask(config.data.path, meta)
    model = EM3Train(
        build_model(
            config.model,
            meta,
            config.data,
            sparse_device=torch.device("meta"),
            dense_device=env.device,
            unseen_items=cold_items,
            unseen_users=cold_users,
        )
    )
    # The planner's per-rank batch is a cost hint: evaluation may run on a world size that a global
    # training batch does not divide (training refuses that in Recipe).
    rank_batch = config.data.batch_size
    if config.data.batch_scope == "global":
        rank_batch = math.ceil(rank_batch / env.world_size)
    # The planner's pooling factors: the history's mean length, and CIC's K catalogue ids a batch.
    lookups = mean_ids_per_row(config.data.path, meta, config.data.max_history)
    if uses_catalogue(config.model):
        lookups[CATALOGUE_FEATURE] = config.model.cic.catalogue_samples / rank_batch
    optim = config.optim if for_training else None
    return shard_model(model, env, config.sharding, optim, rank_batch, lookups_per_sample=lookups)


def build_training(
    config: Config,
    meta: DatasetMeta,
    env: DistEnv,
    cold_items: torch.Tensor | None = None,
    cold_users: torch.Tensor | None = None,
) -> tuple[DistributedModelParallel, KeyedOptimizer]:
    """The sharded model and its optimiser (fused embedding optimiser + dense AdamW groups);
    ``cold_items`` / ``cold_users`` as in :func:`build_sharded_model`."""
    model = build_sharded_model(config, meta, env, cold_items, cold_users)
    return model, build_optimizer(model, config.optim)


def local_model(model: DistributedModelParallel) -> EM3Model:
    """The ``EM3Model`` inside DMP -> ``EM3Train``: its dense parts (content tower, backbone, CIC)
    are local replicas; its embedding tables are sharded and must be called through DMP."""
    train = model.module
    assert isinstance(train, EM3Train), f"expected DMP over EM3Train, got {type(train).__name__}"
    return train.model


@dataclass
class TrainedModel:
    """A trained model loaded for inference (evaluate, export, score).

    Fields:
        config: the run's config (the caller's, unchanged).
        env: this process's rank, world size and device.
        meta: the dataset's ``meta.json``.
        model: the sharded ``EM3Train`` (call it with a batch), weights from ``checkpoint``.
        checkpoint: the checkpoint folder the weights came from.
        cold_items: ``(num_items,)`` bool, items never seen in training (cold-start metrics).
        cold_users: ``(num_users,)`` bool, users never seen in training (cold-user metrics).
        item_store: the item content arrays (None for an ID-only model).
        precision: the dense forward's compute precision (``train.precision`` on this device).
    """

    config: Config
    env: DistEnv
    meta: DatasetMeta
    model: DistributedModelParallel
    checkpoint: Path
    cold_items: torch.Tensor
    cold_users: torch.Tensor
    item_store: ItemStore | None
    precision: Precision
    _loaders: dict[str, ImpressionLoader] = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        return run_dir(self.config)

    @property
    def em3_model(self) -> EM3Model:
        """The local ``EM3Model`` (for its dense parts, e.g. ``encode_items``)."""
        return local_model(self.model)

    def loader(self, split: str) -> ImpressionLoader:
        """This rank's loader for ``split`` (every row once, in file order, even the train split),
        opened and validated on first use."""
        if split not in self._loaders:
            self._loaders[split] = open_loader(self.config, split, self.env, self.item_store, training=False)
        return self._loaders[split]


def load_trained(config: Config, checkpoint: str | Path = "") -> TrainedModel:
    """Initialise the process group, build the sharded model and load the weights of
    ``checkpoint`` (default: the run's best), resharded to this world size.

    Builds no optimiser state, train pipeline, metric writer or loaders beyond those asked for, and
    leaves ``config`` as it was. Raises :class:`~em3rec.errors.UsageError` if there is no such checkpoint.
    """
    env = init_distributed(config.train.device, timeout_s=config.train.collective_timeout_s)
    setup_logging(env.rank, config.train.library_logs)
    allowed_sharding_types(config.sharding, env.device)
    meta = dataset_meta(config)
    item_store = open_item_store(config, meta, env.device)
    cold_items = cold_item_mask(config.data.path, meta)
    cold_users = cold_user_mask(config.data.path, meta)
    model = build_sharded_model(config, meta, env, cold_items, cold_users, for_training=False)
    manager = checkpoint_manager(config)
    path = Path(checkpoint) if checkpoint else manager.best()
    if path is None:
        raise UsageError(f"{manager.folder}: no best checkpoint (train first, or pass --checkpoint DIR)")
    if not path.is_dir():
        raise UsageError(f"--checkpoint {path}: no such checkpoint folder")
    load_checkpoint(path, model, optimizer=None, restore_rng=False)
    precision = Precision.resolve(config.train.precision, env.device)
    return TrainedModel(config, env, meta, model, path, cold_items, cold_users, item_store, precision)
