"""The errors a user can fix: a command line's entry points report them in one line, exit status 2."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave is wrong (a config key, a dataset folder, a file, an argument); the
    message names the file, key or column and what was expected."""


class UsageError(UserError):
    """A command line asks for something that cannot be done (no checkpoint to load, nothing to export)."""
