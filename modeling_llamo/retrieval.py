"""Where answers get their context: molecule indexes (given, or built on first use) and OPSIN name verification.

A model folder may hold `llamo_retrieval.json`, written when a model was trained with in-context neighbours:
`{"neighbours": K, "default_indexes": {"iupac": "chemicals", "property": "qm9"}}`. With it, `llamo generate` answers a
naming or property question with the K nearest entries of the packaged PubChem name table or QM9, built once into
`~/.cache/llamo/indexes` (`$LLAMO_INDEX_CACHE`). An optional `"task_neighbours": {"property": 1}` sets K for one task
(the question's, see `question_task`), `"task_generation": {"description": {"num_beams": 3}}` decoding settings for
one task, `"name_hint_tasks": ["description"]` the tasks whose questions are given the molecule's rule-based name
(`name_hinter`), and `"neighbour_answer_tasks": ["description"]` the tasks whose answers compete with the neighbours'
own (the pipeline's `rank_neighbour_answers`). Models without the file answer without neighbours unless an index is
given (the paper's format)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RETRIEVAL_FILE = "llamo_retrieval.json"
INDEX_CACHE_ENV = "LLAMO_INDEX_CACHE"
DEFAULT_INDEX_SOURCES = {"iupac": "chemicals", "property": "qm9"}
SETTINGS_TYPES = {
    "neighbours": (int, object, "an integer"),
    "default_indexes": (dict, str, "an object of task -> index name"),
    "task_neighbours": (dict, int, "an object of task -> integer"),
    "task_near_twin": (dict, (int, float), "an object of task -> similarity"),
    "task_generation": (dict, dict, "an object of task -> object of generation settings"),
    "name_hint_tasks": (list, str, "a list of task names"),
    "neighbour_answer_tasks": (list, str, "a list of task names"),
}
"""The keys of `llamo_retrieval.json`: key -> (its type, the type of its entries, how an error says it)."""
DEFAULT_INDEX_VERSIONS = {"iupac": "2", "property": "3"}
"""Version of each packaged index; 2: entries keep their stereochemistry, 3: radius-1 count fingerprints."""
NEIGHBOUR_TASKS = ("description", "iupac", "property")
"""The tasks whose answers an index holds and whose rows get in-context neighbours, in training and at answer time
(one answer per molecule; conversations get none)."""
ANSWER_TOKENS = {"description": 256, "iupac": 144, "property": 16}
"""Default answer length by the question's task: long enough for ChEBI-20 descriptions (99.6% of the training ones
are shorter), PubChem names (99.5%; 1.9% need 95 tokens or more) and a number, so that an answer that runs on stops
early."""

_NAMING = re.compile(r"\b(iupac|name|named|naming|call(ed)?)\b", re.IGNORECASE)
_PROPERTY = re.compile(r"\b(homo|lumo|gap|orbital|hartree)\b", re.IGNORECASE)


def question_task(question: str) -> str:
    """The task a free-form question asks for: `iupac`, `property` (HOMO / LUMO / gap) or `description`."""
    return "property" if _PROPERTY.search(question) else "iupac" if _NAMING.search(question) else "description"


def retrieval_settings(model_dir: str | Path | None) -> dict[str, Any]:
    """The folder's `llamo_retrieval.json`, or `{}` (a model trained without neighbours); a `ValueError` names the file
    when it is not JSON or a key holds another type than `SETTINGS_TYPES` says."""
    if model_dir is None:
        return {}
    path = Path(model_dir) / RETRIEVAL_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as error:  # not UTF-8, not JSON
        raise ValueError(f"{path} is not readable JSON ({type(error).__name__}: {error!s:.200})") from error
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(settings).__name__}.")
    for key, (kind, entry, said) in SETTINGS_TYPES.items():
        value = settings.get(key)
        entries = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if value is not None and not (isinstance(value, kind) and all(isinstance(v, entry) for v in entries)):
            raise ValueError(f"{path}: {key!r} must be {said}.")
    return settings


def neighbours_for(settings: dict[str, Any], task: str) -> int | None:
    """Neighbours per answer for a task: the settings' `task_neighbours[task]`, else their `neighbours`."""
    return settings.get("task_neighbours", {}).get(task, settings.get("neighbours"))


def near_twin_for(settings: dict[str, Any], task: str) -> float | None:
    """The similarity from which a task's nearest entry is given alone (`near_twin_only`): `task_near_twin[task]`."""
    return settings.get("task_near_twin", {}).get(task)


def ranks_neighbour_answers(settings: dict[str, Any], task: str) -> bool:
    """Whether a task's answers compete with the neighbours' own (`rank_answers`): `neighbour_answer_tasks`."""
    return task in settings.get("neighbour_answer_tasks", [])


def generation_for(settings: dict[str, Any], task: str) -> dict[str, Any]:
    """Decoding settings for a task's answers (`generate` keywords): the settings' `task_generation[task]`, or none."""
    return dict(settings.get("task_generation", {}).get(task, {}))


