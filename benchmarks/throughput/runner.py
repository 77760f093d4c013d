"""A variant built into a runnable training step (as the recipe builds it, through
``em3rec.factory``, or the plain-PyTorch reference), and the real loader batches it runs on."""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from benchmarks import flops as flops_module
from benchmarks.reference_din import ReferenceDIN, reference_optimizer
from benchmarks.throughput.variants import Variant
from em3rec import factory
from em3rec.config import Config, load_config
from em3rec.data.batch import Batch
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import DatasetMeta
from em3rec.distributed import DistEnv, init_distributed
from em3rec.modules.content_io import DistinctTargets
from em3rec.modules.model import build_model
from em3rec.precision import Precision


def quiet() -> None:
    """Silence the libraries' warnings and INFO logs (they would interleave with the timings)."""
    warnings.filterwarnings("ignore")
    for name in ("torchrec", "torch.distributed", "torch.fx", "fbgemm_gpu"):
        logging.getLogger(name).setLevel(logging.ERROR)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FlopShim:
    """What ``flops.measure`` calls: ``.model`` (the inner EM3Model) and ``(batch)`` (the DMP)."""

    def __init__(self, dmp: torch.nn.Module) -> None:
        self._dmp = dmp
        self.model = factory.local_model(dmp)

    def __call__(self, batch: Batch) -> Any:
        return self._dmp(batch)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._dmp.zero_grad(set_to_none=set_to_none)


@dataclass
class Runner:
    """A built variant: ``step(batch)`` runs one training step; ``count(batch)`` one counted step."""

    step: Callable[[Batch], None]
    count: Callable[[Batch], dict[str, float]]
    after_step: Callable[[Batch], dict[str, float]] = lambda batch: {}
    model: Any = None  # the EM3Model (TorchRec variants)


def flops_per_sample(step: Callable[[Batch], None], key: str) -> Callable[[Batch], dict[str, float]]:
    """``{key: FLOPs of one step(batch) / B}``, counted by ``FlopCounterMode``. A compiled Q-Former
    runs eager for the count: dynamo never compiles a frame it first meets under a dispatch mode,
    and the count is then the model's work as eager does it, the same for both forms (the compiled
    one also computes the padded token positions the eager one skips)."""

    def count(batch: Batch) -> dict[str, float]:
        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
            step(batch)
        return {key: counter.get_total_flops() / batch.batch_size}

    return count


def build_runner(
    variant: Variant, config: Config, meta: DatasetMeta, env: DistEnv, batches: list[Batch] | None = None
) -> Runner:
    """Build ``variant`` the way the recipe does (TorchRec) or the plain-PyTorch reference.

    A ``pipeline`` variant reads ``batches`` itself, in a cycle (the pipeline holds the next ones
    in flight), so its ``step`` ignores the batch it is given: the same batches, in the same order.
    """
    torch.manual_seed(config.train.seed)  # identical dense init on every rank
    if variant.reference:
        model = ReferenceDIN(meta, config.model, sparse=variant.reference == "sparse").to(env.device)
        ddp = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
        optimizer = reference_optimizer(ddp, config.optim)

        def reference_step(batch: Batch) -> None:
            loss = ddp(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return Runner(reference_step, flops_per_sample(reference_step, "total_flops"))

    dmp, optimizer = factory.build_training(config, meta, env)  # as the recipe builds it
    inner = factory.local_model(dmp)
    precision = Precision.resolve(config.train.precision, env.device)
    forward = precision.forward(dmp)  # as the recipe steps it: the forward under autocast

    def step(batch: Batch) -> None:
        loss, _ = forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    run_step = step
    if variant.pipeline:
        if not batches:
            raise ValueError(f"{variant.name}: a pipelined variant needs its batches")
        pipeline = TrainPipelineSparseDist(
            dmp, optimizer, env.device, execute_all_batches=True, custom_model_fwd=forward
        )
        feed = itertools.cycle(batches)

        def pipelined_step(batch: Batch) -> None:
            """One pipelined step; ``batch`` is ignored (the pipeline reads ``feed``, two batches ahead)."""
            pipeline.progress(feed)

        run_step = pipelined_step

    def count(batch: Batch) -> dict[str, float]:
        rows = {r.name: r for r in flops_module.measure(_FlopShim(dmp), batch)}
        tower = rows.get("content_tower")
        return {
            "total_flops": rows["total"].forward_flops + rows["total"].backward_flops,
            "tower_flops": (tower.forward_flops + tower.backward_flops) if tower else 0.0,
        }

    def after_step(batch: Batch) -> dict[str, float]:
        if variant.seq_content_mode != "cached" or variant.content != "em3":
            return {}
        history = int(torch.unique(batch.history_content_index[batch.history_mask]).numel())
        return {"refreshed": float(inner.content_tower.history.last_refresh_count), "history_items": float(history)}

    return Runner(run_step, count, after_step, inner)


def build_tower_runner(variant: Variant, config: Config, meta: DatasetMeta, device: torch.device) -> Runner:
    """The content tower of ``variant`` alone: forward + backward of its outputs (no optimiser)."""
    torch.manual_seed(config.train.seed)
    tower = build_model(
        config.model, meta, config.data, sparse_device=torch.device("meta"), dense_device=device
    ).content_tower
    tower.train()
    precision = Precision.resolve(config.train.precision, device)

    def step(batch: Batch) -> None:
        targets = DistinctTargets.of(batch.target_content_index, batch.weights)
        with precision.autocast():
            out = tower(batch, targets)
        loss = out.target.sum() + out.item_content.sum()
        if out.history is not None and out.history.requires_grad:
            loss = loss + out.history.sum()
        tower.zero_grad(set_to_none=True)
        loss.backward()

    return Runner(step, flops_per_sample(step, "tower_flops"))


def matmul_runner(
    size: tuple[int, int, int], device: torch.device, dtype: torch.dtype = torch.float32
) -> Callable[[], float]:
    """``fn()`` -> FLOPs of one ``(m, k) @ (k, n)`` matmul in ``dtype``, run on ``device``."""
    m, k, n = size
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(r, c, generator=g).to(device, dtype) for r, c in ((m, k), (k, n)))

    def run() -> float:
        torch.mm(a, b)
        return 2.0 * m * k * n

    return run


