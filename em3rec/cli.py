"""What every ``python -m em3rec.<job>`` command line shares: ``--config`` / ``--set`` / ``--debug``,
and one-line user errors.

A mistake the user can fix (an unknown config key or config file, a missing dataset, a bad Parquet
file, no checkpoint to load: :class:`~em3rec.errors.UserError`) ends the command with one line on
stderr, ``error: <file/key/column>: <what was expected>``, and exit status 2; ``--debug`` shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable, TypeVar

from em3rec.config import Config, load_config
from em3rec.error_file import ERROR_HANDLER
from em3rec.errors import UserError

USER_ERROR_EXIT = 2  # as argparse exits for a bad command line

T = TypeVar("T")


def config_parser(description: str, checkpoint: bool = False) -> argparse.ArgumentParser:
    """An argument parser with ``--config``, ``--set`` (repeatable) and ``--debug``; with
    ``checkpoint``, also ``--checkpoint`` (a checkpoint folder; default: the run's best)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="din_em3", help="bundled config name or TOML path")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.backbone=dcn (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    if checkpoint:
        parser.add_argument("--checkpoint", default="", help="checkpoint folder (default: the run's best)")
    return parser


def load(args: argparse.Namespace) -> Config:
    """The config that ``--config`` and ``--set`` name."""
    return load_config(args.config, args.set)


def user_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a ``main(argv=None)``: a :class:`UserError` prints one line and exits with status 2
    (the traceback only with ``--debug`` among the arguments)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None, *args: Any, **kwargs: Any) -> T:
        try:
            return main(argv, *args, **kwargs)
        except UserError as e:
            if "--debug" in (sys.argv[1:] if argv is None else argv):
                raise
            # Under torchrun, its failure summary names this rank's error (no-op otherwise).
            ERROR_HANDLER.record_exception(e)
            message = " ".join(str(e).split("\n"))
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT) from None

    return wrapper
