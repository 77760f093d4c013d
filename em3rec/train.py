"""The training recipe: ``python -m em3rec.train --config din_em3 [--set k=v ...] [--resume]``.

Run it under ``torchrun`` (or the ``train`` torchx component) for several processes. One recipe
covers every variant; the config says which backbone, content mode and history mode to build.
Shaped like torchtune's recipes: ``Recipe(config, env)``, then ``setup()`` (data, model, optimiser,
pipeline), ``train()``, ``test()``, ``cleanup()``; the building itself is in ``em3rec.factory``.

Per epoch: train (TorchRec's ``TrainPipelineSparseDist`` overlaps the sparse input all-to-all with
compute), evaluate on valid, checkpoint. The epoch with the best valid AUC is reloaded at the end and
evaluated once on test.

Failure handling: every split and the item arrays are validated when the recipe is built (a bad test
split fails the job in its first seconds, not after training); a NaN/inf loss stops the run naming
the step and the batch's ids, or with ``train.nan_policy = "skip"`` drops the batch before backward
and counts it; a restarted job (``--resume`` or a torchrun restart) cleans up an interrupted save,
then loads the newest checkpoint that verifies, falling back to older ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from em3rec import cli, factory
from em3rec.checkpoint import load_checkpoint
from em3rec.cold_start import regress_cold_item_rows
from em3rec.config import Config
from em3rec.data.batch import Batch
from em3rec.data.loader import ImpressionLoader
from em3rec.data.schema import SPLITS
from em3rec.distributed import DistEnv, allowed_sharding_types, describe_plan, init_distributed
from em3rec.error_file import record
from em3rec.evaluation import cold_item_mask, cold_user_mask, evaluate
from em3rec.loss_guard import BatchIds, NonFiniteLossError, NonFiniteLossGuard, TrackedBatches, check_predictions
from em3rec.modules.cic import ContentIDContrastive
from em3rec.precision import Precision
from em3rec.run_log import LossWindow, MetricWriter, format_metrics, memory_mb, setup_logging

__all__ = ["NonFiniteLossError", "Progress", "Recipe", "main", "write_results"]

log = logging.getLogger("em3rec.train")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so a restart resumes exactly."""

    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained
    step: int = 0  # global optimiser steps
    best_valid_auc: float = -1.0
    best_epoch: int = -1
    valid: list[dict[str, Any]] = field(default_factory=list)
    skipped_batches: int = 0  # batches dropped for a non-finite loss (train.nan_policy = "skip")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Progress":
        known = {k: v for k, v in d.items() if k in Progress.__dataclass_fields__}
        return Progress(**known)


