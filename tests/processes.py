"""Ending a launched job for good: the launcher and every process under it."""

from __future__ import annotations

import signal
import subprocess

import psutil


def kill_job(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL ``proc`` and all its descendants, and wait until none is left.

    ``os.killpg`` on the launcher is not enough: torchrun starts each worker in a session of its
    own, so killing the launcher's group leaves the workers training (and writing checkpoints) as
    orphans. The tree is read before anything is killed, since an orphan's parent changes.
    """
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=timeout)  # reaps the launcher
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    alive = [p for p in alive if _running(p)]  # an orphan's zombie may wait for a reaper that never comes
    if alive:
        raise RuntimeError(f"processes {[p.pid for p in alive]} survived SIGKILL for {timeout}s")


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
