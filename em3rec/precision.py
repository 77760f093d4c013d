"""Mixed precision of the dense towers: ``train.precision = auto | fp32 | bf16``.

The dense forward (content tower, backbone, CIC heads) runs under ``torch.autocast`` in bf16; the
embedding lookups stay as TorchRec keeps them (FBGEMM's kernels have no autocast rule, so their
tables and outputs stay fp32), parameters, gradients and optimiser states stay fp32, and backward
runs outside the autocast region, in the dtypes the forward chose. ``auto`` picks bf16 where the
device computes it fast (CUDA with bf16 support; a CPU with AMX tiles or AVX512-BF16, as torch
reports them) and fp32 elsewhere, and says which and why.

Example::

    precision = Precision.resolve("auto", torch.device("cpu"))
    log.info(precision.describe())  # "precision bf16 (auto: the CPU has AMX tiles)"
    with precision.autocast():
        loss, _ = model(batch)
    loss.backward()
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from em3rec.config import PrecisionSetting

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` has fast bf16 matmuls, and what torch reported to say so."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)  # pre-Ampere GPUs only emulate it
        return ok, f"CUDA {'supports' if ok else 'does not support'} bf16 natively"
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return True, "the CPU has AMX tiles"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "the CPU has AVX512-BF16"
        return False, f"the CPU has neither AMX nor AVX512-BF16 (torch: {torch.backends.cpu.get_cpu_capability()})"
    return False, f"no bf16 rule for device type {device.type!r}"


@dataclass(frozen=True)
class Precision:
    """The resolved compute precision of the dense forward on one device.

    Fields:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        device_type: ``"cpu"`` or ``"cuda"`` (what ``torch.autocast`` takes).
        reason: why this dtype (the setting, and for ``auto`` what the device reported).
    """

    dtype: torch.dtype
    device_type: str
    reason: str = ""

    @staticmethod
    def resolve(setting: PrecisionSetting, device: torch.device) -> "Precision":
        """``setting`` on ``device``: ``fp32``/``bf16`` as asked, ``auto`` by :func:`fast_bf16`."""
        if setting == "auto":
            fast, why = fast_bf16(device)
            return Precision(torch.bfloat16 if fast else torch.float32, device.type, f"auto: {why}")
        if setting not in DTYPES:
            raise ValueError(f"train.precision = {setting!r}; expected auto, fp32 or bf16")
        return Precision(DTYPES[setting], device.type, "train.precision")

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"

    def autocast(self) -> ContextManager[Any]:
        """The autocast region of the dense forward (a no-op in fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def forward(self, model: Callable[..., Any]) -> Callable[..., Any]:
        """``model``'s call under :meth:`autocast` (e.g. TorchRec's ``custom_model_fwd``)."""

        def run(*args: Any, **kwargs: Any) -> Any:
            with self.autocast():
                return model(*args, **kwargs)

        return run
