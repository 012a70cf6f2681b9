"""`llamo index build`: a molecule index (known molecules and their answers) from any data source."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS
from llamo.cli_common import add_command
from llamo.errors import CommandError
from llamo.retrieval import NEIGHBOUR_TASKS

PACKAGED_SOURCES = ("chemicals", "qm9")
SUFFIX_SOURCES = {".txt": "chebi20", ".tsv": "chebi20", ".csv": "iupac"}


def register(subparsers) -> None:
    """Add `index` to the `llamo` command line."""
    parser = subparsers.add_parser(
        "index",
        help="build or inspect a molecule index (nearest known molecules become in-context examples)",
        description="Molecule indexes hold known molecules with their answers for one task; `llamo generate --index` "
        "and `llamo evaluate --index` put the most similar ones into the prompt.",
    )
    commands = parser.add_subparsers(dest="index_command", metavar="COMMAND", required=True)
    build = add_command(commands, "build", run_build)
    build.add_argument("source", metavar="SOURCE", help="a path, a Hub dataset id, or 'chemicals' / 'qm9'")
    build.add_argument("--output", "-o", required=True, help="folder to write (new or empty)")
    build.add_argument("--task", required=True, choices=NEIGHBOUR_TASKS, help="which answers the index holds")
    build.add_argument(
        "--type",
        help="the source's loader (chebi20, pubchem324k, mol-instructions, iupac, chemicals, qm9, conversations); "
        "guessed from SOURCE when not given",
    )
    build.add_argument("--split", default="train", help="split of a Hub dataset or PubChem324k")
    build.add_argument("--limit", type=int, help="read at most this many rows")
    build.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="leave out the test part of this fixed InChIKey hold-out (0.1 matches the shipped recipes), so that "
        "evaluating on that part never finds its own molecules",
    )
    build.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS, help="skip larger molecules")
    show = add_command(commands, "show", run_show)
    show.add_argument("index", metavar="INDEX", help="index folder or Hub dataset id")


def build_index(
    source: str,
    task: str,
    source_type: str | None = None,
    split: str = "train",
    limit: int | None = None,
    holdout: float = 0.0,
    max_atoms: int = DEFAULT_MAX_ATOMS,
):
    """A source loaded by the training data loaders and indexed: the index, the loader's report, the counts."""
    from llamo.training.config import DataSourceConfig
    from llamo.training.data import load_source

    from .index import MoleculeIndex

    path = None if source in PACKAGED_SOURCES else source
    # unless given, the loader is a packaged table's name, else by file suffix, else `conversations` (Hub ids too)
    kind = source_type or (source if path is None else SUFFIX_SOURCES.get(Path(source).suffix.lower(), "conversations"))
    options = {"task": "property"} if kind == "mol-instructions" and task == "property" else {}
    dataset, report = load_source(DataSourceConfig(type=kind, path=path, split=split, limit=limit, **options))
    index, counts = MoleculeIndex.from_records(dataset, task, max_atoms=max_atoms, holdout=holdout)
    return index, report, counts


def run_build(args: argparse.Namespace) -> int:
    """Index a data source.

    Index SOURCE for one task: a ChEBI-20 TSV or PubChem folder, a JSONL / Hub dataset in the conversation schema,
    an IUPAC CSV, or the packaged tables 'chemicals' (PubChem IUPAC names) and 'qm9' (HOMO / LUMO / gap). The index is
    written as a datasets folder (push it to the Hub with datasets' push_to_hub)."""
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandError(f"{output} exists and is not a folder: choose a new folder for the index.")
    if output.exists() and any(output.iterdir()):
        raise CommandError(f"{output} exists and is not empty: choose a new folder for the index.")
    if not 0 <= args.holdout < 1:
        raise CommandError(f"--holdout must be in [0, 1), got {args.holdout}.")
    for option, value in (("--limit", args.limit), ("--max-atoms", args.max_atoms)):
        if value is not None and value < 1:
            raise CommandError(f"{option} must be at least 1, got {value}.")
    try:
        index, report, counts = build_index(
            args.source, args.task, args.type, args.split, args.limit, args.holdout, args.max_atoms
        )
    except (OSError, ValueError) as error:  # an unreadable source: not a table, a folder, an unreachable Hub
        from llamo.storage import is_disk_full

        if is_disk_full(error):
            raise
        raise CommandError(str(error) if args.source in str(error) else f"{args.source}: {error}") from error
    if not len(index):
        raise CommandError(f"No {args.task} rows could be indexed from {args.source} ({report.summary()}; {counts}).")
    try:
        index.save(output)
    except NotADirectoryError as error:
        raise CommandError(f"cannot write the index to {output}: {error.strerror}.") from error
    print(f"Indexed {counts['indexed']} entries for {args.task} into {output} ({report.summary()}; {counts}).")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Show the size, task and answer keys of an index."""
    from .index import MoleculeIndex

    try:
        index = MoleculeIndex.load(args.index)
    except ValueError as error:
        raise CommandError(str(error)) from error
    print(json.dumps(index.describe(), indent=2))
    return 0
