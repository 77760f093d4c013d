"""torchx components for em3rec: ``train``, ``evaluate`` and ``bench``.

Each wraps ``torchx.components.dist.ddp`` (torchrun under the hood), so the same line runs locally
and on a cluster scheduler::

    torchx run -s local_cwd torchx/em3rec.py:train -j 1x2 --config din_em3
    torchx run -s kubernetes --workspace "" -cfg queue=default torchx/em3rec.py:train -j 4x8 --gpu 8 \
        --image my-registry/em3rec:latest --config din_em3 data.path=/mnt/data/ml100k
    torchx run -s slurm torchx/em3rec.py:train -j 2x8 --gpu 8 --config din_em3

Trailing arguments are ``section.key=value`` config overrides. On kubernetes the image must hold
this repo and its ``.venv``; ``--workspace ""`` runs it as it is (without it, torchx first builds a
workspace image through docker).
This folder has no ``__init__.py`` on purpose: it would shadow the installed ``torchx`` package.
"""

from typing import Dict, List, Optional, Tuple

import torchx
import torchx.specs as specs
from torchx.components import dist

# A replica is a node running nproc_per_node trainers (each with a loader thread and up to
# data.resident_tokens_mb of item tokens in memory): unless given, its resources scale with them.
CPU_PER_PROCESS = 2
MEM_MB_PER_PROCESS = 8192


def _ddp(
    module: Optional[str],
    script: Optional[str],
    args: List[str],
    name: str,
    j: str,
    cpu: Optional[int],
    gpu: int,
    memMB: Optional[int],
    h: Optional[str],
    image: str,
    env: Optional[Dict[str, str]],
    max_retries: int,
    max_restarts: int,
    mounts: Optional[List[str]],
) -> specs.AppDef:
    if max_restarts:
        # torchrun keeps its rendezvous store across restarts unless told not to share it with the
        # workers; a restarted group would then read the failed attempt's addresses
        # (pytorch/pytorch#135712).
        env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(env or {})}
    nproc_per_node = dist.parse_nnodes(j)[2]
    app = dist.ddp(
        *args,
        m=module,
        script=script,
        name=name,
        j=j,
        cpu=cpu if cpu is not None else CPU_PER_PROCESS * nproc_per_node,
        gpu=gpu,
        memMB=memMB if memMB is not None else MEM_MB_PER_PROCESS * nproc_per_node,
        h=h,
        image=image,
        env=env,
        max_retries=max_retries,
        mounts=mounts,
    )
    if max_restarts:
        # torchrun restarts the whole worker group (all ranks) from the last checkpoint.
        role = app.roles[0]
        role.args = [a.replace("torchrun ", f"torchrun --max-restarts {max_restarts} ", 1) for a in role.args]
    return app


def _overrides(overrides: Tuple[str, ...]) -> List[str]:
    args: List[str] = []
    for o in overrides:
        args += ["--set", o]
    return args


def train(
    *overrides: str,
    config: str = "din_em3",
    resume: bool = False,
    j: str = "1x2",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    max_restarts: int = 0,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train an em3rec ranking model on a prepared dataset (``data.path``; ``make data`` prepares ml-100k).

    Args:
        overrides: config overrides, ``section.key=value`` (e.g. ``model.backbone=dcn``)
        config: a bundled config name (``em3rec/configs/<name>.toml``) or a TOML path
        resume: continue from the run's latest checkpoint
        j: {nnodes}x{nproc_per_node}
        cpu: cpus per replica (a node: its nproc_per_node processes); default 2 per process
        gpu: gpus per replica (0: CPU with gloo; >0: CUDA with nccl)
        memMB: memory per replica in MB; default 8192 per process
        h: a registered named resource (takes precedence over cpu, gpu, memMB)
        image: the image (container) to run in; local_cwd ignores it
        env: environment variables, e.g. ENV1=v1,ENV2=v2
        max_retries: scheduler-level retries of the whole job (each retry resumes from the latest
            checkpoint: a retried job starts with a fresh torchrun, which does not know it restarted)
        max_restarts: torchrun restarts of the worker group after a failure (resumes from checkpoint)
        mounts: volumes for the workers, e.g. type=volume,src=em3rec-runs,dst=/job/runs (see
            ``torchx.specs.parse_mounts``); a multi-node run needs its run folder (checkpoints) and
            data on a filesystem that every node shares
    """
    args = ["--config", config, *(["--resume"] if resume or max_retries else []), *_overrides(overrides)]
    return _ddp(
        "em3rec.train",
        None,
        args,
        "em3rec/train",
        j,
        cpu,
        gpu,
        memMB,
        h,
        image,
        env,
        max_retries,
        max_restarts,
        mounts,
    )


def evaluate(
    *overrides: str,
    config: str = "din_em3",
    checkpoint: str = "",
    split: str = "test",
    j: str = "1x1",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Evaluate a checkpoint (any world size: checkpoints reshard on load).

    Args:
        overrides: config overrides, ``section.key=value``
        config: a bundled config name or a TOML path (must match the checkpoint's model)
        checkpoint: checkpoint folder; default: the run's best (on valid AUC)
        split: valid or test
        j: {nnodes}x{nproc_per_node}
        cpu: cpus per replica (a node: its nproc_per_node processes); default 2 per process
        gpu: gpus per replica
        memMB: memory per replica in MB; default 8192 per process
        h: a registered named resource
        image: the image (container) to run in
        env: environment variables
        mounts: volumes for the workers (as for ``train``)
    """
    args = [
        "--config",
        config,
        "--split",
        split,
        *(["--checkpoint", checkpoint] if checkpoint else []),
        *_overrides(overrides),
    ]
    return _ddp("em3rec.evaluate", None, args, "em3rec/evaluate", j, cpu, gpu, memMB, h, image, env, 0, 0, mounts)


def bench(
    *bench_args: str,
    j: str = "1x1",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    env: Optional[Dict[str, str]] = None,
) -> specs.AppDef:
    """Run the training-step throughput benchmark (``python -m benchmarks.throughput``) under torchrun.

    Args:
        bench_args: arguments for ``python -m benchmarks.throughput``
        j: {nnodes}x{nproc_per_node}
        cpu: cpus per replica (a node: its nproc_per_node processes); default 2 per process
        gpu: gpus per replica
        memMB: memory per replica in MB; default 8192 per process
        h: a registered named resource
        image: the image (container) to run in
        env: environment variables
    """
    return _ddp(
        "benchmarks.throughput", None, list(bench_args), "em3rec/bench", j, cpu, gpu, memMB, h, image, env, 0, 0, None
    )
