"""Check that the installed TorchRec stack is consistent (torch <-> FBGEMM <-> TorchRec).

FBGEMM x.y is built against one torch release; a mismatch shows up as an ``undefined symbol`` when
FBGEMM loads its operator library, which FBGEMM reports as a warning or log line and then
continues without its ops. ``check_stack`` makes that a hard error.
"""

from __future__ import annotations

import logging
import warnings

# Warnings the CPU build of FBGEMM always emits; they are not a version mismatch.
_BENIGN = ("_ssd", "is now DEPRECATED")
_MISMATCH_MARKERS = ("undefined symbol", "Could not load", "version mismatch", "incompatible")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_stack() -> dict[str, str]:
    """Import the stack, fail on any sign of a torch/FBGEMM/TorchRec mismatch, return versions."""
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fbgemm_gpu
            import peft
            import pyarrow
            import torch
            import torchrec
            import torchx
            import transformers
    finally:
        logging.getLogger().removeHandler(handler)
    messages = [str(w.message) for w in caught] + handler.messages
    bad = [m.strip() for m in messages if any(k in m for k in _MISMATCH_MARKERS) and not any(k in m for k in _BENIGN)]
    if bad:
        raise RuntimeError("torch/FBGEMM/TorchRec stack is inconsistent:\n" + "\n".join(bad))
    if not hasattr(torch.ops.fbgemm, "asynchronous_complete_cumsum"):
        raise RuntimeError(
            f"FBGEMM {fbgemm_gpu.__version__} did not register its operators with torch "
            f"{torch.__version__}; install the FBGEMM build that pairs with this torch"
        )
    return {
        "torch": torch.__version__,
        "fbgemm_gpu": fbgemm_gpu.__version__,
        "torchrec": torchrec.__version__,
        "torchx": torchx.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "pyarrow": pyarrow.__version__,
    }


if __name__ == "__main__":
    print(" ".join(f"{k}={v}" for k, v in check_stack().items()))
