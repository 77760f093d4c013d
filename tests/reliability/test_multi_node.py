"""Two nodes of one rank each, as a cluster launches them: two torchrun agents meeting at a c10d
rendezvous (torchx's ``dist.ddp`` with ``-j 2x1``), here both on this machine.

What differs from one node of two ranks: each rank has ``LOCAL_RANK = 0`` and ``LOCAL_WORLD_SIZE =
1``, so the planner sees two hosts (inter-host bandwidth, a host's memory per rank), and the
agents, not one agent, start the workers. The run must give the one-node run's metrics.
"""

from __future__ import annotations

import socket
import sys
import uuid
from pathlib import Path

import pytest

from tests.reliability.conftest import Reference, assert_close_metrics, launch, metrics, overrides

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _agent(endpoint: str, run_id: str, args: list[str]) -> list[str]:
    """One node's ``torchrun``: one worker, the shared c10d rendezvous."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    cmd += ["-m", "em3rec.train", "--config", "din_em3"]
    for a in args:
        cmd += ["--set", a]
    return cmd


def test_two_nodes_of_one_rank_give_the_one_node_metrics(
    reference: Reference, reliable_data: Path, tmp_path: Path
) -> None:
    endpoint, run_id = f"localhost:{_free_port()}", uuid.uuid4().hex[:8]
    args = overrides(reliable_data, tmp_path, "nodes")
    # One intra-op thread each: the two "nodes" share this machine's cores.
    agents = [
        launch(_agent(endpoint, run_id, args), tmp_path / f"node{i}.log", env={"OMP_NUM_THREADS": "1"})
        for i in range(2)
    ]
    for i, agent in enumerate(agents):
        assert agent.wait() == 0, f"node {i}:\n{agent.output()[-6000:]}"
    got = metrics(tmp_path / "nodes")
    assert got["world_size"] == 2
    assert_close_metrics(got, reference.metrics)
    # Rank 0, on the first node to join, logs the layout and prints the result.
    outputs = [agent.output() for agent in agents]
    assert sum("over 2 rank(s) on 2 node(s)" in out for out in outputs) == 1
    assert sum("test auc=" in out for out in outputs) == 1
    assert "over 2 rank(s) on 1 node(s)" in reference.output
