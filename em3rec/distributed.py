"""Process groups, sharding plans and optimisers: the TorchRec plumbing around a model.

The recipe follows TorchRec's DLRM example: embedding modules are built on ``meta``; their
parameters get a fused in-backward optimiser (FBGEMM applies it inside the backward pass);
``DistributedModelParallel`` shards them by an ``EmbeddingShardingPlanner`` plan and wraps the
dense rest in DDP; the dense parameters get AdamW; ``CombinedOptimizer`` steps both.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import (
    HardwareConfig,
    KernelConfig,
    ParameterConstraints,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim import RowWiseAdagrad

from em3rec.config import SHARDING_TYPES, ConfigError, OptimConfig, ShardingConfig
from em3rec.openmp import keep_one_openmp_team

log = logging.getLogger(__name__)

# What FBGEMM's CPU kernels and gloo collectives can shard; row-wise needs CUDA.
CPU_SHARDING_TYPES = tuple(t for t in SHARDING_TYPES if "row_wise" not in t)
CUDA_SHARDING_TYPES = SHARDING_TYPES


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    local_world_size: int | None = None  # ranks on this rank's node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ranks_per_node(self) -> int:
        """Ranks on this rank's node: ``LOCAL_WORLD_SIZE``, or all of them where the launcher did
        not say (a one-node job)."""
        return self.local_world_size or self.world_size

    @property
    def nodes(self) -> int:
        """Nodes of the job (torchrun starts the same number of ranks on each)."""
        return max(1, self.world_size // self.ranks_per_node)


def init_distributed(device: str = "auto", timeout_s: int = 300) -> DistEnv:
    """Initialise the default process group from torchrun/torchx env vars (or a 1-rank group).

    ``device="auto"`` picks CUDA with nccl when a GPU is visible, else CPU with gloo. ``timeout_s``
    bounds every collective (``train.collective_timeout_s``): a rank left waiting for a peer that
    died fails after that long even without torchrun's agent to stop it.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but torch.cuda.is_available() is False")
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ["LOCAL_WORLD_SIZE"]) if "LOCAL_WORLD_SIZE" in os.environ else None
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "MASTER_ADDR" not in os.environ and world_size == 1:
            # Plain `python -m`: a one-process group needs no network store. (Picking a free TCP
            # port and binding it again later raced with other processes: EADDRINUSE at start-up.)
            store = dist.HashStore()
        else:
            store = _restart_safe_store(world_size, timeout)
        dist.init_process_group(
            backend=backend,
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            # nccl: bind the communicator to this rank's GPU now (barriers and the first collective
            # then never guess the device); gloo takes none.
            device_id=torch_device if device == "cuda" else None,
        )
    keep_one_openmp_team()
    return DistEnv(rank, world_size, local_rank, torch_device, backend, local_world_size)