def default_index(task: str, limit: int | None = None):
    """The packaged index of a task (`iupac`: the `chemicals` PubChem name table; `property`: all of QM9 from
    `qm9pack`; `limit`: a spread-out subset), built on first use into the cache (`$LLAMO_INDEX_CACHE`, else
    `~/.cache/llamo/indexes`; with a progress bar; its copies from earlier index versions, and from earlier llamo
    versions' subsets, are then removed) and loaded from there afterwards. Raises `ValueError` for a task without one,
    `ModuleNotFoundError` (naming it) when the package holding the table is not installed."""
    from llamo.processing.index import MoleculeIndex
    from llamo.processing.index_commands import build_index

    source = DEFAULT_INDEX_SOURCES.get(task)
    if source is None:
        raise ValueError(f"No packaged index for {task!r}: pass --index with one built by `llamo index build`.")
    cache = Path(os.environ.get(INDEX_CACHE_ENV) or Path.home() / ".cache" / "llamo" / "indexes")
    version = f"v{DEFAULT_INDEX_VERSIONS[task]}"
    folder = cache / (f"{task}-{source}-{version}" + (f"-first{limit}" if limit else ""))
    if (folder / "state.json").is_file():
        return MoleculeIndex.load(folder)
    index, _, counts = build_index(source, task, limit=limit)
    shutil.rmtree(folder, ignore_errors=True)  # an unfinished copy (no state.json); `save` writes it whole
    folder.parent.mkdir(parents=True, exist_ok=True)
    index.save(folder)
    print(f"Built the {task} index once: {counts['indexed']} entries, in {folder}", flush=True)
    for stale in folder.parent.glob(f"{task}-{source}-v*"):  # as earlier versions of llamo built it, or of a subset
        if stale != folder and (stale.name.split("-")[2] != version or not limit):
            shutil.rmtree(stale, ignore_errors=True)
            print(f"Removed {stale}: the {task} index of an earlier llamo version", flush=True)
    return MoleculeIndex.load(folder)


def load_index(choice: str | None, model_dir: str | Path | None, question: str):
    """`(index or None, neighbours per answer or None)` for an answer: `choice` is a folder or Hub id, `"none"`, or
    `None`/`"auto"` (the model's default index for the question's task, if it was trained with neighbours and the
    table's package is installed)."""
    from llamo.processing.index import MoleculeIndex

    settings, task = retrieval_settings(model_dir), question_task(question)
    k = neighbours_for(settings, task)
    if choice not in (None, "auto", "none"):
        return MoleculeIndex.load(choice), k
    if choice == "none" or task not in settings.get("default_indexes", {}):
        return None, None
    try:
        return default_index(task), k
    except ModuleNotFoundError:
        return None, None


def opsin_checker() -> Callable[[Sequence[str]], list[str | None]] | None:
    """A `names -> InChIKeys` checker that parses names with OPSIN (one Java start per call), or `None` where OPSIN
    cannot run (no Java or no py2opsin)."""
    from llamo.evaluation.naming import inchikey, names_to_smiles, opsin_unavailable_reason

    if opsin_unavailable_reason() is not None:
        return None
    return lambda names: [inchikey(smiles) for smiles in names_to_smiles(list(names))]


def rule_namer(iupac_nesting: bool = True) -> Callable[[str], str | None] | None:
    """A `smiles -> IUPAC name or None` rule-based namer (`openclatura`), or `None` where it is not installed. Its names
    are a further candidate of name verification: answered only when OPSIN reads them back as the molecule. With
    `iupac_nesting`, nested parentheses become IUPAC's `[( )]`, `{[( )]}`... (`nest_enclosing_marks`)."""
    try:
        import openclatura  # noqa: F401
    except ImportError:
        return None
    from llamo.evaluation.naming import rule_based_name

    return functools.partial(rule_based_name, iupac_nesting=iupac_nesting)


def verification_options(namer: bool = True) -> dict[str, Any]:
    """The pipeline's name verification as `llamo generate` runs it: OPSIN's `verify_names` checker and, with `namer`,
    the rule-based namer's name as a last candidate (`propose_names`, when installed); `{}` where OPSIN cannot run."""
    if (checker := opsin_checker()) is None:
        return {}
    proposer = rule_namer() if namer else None
    return {"verify_names": checker, **({"propose_names": proposer} if proposer is not None else {})}


NAME_HINT_MAX_CHARS = 80
"""Longer rule-based names are not given as hints: on held-out ChEBI-20 rows (the decoding-choice rows 33-64) the
default model's descriptions gained from names up to about 80 characters and not from longer ones, whose answers ran
to the token limit repeating the name (README, *Name hints*)."""
NAME_HINT_MAX_ATOMS = 100
"""Larger molecules are not named for a hint: the namer's time grows with the molecule (8 s for a 360-atom branched
alkane), and their names are longer than `NAME_HINT_MAX_CHARS` but for simple chains."""


def name_hinter(
    checker: Callable[[Sequence[str]], list[str | None]] | None = None,
) -> Callable[[str], str | None] | None:
    """A `smiles -> name or None` for the pipeline's `name_hint`: the rule-based namer's name (`rule_namer`) of a
    molecule of at most `NAME_HINT_MAX_ATOMS` atoms when it has at most `NAME_HINT_MAX_CHARS` characters, and with a
    `checker` (`opsin_checker`) only when OPSIN reads it back as the molecule (no hint where OPSIN fails). `None` where
    the namer is not installed."""
    namer = rule_namer(iupac_nesting=False)  # nested hints scored lower (README, *IUPAC's nesting...*)
    if namer is None:
        return None
    from llamo.pipeline_llamo import inchikey
    from llamo.smiles_llamo import count_smiles_atoms

    @functools.lru_cache(maxsize=256)  # a chat asks about one molecule every turn: name and check it once
    def hint(smiles: str) -> str | None:
        name = namer(smiles) if count_smiles_atoms(smiles) <= NAME_HINT_MAX_ATOMS else None
        if not name or len(name) > NAME_HINT_MAX_CHARS:
            return None
        try:
            readable = checker is None or checker([name])[0] == inchikey(smiles)
        except (RuntimeError, OSError):  # OPSIN itself failed: the answer goes on without a hint
            return None
        return name if readable else None

    return hint
