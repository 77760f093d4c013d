"""The training recipe: ``python -m em3rec.train --config din_em3 [--set k=v ...] [--resume]``.

Run it under ``torchrun`` (or the ``train`` torchx component) for several processes. One recipe
covers every variant; the config says which backbone, content mode and history mode to build.

Per epoch: train (TorchRec's ``TrainPipelineSparseDist`` overlaps the sparse input all-to-all with
compute), evaluate on valid, checkpoint. The epoch with the best valid AUC is reloaded at the end and
evaluated once on test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from em3rec.checkpoint import CheckpointManager, load_checkpoint
from em3rec.config import Config, load_config
from em3rec.data.batch import Batch
from em3rec.data.item_store import ItemStore
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import DatasetMeta
from em3rec.distributed import DistEnv, build_optimizer, describe_plan, init_distributed, shard_model
from em3rec.evaluation import cold_item_mask, evaluate
from em3rec.modules.model import EM3Train, build_model
from em3rec.run_log import MetricWriter, memory_mb, setup_logging

log = logging.getLogger("em3rec.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the batch's ids."""


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so a restart resumes exactly."""

    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained
    step: int = 0  # global optimiser steps
    best_valid_auc: float = -1.0
    best_epoch: int = -1
    valid: list[dict[str, Any]] = field(default_factory=list)
    skipped_batches: int = 0

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Progress":
        known = {k: v for k, v in d.items() if k in Progress.__dataclass_fields__}
        return Progress(**known)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="din_em3", help="bundled config name or TOML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.backbone=dcn (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    return parser.parse_args(argv)


class Recipe:
    """Builds the sharded model, loaders and optimiser for one config, then trains and evaluates."""

    def __init__(self, config: Config, env: DistEnv) -> None:
        self.config = config
        self.env = env
        self.run_dir = Path(config.train.run_dir) / config.train.run_name
        self.meta = DatasetMeta.load(config.data.path)
        self.cold_items = cold_item_mask(config.data.path, self.meta)
        torch.manual_seed(config.train.seed)  # identical dense init on every rank
        model = EM3Train(build_model(config.model, self.meta, config.data,
                                     sparse_device=torch.device("meta"), dense_device=env.device))
        self.model = shard_model(model, env, config.sharding, config.optim, config.data.batch_size)
        self.optimizer = build_optimizer(self.model, config.optim)
        torch.manual_seed(config.train.seed * 1000 + env.rank)  # dropout differs across ranks
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", config.train.keep_checkpoints)
        self.progress = Progress()
        self.writer = MetricWriter(self.run_dir, enabled=env.is_main)
        self.pipeline = self._make_pipeline()
        content = config.model.content != "none"
        self._item_store = ItemStore(config.data.path, config.data.modalities, self.meta) if content else None
        self._pipeline_attached = True
        if env.is_main:
            log.info(describe_plan(self.model.plan))

    def _make_pipeline(self) -> TrainPipelineSparseDist | None:
        if not self.config.sharding.pipeline:
            return None
        return TrainPipelineSparseDist(self.model, self.optimizer, self.env.device, execute_all_batches=True)

    def loader(self, split: str, epoch: int = 0) -> ImpressionLoader:
        """This rank's loader for ``split``; ID-only models read no content tensors."""
        data = self.config.data
        if self.config.model.content == "none":
            data = dataclasses.replace(data, modalities=[])
        loader = ImpressionLoader.from_config(
            data, split, rank=self.env.rank, world_size=self.env.world_size, seed=self.config.train.seed,
            max_batches=(self.config.train.max_steps_per_epoch or None) if split == "train" else None,
            item_store=self._item_store,
        )
        loader.set_epoch(epoch)
        return loader

    # ---- training -------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, self.model, self.optimizer)
        self.progress = Progress.from_dict(state)
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.progress.epoch,
                 self.progress.batches_done, self.progress.step)

    def fit(self) -> None:
        cfg = self.config.train
        while self.progress.epoch < cfg.epochs:
            epoch = self.progress.epoch
            self._train_epoch(epoch)
            valid = evaluate(self._eval_model(), self.loader("valid"), self.env.device, self.cold_items)
            valid["epoch"] = epoch
            self.progress.valid.append(valid)
            improved = valid["auc"] > self.progress.best_valid_auc
            if improved:
                self.progress.best_valid_auc, self.progress.best_epoch = valid["auc"], epoch
            self.progress.epoch, self.progress.batches_done = epoch + 1, 0
            self._save(best=improved)
            self.writer.scalars("valid", valid, self.progress.step)
            if self.env.is_main:
                log.info("epoch %d valid %s%s", epoch, _fmt(valid), "  (best so far)" if improved else "")

    def _eval_model(self) -> torch.nn.Module:
        """The model with its original forwards (the train pipeline rewrites the sharded ones)."""
        if self.pipeline is not None and self._pipeline_attached:
            self.pipeline.detach()
            self.pipeline.reset()
            self._pipeline_attached = False
        return self.model

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.config.train
        loader = self.loader("train", epoch)
        total = loader.num_batches
        batches: Iterator[Batch] = iter(loader)
        for _ in range(self.progress.batches_done):  # resume mid-epoch at the same data position
            next(batches)
        self.model.train()
        if self.pipeline is not None:
            if not self._pipeline_attached:
                self.pipeline.attach(self.model)
                self._pipeline_attached = True
            self.pipeline.reset()
        bar = tqdm(total=total, initial=self.progress.batches_done, desc=f"epoch {epoch}",
                   disable=not self.env.is_main, dynamic_ncols=True, mininterval=2.0, file=sys.stderr)
        window: dict[str, float] = {"loss": 0.0, "bce": 0.0, "cic": 0.0, "n": 0}
        window_start = time.perf_counter()
        while True:
            try:
                loss, aux = self._step(batches)
            except StopIteration:
                break
            self.progress.batches_done += 1
            self.progress.step += 1
            window["loss"] += loss
            window["bce"] += aux.get("bce", loss)
            window["cic"] += aux.get("cic", 0.0)
            window["n"] += 1
            bar.update(1)
            if self.progress.step % cfg.log_every == 0:
                elapsed = time.perf_counter() - window_start
                self._log_window(epoch, window, elapsed)
                window = {"loss": 0.0, "bce": 0.0, "cic": 0.0, "n": 0}
                window_start = time.perf_counter()
            if cfg.checkpoint_every and self.progress.step % cfg.checkpoint_every == 0:
                self._save(best=False)
        bar.close()

    def _step(self, batches: Iterator[Batch]) -> tuple[float, dict[str, float]]:
        if self.pipeline is not None:
            loss, _, _, aux = self.pipeline.progress(batches)  # it returns the model's second output
        else:
            batch = next(batches).to(self.env.device)
            loss, (_, _, _, aux) = self.model(batch)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite loss {value} at step {self.progress.step + 1} "
                f"(epoch {self.progress.epoch}, batch {self.progress.batches_done + 1})"
            )
        return value, {k: float(v) for k, v in aux.items()}

    def _log_window(self, epoch: int, window: dict[str, float], elapsed: float) -> None:
        n = max(window["n"], 1)
        rows = n * self.config.data.batch_size * self.env.world_size
        parts = {k: window[k] / n for k in ("loss", "bce", "cic")}
        parts["samples_per_s"] = rows / max(elapsed, 1e-9)
        parts["memory_mb"] = memory_mb(self.env.device)
        self.writer.scalars("train", parts, self.progress.step)
        if self.env.is_main:
            tqdm.write(
                f"step {self.progress.step} epoch {epoch} loss={parts['loss']:.4f} bce={parts['bce']:.4f} "
                f"cic={parts['cic']:.4f} samples/s={parts['samples_per_s']:.0f} mem={parts['memory_mb']:.0f}MB",
                file=sys.stderr,
            )

    def _save(self, best: bool) -> None:
        name = f"step_{self.progress.step:08d}"
        state = {**self.progress.__dict__, "config": self.config.to_dict()}
        self.checkpoints.save(name, self.model, self.optimizer, state, best=best)

    # ---- final evaluation -----------------------------------------------------------------
    def test(self) -> dict[str, Any]:
        """Reload the best-on-valid checkpoint and evaluate it on test (the only test evaluation)."""
        best = self.checkpoints.best()
        if best is None:
            raise RuntimeError(f"no best checkpoint under {self.checkpoints.folder}")
        model = self._eval_model()
        load_checkpoint(best, model, optimizer=None, restore_rng=False)
        test = evaluate(model, self.loader("test"), self.env.device, self.cold_items)
        test["epoch"] = self.progress.best_epoch
        return test