def _restart_safe_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """The store the process group rendezvouses through; None: the default (``env://``).

    torchrun shares its rendezvous TCPStore with the workers (``TORCHELASTIC_USE_AGENT_STORE``)
    and, in this torch, keeps it across restarts of the worker group, so a restarted group reads
    the previous attempt's keys: gloo connects to the dead workers' addresses and the restart fails
    (pytorch/pytorch#135712; ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on the agent avoids it). On
    one node every worker restarts together, so a prefix per restart keeps the attempts apart.
    Across nodes the restart counts are per agent and may disagree: there we only warn.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    restarts_allowed = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
        if restarts_allowed and int(os.environ.get("RANK", "0")) == 0:
            log.warning(
                "torchrun --max-restarts over several nodes with the shared rendezvous store: a restarted "
                "group may read the failed attempt's addresses; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                "for torchrun (the em3rec torchx component does)"
            )
        return None
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"em3rec/attempt_{attempt}", store)


def allowed_sharding_types(config: ShardingConfig, device: torch.device) -> list[str]:
    """The sharding types the planner may use: the config's, checked against the device.

    Raises ``ConfigError`` for a type the device cannot run (e.g. ``row_wise`` on CPU).
    """
    supported = CUDA_SHARDING_TYPES if device.type == "cuda" else CPU_SHARDING_TYPES
    if not config.types:
        return list(supported)
    unsupported = [t for t in config.types if t not in supported]
    if unsupported:
        raise ConfigError(
            f"sharding.types {unsupported} cannot run on {device.type}; {device.type} supports {list(supported)}"
        )
    return list(config.types)


def embedding_tables(model: nn.Module) -> dict[str, tuple[str, list[str]]]:
    """Each embedding table of the model's EBC/EC modules -> (``"bag"`` or ``"sequence"``, the
    features it serves in its order)."""
    tables: dict[str, tuple[str, list[str]]] = {}
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            tables.update({t.name: ("bag", list(t.feature_names)) for t in module.embedding_bag_configs()})
        elif isinstance(module, EmbeddingCollection):
            tables.update({t.name: ("sequence", list(t.feature_names)) for t in module.embedding_configs()})
    return tables


def sequence_sharding_types(types: list[str], table: str) -> list[str]:
    """``types`` without ``data_parallel`` for an ``EmbeddingCollection`` table: TorchRec 1.8's
    data-parallel sharded EmbeddingCollection returns its rows split wrongly (``split_with_sizes``
    in its output dist: tests/test_distributed.py), so the planner never gets that choice."""
    usable = [t for t in types if t != "data_parallel"]
    if not usable:
        raise ConfigError(
            f"sharding.types {types}: the sequence table {table!r} (an EmbeddingCollection) cannot be "
            "data_parallel in TorchRec 1.8; allow another type as well (e.g. table_wise)"
        )
    return usable


def plan_sharding(
    model: nn.Module,
    env: DistEnv,
    config: ShardingConfig,
    batch_size: int,
    lookups_per_sample: Mapping[str, float] | None = None,
) -> ShardingPlan:
    """An ``EmbeddingShardingPlanner`` plan restricted to the sharding types the device allows.

    ``lookups_per_sample``: feature -> its mean ids per training row (the history's mean length;
    1 for a feature not named), the planner's pooling factors: without them it costs the item
    table's lookups and all-to-alls as one id per row, ~L times too few."""
    types = allowed_sharding_types(config, env.device)
    lookups = lookups_per_sample or {}
    constraints = {
        table: ParameterConstraints(
            sharding_types=types if kind == "bag" else sequence_sharding_types(types, table),
            pooling_factors=[lookups.get(f, 1.0) for f in features],
        )
        for table, (kind, features) in embedding_tables(model).items()
    }
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=env.world_size, local_world_size=env.ranks_per_node),
        hardware_config=HardwareConfig(**memory_caps(env.device, env.ranks_per_node)),
        kernel_config=KernelConfig(compute_device=env.device.type),
    )
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints, debug=False)
    return planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)


def memory_caps(device: torch.device, local_world_size: int) -> dict[str, int]:
    """The planner's storage per rank, in bytes, as this machine has it (TorchRec's topology
    otherwise assumes 32 GB of GPU memory and 128 GB of host memory per rank): ``hbm_cap_bytes``
    the GPU's memory on CUDA, ``ddr_cap_bytes`` the host's memory shared by its ranks."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    caps = {"ddr_cap_bytes": host // local_world_size}
    if device.type == "cuda":
        caps["hbm_cap_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return caps


def get_default_sharders() -> list[Any]:
    from torchrec.distributed.sharding_plan import get_default_sharders as _sharders

    return _sharders()


def embedding_optimizer(config: OptimConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The embedding tables' optimiser class and its arguments (``optim.embedding_optimizer``)."""
    optimizers: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
        "rowwise_adagrad": (RowWiseAdagrad, {"lr": config.embedding_lr, "eps": 1e-8}),
        "adagrad": (torch.optim.Adagrad, {"lr": config.embedding_lr, "eps": 1e-8}),
        "adam": (torch.optim.Adam, {"lr": config.embedding_lr}),
        "sgd": (torch.optim.SGD, {"lr": config.embedding_lr}),
    }
    return optimizers[config.embedding_optimizer]


def apply_embedding_optimizer(model: nn.Module, config: OptimConfig) -> None:
    """Attach the fused in-backward optimiser to every EBC/EC parameter (before sharding)."""
    cls, kwargs = embedding_optimizer(config)
    for module in model.modules():
        if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection)):
            _apply_optimizer_in_backward(cls, module.parameters(), kwargs)


def shard_model(
    model: nn.Module,
    env: DistEnv,
    sharding: ShardingConfig,
    optim: OptimConfig | None,
    batch_size: int,
    plan: ShardingPlan | None = None,
    lookups_per_sample: Mapping[str, float] | None = None,
) -> DistributedModelParallel:
    """Fused optimiser on the embeddings (``optim``; None: inference, no optimiser state), then
    ``DistributedModelParallel`` with a planner plan (``lookups_per_sample`` as in
    :func:`plan_sharding`)."""
    if optim is not None:
        apply_embedding_optimizer(model, optim)
    if plan is None:
        plan = plan_sharding(model, env, sharding, batch_size, lookups_per_sample)
    return DistributedModelParallel(module=model, device=env.device, plan=plan, sharders=get_default_sharders())


