"""How the process group finds its peers, made fault-proof.

A torchrun restart of the worker group works: each attempt's process group rendezvouses under its
own key prefix (one node), or torchrun gets its own store per attempt (the torchx component).

Without this, torchrun (torch 2.13) hands the restarted workers the same rendezvous store, still
holding the failed attempt's keys: gloo then connects to the killed worker's address, "Connection
refused", and the restart fails (pytorch/pytorch#135712). The end-to-end proof is
test_restarts.py::test_sigkill_one_rank_*; these tests pin the mechanism in milliseconds.
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from em3rec.distributed import _restart_safe_store
from tests.train.conftest import ROOT

TIMEOUT = datetime.timedelta(seconds=5)


@pytest.fixture
def agent_store(monkeypatch: pytest.MonkeyPatch) -> dist.TCPStore:
    """A TCPStore standing in for torchrun's agent store, and the environment torchrun gives workers."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    for key, value in {
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(server.port),
        "GROUP_WORLD_SIZE": "1",
        "TORCHELASTIC_MAX_RESTARTS": "1",
        "RANK": "0",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    return server


def test_a_restarted_attempt_does_not_see_the_failed_attempts_keys(agent_store, monkeypatch) -> None:  # noqa: ANN001
    first = _restart_safe_store(2, TIMEOUT)
    first.set("rank_1", "127.0.0.1:40363")  # what a worker of attempt 0 published before it was killed
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = _restart_safe_store(2, TIMEOUT)
    assert first.check(["rank_1"]) and not second.check(["rank_1"])
    assert agent_store.check(["em3rec/attempt_0/rank_1"])


def test_default_store_outside_a_shared_agent_store(agent_store, monkeypatch, caplog) -> None:  # noqa: ANN001
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    assert _restart_safe_store(2, TIMEOUT) is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # several nodes: restart counts are per agent
    with caplog.at_level(logging.WARNING, logger="em3rec.distributed"):
        assert _restart_safe_store(2, TIMEOUT) is None
    assert "set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun" in caplog.text


def test_torchx_train_component_gives_torchrun_a_store_per_attempt() -> None:
    spec = importlib.util.spec_from_file_location("em3rec_torchx_components", ROOT / "torchx/em3rec.py")
    components = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(components)
    (role,) = components.train(max_restarts=1, env={"X": "1"}).roles
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and role.env["X"] == "1"
    assert role.args[1].startswith("torchrun --max-restarts 1 ")
    (role,) = components.train().roles
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in role.env


def test_one_process_run_needs_no_tcp_port() -> None:
    """A plain `python -m em3rec.train` used to pick a free port, release it and bind it again in
    TCPStore: another process could take it in between (EADDRINUSE at start-up, seen in CI)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    code = (
        "import torch.distributed as dist; from em3rec.distributed import init_distributed; init_distributed('cpu'); "
        "print(type(dist.distributed_c10d._get_default_store().underlying_store).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "HashStore"


def test_init_distributed_keeps_one_openmp_team() -> None:
    """After init_distributed, a thread that starts computing later (gloo's workers copying a
    collective's tensors) runs its torch ops serially, and the caller keeps its intra-op threads:
    one OpenMP team per process (em3rec.openmp.keep_one_openmp_team)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    code = (
        "import threading, torch; from em3rec.distributed import init_distributed; torch.set_num_threads(2); "
        "init_distributed('cpu'); seen = []; t = threading.Thread(target=lambda: seen.append(torch.get_num_threads())); "
        "t.start(); t.join(); print(torch.get_num_threads(), seen[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["2", "1"]
