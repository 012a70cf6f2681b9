"""`llamo demo`: serve the web demo locally (standard-library imports only at the top: `llamo --help` stays fast)."""

from __future__ import annotations

import argparse
import sys

MAX_NEIGHBOURS = 8
"""The most neighbours the page puts in one prompt (as `llamo.hub_cards.space.neighbours.MAX_NEIGHBOURS`)."""


def register(subparsers) -> None:
    """Add the `demo` subcommand to the `llamo` parser."""
    parser = subparsers.add_parser(
        "demo",
        help="a web page: draw a molecule, see its motif groups and their attention, chat about it",
        description=(
            "Serve the LLaMo demo (the Hugging Face Space) locally with Gradio: enter a SMILES, see the 2D drawing "
            "with the functional groups the graph projector reads (and how much its motif queries attend to each), "
            "and chat with the model about the molecule. Where a molecule index applies to a question (--index, or the "
            "model's default index for naming / property questions), the answer gets the index's most similar "
            "molecules and their answers in context, and the page shows them. Works offline and on CPU. Needs `pip "
            "install 'llamo[demo]'`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", nargs="?", metavar="MODEL_DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from others)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the page's initial answer length (max 512)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--index",
        help="molecule index (folder or Hub dataset id; `llamo index build`): its nearest molecules and their answers "
        "go into every answer's prompt and are shown. Default: the model's own default index for naming / property "
        "questions, if it was trained with neighbours; 'none' turns neighbours off",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        metavar="K",
        help=f"neighbours per answer, 0 to {MAX_NEIGHBOURS} (default: the model's, else the pipeline's)",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from llamo.errors import CommandError

    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError as error:
        raise CommandError("llamo demo needs Gradio: pip install 'llamo[demo]' (or pip install gradio).") from error
    from llamo.default_model import DefaultModelUnavailable

    from .space.demo import launch_demo

    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be between 1 and 65535, got {args.port}.")
    if args.neighbours is not None and not 0 <= args.neighbours <= MAX_NEIGHBOURS:
        raise CommandError(f"--neighbours must be between 0 and {MAX_NEIGHBOURS}, got {args.neighbours}.")
    print(f"Starting the LLaMo demo on http://{args.host}:{args.port} ...", file=sys.stderr)
    try:
        launch_demo(
            args.model,
            host=args.host,
            port=args.port,
            share=args.share,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            index=args.index,
            neighbours=args.neighbours,
        )
    except DefaultModelUnavailable as error:
        raise CommandError(f"{error} (Or pass a model folder: llamo demo MODEL_DIR.)") from error
    except (FileNotFoundError, ValueError) as error:  # a missing model folder, a missing or bad index
        raise CommandError(str(error)) from error
    except OSError as error:
        if "port" in str(error).lower():
            raise CommandError(f"{error} Choose another --port.") from error
        raise