def data_parallel_table_parameters(model: DistributedModelParallel) -> list[str]:
    """Names of the table weights that ``model``'s plan shards ``data_parallel`` (replicated)."""
    parameters = dict(model.named_parameters())
    names = []
    for module_path, module_plan in model.plan.plan.items():
        for table, sharding in module_plan.items():  # type: ignore[union-attr]
            if sharding.sharding_type != "data_parallel":
                continue
            found = [
                name
                for name in (f"{module_path}.embedding_bags.{table}.weight", f"{module_path}.embeddings.{table}.weight")
                if name in parameters
            ]
            assert len(found) == 1, f"data_parallel table {module_path}.{table}: no single weight among {found}"
            names += found
    return names


def build_optimizer(model: DistributedModelParallel, config: OptimConfig) -> KeyedOptimizer:
    """The fused embedding optimiser, the embedding optimiser over any replicated table, and AdamW
    over the dense parameters (the content tower in its own AdamW, ``optim.content_lr``, the text
    encoder's trainable layers in another, ``optim.encoder_lr``), stepped
    together; ``optim.grad_clip > 0`` clips the dense gradients' global 2-norm first (TorchRec's
    ``GradientClippingOptimizer``; the fused embedding optimiser has stepped inside backward)."""
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    # A table the plan replicates (data_parallel) is a plain DDP parameter: TorchRec's dense
    # kernel keeps no in-backward optimiser for it, so it would fall to AdamW at dense_lr. It gets
    # the embedding optimiser instead, as the sharded tables do (on one rank, the same update).
    replicated = {name: dense_params.pop(name) for name in data_parallel_table_parameters(model)}
    encoder = {name: p for name, p in dense_params.items() if ".text_encoder." in f".{name}"}
    content = {name: p for name, p in dense_params.items() if ".content_tower." in f".{name}"}
    rest = {name: p for name, p in dense_params.items() if name not in content and name not in encoder}
    # torch's fused AdamW (one kernel over all tensors; on CPU ~4.5x faster than the per-tensor loop
    # for the ~30 small tensors of a Q-Former) where every parameter's device has it.
    fused = all(p.device.type in ("cpu", "cuda") for p in dense_params.values())
    optimizers = [
        model.fused_optimizer,
        KeyedOptimizerWrapper(
            rest,
            lambda params: torch.optim.AdamW(params, lr=config.dense_lr, weight_decay=config.weight_decay, fused=fused),
        ),
    ]
    if content:  # the content tower's own AdamW settings (optim.content_lr / content_weight_decay)
        lr = config.content_lr or config.dense_lr
        optimizers.append(
            KeyedOptimizerWrapper(
                content,
                lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=config.content_weight_decay, fused=fused),
            )
        )
    if encoder:  # the text encoder's trainable top layers (model.text_encoder): optim.encoder_lr
        optimizers.append(
            KeyedOptimizerWrapper(
                encoder,
                lambda params: torch.optim.AdamW(
                    params, lr=config.encoder_lr, weight_decay=config.content_weight_decay, fused=fused
                ),
            )
        )
    if replicated:
        cls, kwargs = embedding_optimizer(config)
        optimizers.append(KeyedOptimizerWrapper(replicated, lambda params: cls(params, **kwargs)))
    combined = CombinedOptimizer(optimizers)
    if config.grad_clip > 0:
        # One norm over every gradient it holds: the dense ones, DDP-averaged, so the same on every
        # rank (the fused embedding parameters have none). Wrapping the whole CombinedOptimizer, not
        # the dense part inside it: an OptimizerWrapper's ``state`` is a snapshot taken when it is
        # built, which a CombinedOptimizer around it would save (empty); its state_dict() is live.
        return GradientClippingOptimizer(combined, clipping=GradientClipping.NORM, max_gradient=config.grad_clip)
    return combined


def describe_plan(plan: ShardingPlan) -> str:
    """One line per table: module path, table, sharding type and ranks."""
    lines = []
    for module_path, module_plan in plan.plan.items():
        for table, param in module_plan.items():  # type: ignore[union-attr]
            ranks = param.ranks if param.ranks is not None else "all"
            lines.append(f"  {module_path}.{table}: {param.sharding_type} on ranks {ranks} ({param.compute_kernel})")
    return "sharding plan:\n" + "\n".join(lines)


def _main() -> None:
    """``python -m em3rec.distributed`` under torchrun: check every rank can reach every other."""
    env = init_distributed()
    total = torch.tensor([env.rank + 1.0], device=env.device)
    dist.all_reduce(total)
    expected = env.world_size * (env.world_size + 1) / 2
    status = "ok" if total.item() == expected else f"FAILED (all_reduce gave {total.item()}, expected {expected})"
    print(f"rank {env.rank}/{env.world_size} on {env.device} ({env.backend}): all_reduce {status}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    _main()
