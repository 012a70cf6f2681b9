"""`llamo demo`: serve the web demo locally (standard-library imports only at the top: `llamo --help` stays fast)."""

from __future__ import annotations

import argparse
import sys

from llamo.cli_common import add_command, add_device_arguments, add_index_arguments, number_in, options_of
from llamo.errors import CommandError

from .space import DEFAULT_MAX_NEW_TOKENS, MAX_NEIGHBOURS, MAX_NEW_TOKENS_CAP  # constants only: no Gradio, no torch


def register(subparsers) -> None:
    parser = add_command(subparsers, "demo", _run_demo)
    parser.add_argument("model", nargs="?", metavar="MODEL_DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from others)")
    parser.add_argument("--port", type=number_in(int, 0, 65535, "1 to 65535"), default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"the page's initial answer length (max {MAX_NEW_TOKENS_CAP})",
    )
    add_device_arguments(parser)
    add_index_arguments(
        parser, f"neighbours per answer, 0 to {MAX_NEIGHBOURS} (default: the model's, else the pipeline's)"
    )


def _run_demo(args: argparse.Namespace) -> None:
    """A web page: draw a molecule, see its motif groups and their attention, chat about it.

    Serve the LLaMo demo (the Hugging Face Space) locally with Gradio: enter a SMILES, see the 2D drawing with the
    functional groups the graph projector reads (and how much its motif queries attend to each), and chat with the
    model about the molecule. Where a molecule index applies to a question (--index, or the model's default index for
    naming / property questions), the answer gets the index's most similar molecules and their answers in context,
    and the page shows them. Works offline and on CPU. Needs `pip install 'llamo[demo]'`."""
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError as error:
        raise CommandError("llamo demo needs Gradio: pip install 'llamo[demo]' (or pip install gradio).") from error
    from llamo.default_model import DefaultModelUnavailable

    from .space.demo import launch_demo

    if args.neighbours is not None and not 0 <= args.neighbours <= MAX_NEIGHBOURS:
        raise CommandError(f"--neighbours must be between 0 and {MAX_NEIGHBOURS}, got {args.neighbours}.")
    print(f"Starting the LLaMo demo on http://{args.host}:{args.port} ...", file=sys.stderr)
    try:
        options = ("host", "port", "share", "device", "dtype", "max_new_tokens", "index", "neighbours")
        launch_demo(args.model, **options_of(args, *options))
    except DefaultModelUnavailable as error:
        raise CommandError(f"{error} (Or pass a model folder: llamo demo MODEL_DIR.)") from error
    except (FileNotFoundError, ValueError) as error:  # a missing model folder, a missing or bad index
        raise CommandError(str(error)) from error
    except OSError as error:
        if "port" in str(error).lower():
            raise CommandError(f"{error} Choose another --port.") from error
        raise
