"""The help formatter of `llamo` subcommands (standard library only, like every command module's top)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in its help, except the uninformative ones (None, and False for flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


__all__ = ["DefaultsHelpFormatter"]