def load_batches(
    config: Config, history: int, level: str, count: int, env: DistEnv, item_store: Any = None
) -> list[Batch]:
    """``count`` real training batches of this rank at history length ``history``, in memory."""
    data = config.data
    loader = ImpressionLoader(
        data.path, "train", batch_size=data.batch_size, max_history=history,
        modalities=[] if level == "none" else data.modalities, pooled_content=level == "pooled",
        token_window=data.token_window, shuffle_buffer=min(data.shuffle_buffer, max(8 * data.batch_size * count, 4096)),
        seed=config.train.seed, rank=env.rank, world_size=env.world_size, max_batches=count, prefetch=0,
        item_store=item_store if level != "none" else None,
        token_dtype=Precision.resolve(config.train.precision, env.device).dtype,
        **factory.batch_options(config.model, "train"),
    )  # fmt: skip
    batches = [b.to(env.device) for b in loader]
    if len(batches) < count:
        raise SystemExit(
            f"{data.path}: only {len(batches)} training batches of {data.batch_size} rows per rank; "
            f"{count} needed (lower --batch-size, --rounds or --steps)"
        )
    return batches


def batch_stats(batches: list[Batch]) -> dict[str, float]:
    """Mean per batch: distinct items ``U``, distinct history items, real history positions per row."""
    distinct, history_items, positions = [], [], []
    for b in batches:
        distinct.append(b.content_item_ids.numel())
        history_items.append(torch.unique(b.history_content_index[b.history_mask]).numel())
        positions.append(float(b.history_mask.sum()) / b.batch_size)
    return {
        "distinct_items": float(np.mean(distinct)),
        "distinct_history_items": float(np.mean(history_items)),
        "history_positions_per_row": float(np.mean(positions)),
    }


_HOOK: dict[str, Any] = {}


def training_step(batch: Batch) -> None:
    """One real training step on ``batch``: the model-step hook of the loader benchmark.

    ``python -m benchmarks.loader_throughput --data data/ml100k --content tokens --step
    benchmarks.throughput.runner:training_step`` then reports how long the loader keeps a real step waiting. The
    model is built on first use from ``$EM3REC_BENCH_CONFIG`` (default ``din_em3``) with the
    ``;``-separated overrides in ``$EM3REC_BENCH_SET`` (set ``data.path`` to the loader's
    ``--data``), in a 1-process group unless one is initialised.
    """
    if "step" not in _HOOK:
        quiet()
        overrides = [x for x in os.environ.get("EM3REC_BENCH_SET", "").split(";") if x]
        config = load_config(os.environ.get("EM3REC_BENCH_CONFIG", "din_em3"), overrides)
        env = init_distributed(config.train.device)
        meta = factory.dataset_meta(config)
        variant = Variant("hook", config.model.content, config.model.seq_content_mode, config.model.dedup)
        _HOOK["step"], _HOOK["device"] = build_runner(variant, config, meta, env).step, env.device
    _HOOK["step"](batch.to(_HOOK["device"]))