class Recipe:
    """Trains and evaluates one config: :meth:`setup`, :meth:`train`, :meth:`test`, :meth:`cleanup`.

    Args:
        config: the run's config.
        env: this process's rank, world size and device (``init_distributed``).
    """

    def __init__(self, config: Config, env: DistEnv) -> None:
        self.config = config
        self.env = env
        self.run_dir = factory.run_dir(config)
        self.checkpoints = factory.checkpoint_manager(config)
        self.progress = Progress()
        # This process's training epochs (not evaluation): seconds in them and samples trained, all ranks.
        self.epoch_seconds, self.epoch_samples = 0.0, 0
        # Training rows per step, all ranks (data.batch_scope says whether batch_size is this or one rank's).
        self._global_batch = config.data.rank_batch_size(env.world_size) * env.world_size

    def setup(self) -> None:
        """Validate the data, build the sharded model and optimiser, the metric writer and the
        train pipeline."""
        config, env = self.config, self.env
        # Fail fast, before building anything: sharding types the device cannot run, then every
        # split and the item arrays against meta.json (a bad test split would otherwise surface
        # only after training).
        allowed_sharding_types(config.sharding, env.device)
        self.meta = factory.dataset_meta(config)
        self.item_store = factory.open_item_store(config, self.meta, env.device)
        self._loaders = {split: factory.open_loader(config, split, env, self.item_store) for split in SPLITS}
        self.cold_items = cold_item_mask(config.data.path, self.meta)
        self.cold_users = cold_user_mask(config.data.path, self.meta)
        self.model, self.optimizer = factory.build_training(config, self.meta, env, self.cold_items, self.cold_users)
        self.precision = Precision.resolve(config.train.precision, env.device)
        torch.manual_seed(config.train.seed * 1000 + env.rank)  # dropout differs across ranks
        self.writer = MetricWriter(self.run_dir, enabled=env.is_main)
        self.pipeline = self._make_pipeline()
        self._pipeline_attached = True
        self.guard = NonFiniteLossGuard(
            config.train.nan_policy, config.train.nan_skip_limit, env.rank, env.world_size, env.device
        )
        if env.is_main:
            log.info(describe_plan(self.model.plan))
            log.info(self.precision.describe())
            log.info(
                "batch: %d training rows per step over %d rank(s) on %d node(s), %d per rank (data.batch_scope = %r)",
                self._global_batch,
                env.world_size,
                env.nodes,
                self._global_batch // env.world_size,
                config.data.batch_scope,
            )
            depth = factory.prefetch_depth(config.data, env.device)
            log.info(
                "loader: %s (data.prefetch = %d%s)",
                f"{depth} batch(es) built ahead in a background thread"
                if depth
                else "batches built in the step's thread",
                config.data.prefetch,
                f": auto on {env.device.type}" if config.data.prefetch < 0 else "",
            )
            if config.data.drop_features:
                log.info(
                    "data.drop_features: %s left out; side features used: %s",
                    ", ".join(config.data.drop_features),
                    ", ".join(f.name for f in self.meta.features_of("single", "multi")) or "none",
                )
            regressed = config.model.cold_item_rows == "from_content"
            for side, p, cold, scored in (
                (
                    "item",
                    config.model.id_dropout,
                    self.cold_items,
                    "with their content-regressed rows" if regressed else "without their ID",
                ),
                ("user", config.model.user_id_dropout, self.cold_users, "without their ID"),
            ):
                if p > 0:
                    log.info(
                        "%s-ID dropout %.2f: %d of %d %ss have no training rows; evaluation scores them %s",
                        side,
                        p,
                        int(cold.sum()),
                        cold.numel(),
                        side,
                        scored,
                    )

    def _make_pipeline(self) -> TrainPipelineSparseDist | None:
        if not self.config.sharding.pipeline:
            return None
        if self.config.train.nan_policy == "skip":
            if self.env.is_main:
                log.info(
                    "train.nan_policy = 'skip': training without TrainPipelineSparseDist (it runs backward and "
                    "the optimiser step inside progress(), before the loss can be checked); each loss is "
                    "checked before backward"
                )
            return None
        return TrainPipelineSparseDist(
            self.model,
            self.optimizer,
            self.env.device,
            execute_all_batches=True,
            custom_model_fwd=self.precision.forward(self.model),  # the forward under autocast, backward outside
        )

    def loader(self, split: str, epoch: int = 0, start_batch: int = 0) -> ImpressionLoader:
        """This rank's loader for ``split`` (opened and validated once, at set-up), at ``epoch``,
        skipping the first ``start_batch`` batches (resume mid-epoch)."""
        loader = self._loaders[split]
        loader.set_epoch(epoch, start_batch)
        return loader

    # ---- resuming -------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        """Load checkpoint ``path`` (model, optimiser, RNG) and continue from its progress."""
        self._resumed(path, load_checkpoint(path, self.model, self.optimizer))

    def resume_latest(self) -> Path | None:
        """Resume from the newest checkpoint that loads (falling back to older ones); None if
        there is none. Collective."""
        found = self.checkpoints.load_latest(self.model, self.optimizer)
        if found is None:
            return None
        self._resumed(*found)
        return found[0]

    def _resumed(self, path: Path, state: dict[str, Any]) -> None:
        self.progress = Progress.from_dict(state)
        log.info(
            "resumed from %s at epoch %d, batch %d, step %d",
            path,
            self.progress.epoch,
            self.progress.batches_done,
            self.progress.step,
        )

    # ---- training -------------------------------------------------------------------------
    def train(self) -> None:
        """Train epoch by epoch up to ``train.epochs`` (or early stopping), evaluating on valid
        and checkpointing after each."""
        cfg = self.config.train
        while self.progress.epoch < cfg.epochs:
            if self._patience_exhausted():
                break
            epoch = self.progress.epoch
            self._train_epoch(epoch)
            if self.config.model.cold_item_rows == "from_content":
                self._regress_cold_item_rows()
            with self.precision.autocast():
                valid = evaluate(
                    self._eval_model(), self.loader("valid"), self.env.device, self.cold_items, self.cold_users
                )
            check_predictions(valid, "valid", epoch)
            valid["epoch"] = epoch
            self.progress.valid.append(valid)
            improved = valid["auc"] > self.progress.best_valid_auc
            if improved:
                self.progress.best_valid_auc, self.progress.best_epoch = valid["auc"], epoch
            self.progress.epoch, self.progress.batches_done = epoch + 1, 0
            self._save(best=improved)
            self.writer.scalars("valid", valid, self.progress.step)
            if self.env.is_main:
                skipped = (
                    f"  ({self.progress.skipped_batches} batches skipped so far: non-finite loss)"
                    if self.progress.skipped_batches
                    else ""
                )
                log.info(
                    "epoch %d valid %s%s%s",
                    epoch,
                    format_metrics(valid),
                    "  (best so far)" if improved else "",
                    skipped,
                )

    def _regress_cold_item_rows(self) -> None:
        """``model.cold_item_rows = "from_content"``: the unseen items' table rows regressed from
        content, before the evaluation and the checkpoint that follow."""
        assert self.item_store is not None  # validate_config: a content model
        model, store = self._eval_model(), self.item_store
        with self.precision.autocast():
            report = regress_cold_item_rows(
                model, factory.local_model(model), store, self.cold_items, self.config, self.env.device
            )
        if self.env.is_main:
            log.info(report.describe())

    def _patience_exhausted(self) -> bool:
        """Early stopping: ``train.patience`` epochs in a row without a better valid AUC (checked
        from the saved progress, so a resumed run stops where the uninterrupted one would)."""
        patience = self.config.train.patience
        waited = self.progress.epoch - 1 - self.progress.best_epoch
        if patience == 0 or self.progress.best_epoch < 0 or waited < patience:
            return False
        if self.env.is_main:
            log.info(
                "early stop after epoch %d: no better valid auc for %d epochs (best epoch %d, auc %.4f)",
                self.progress.epoch - 1,
                waited,
                self.progress.best_epoch,
                self.progress.best_valid_auc,
            )
        return True

    def _eval_model(self) -> torch.nn.Module:
        """The model with its original forwards (the train pipeline rewrites the sharded ones)."""
        if self.pipeline is not None and self._pipeline_attached:
            self.pipeline.detach()
            self.pipeline.reset()
            self._pipeline_attached = False
        return self.model

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.config.train
        # Resume mid-epoch at the same data position: the loader skips without building batches.
        loader = self.loader("train", epoch, start_batch=self.progress.batches_done)
        total = loader.num_batches
        data: Iterator[Batch] = iter(loader)
        batches = TrackedBatches(data)
        self.model.train()
        if self.pipeline is not None:
            if not self._pipeline_attached:
                self.pipeline.attach(self.model)
                self._pipeline_attached = True
            self.pipeline.reset()
        bar = tqdm(
            total=total,
            initial=self.progress.batches_done,
            desc=f"epoch {epoch}",
            # None: only where stderr is a terminal (under torchx or in a log file the step lines,
            # which name the batch, are the progress; a redrawn bar there becomes a line per redraw).
            disable=None if self.env.is_main else True,
            dynamic_ncols=True,
            mininterval=2.0,
            file=sys.stderr,
        )
        window = LossWindow()
        window_start = epoch_start = time.perf_counter()
        steps_before = self.progress.step
        while True:
            try:
                result = self._step(batches)
            except StopIteration:
                break
            self.progress.batches_done += 1
            bar.update(1)
            if result is None:  # skipped: a non-finite loss under train.nan_policy = "skip"
                continue
            window.add(*result)
            self.progress.step += 1
            if self.progress.step % cfg.log_every == 0:
                self.guard.flush()  # "stop": this window's losses checked before they are logged
                elapsed = time.perf_counter() - window_start
                self._log_window(epoch, total, window, elapsed)
                window_start = time.perf_counter()
            if cfg.checkpoint_every and self.progress.step % cfg.checkpoint_every == 0:
                self.guard.flush()  # no checkpoint holds the weights of a non-finite step
                self._save(best=False)
        self.guard.flush()
        bar.close()
        self.epoch_seconds += time.perf_counter() - epoch_start
        self.epoch_samples += (self.progress.step - steps_before) * self._global_batch

    def _step(self, batches: Iterator[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """Train one batch: its loss and parts (``aux``) as scalars on the device, not read here;
        None if it was skipped for a non-finite loss (``nan_policy = "skip"``, which reads each loss
        before backward). Under ``stop`` the guard reads the losses at its next ``flush()``.

        The pipelined step needs ``batches`` to be :class:`TrackedBatches` (to name the batch).
        """
        position = (
            f"step {self.progress.step + 1} (epoch {self.progress.epoch}, batch {self.progress.batches_done + 1})"
        )
        if self.pipeline is not None:  # "stop" only: the step is already taken
            assert isinstance(batches, TrackedBatches), "the pipelined step needs TrackedBatches"
            loss, _, _, aux = self.pipeline.progress(batches)  # it returns the model's second output
            self.guard.defer(loss, batches.trained(), position)
        else:
            batch = next(batches)
            ids = batches.trained() if isinstance(batches, TrackedBatches) else BatchIds.of(batch)
            with self.precision.autocast():
                loss, (_, _, _, aux) = self.model(batch.to(self.env.device, non_blocking=True))
            if self.config.train.nan_policy == "skip":
                if not self.guard.check(float(loss.detach()), ids, position, self.progress.skipped_batches):
                    self.progress.skipped_batches += 1
                    self._forget_dropped_batch()
                    return None
            else:
                self.guard.defer(loss, ids, position)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return loss.detach(), {k: v.detach() for k, v in aux.items()}

    def _forget_dropped_batch(self) -> None:
        """A batch dropped before backward does not advance CIC's warm-up ramp."""
        for module in self.model.modules():
            if isinstance(module, ContentIDContrastive):
                module.forget_last_step()

    def _log_window(self, epoch: int, epoch_batches: int, window: LossWindow, elapsed: float) -> None:
        rows = window.steps * self._global_batch
        parts: dict[str, float] = window.means()
        parts["samples_per_s"] = rows / max(elapsed, 1e-9)
        parts["memory_mb"] = memory_mb(self.env.device)
        self.writer.scalars("train", parts, self.progress.step)
        if self.env.is_main:
            tqdm.write(
                f"step {self.progress.step} epoch {epoch} batch {self.progress.batches_done}/{epoch_batches} "
                f"loss={parts['loss']:.4f} bce={parts['bce']:.4f} "
                f"cic={parts['cic']:.4f} samples/s={parts['samples_per_s']:.0f} mem={parts['memory_mb']:.0f}MB"
                + (f" skipped={self.progress.skipped_batches}" if self.progress.skipped_batches else ""),
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
        with self.precision.autocast():
            test = evaluate(model, self.loader("test"), self.env.device, self.cold_items, self.cold_users)
        check_predictions(test, "test", self.progress.best_epoch)
        test["epoch"] = self.progress.best_epoch
        return test

    def cleanup(self) -> None:
        """Flush the metric writer (the process group is the caller's)."""
        self.writer.close()


def write_results(recipe: Recipe, test: dict[str, Any], seconds: float) -> Path:
    """``runs/<name>/metrics.json`` and a human-readable ``summary.txt``."""
    best = recipe.progress.valid[recipe.progress.best_epoch] if recipe.progress.valid else {}
    result = {
        "valid": best,
        "valid_by_epoch": recipe.progress.valid,
        "test": test,
        "best_epoch": recipe.progress.best_epoch,
        "skipped_batches": recipe.progress.skipped_batches,
        "world_size": recipe.env.world_size,
        "precision": recipe.precision.name,
        "train_seconds": seconds,
        # samples per second of the training epochs (all ranks; steps, loading and checkpoints, no evaluation)
        "train_samples_per_s": recipe.epoch_samples / recipe.epoch_seconds if recipe.epoch_seconds else None,
        "config": recipe.config.to_dict(),
    }
    path = recipe.run_dir / "metrics.json"
    path.write_text(json.dumps(result, indent=2))
    lines = [
        f"run {recipe.config.train.run_name}: {recipe.config.model.backbone} content={recipe.config.model.content} "
        f"history={recipe.config.model.seq_content_mode}, {recipe.env.world_size} rank(s), "
        f"{recipe.precision.name}, {seconds:.0f}s"
    ]
    for v in recipe.progress.valid:
        lines.append(f"  epoch {v['epoch']}: valid {format_metrics(v)}")
    lines.append(f"  best epoch {recipe.progress.best_epoch} (valid auc {recipe.progress.best_valid_auc:.4f})")
    if recipe.progress.skipped_batches or recipe.config.train.nan_policy == "skip":
        lines.append(
            f"  skipped batches (non-finite loss, train.nan_policy = "
            f"{recipe.config.train.nan_policy!r}): {recipe.progress.skipped_batches}"
        )
    lines.append(f"  test {format_metrics(test)} rows={test['rows']} cold_rows={test.get('cold_rows', 0)}")
    (recipe.run_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.config_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    return parser.parse_args(argv)


@record  # under torchrun, a rank's exception (with traceback) lands in the job's error file
@cli.user_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = cli.load(args)
    env = init_distributed(config.train.device, timeout_s=config.train.collective_timeout_s)
    setup_logging(env.rank, config.train.library_logs)
    start = time.perf_counter()
    recipe = Recipe(config, env)
    recipe.setup()
    if env.is_main:
        recipe.checkpoints.remove_partial()  # what a save interrupted by a crash left behind
    dist.barrier()
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if args.resume or restarts:
        if restarts and env.is_main:
            log.warning("torchrun restart %d of the worker group: resuming from the latest checkpoint", restarts)
        if recipe.resume_latest() is None and env.is_main:
            log.info("no checkpoint to resume from under %s; starting fresh", recipe.checkpoints.folder)
    if env.is_main:
        log.info("run %s: %s", config.train.run_name, recipe.run_dir)
    recipe.train()
    test = recipe.test()
    seconds = time.perf_counter() - start
    if env.is_main:
        write_results(recipe, test, seconds)
        print(open(recipe.run_dir / "summary.txt").read(), end="", flush=True)
        print(f"test {format_metrics(test)}", flush=True)
    recipe.cleanup()
    dist.barrier()
    dist.destroy_process_group()
    return test


if __name__ == "__main__":
    main()
