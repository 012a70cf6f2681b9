"""`llamo evaluate` and `llamo setup-wordnet` (standard-library imports only at the top: `llamo --help` stays fast)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS
from llamo.cli_common import add_command, add_device_arguments, number_in, options_of
from llamo.errors import CommandError

from .config import BASELINES, MAX_THREADS, EvaluationConfig
from .text_metrics import SCIBERT_HUB_ID
from .wordnet import DEBIAN_WORDNET, WordNetUnavailable, setup_wordnet


def register(subparsers) -> None:
    parser = add_command(subparsers, "evaluate", _run_evaluate)
    parser.add_argument(
        "model", nargs="?", metavar="MODEL_DIR", help="LLaMo folder (optional for the retrieval and mean baselines)"
    )
    parser.add_argument("--data", required=True, help="JSONL/JSON/Parquet file, save_to_disk folder, or Hub dataset id")
    parser.add_argument("--split", help="split of a folder or Hub dataset (default: test)")
    parser.add_argument(
        "--task", action="append", dest="tasks", help="evaluate this task only (repeatable); default: every task"
    )
    parser.add_argument("--output-dir", required=True, help="folder for predictions and results (resumable)")
    parser.add_argument("--overwrite", action="store_true", help="discard another run's predictions in --output-dir")
    parser.add_argument(
        "--max-rows", type=int, metavar="N", help="evaluate only the first N rows, in the data's order (a quick check)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    decoding = parser.add_argument_group("decoding (LLaMo's evaluation: greedy, 512 new tokens)")
    decoding.add_argument("--batch-size", type=int, default=16, help="rows generated together")
    decoding.add_argument("--max-new-tokens", type=int, default=512, help="most tokens in an answer")
    decoding.add_argument("--min-new-tokens", type=int, help="fewest tokens in an answer")
    decoding.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    decoding.add_argument("--do-sample", action="store_true", help="sample instead of greedy / beam search")
    above_0 = number_in(float, 0, sys.float_info.max, "a finite number above 0")
    decoding.add_argument("--temperature", type=above_0, default=1.0, help="sampling temperature (with --do-sample)")
    top_p = number_in(float, 0, 1, "a number above 0, at most 1")
    decoding.add_argument("--top-p", type=top_p, default=1.0, help="nucleus sampling mass (with --do-sample)")
    decoding.add_argument(
        "--answer-loop-repeats",
        type=int,
        help="end an answer that repeats one block this many times in a row (0: off; default: the model's own)",
    )
    decoding.add_argument("--seed", type=int, default=0, help="random seed of sampling")
    add_device_arguments(decoding)
    decoding.add_argument(
        "--threads",
        type=number_in(int, 0, MAX_THREADS, f"an integer from 1 to {MAX_THREADS}"),
        metavar="N",
        help="CPU threads of generation (default: $OMP_NUM_THREADS if set, else the cores not busy: the cores this "
        "process may use minus the 1-minute load average, at least 1)",
    )
    baseline = parser.add_argument_group("baselines")
    baseline.add_argument(
        "--baseline",
        choices=BASELINES,
        help="retrieval: nearest training molecule's answer; mean: mean training property value; no-graph: the model "
        "without graph tokens; namer: openclatura's rule-based IUPAC name",
    )
    baseline.add_argument("--train-data", help="training rows of the retrieval and mean baselines")
    context = parser.add_argument_group("in-context neighbours")
    context.add_argument(
        "--index",
        help="molecule index (`llamo index build`, without the test molecules): the model gets the nearest entries as "
        "in-context examples, and --baseline retrieval copies from it",
    )
    context.add_argument(
        "--neighbours", type=int, help=f"entries per question from --index (default: {DEFAULT_NEIGHBOURS})"
    )
    context.add_argument(
        "--near-twin",
        type=float,
        metavar="SIMILARITY",
        help="give the nearest entry alone when its Tanimoto similarity is at least this (the default model's "
        "descriptions: 0.85, `task_near_twin` in its llamo_retrieval.json)",
    )
    switches = {
        "--rank-neighbour-answers": "the model scores its answer and the neighbours' own answers (mean log-probability "
        "per token) and gives the highest (the default model's descriptions: `neighbour_answer_tasks` in its "
        "llamo_retrieval.json)",
        "--verify-names": "answer naming rows with the first of 4 beam candidates that OPSIN reads back as the "
        "molecule, else the first it reads at all (Java)",
        "--propose-names": "with --verify-names, openclatura's rule-based name is a last candidate, answered when "
        "OPSIN verifies it",
        "--name-hints": "give each description question the molecule's rule-based IUPAC name (openclatura) if OPSIN "
        "verifies it",
    }
    for flag, text in switches.items():
        context.add_argument(flag, action="store_true", help=text)
    baseline.add_argument("--train-split", default="train", help="split of --train-data with several")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--scibert-vocab", help=f"SciBERT's vocab.txt, a folder or a Hub id (MolT5 protocol; default: {SCIBERT_HUB_ID})"
    )
    metrics.add_argument("--llm-tokenizer", help="tokenizer of the LLaMo protocol (default: the model's)")
    metrics.add_argument("--nltk-data", help="NLTK data folder holding WordNet (see `llamo setup-wordnet`)")
    parser = add_command(subparsers, "setup-wordnet", _run_setup_wordnet)
    parser.add_argument("--nltk-data", help="NLTK data folder (default: first $NLTK_DATA entry, else ~/nltk_data)")
    parser.add_argument("--source", default=str(DEBIAN_WORDNET), help="where the Debian packages put WordNet")
    parser.add_argument("--overwrite", action="store_true", help="replace an unreadable WordNet folder")
    parser.add_argument("--no-download", action="store_true", help="do not try NLTK's download: copy the Debian files")


def format_summary(results: dict) -> str:
    """A short plain-text view of a results document."""
    lines = []
    for entry in results["results"]:
        counts = entry["counts"]
        skipped = f", {counts['skipped']} skipped {counts['skipped_reasons']}" if counts["skipped"] else ""
        lines.append(f"{entry['task']['name'][:80]}: {counts['predicted']} of {counts['rows']} rows predicted{skipped}")
        for metric in entry["metrics"]:
            unit = "" if metric["unit"] == "percent" else f" {metric['unit']}"
            lines.append(f"  {metric['name']:<48} {metric['value']:.4f}{unit}")
        lines += [f"  {metric['name']:<48} unavailable: {metric['reason']}" for metric in entry["unavailable_metrics"]]
    return "\n".join(lines)


def _run_evaluate(args: argparse.Namespace) -> None:
    """Score a model (or a baseline) on description, IUPAC naming and property QA.

    Generate answers for every row of a dataset in llamo's conversation schema and score them per task:
    BLEU/ROUGE/METEOR under the MolT5 (SciBERT) and LLaMo (LLM tokens) protocols, IUPAC exact and structure-level
    (OPSIN) matches, property MAE with the valid-answer ratio. Rows are predicted in the data's order (sorted by length
    only within a few batches) and saved as they are made; running the same command again resumes. The run's settings
    are kept with the predictions: a rerun with other settings (model, data, --max-rows, decoding, baseline) is
    refused unless --overwrite. While a batch generates, the progress bar shows its tokens so far and its rows
    finished. Writes OUTPUT_DIR/results.json."""
    from .predictions import RESULTS_FILE
    from .runner import evaluate

    if not args.index:  # checked before anything loads
        for name in ("neighbours", "near_twin", "rank_neighbour_answers"):
            if (value := getattr(args, name)) is not None and value is not False:
                raise CommandError(f"--{name.replace('_', '-')} needs a molecule index: give --index.")
    names = [field.name for field in fields(EvaluationConfig)]  # an option left unset keeps the config's default
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    given.update(scibert_vocab=args.scibert_vocab or SCIBERT_HUB_ID, progress=not args.no_progress)
    try:
        config = EvaluationConfig(**given)
        results = evaluate(config)
    except (ValueError, FileExistsError, IsADirectoryError, NotADirectoryError) as error:
        raise CommandError(str(error)) from error
    print(format_summary(results))
    print(f"Results: {Path(config.output_dir) / RESULTS_FILE} (0-100 scale except MAE)", file=sys.stderr)
    if results["results"] and not any(entry["counts"]["predicted"] for entry in results["results"]):
        raise CommandError("no row could be answered (see the reasons above): the results hold no metric.")


def _run_setup_wordnet(args: argparse.Namespace) -> None:
    """Install WordNet for METEOR (NLTK's download, else the Debian wordnet packages offline).

    Install WordNet 3.0 into an NLTK data folder: NLTK's download (nltk.download) when its data server answers
    within a few seconds, else a copy from the Debian packages wordnet-base and wordnet-sense-index (apt-get install -y
    wordnet-base wordnet-sense-index) with the lexnames file NLTK needs."""
    try:
        target = setup_wordnet(args.nltk_data, download=not args.no_download, **options_of(args, "source", "overwrite"))
    except WordNetUnavailable as error:
        raise CommandError(str(error)) from error
    hint = "" if args.nltk_data is None else f" (pass --nltk-data {args.nltk_data} to llamo evaluate)"
    print(f"WordNet ready for METEOR in {target}{hint}.")
