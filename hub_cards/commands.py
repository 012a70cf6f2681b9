"""`llamo export`, `push`, `convert-original` and `dataset-card` (only standard-library imports at the top)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from llamo.cli_common import DTYPE_CHOICES, add_command, options_of
from llamo.errors import CommandError

from .credits import DATA_CREDITS  # data only: no Hub, no torch


def _add_card_arguments(parser: argparse.ArgumentParser, default_license: str) -> None:
    card = parser.add_argument_group("model card")
    card.add_argument(
        "--card-results",
        nargs="+",
        default=[],
        metavar="RESULTS_JSON",
        help="`llamo evaluate` results files: the model's fill the card's model-index, baselines its text",
    )
    card.add_argument("--base-model", help="Hub id of the base LM; found from the build and run files when not given")
    card.add_argument("--repo-id", help="the Hub repository the model goes to (used by the card's usage snippet)")
    card.add_argument("--model-name", help="the card's title; the repository or folder name when not given")
    card.add_argument("--license", default=default_license, help="license id for the card's metadata")
    card.add_argument("--dataset", nargs="+", default=[], metavar="HUB_ID", help="Hub dataset ids for the metadata")
    known = ", ".join(DATA_CREDITS)
    card.add_argument("--credit", nargs="+", default=[], metavar="KEY", help=f"extra data credits: {known}")
    card.add_argument("--tag", nargs="+", default=[], metavar="TAG", help="extra tags for the card's metadata")


def register(subparsers) -> None:
    parser = add_command(subparsers, "export", _run_export)
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a saved LLaMo (llamo init, training, convert-original)")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="folder to write (must be new or empty)")
    parser.add_argument("--run-dir", nargs="+", metavar="RUN_DIR", help="training run folders for the card's recipe")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: as saved)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    _add_card_arguments(parser, "apache-2.0")

    parser = add_command(subparsers, "push", _run_push)
    parser.add_argument("folder", metavar="FOLDER", help="the exported folder")
    parser.add_argument("repo_id", metavar="REPO_ID", help="NAMESPACE/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", metavar="BRANCH", help="the branch to push to, instead of the main branch")
    parser.add_argument("--create-branch", action="store_true", help="create --revision's branch if missing")
    parser.add_argument("--commit-message", help="the commit message; a generated one names the llamo version")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; contact nothing")

    from llamo.convert_llamo_original_to_hf import add_conversion_arguments  # standard library only at its top

    parser = add_command(subparsers, "convert-original", _run_convert)
    add_conversion_arguments(parser)
    _add_card_arguments(parser, "llama2")

    parser = add_command(subparsers, "dataset-card", _run_dataset_card)
    parser.add_argument("summary", metavar="SUMMARY_JSON", help="the OUT.jsonl.summary.json of a generation run")
    parser.add_argument("-o", "--output", help="where to write; README.md beside the summary when not given")
    parser.add_argument("--pretty-name", help="the dataset's title")
    parser.add_argument("--license", default="other", help="license id (the source data's and teacher's terms)")
    parser.add_argument("--credit", nargs="+", default=[], metavar="KEY", help="extra data credits (see export)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing card")


def _card_options(args: argparse.Namespace, run_dirs=None):
    from .cards import ModelCardOptions

    scalars = options_of(args, "model_name", "repo_id", "base_model", "license")
    lists = {"datasets": args.dataset, "credits": args.credit, "results": args.card_results, "tags": args.tag}
    return ModelCardOptions(**scalars, **{key: list(value) for key, value in lists.items()}, run_dirs=run_dirs)


def _print_files(result) -> None:
    from llamo.storage import format_bytes

    print(f"Wrote {len(result.files)} files ({format_bytes(result.total_bytes)}) to {result.folder}:", file=sys.stderr)
    print(result.listing(), file=sys.stderr)


def _run_export(args: argparse.Namespace) -> None:
    """Write a model as one Hub-ready folder (safetensors, remote code, pipeline, model card).

    Export a LLaMo model folder for the Hub: safetensors weights, config.json with auto_map and the
    molecule-text-generation pipeline, the remote-code files (and only those), processor, tokenizer, chat template,
    generation config, and a README.md model card. The training runs behind the model are found from its folder
    (llamo_run_config.json) unless --run-dir is given."""
    from .export import export_model

    try:
        options = _card_options(args, args.run_dir)
        result = export_model(args.model_dir, args.output_dir, options, overwrite=args.overwrite, dtype=args.dtype)
    except ValueError as error:  # the export's, card's, results' and run folders' errors
        raise CommandError(str(error)) from error
    _print_files(result)
    print(f"Push it with: llamo push {result.folder} {args.repo_id or 'NAMESPACE/NAME'}", file=sys.stderr)


def _run_push(args: argparse.Namespace) -> None:
    """Upload an exported folder to the Hugging Face Hub.

    Create the repository if needed and upload FOLDER (made by `llamo export`) in one commit. The token comes from
    HF_TOKEN or your login (`hf auth login`) and is never printed."""
    from .publish import PushError, plan_push, push_folder

    try:
        options = options_of(args, "private", "revision", "create_branch", "commit_message")
        plan = plan_push(args.folder, args.repo_id, **options)
        if args.dry_run:
            print(f"Dry run, nothing sent. Would upload {plan.describe()}")
            return
        print(f"Uploading {len(plan.files)} files to {plan.repo_id} ...", file=sys.stderr)
        commit = push_folder(plan)
    except PushError as error:
        raise CommandError(str(error)) from None
    print(f"Pushed to {plan.url}: {getattr(commit, 'commit_url', None) or commit}")
    if args.private:
        print("(--private applies when the repository is created; an existing one keeps its visibility)")


def _run_convert(args: argparse.Namespace) -> None:
    """Convert the original LLaMo release (Lightning checkpoint) into an exported folder.

    Convert mlvlab/LLaMo's checkpoint (graph encoder, projector and LoRA-tuned LLaMA-2 under mllm.*) plus its base
    LLM folder (LLaMA-2-7B-chat, Hugging Face format) into this project's format: shared level attention, motif tokens
    first, <graph> added, the original LLaMA-2 chat prompt, LoRA merged or kept as a PEFT adapter. Unknown or missing
    keys are errors."""
    from huggingface_hub.errors import StrictDataclassError

    from llamo.convert_llamo_original_to_hf import convert_original_checkpoint

    print(f"Converting {args.checkpoint} with the base LLM {args.llm} ...", file=sys.stderr)
    try:
        options = ("keep_adapter", "lora_alpha", "lora_dropout", "unsafe_unpickle", "dtype", "num_heads", "overwrite")
        result = convert_original_checkpoint(
            args.checkpoint, args.llm, args.output_dir, **options_of(args, *options), card_options=_card_options(args)
        )
    except (ValueError, StrictDataclassError) as error:  # the checkpoint's, settings', card's and export's errors
        raise CommandError(textwrap.shorten(str(error), 400, placeholder=" ...")) from error
    for label, value in result.facts:
        print(f"  {label}: {value}", file=sys.stderr)
    _print_files(result.export)


def _run_dataset_card(args: argparse.Namespace) -> None:
    """Write the dataset card of instruction data made by `llamo generate-data`.

    Write a README.md dataset card (teacher, model, prompt version, counts filtered by reason) from the generator's
    OUT.jsonl.summary.json."""
    from llamo.storage import refuse_output_over

    from .cards import build_dataset_card

    output = Path(args.output) if args.output else Path(args.summary).parent / "README.md"
    if output.is_dir():
        raise CommandError(f"{output} is a folder: give the card's file name with -o.")
    if output.exists() and not args.overwrite:
        raise CommandError(f"{output} exists; pass --overwrite to replace it or -o to write elsewhere.")
    try:
        refuse_output_over(output, summary=args.summary)
        card = build_dataset_card(args.summary, args.pretty_name, args.license, list(args.credit))
    except ValueError as error:  # an output over the summary; the summary's and credits' errors
        raise CommandError(str(error)) from error
    output.parent.mkdir(parents=True, exist_ok=True)
    card.save(output)
    print(f"Wrote {output}", file=sys.stderr)
