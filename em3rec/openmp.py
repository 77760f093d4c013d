"""One OpenMP team per process: the training step's thread keeps its intra-op threads, and every
other thread that computes runs its torch ops serially."""

from __future__ import annotations

import threading

import torch


def keep_one_openmp_team() -> None:
    """Threads that run their first parallel torch op from now on run their ops serially; the
    calling thread (the training step's) keeps its intra-op threads.

    A torch op big enough to run in parallel in another thread starts a second OpenMP team there:
    gloo's worker threads copying a collective's tensors (DCP's plan gathers at every checkpoint,
    the evaluation's gathers) and the loader's prefetch thread, so ``init_distributed`` and
    ``em3rec.data.loader.prefetch`` call this. With more OpenMP threads alive than cores, libgomp
    stops spinning between parallel regions in every thread, and each small parallel op of the step
    then waits for a futex wake-up (2 threads: a (640, 2, 64) fill 3.7 -> 17.0 µs after an
    all-gather in a one-process gloo group, 3.5 -> 3.6 µs with this; 3.7 -> 33.6 µs after a live
    thread's parallel op, 3.5 -> 3.5 µs with this; ``python -m benchmarks.openmp_teams``). Under torchrun's default of one
    thread per rank there is no team to throttle; with several threads per rank (one rank per node,
    or ``OMP_NUM_THREADS`` set) there is.

    How: torch gives a thread the process-wide count at its first parallel op, and
    ``torch.set_num_threads`` sets that count and the calling thread's own; so this thread settles
    its count first and a short-lived helper thread sets 1. A later ``torch.set_num_threads(n)`` in
    the step's thread makes ``n`` the process-wide count again: call this after it.
    """
    torch.get_num_threads()  # settles this thread's count before the process-wide one changes
    helper = threading.Thread(target=torch.set_num_threads, args=(1,), name="em3rec-serial-threads")
    helper.start()
    helper.join()
