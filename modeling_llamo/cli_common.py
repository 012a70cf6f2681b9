"""What the `llamo` command modules share to build their parsers and call their handlers (standard library only,
like every command module's top; errors and exit codes are in `llamo.errors`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""The weights dtypes of `--dtype` (`auto`: as saved)."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in its help, except the uninformative ones (None, and False for flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def number_in(convert: Callable[[str], Any], low: float, high: float, what: str) -> Callable[[str], Any]:
    """An argparse `type`: `convert(text)` (`int` or `float`) with `low < value <= high` (NaN refused), else an error
    saying that the option takes `what`."""

    def parse(text: str) -> Any:
        value = convert(text)
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected {what}")
        return value

    parse.__name__ = convert.__name__  # argparse's "invalid int value: 'x'" names the type by it
    return parse


def add_command(subparsers, name: str, handler: Callable[[argparse.Namespace], Any], **kwargs: Any):
    """Add and return the subcommand `name`'s parser (`kwargs` go to `add_parser`); `handler` is called with the parsed
    `argparse.Namespace`. The handler's docstring says what the command does: its first paragraph (lower-cased,
    without the full stop) is the command's line in `llamo --help`, the rest the description of `llamo NAME --help`,
    where every option's default is shown (`DefaultsHelpFormatter`)."""
    summary, _, details = (handler.__doc__ or "").strip().partition("\n\n")
    summary = " ".join(summary.split()).rstrip(".")
    parser = subparsers.add_parser(
        name,
        help=summary[:1].lower() + summary[1:],
        description=details or None,
        formatter_class=DefaultsHelpFormatter,
        **kwargs,
    )
    parser.set_defaults(handler=handler)
    return parser


def add_device_arguments(parser) -> None:
    """`--device` and `--dtype`, for commands that load a model."""
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if any), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype ('auto': as saved)")


def add_index_arguments(parser, neighbours_help: str) -> None:
    """`--index` and `--neighbours`, for commands whose answers get in-context neighbours."""
    parser.add_argument(
        "--index",
        metavar="INDEX",
        help="molecule index (folder or Hub dataset id; `llamo index build`): its nearest molecules and their answers "
        "go into the prompt. Default: the model's own default index for naming / property questions, if it was "
        "trained with neighbours; 'none' turns neighbours off",
    )
    at_least_0 = number_in(int, -1, math.inf, "an integer of at least 0")
    parser.add_argument("--neighbours", type=at_least_0, metavar="K", help=neighbours_help)


def options_of(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The parsed options `names`, as keyword arguments of the same names."""
    return {name: getattr(args, name) for name in names}
