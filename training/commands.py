"""`llamo train stage1|stage2` and `llamo prepare-data` (standard-library imports only: see `llamo.cli`)."""

from __future__ import annotations

import argparse

STAGES = {
    "stage1": "graph-language alignment: train the GIN + projector on description pairs, LLM frozen",
    "stage2": "instruction tuning (TRL SFTTrainer + LoRA on the LLM, projector trained, GIN frozen)",
    "pipeline": "a whole recipe: instruction data, stage 1, stage 2, default-model bundle",
}


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a LLaMo (stage1, then stage2) from a YAML recipe",
        description=(
            "Run a training stage from a recipe: `llamo train stage1 --config recipe.yaml [--key value ...]`. "
            "Every field of the stage's config can be set in the YAML or overridden on the command line; "
            "`llamo train stage1 --help` lists them. Restarting the same command resumes an interrupted run. "
            "For several processes/GPUs: `accelerate launch -m llamo.training.stage2 --config recipe.yaml`."
        ),
    )
    train.add_argument("stage", choices=sorted(STAGES), help="; ".join(f"{k}: {v}" for k, v in STAGES.items()))
    train.add_argument("options", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and field overrides")
    train.set_defaults(handler=_run_train)

    prepare = subparsers.add_parser(
        "prepare-data",
        help="load and featurize a recipe's data sources into the cache (no training)",
        description="Featurize every molecule of a recipe's sources once (cached in Arrow) and print what was kept "
        "and dropped; training then reads the cache without running RDKit.",
    )
    prepare.add_argument("stage", choices=["stage1", "stage2"])
    prepare.add_argument("options", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and field overrides")
    prepare.set_defaults(handler=_run_prepare)

    recipes = subparsers.add_parser(
        "recipes", help="list the shipped training recipes and accelerate configs, with their paths"
    )
    recipes.set_defaults(handler=_run_recipes)


def _run_recipes(args: argparse.Namespace) -> None:
    from llamo.training.common import ACCELERATE_DIR, RECIPES_DIR

    print("Training recipes (`--config NAME` or the path):")
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        print(f"  {path.stem:40s} {path}")
    print("accelerate configs (`accelerate launch --config_file PATH -m llamo.training.stage2 --config ...`):")
    for path in sorted(ACCELERATE_DIR.glob("*.yaml")):
        print(f"  {path.stem:40s} {path}")


def _parse(stage: str, options: list[str]):
    from llamo.errors import CommandError

    if stage == "stage1":
        from llamo.training.stage1 import parse
    else:
        from llamo.training.stage2 import parse
    try:
        return parse(options)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise CommandError(f"invalid {stage} configuration: {error}") from error


def _run_train(args: argparse.Namespace) -> None:
    from llamo.errors import CommandError
    from llamo.storage import is_disk_full

    if args.stage == "pipeline":
        from llamo.training.pipeline import main as run_pipeline

        try:
            run_pipeline(args.options)
        except (FileNotFoundError, FileExistsError, PermissionError, ValueError, RuntimeError) as error:
            if is_disk_full(error):  # torch words a full disk as a RuntimeError: `llamo.cli` reports it
                raise
            raise CommandError(str(error)) from error
        return
    config = _parse(args.stage, args.options)
    if args.stage == "stage1":
        from llamo.training.stage1 import main
    else:
        from llamo.training.stage2 import main
    try:
        main(config)
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as error:
        raise CommandError(str(error)) from error


def _run_prepare(args: argparse.Namespace) -> None:
    from llamo.errors import CommandError
    from llamo.training.data import build_training_dataset

    config = _parse(args.stage, args.options)
    try:
        dataset, _ = build_training_dataset(config)
    except (FileNotFoundError, PermissionError, ValueError) as error:
        raise CommandError(str(error)) from error
    print(f"{len(dataset)} training rows ready")
