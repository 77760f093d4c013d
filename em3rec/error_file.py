"""A rank's error file under torchrun, written so that the elastic agent never reads half of it.

torchrun gives every worker an error file (``TORCHELASTIC_ERROR_FILE``); torch's ``@record`` writes
the worker's exception there, and the agent parses it when the worker has exited. When one rank dies
(SIGKILL, OOM) its peers fail in their next collective and start writing their error files, while the
agent, which has seen the first death, sends them SIGTERM and then reads every failed rank's file.
torch's handler opens the file and then writes it: a peer killed in between leaves it empty, and
the agent dies on ``json.JSONDecodeError`` instead of restarting the group (measured in this repo's
SIGKILL restart test). :class:`AtomicErrorHandler` writes a temporary file next to it and renames it
into place, so the agent finds either no file (it reports the exit code) or a complete one.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Callable, TypeVar

from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
from torch.distributed.elastic.multiprocessing.errors import record as torch_record

T = TypeVar("T")


class AtomicErrorHandler(ErrorHandler):
    """torch's :class:`ErrorHandler` with :meth:`record_exception` written atomically (same JSON)."""

    def record_exception(self, e: BaseException) -> None:
        """The exception (call inside its ``except`` block) as torch writes it, renamed into place."""
        path = self._get_error_file_path()
        if not path:
            return
        data = {
            "message": {
                "message": f"{type(e).__name__}: {e}",
                "extraInfo": {"py_callstack": traceback.format_exc(), "timestamp": str(int(time.time()))},
            }
        }
        partial = f"{path}.{os.getpid()}.partial"
        with open(partial, "w") as fp:
            json.dump(data, fp)
        os.replace(partial, path)  # atomic on POSIX: the agent sees no file or all of it


ERROR_HANDLER = AtomicErrorHandler()


def record(fn: Callable[..., T]) -> Callable[..., T | None]:
    """torch's ``@record`` (a rank's exception into its torchrun error file) with :class:`AtomicErrorHandler`."""
    return torch_record(fn, error_handler=ERROR_HANDLER)
