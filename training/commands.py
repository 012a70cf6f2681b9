"""`llamo train stage1|stage2` and `llamo prepare-data` (standard-library imports only: see `llamo.cli`)."""

from __future__ import annotations

import argparse
import importlib

from llamo.cli_common import add_command
from llamo.errors import CommandError

STAGES = {
    "stage1": "graph-language alignment: train the GIN + projector on description pairs, LLM frozen",
    "stage2": "instruction tuning (TRL SFTTrainer + LoRA on the LLM, projector trained, GIN frozen)",
    "pipeline": "a whole recipe: instruction data, stage 1, stage 2, default-model bundle",
}


def register(subparsers) -> None:
    train = add_command(subparsers, "train", _run_train)
    train.add_argument("stage", choices=sorted(STAGES), help="; ".join(f"{k}: {v}" for k, v in STAGES.items()))
    train.add_argument("options", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and field overrides")

    prepare = add_command(subparsers, "prepare-data", _run_prepare)
    prepare.add_argument("stage", choices=["stage1", "stage2"])
    prepare.add_argument("options", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and field overrides")

    add_command(subparsers, "recipes", _run_recipes)


def _run_recipes(args: argparse.Namespace) -> None:
    """List the shipped training recipes and accelerate configs, with their paths."""
    from llamo.training.config import ACCELERATE_DIR, RECIPES_DIR

    print("Training recipes (`--config NAME` or the path):")
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        print(f"  {path.stem:40s} {path}")
    print("accelerate configs (`accelerate launch --config_file PATH -m llamo.training.stage2 --config ...`):")
    for path in sorted(ACCELERATE_DIR.glob("*.yaml")):
        print(f"  {path.stem:40s} {path}")


def _parse(stage: str, options: list[str]):
    """The stage's arguments; `--help` answers from LLaMo's own arguments without importing TRL or torch,
    `--help-all` is TRL's parser's help (every SFTConfig and ModelConfig flag)."""
    from llamo.training.config import parse_stage_arguments, stage_help

    if {"-h", "--help"} & set(options):
        print(stage_help(stage))
        raise SystemExit(0)
    options = ["--help" if option == "--help-all" else option for option in options]
    try:
        return parse_stage_arguments(stage, options)
    except (ValueError, TypeError, OverflowError, FileNotFoundError) as error:  # OverflowError: e.g. logging_steps inf
        raise CommandError(f"invalid {stage} configuration: {error}") from error


def _run_train(args: argparse.Namespace) -> None:
    """Train a LLaMo (stage1, then stage2) from a YAML recipe.

    Run a training stage from a recipe: `llamo train stage1 --config recipe.yaml [--key value ...]`. Every field can
    be set in the YAML or overridden on the command line: LLaMo's own (`llamo train stage1 --help`) and every field of
    TRL's SFTConfig and ModelConfig (`llamo train stage1 --help-all`). Restarting the same command resumes an
    interrupted run. For several processes/GPUs: `accelerate launch -m llamo.training.stage2 --config recipe.yaml`."""
    from llamo.storage import is_disk_full

    pipeline = args.stage == "pipeline"
    arguments = [args.options] if pipeline else _parse(args.stage, args.options)
    errors = (FileNotFoundError, FileExistsError, PermissionError, ValueError, *((RuntimeError,) if pipeline else ()))
    try:
        importlib.import_module(f"llamo.training.{args.stage}").main(*arguments)
    except errors as error:
        if pipeline and is_disk_full(error):  # torch words a full disk as a RuntimeError: `llamo.cli` reports it
            raise
        raise CommandError(str(error)) from error


def _run_prepare(args: argparse.Namespace) -> None:
    """Load and featurize a recipe's data sources into the cache (no training).

    Featurize every molecule of a recipe's sources once (cached in Arrow) and print what was kept and dropped;
    training then reads the cache without running RDKit."""
    arguments = _parse(args.stage, args.options)
    from llamo.training.data import build_training_dataset

    try:
        dataset, _ = build_training_dataset(arguments)
    except (FileNotFoundError, PermissionError, ValueError) as error:
        raise CommandError(str(error)) from error
    print(f"{len(dataset)} training rows ready")
