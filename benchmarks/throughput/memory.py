"""Peak memory of a block of steps, per process."""

from __future__ import annotations

import ctypes
from typing import Callable

import torch


class MemoryProbe:
    """Peak memory of a block: CUDA allocator stats, or the kernel's peak RSS (``VmHWM``).

    On CPU, ``reset()`` returns freed heap pages to the kernel (``malloc_trim``) and resets
    ``VmHWM`` to the current RSS (``/proc/self/clear_refs``), so ``peak()`` is this block's peak.
    Where that file is not writable the peak is the process's lifetime peak (``reset_ok`` False).
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.reset_ok = device.type == "cuda"
        self._trim: Callable[[int], int] | None = None
        if device.type != "cuda":
            try:
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except OSError:
                self._trim = None
        self._start = 0.0

    def _status_mb(self, key: str) -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def reset(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
            torch.cuda.reset_peak_memory_stats(self._device)
            self._start = torch.cuda.memory_allocated(self._device) / 2**20
            return
        if self._trim is not None:
            self._trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self._start = self._status_mb("VmRSS")

    def peak(self) -> tuple[float, float]:
        """``(peak MB, peak - start MB)`` since :meth:`reset`."""
        if self._device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self._device) / 2**20
        else:
            peak = self._status_mb("VmHWM")
        return peak, peak - self._start
