"""Errors and exit codes of the `llamo` command line, shared by `llamo.cli` and the feature command modules.

Standard library only: every subcommand module imports this instead of `llamo.cli`, which imports them."""

from __future__ import annotations

EXIT_USAGE = 2
"""An error the user can fix (bad arguments, missing files): the message alone, no traceback."""
EXIT_DISK_FULL = 74
"""Exit status of a command stopped by a full disk (sysexits' EX_IOERR); `llamo.storage` recognises one."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT)."""


class CommandError(Exception):
    """An error the user can fix; printed without a traceback, and the command exits with `EXIT_USAGE`."""