def _fmt(metrics: dict[str, Any]) -> str:
    keys = ("auc", "gauc", "logloss", "cold_auc")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def write_results(recipe: Recipe, test: dict[str, Any], seconds: float) -> Path:
    """``runs/<name>/metrics.json`` and a human-readable ``summary.txt``."""
    best = recipe.progress.valid[recipe.progress.best_epoch] if recipe.progress.valid else {}
    result = {
        "valid": best,
        "valid_by_epoch": recipe.progress.valid,
        "test": test,
        "best_epoch": recipe.progress.best_epoch,
        "world_size": recipe.env.world_size,
        "train_seconds": seconds,
        "config": recipe.config.to_dict(),
    }
    path = recipe.run_dir / "metrics.json"
    path.write_text(json.dumps(result, indent=2))
    lines = [f"run {recipe.config.train.run_name}: {recipe.config.model.backbone} content={recipe.config.model.content} "
             f"history={recipe.config.model.seq_content_mode}, {recipe.env.world_size} rank(s), {seconds:.0f}s"]
    for v in recipe.progress.valid:
        lines.append(f"  epoch {v['epoch']}: valid {_fmt(v)}")
    lines.append(f"  best epoch {recipe.progress.best_epoch} (valid auc {recipe.progress.best_valid_auc:.4f})")
    lines.append(f"  test {_fmt(test)} rows={test['rows']} cold_rows={test.get('cold_rows', 0)}")
    (recipe.run_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    return path


@record  # under torchrun, a rank's exception (with traceback) lands in the job's error file
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = load_config(args.config, args.set)
    env = init_distributed(config.train.device)
    setup_logging(env.rank)
    start = time.perf_counter()
    recipe = Recipe(config, env)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if args.resume or restarted:
        latest = recipe.checkpoints.latest_valid()
        if latest is not None:
            recipe.resume(latest)
        elif env.is_main:
            log.info("no checkpoint to resume from under %s; starting fresh", recipe.checkpoints.folder)
    if env.is_main:
        log.info("run %s: %s", config.train.run_name, recipe.run_dir)
    recipe.fit()
    test = recipe.test()
    seconds = time.perf_counter() - start
    if env.is_main:
        write_results(recipe, test, seconds)
        print(open(recipe.run_dir / "summary.txt").read(), end="", flush=True)
        print(f"test auc={test['auc']:.4f} gauc={test['gauc']:.4f} logloss={test['logloss']:.4f} "
              f"cold_auc={test.get('cold_auc', float('nan')):.4f}", flush=True)
    recipe.writer.close()
    dist.barrier()
    dist.destroy_process_group()
    return test


if __name__ == "__main__":
    main()
