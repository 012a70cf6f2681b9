"""`llamo generate-data`: multi-turn instruction conversations about molecules (the paper's GPT-4 pipeline)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from llamo.cli_common import add_command, add_device_arguments, options_of
from llamo.errors import CommandError


def register(subparsers) -> None:
    """Add `generate-data` to the `llamo` command line."""
    parser = add_command(subparsers, "generate-data", run_generate_data)
    parser.add_argument("input", metavar="INPUT", help="TSV (ChEBI-20), CSV, JSONL, or a saved datasets folder")
    parser.add_argument("--output", "-o", required=True, help="output JSONL (appended to; resumed)")
    parser.add_argument(
        "--teacher", required=True, choices=["openai", "transformers", "grounded"], help="who writes conversations"
    )
    parser.add_argument("--model", help="model name (openai) or folder / Hub id (transformers)")

    source = parser.add_argument_group("input")
    source.add_argument("--format", default="auto", choices=["auto", "tsv", "chebi20", "csv", "jsonl", "dataset"])
    source.add_argument("--smiles-column", help="detected among smiles, SMILES, ... if not given")
    source.add_argument("--description-column", help="detected among description, caption, text if not given")
    source.add_argument("--iupac-column", help="detected among iupac, iupac_name; optional")
    source.add_argument("--id-column", help="detected among id, CID; without one, the InChIKey is the id")
    source.add_argument("--id-prefix", default="", help="prepended to source ids, e.g. 'chebi20:'")
    source.add_argument("--limit", type=int, help="use only the first N valid molecules")

    pipeline = parser.add_argument_group("pipeline")
    pipeline.add_argument("--max-turns", type=int, default=8, help="most question-answer pairs per conversation")
    pipeline.add_argument("--num-exemplars", type=int, default=2, help="in-context exemplars per request (0: none)")
    pipeline.add_argument("--seed-exemplars", type=int, default=3, help="exemplar conversations made in step 1")
    pipeline.add_argument("--exemplars", help="use these exemplars (an OUTPUT.exemplars.json file) instead of step 1")
    pipeline.add_argument("--seed", type=int, default=0)
    pipeline.add_argument("--allow-mixed", action="store_true", help="append to output of another teacher/model/prompt")
    pipeline.add_argument("--overwrite", action="store_true", help="delete OUTPUT and its sidecars first")
    pipeline.add_argument("--no-progress", action="store_true", help="no progress bar")
    pipeline.add_argument("--verbose", "-v", action="store_true", help="log every retry")

    http = parser.add_argument_group("openai teacher")
    http.add_argument("--base-url", default="https://api.openai.com/v1", help="API root (vLLM, Ollama: .../v1)")
    http.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the environment variable with the key")
    http.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    http.add_argument("--max-requests", type=int, help="request budget, retries included; stop cleanly when spent")
    http.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server per request")
    http.add_argument("--retries", type=int, default=5, help="retries on 429 / 5xx / timeout / connection error")
    http.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (then doubled)")
    http.add_argument("--max-backoff", type=float, default=60.0)
    http.add_argument("--temperature", type=float, default=0.7)
    http.add_argument("--max-tokens", type=int, default=1024, help="most tokens per teacher reply")

    add_device_arguments(parser.add_argument_group("transformers teacher"))


TEACHER_OPTIONS = ("max_turns", "max_requests", "temperature", "max_tokens", "device", "dtype")
CONNECTION_OPTIONS = ("base_url", "api_key_env", "timeout", "retries", "backoff", "max_backoff")
"""The options passed on to `build_teacher` under their own names: the teacher's, and how to reach an endpoint."""
CONFIG_OPTIONS = ("max_turns", "num_exemplars", "seed_exemplars", "concurrency", "seed", "allow_mixed", "overwrite")
"""The options passed on to `DataGenerationConfig` under their own names."""


def run_generate_data(args: argparse.Namespace) -> None:
    """Generate multi-turn instruction conversations about molecules (GPT-4 pipeline, any teacher).

    Write one multi-turn conversation per molecule of INPUT with a teacher: an OpenAI-compatible endpoint, a local
    transformers chat model, or the offline grounded teacher (verified facts only). Appends to OUTPUT (JSONL,
    conversation schema) and resumes where a killed or stopped run left off. Sidecars: OUTPUT.status.jsonl (filtered /
    failed molecules), OUTPUT.exemplars.json, OUTPUT.summary.json."""
    from llamo.storage import refuse_output_over

    from .teachers import MAX_WAIT_SECONDS, TeacherFatalError, build_teacher

    for name in ("max_turns", "concurrency", "max_tokens"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    for name in ("num_exemplars", "seed_exemplars", "retries", "max_requests", "limit"):
        if (value := getattr(args, name)) is not None and value < 0:
            raise CommandError(f"--{name.replace('_', '-')} must not be negative, got {value}.")
    if not 0 < args.timeout <= MAX_WAIT_SECONDS:  # NaN too
        raise CommandError(f"--timeout must be above 0 and at most {MAX_WAIT_SECONDS:g} seconds, got {args.timeout}.")
    for name in ("backoff", "max_backoff"):
        if not 0 <= (value := getattr(args, name)) <= MAX_WAIT_SECONDS:
            flag = f"--{name.replace('_', '-')}"
            raise CommandError(f"{flag} must be from 0 to {MAX_WAIT_SECONDS:g} seconds, got {value}.")
    if not 0 <= args.temperature < math.inf:
        raise CommandError(f"--temperature must be a finite number of at least 0, got {args.temperature}.")
    if not args.output.strip():
        raise CommandError("--output is empty: give the JSONL file to write.")
    if Path(args.output).is_dir():
        raise CommandError(f"--output {args.output} is a folder: give the JSONL file to write.")
    try:
        refuse_output_over(args.output, input=args.input)  # --overwrite would start by deleting it
    except ValueError as error:
        raise CommandError(str(error)) from None
    level = logging.INFO if args.verbose else logging.WARNING  # basicConfig keeps a root logger's own handlers
    logging.basicConfig(level=level, format="llamo generate-data: %(levelname)s: %(message)s", stream=sys.stderr)

    from .instruction_data import DataGenerationConfig, generate_conversations
    from .instruction_inputs import ColumnNames, read_molecules
    from .instruction_summary import format_summary

    columns = ColumnNames(**{role: getattr(args, f"{role}_column") for role in vars(ColumnNames())})
    try:
        molecules = read_molecules(args.input, args.format, columns, id_prefix=args.id_prefix, limit=args.limit)
        teacher = build_teacher(args.teacher, args.model, **options_of(args, *TEACHER_OPTIONS, *CONNECTION_OPTIONS))
        config = DataGenerationConfig(
            **options_of(args, *CONFIG_OPTIONS), exemplars_file=args.exemplars, show_progress=not args.no_progress
        )
        print(
            f"{len(molecules.molecules)} molecules from {molecules.source} "
            f"({sum(molecules.skipped.values())} rows skipped); teacher {teacher!r}",
            file=sys.stderr,
        )
        summary = generate_conversations(molecules, teacher, args.output, config)
    except TeacherFatalError as error:
        raise CommandError(f"the teacher refused the request: {error.detail}") from None
    except IsADirectoryError as error:  # INPUT read as a file, or a sidecar of OUTPUT
        raise CommandError(f"{error.filename} is a folder, not a file.") from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    print(format_summary(summary), file=sys.stderr)
    print(json.dumps(summary, indent=2))
