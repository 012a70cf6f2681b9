"""Multi-turn instruction data about molecules: the LLaMo paper's GPT-4 pipeline, with any teacher.

Three steps, as in the paper:

1. seed a few exemplar conversations from a short instruction (`SEED_INSTRUCTION`), on molecules drawn from the input;
2. generate one conversation per molecule, with exemplars sampled into the teacher's context;
3. filter: drop truncated outputs, unparsable ones, broken turn structure, a question without an answer, empty or
   duplicate turns, and conversations with more than `max_turns` question-answer pairs.

Teachers: an OpenAI-compatible endpoint, a local transformers chat model (`teachers.py`), or the offline grounded
teacher (`grounded_teacher.py`, no steps 1-2: it writes conversations from verified facts).

Files, for `--output OUT.jsonl`:

- `OUT.jsonl`: one record per generated molecule, in the conversation schema (`processing/schema.py`), keyed by the
  molecule id (the source id, else the InChIKey). Append-only; each record is written with one write + fsync, so a
  killed job leaves at most a half-written last line, which the next run removes and redoes.
- `OUT.jsonl.status.jsonl`: one line per molecule that was filtered (with the reason and the teacher's raw output)
  or failed (teacher error after retries). Filtered molecules are final: a rerun does not ask again. Failed ones
  are retried by the next run.
- `OUT.jsonl.exemplars.json`: the exemplars of step 1, saved once so that a resumed job uses the same ones.
- `OUT.jsonl.summary.json`: counts, teacher, model, prompt version (keys in `SUMMARY_KEYS`).

A rerun of the same command continues where the last one stopped. An output made by another teacher, model or prompt
version is refused (unless `allow_mixed`); `overwrite` starts over. A full disk stops the run with a
`llamo.storage.DiskFullError` naming the folder; the records already written stay, and the rerun continues.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamo.storage import disk_full_guard

from .grounded_teacher import GroundedTeacher
from .instruction_prompts import (
    ConversationFormatError,
    Exemplar,
    conversation_problem,
    generation_messages,
    parse_conversation,
    seed_messages,
)
from .schema import CONVERSATION_FEATURES, make_record
from .teachers import (
    BudgetExhausted,
    GenerationStopped,
    RequestBudget,
    TeacherError,
    TeacherFatalError,
    TeacherReply,
)

logger = logging.getLogger(__name__)

SUMMARY_VERSION = 1
SUMMARY_KEYS = {
    "summary_version": "version of this layout (1)",
    "output": "the output JSONL path",
    "input": "what was read (path, or a description of the dataset)",
    "teacher": "openai | transformers | grounded",
    "model": "the teacher's model (grounded: rdkit-facts)",
    "prompt_version": "version of the prompts (grounded: of its templates)",
    "molecules": "valid molecules in the input (after --limit)",
    "input_rows": "rows read from the input",
    "skipped_rows": "input rows skipped",
    "skipped_by_reason": "{missing_smiles, invalid_smiles, missing_description, duplicate_id, unreadable_row: n}",
    "generated": "records in the output file",
    "generated_by_source": "{record source (generated:<teacher>): n}",
    "filtered": "molecules dropped by the filter (final; not retried)",
    "filtered_by_reason": "{reason: n}, reasons in FILTER_REASONS",
    "failed": "molecules whose teacher request failed (retried by the next run)",
    "failed_by_reason": "{reason: n}: http_<status>, retries_exhausted, invalid_response, teacher_exception",
    "pending": "input molecules not done yet (budget spent, stopped)",
    "complete": "true when no input molecule is pending or failed",
    "stopped": "null, or why the run stopped early: budget_exhausted | fatal_error | interrupted",
    "exemplars": "number of in-context exemplars available (step 1)",
    "mean_turns": "mean question-answer pairs per generated conversation",
    "this_run": "{generated, filtered, failed, requests, prompt_tokens, completion_tokens, seconds} of this run only",
    "settings": "{max_turns, num_exemplars, seed_exemplars, seed, concurrency, max_requests, limit}",
}
"""The keys of `<output>.summary.json` and what they mean. Keys are only ever added, never renamed."""

FILTER_REASONS = (
    "truncated_output",
    "unparsable",
    "broken_turns",
    "empty_conversation",
    "unanswered_question",
    "empty_turn",
    "duplicate_turn",
    "too_many_turns",
)
"""Why step 3 drops a conversation (`truncated_output`: the teacher stopped for another reason than the end of its
answer, e.g. `finish_reason: "length"`)."""

_FINISHED = frozenset({None, "stop", "eos", "end_turn", "stop_sequence"})
_RAW_OUTPUT_LIMIT = 4000


# ---------------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------------

_COLUMN_CANDIDATES = {
    "smiles": ("smiles", "canonical_smiles", "isomeric_smiles", "isosmiles"),
    "description": ("description", "caption", "text", "desc"),
    "iupac": ("iupac", "iupac_name", "iupacname"),
    "id": ("id", "cid", "chebi_id", "molecule_id", "mol_id"),
}


@dataclass
class Molecule:
    """One molecule with its contexts: `id` (stable key), `smiles` (as given), `description`, optional `iupac`."""

    id: str
    smiles: str
    description: str
    iupac: str | None = None


@dataclass
class ColumnNames:
    """Input column names; None: detect (case-insensitively) among the usual names, e.g. `CID`/`id`, `SMILES`."""

    smiles: str | None = None
    description: str | None = None
    iupac: str | None = None
    id: str | None = None


@dataclass
class MoleculeInput:
    """The valid molecules of an input, and the rows skipped (`{reason: count}`)."""

    molecules: list[Molecule]
    skipped: Counter = field(default_factory=Counter)
    source: str = ""
    rows: int = 0
    limit: int | None = None


def _resolve_column(role: str, wanted: str | None, available: list[str], required: bool) -> str | None:
    if wanted is not None:
        if wanted not in available:
            raise ValueError(f"Input has no {role} column {wanted!r}; its columns are {available}.")
        return wanted
    lowered = {name.lower(): name for name in available}
    for candidate in _COLUMN_CANDIDATES[role]:
        if candidate in lowered:
            return lowered[candidate]
    if required:
        option = f"--{role}-column"
        raise ValueError(
            f"Input has no {role} column (tried {_COLUMN_CANDIDATES[role]}; name it with {option}); "
            f"its columns are {available}."
        )
    return None


def detect_format(path: Path) -> str:
    """`tsv` (.tsv, .txt: ChEBI-20), `csv`, `jsonl` (.jsonl, .json) or `dataset` (a folder from `save_to_disk`)."""
    if path.is_dir():
        return "dataset"
    suffix = path.suffix.lower()
    formats = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
    if suffix not in formats:
        raise ValueError(f"Cannot tell the format of {path} from its suffix; pass --format tsv|csv|jsonl|dataset.")
    return formats[suffix]


def _table_rows(path: Path, delimiter: str) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
        if not reader.fieldnames:
            raise ValueError(f"{path} is empty or has no header row.")
        yield from reader


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any] | None]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield row if isinstance(row, dict) else None


def _dataset_rows(dataset) -> Iterator[dict[str, Any]]:
    """Rows of a `datasets.Dataset`; in the conversation schema, the description is the last assistant message."""
    conversation = "messages" in dataset.column_names
    for row in dataset:
        if conversation:
            answers = [m["content"] for m in row["messages"] or [] if m.get("role") == "assistant"]
            row = {**row, "description": answers[-1] if answers else ""}
        yield row


def _raw_rows(source, input_format: str) -> tuple[Iterable[dict[str, Any] | None], str]:
    import datasets

    if isinstance(source, datasets.Dataset):
        return _dataset_rows(source), f"datasets.Dataset({source.num_rows} rows)"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Input not found: {path}")
    input_format = detect_format(path) if input_format == "auto" else input_format
    if input_format in ("tsv", "chebi20"):
        return _table_rows(path, "\t"), str(path)
    if input_format == "csv":
        return _table_rows(path, ","), str(path)
    if input_format == "jsonl":
        return _jsonl_rows(path), str(path)
    if input_format == "dataset":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path} holds splits {list(loaded)}; point at one split's folder.")
        return _dataset_rows(loaded), str(path)
    raise ValueError(f"Unknown input format {input_format!r}: use auto, tsv, chebi20, csv, jsonl or dataset.")


def inchikey(smiles: str) -> str:
    """The InChIKey of a valid SMILES (the molecule id when the source has none)."""
    from rdkit import Chem, rdBase

    from llamo.featurization_llamo import parse_smiles

    with rdBase.BlockLogs():
        key = Chem.MolToInchiKey(parse_smiles(smiles))
    return key or f"smiles:{smiles}"


def read_molecules(
    source,
    input_format: str = "auto",
    columns: ColumnNames | None = None,
    id_prefix: str = "",
    limit: int | None = None,
) -> MoleculeInput:
    """Read molecules with contexts from a ChEBI-20 style TSV, a CSV, a JSONL, a saved dataset folder, or a
    `datasets.Dataset` (a conversation-schema one gives its last assistant message as the description).

    Rows with no or unparsable SMILES (RDKit), no description, a repeated id, or unreadable JSON are skipped and
    counted in `skipped`; a missing column raises `ValueError` naming it. `limit` stops after that many molecules.
    """
    from llamo.featurization_llamo import parse_smiles

    columns = columns or ColumnNames()
    rows, described = _raw_rows(source, input_format)
    result = MoleculeInput(molecules=[], source=described, limit=limit)
    resolved = None
    seen: set[str] = set()
    for row in rows:
        if limit is not None and len(result.molecules) >= limit:
            break
        result.rows += 1
        if row is None:
            result.skipped["unreadable_row"] += 1
            continue
        if resolved is None:
            available = list(row)
            resolved = {
                "smiles": _resolve_column("smiles", columns.smiles, available, required=True),
                "description": _resolve_column("description", columns.description, available, required=True),
                "iupac": _resolve_column("iupac", columns.iupac, available, required=False),
                "id": _resolve_column("id", columns.id, available, required=False),
            }
        smiles = str(row.get(resolved["smiles"]) or "").strip()
        if not smiles:
            result.skipped["missing_smiles"] += 1
            continue
        try:
            parse_smiles(smiles)
        except ValueError:
            result.skipped["invalid_smiles"] += 1
            continue
        description = str(row.get(resolved["description"]) or "").strip()
        if not description:
            result.skipped["missing_description"] += 1
            continue
        iupac = str(row.get(resolved["iupac"]) or "").strip() if resolved["iupac"] else ""
        raw_id = row.get(resolved["id"]) if resolved["id"] else None
        molecule_id = f"{id_prefix}{raw_id}".strip() if raw_id not in (None, "") else inchikey(smiles)
        if molecule_id in seen:
            result.skipped["duplicate_id"] += 1
            continue
        seen.add(molecule_id)
        result.molecules.append(Molecule(molecule_id, smiles, description, iupac or None))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Append-only JSONL files
# ---------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file written by this module.

    A half-written last line (no newline, not valid JSON: the job was killed while writing it) is ignored, and with
    `repair` cut from the file. Any other invalid line raises `ValueError` naming it: we never drop user data.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" unless the last line is unfinished
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number} is not valid JSON ({error}); fix or remove that line.") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number} is not a JSON object; fix or remove that line.")
        records.append(record)
    if tail.strip():
        try:
            record = json.loads(tail)
        except ValueError:
            record = None
        if isinstance(record, dict):  # complete but for its newline
            records.append(record)
            if repair:
                with open(path, "ab") as handle:
                    handle.write(b"\n")
        elif repair:
            logger.warning("%s: removing a half-written last line (%d bytes); it will be redone.", path, len(tail))
            os.truncate(path, len(data) - len(tail))
        else:
            logger.warning("%s: ignoring a half-written last line (%d bytes).", path, len(tail))
    return records


class _AppendOnlyJsonl:
    """Appends one JSON object per line: a single `write` of the whole line, then `fsync`."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def append(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_json_atomically(path: Path, obj: Any) -> None:
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # left only when the write failed (e.g. a full disk)


def _identity_text(identity: dict[str, Any]) -> str:
    return ", ".join(f"{key}={identity.get(key)!r}" for key in ("teacher", "model", "prompt_version"))


class ConversationStore:
    """The output JSONL and its sidecars; knows which molecules are done (generated or filtered) or failed."""

    def __init__(self, output: str | Path):
        self.path = Path(output)
        self.status_path = self.path.with_name(self.path.name + ".status.jsonl")
        self.exemplars_path = self.path.with_name(self.path.name + ".exemplars.json")
        self.summary_path = self.path.with_name(self.path.name + ".summary.json")
        self.identity: dict[str, str] = {}
        self.allow_mixed = False
        self.records: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self._output = _AppendOnlyJsonl(self.path)
        self._status = _AppendOnlyJsonl(self.status_path)

    def files(self) -> list[Path]:
        return [self.path, self.status_path, self.exemplars_path, self.summary_path]

    def remove(self) -> None:
        """Delete the output and its sidecars (`overwrite`)."""
        for path in self.files():
            path.unlink(missing_ok=True)

    def open(self, identity: dict[str, str], allow_mixed: bool = False, overwrite: bool = False) -> None:
        """Start over (`overwrite`) or load what is done, repairing half-written last lines; refuse files made by
        another teacher, model or prompt version (`identity`) unless `allow_mixed`."""
        self.identity, self.allow_mixed = identity, allow_mixed
        if overwrite:
            self.remove()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for record in read_jsonl(self.path, repair=True):
            if not isinstance(record.get("id"), str) or not isinstance(record.get("messages"), list):
                raise ValueError(f"{self.path} holds a line that is not a conversation record: {str(record)[:200]}")
            self._check_identity(record_metadata_identity(record))
            self.records[record["id"]] = record
        for status in read_jsonl(self.status_path, repair=True):
            if not isinstance(status.get("id"), str) or status.get("status") not in ("filtered", "failed"):
                raise ValueError(f"{self.status_path} holds a line that is not a status: {str(status)[:200]}")
            self._check_identity(status)
            self.statuses[status["id"]] = status

    def _check_identity(self, found: dict[str, Any]) -> None:
        if self.allow_mixed or all(found.get(key) == value for key, value in self.identity.items()):
            return
        raise ValueError(
            f"{self.path} already holds data made with {_identity_text(found)}, but this run uses "
            f"{_identity_text(self.identity)}. Choose another output, pass --overwrite to start over, or "
            "--allow-mixed to add to it anyway."
        )

    def is_final(self, molecule_id: str) -> bool:
        """Generated, or filtered: a rerun does not ask the teacher again."""
        return molecule_id in self.records or self.statuses.get(molecule_id, {}).get("status") == "filtered"

    def add_record(self, record: dict[str, Any]) -> None:
        self._output.append(record)
        self.records[record["id"]] = record

    def add_status(self, status: dict[str, Any]) -> None:
        self._status.append(status)
        self.statuses[status["id"]] = status

    def close(self) -> None:
        self._output.close()
        self._status.close()

    def load_exemplars(self, path: Path | None = None) -> list[Exemplar] | None:
        """Exemplars saved by an earlier run (or given in `path`), None when there are none yet."""
        path = path or self.exemplars_path
        if not path.exists():
            if path != self.exemplars_path:
                raise FileNotFoundError(f"Exemplars file not found: {path}")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if path == self.exemplars_path:
                self._check_identity(data)
            return [Exemplar.from_dict(item) for item in data["exemplars"]]
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not an exemplars file ({{'exemplars': [...]}}): {error!r}") from None

    def save_exemplars(self, exemplars: list[Exemplar]) -> None:
        data = {**self.identity, "exemplars": [exemplar.to_dict() for exemplar in exemplars]}
        _write_json_atomically(self.exemplars_path, data)


def record_metadata_identity(record: dict[str, Any]) -> dict[str, Any]:
    """{teacher, model, prompt_version} from a record's metadata JSON string."""
    raw = record.get("metadata") or "{}"
    metadata = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return {key: metadata.get(key) for key in ("teacher", "model", "prompt_version")}


# ---------------------------------------------------------------------------------------------------------------------
# One molecule
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataGenerationConfig:
    """Options of `generate_conversations` (named apart from transformers' `GenerationConfig`).

    `max_turns`: most question-answer pairs a conversation may have (step 3; also asked of the teacher).
    `num_exemplars`: exemplars per request (step 2); 0 skips step 1. `seed_exemplars`: how many step 1 makes.
    `exemplars_file`: exemplars to use instead of step 1 (the `<output>.exemplars.json` format).
    `concurrency`: requests in flight. `seed`: seeds exemplar choice and sampling (each molecule gets its own seed).
    `allow_mixed`: append to an output made with another teacher/model/prompt. `overwrite`: start the output over.
    """

    max_turns: int = 8
    num_exemplars: int = 2
    seed_exemplars: int = 3
    exemplars_file: str | None = None
    concurrency: int = 4
    seed: int = 0
    allow_mixed: bool = False
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self):
        for name in ("max_turns", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_exemplars", "seed_exemplars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Outcome:
    """What happened to one molecule: `status` is `generated` (with `record`), `filtered` or `failed` (with
    `reason` and `detail`)."""

    molecule: Molecule
    status: str
    record: dict[str, Any] | None = None
    reason: str | None = None
    detail: str | None = None
    raw_output: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


def molecule_seed(seed: int, molecule_id: str) -> int:
    """A 32-bit seed for one molecule, stable across runs and independent of the input order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{molecule_id}".encode()).digest()[:4], "big")


def pick_exemplars(exemplars: list[Exemplar], molecule_id: str, count: int, seed: int) -> list[Exemplar]:
    """`count` exemplars (none about the molecule itself), drawn with `seed`."""
    candidates = [exemplar for exemplar in exemplars if exemplar.id != molecule_id]
    return random.Random(seed).sample(candidates, min(count, len(candidates)))


def judge_reply(reply: TeacherReply, max_turns: int) -> tuple[list[dict[str, str]] | None, str | None, str | None]:
    """Step 3 on a teacher reply: (messages, None, None) to keep, or (None, reason, detail) to drop."""
    if reply.finish_reason not in _FINISHED:
        return None, "truncated_output", f"finish_reason={reply.finish_reason!r}"
    try:
        messages = parse_conversation(reply.text)
    except ConversationFormatError as error:
        return None, error.reason, error.detail
    problem = conversation_problem(messages, max_turns)
    if problem is not None:
        return None, problem, f"{len(messages)} messages"
    return messages, None, None


def _identity(teacher) -> dict[str, str]:
    return {"teacher": teacher.name, "model": teacher.model, "prompt_version": teacher.prompt_version}


def _grounded_outcome(teacher: GroundedTeacher, molecule: Molecule, config: DataGenerationConfig) -> Outcome:
    from llamo.featurization_llamo import parse_smiles

    seed = molecule_seed(config.seed, molecule.id)
    conversation = teacher.converse(
        parse_smiles(molecule.smiles), molecule.description, molecule.iupac, seed, config.max_turns
    )
    problem = conversation_problem(conversation.messages, config.max_turns)
    if problem is not None:
        return Outcome(molecule, "filtered", reason=problem, detail="grounded conversation")
    metadata = {
        **_identity(teacher),
        **teacher.metadata(),
        "seed": seed,
        "context": {"description": molecule.description, "iupac": molecule.iupac},
        "provenance": conversation.provenance,
    }
    record = make_record(
        molecule.id, molecule.smiles, conversation.messages, "conversation", f"generated:{teacher.name}", metadata
    )
    return Outcome(molecule, "generated", record=record)


def _teacher_outcome(teacher, molecule: Molecule, exemplars: list[Exemplar], config: DataGenerationConfig) -> Outcome:
    seed = molecule_seed(config.seed, molecule.id)
    chosen = pick_exemplars(exemplars, molecule.id, config.num_exemplars, seed)
    prompt = generation_messages(molecule.smiles, molecule.description, molecule.iupac, chosen, config.max_turns)
    try:
        reply = teacher.complete(prompt, seed=seed)
    except TeacherFatalError:
        raise
    except TeacherError as error:
        return Outcome(molecule, "failed", reason=error.reason, detail=error.detail)
    messages, reason, detail = judge_reply(reply, config.max_turns)
    if messages is None:
        raw = reply.text[:_RAW_OUTPUT_LIMIT]
        return Outcome(molecule, "filtered", reason=reason, detail=detail, raw_output=raw, usage=reply.usage)
    metadata = {
        **_identity(teacher),
        "seed": seed,
        "finish_reason": reply.finish_reason,
        "exemplars": [exemplar.id for exemplar in chosen],
        "usage": reply.usage,
        "context": {"description": molecule.description, "iupac": molecule.iupac},
    }
    record = make_record(molecule.id, molecule.smiles, messages, "conversation", f"generated:{teacher.name}", metadata)
    return Outcome(molecule, "generated", record=record, usage=reply.usage)


def generate_one(teacher, molecule: Molecule, exemplars: list[Exemplar], config: DataGenerationConfig) -> Outcome:
    """Steps 2 and 3 for one molecule (the grounded teacher writes the conversation itself)."""
    if isinstance(teacher, GroundedTeacher):
        return _grounded_outcome(teacher, molecule, config)
    return _teacher_outcome(teacher, molecule, exemplars, config)


# ---------------------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _RunState:
    counts: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    stopped: str | None = None
    fatal: TeacherFatalError | None = None
    requests: int = 0


def _seed_exemplars(teacher, molecules: list[Molecule], config, executor, state: _RunState) -> tuple[list, bool]:
    """Step 1: one seed conversation for each of `config.seed_exemplars` molecules drawn with `config.seed`; the
    ones that pass the filter become exemplars. Returns (exemplars, whether every seed request got an answer)."""
    chosen = random.Random(config.seed).sample(molecules, min(config.seed_exemplars, len(molecules)))

    def seed_one(molecule: Molecule) -> tuple[Exemplar | None, dict[str, int]]:
        prompt = seed_messages(molecule.smiles, molecule.description, molecule.iupac, config.max_turns)
        reply = teacher.complete(prompt, seed=molecule_seed(config.seed, f"exemplar:{molecule.id}"))
        messages, reason, _ = judge_reply(reply, config.max_turns)
        if messages is None:
            logger.warning("Seed exemplar for %s dropped: %s", molecule.id, reason)
            return None, reply.usage
        exemplar = Exemplar(molecule.id, molecule.smiles, molecule.description, molecule.iupac, messages)
        return exemplar, reply.usage

    futures = [executor.submit(seed_one, molecule) for molecule in chosen]
    exemplars, answered = [], True
    for future in futures:
        try:
            exemplar, usage = future.result()
        except TeacherFatalError as error:
            state.stopped, state.fatal, answered = "fatal_error", error, False
            _stop(teacher)
            continue
        except TeacherError as error:
            logger.warning("Seed exemplar request failed: %s", error)
            answered = False
            continue
        except GenerationStopped as error:
            is_budget = isinstance(error, BudgetExhausted)
            state.stopped = state.stopped or ("budget_exhausted" if is_budget else "interrupted")
            answered = False
            continue
        state.tokens.update(usage)
        if exemplar is not None:
            exemplars.append(exemplar)
    return exemplars, answered


def _stop(teacher) -> None:
    event = getattr(teacher, "stop_event", None)
    if event is not None:
        event.set()


def _record(store: ConversationStore, outcome: Outcome, state: _RunState) -> None:
    for key, value in outcome.usage.items():
        state.tokens[key] += value
    state.counts[outcome.status] += 1
    if outcome.status == "generated":
        store.add_record(outcome.record)
        return
    status = {"id": outcome.molecule.id, "status": outcome.status, "reason": outcome.reason, "detail": outcome.detail}
    if outcome.raw_output is not None:
        status["raw_output"] = outcome.raw_output
    store.add_status({**status, **store.identity})
    if outcome.status == "failed":
        logger.warning("%s failed: %s (%s)", outcome.molecule.id, outcome.reason, outcome.detail)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="mol", desc="generate-data", file=sys.stderr)


def _run_molecules(teacher, todo, exemplars, config, executor, workers, store, state, progress) -> None:
    """Step 2 + 3 over `todo`, at most 2 x workers submitted at a time, writing each outcome as it arrives."""
    queue = iter(todo)
    in_flight: dict[Future, Molecule] = {}

    def fill() -> None:
        while state.stopped is None and len(in_flight) < 2 * workers:
            molecule = next(queue, None)
            if molecule is None:
                return
            in_flight[executor.submit(generate_one, teacher, molecule, exemplars, config)] = molecule

    fill()
    while in_flight:
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in done:
            in_flight.pop(future)
            try:
                outcome = future.result()
            except BudgetExhausted:
                state.stopped = state.stopped or "budget_exhausted"
                continue
            except GenerationStopped:
                state.stopped = state.stopped or "interrupted"
                continue
            except TeacherFatalError as error:
                state.stopped, state.fatal = "fatal_error", error
                _stop(teacher)
                continue
            _record(store, outcome, state)
            progress.update(1)
        fill()


def build_summary(
    store: ConversationStore,
    molecules: MoleculeInput,
    config: DataGenerationConfig,
    state: _RunState,
    exemplars: int,
    seconds: float,
    budget: RequestBudget | None,
) -> dict[str, Any]:
    """The summary of an output after a run (see `SUMMARY_KEYS`)."""
    undone = {sid: s for sid, s in store.statuses.items() if sid not in store.records}
    filtered = Counter(s["reason"] for s in undone.values() if s["status"] == "filtered")
    failed = Counter(s["reason"] for s in undone.values() if s["status"] == "failed")
    pending = sum(1 for m in molecules.molecules if m.id not in store.records and m.id not in undone)
    failed_in_input = sum(1 for m in molecules.molecules if undone.get(m.id, {}).get("status") == "failed")
    turns = [len(record["messages"]) // 2 for record in store.records.values()]
    return {
        "summary_version": SUMMARY_VERSION,
        "output": str(store.path),
        "input": molecules.source,
        **store.identity,
        "molecules": len(molecules.molecules),
        "input_rows": molecules.rows,
        "skipped_rows": sum(molecules.skipped.values()),
        "skipped_by_reason": dict(sorted(molecules.skipped.items())),
        "generated": len(store.records),
        "generated_by_source": dict(sorted(Counter(r["source"] for r in store.records.values()).items())),
        "filtered": sum(filtered.values()),
        "filtered_by_reason": dict(sorted(filtered.items())),
        "failed": sum(failed.values()),
        "failed_by_reason": dict(sorted(failed.items())),
        "pending": pending,
        "complete": pending == 0 and failed_in_input == 0,
        "stopped": state.stopped,
        "exemplars": exemplars,
        "mean_turns": round(sum(turns) / len(turns), 3) if turns else 0.0,
        "this_run": {
            "generated": state.counts["generated"],
            "filtered": state.counts["filtered"],
            "failed": state.counts["failed"],
            "requests": state.requests,
            "prompt_tokens": state.tokens["prompt_tokens"],
            "completion_tokens": state.tokens["completion_tokens"],
            "seconds": round(seconds, 3),
        },
        "settings": {
            "max_turns": config.max_turns,
            "num_exemplars": config.num_exemplars,
            "seed_exemplars": config.seed_exemplars,
            "seed": config.seed,
            "concurrency": config.concurrency,
            "max_requests": budget.max_requests if budget is not None else None,
            "limit": molecules.limit,
        },
    }


def generate_conversations(
    molecules: MoleculeInput | list[Molecule],
    teacher,
    output: str | Path,
    config: DataGenerationConfig | None = None,
) -> dict[str, Any]:
    """Run the pipeline over `molecules` with `teacher`, appending to `output`; returns the summary (also written to
    `<output>.summary.json`).

    Resumes: molecules already generated or filtered in `output` are skipped, failed ones are retried. Stops cleanly
    when the teacher's request budget is spent (`summary["stopped"] == "budget_exhausted"`). Raises
    `TeacherFatalError` (after writing the summary) when the teacher refuses every request, e.g. a wrong API key.
    """
    config = config or DataGenerationConfig()
    if not isinstance(molecules, MoleculeInput):
        molecules = MoleculeInput(molecules=list(molecules), source="molecules", rows=len(molecules))
    store = ConversationStore(output)

    def kept() -> str:
        return (
            f"The {len(store.records)} conversations in {store.path} are kept (a half-written last line is cut on "
            "rerun): the rerun continues with the other molecules."
        )

    with disk_full_guard(store.path.parent, f"conversations to {store.path.name}", kept=kept):
        return _generate(molecules, teacher, store, config)


def _generate(
    molecules: MoleculeInput, teacher, store: ConversationStore, config: DataGenerationConfig
) -> dict[str, Any]:
    store.open(_identity(teacher), allow_mixed=config.allow_mixed, overwrite=config.overwrite)
    started = time.monotonic()
    budget = getattr(teacher, "budget", None)
    used_before = budget.used if budget is not None else 0
    state = _RunState()
    workers = min(config.concurrency, teacher.max_concurrency or config.concurrency)
    exemplars: list[Exemplar] = []
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llamo-teacher")
    try:
        if not isinstance(teacher, GroundedTeacher) and config.num_exemplars > 0:
            given = Path(config.exemplars_file) if config.exemplars_file else None
            loaded = store.load_exemplars(given)
            if loaded is None:
                loaded, answered = _seed_exemplars(teacher, molecules.molecules, config, executor, state)
                if answered:  # saved once complete, so that every later run uses the same exemplars
                    store.save_exemplars(loaded)
                elif state.stopped is None:
                    logger.warning(
                        "Some seed requests failed: this run uses %d exemplars, the next seeds again.", len(loaded)
                    )
                if not loaded and state.stopped is None:
                    logger.warning("No seed exemplar is usable: conversations are generated zero-shot.")
            exemplars = loaded
        todo = [molecule for molecule in molecules.molecules if not store.is_final(molecule.id)]
        done = len(molecules.molecules) - len(todo)
        with _progress(len(molecules.molecules), done, config.show_progress) as progress:
            if state.stopped is None:
                _run_molecules(teacher, todo, exemplars, config, executor, workers, store, state, progress)
    except KeyboardInterrupt:
        state.stopped = "interrupted"
        _stop(teacher)
        raise
    finally:
        executor.shutdown(wait=state.stopped != "interrupted", cancel_futures=True)
        store.close()
        state.requests = (budget.used - used_before) if budget is not None else 0
        summary = build_summary(store, molecules, config, state, len(exemplars), time.monotonic() - started, budget)
        _write_json_atomically(store.summary_path, summary)
    if state.stopped == "budget_exhausted":
        logger.warning(
            "Request budget of %s spent: %d molecules left; rerun the same command with a larger budget to continue.",
            summary["settings"]["max_requests"],
            summary["pending"],
        )
    if state.fatal is not None:
        raise state.fatal
    return summary


def read_summary(output: str | Path) -> dict[str, Any] | None:
    """The summary an earlier run wrote beside `output` (`<output>.summary.json`), None when there is none yet or it
    cannot be read (the next run writes it again)."""
    path = ConversationStore(output).summary_path
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


_INPUT_SETTINGS = ("format", "id_prefix", "limit")


def generate_from_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """One `generate_conversations` run described by a dict, as a training recipe's `conversations` step gives it.

    Keys: `input` and `output` (required); `teacher` (default `grounded`) and the options of
    `teachers.build_teacher` (`model`, `max_requests`, `temperature`, ...); the input's `format`, `id_prefix` and
    `limit` (see `read_molecules`); any `DataGenerationConfig` field (`max_turns`, `seed`, ...; no progress bar unless
    `show_progress`). An unknown key raises `ValueError`. Returns the summary.
    """
    from dataclasses import fields

    from .teachers import build_teacher

    options = {key: value for key, value in settings.items() if value is not None}
    missing = [key for key in ("input", "output") if options.get(key) in (None, "")]
    if missing:
        raise ValueError(f"The conversations settings need {' and '.join(missing)}.")
    source, output, kind = options.pop("input"), options.pop("output"), options.pop("teacher", "grounded")
    reading = {key: options.pop(key) for key in _INPUT_SETTINGS if key in options}
    config_fields = {item.name for item in fields(DataGenerationConfig)}
    config = DataGenerationConfig(
        **{"show_progress": False, **{k: options.pop(k) for k in list(options) if k in config_fields}}
    )
    teacher_options = set(inspect.signature(build_teacher).parameters) - {"kind", "max_turns"}
    unknown = sorted(set(options) - teacher_options)
    if unknown:
        raise ValueError(f"Unknown conversations settings {unknown}: see llamo generate-data --help.")
    teacher = build_teacher(kind, max_turns=config.max_turns, **options)
    molecules = read_molecules(
        source, reading.get("format", "auto"), id_prefix=reading.get("id_prefix", ""), limit=reading.get("limit")
    )
    return generate_conversations(molecules, teacher, output, config)


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable account of a summary."""

    def reasons(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    lines = [
        f"{summary['generated']} generated, {summary['filtered']} filtered{reasons(summary['filtered_by_reason'])}, "
        f"{summary['failed']} failed{reasons(summary['failed_by_reason'])}, {summary['pending']} pending, "
        f"{summary['skipped_rows']} input rows skipped{reasons(summary['skipped_by_reason'])}.",
        f"Teacher {summary['teacher']} ({summary['model']}), prompt version {summary['prompt_version']}; "
        f"{summary['this_run']['requests']} requests this run. Output: {summary['output']}",
    ]
    if summary["stopped"] == "budget_exhausted":
        lines.append(
            f"Stopped: the request budget ({summary['settings']['max_requests']}) is spent; rerun the same command "
            f"with a larger --max-requests to do the {summary['pending']} pending molecules."
        )
    elif summary["failed"]:
        lines.append("Rerun the same command to retry the failed molecules.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_generated_conversations(path: str | Path | list[str | Path]):
    """The generated records of one or more output JSONL files as a `datasets.Dataset` in the conversation schema
    (`CONVERSATION_FEATURES`). Each record's turn structure is checked; a half-written last line is ignored."""
    import datasets

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    rows = []
    for one in paths:
        one = Path(one)
        if not one.exists():
            raise FileNotFoundError(f"Generated conversations not found: {one}")
        for number, record in enumerate(read_jsonl(one), start=1):
            try:
                metadata = record["metadata"]
                metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
                rows.append(
                    make_record(
                        record["id"], record["smiles"], record["messages"], record["task"], record["source"], metadata
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{one}: record {number} is not a conversation record: {error}") from None
    return datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)


__all__ = [
    "FILTER_REASONS",
    "SUMMARY_KEYS",
    "ColumnNames",
    "ConversationStore",
    "DataGenerationConfig",
    "Molecule",
    "MoleculeInput",
    "Outcome",
    "build_summary",
    "detect_format",
    "format_summary",
    "generate_conversations",
    "generate_from_settings",
    "generate_one",
    "judge_reply",
    "load_generated_conversations",
    "molecule_seed",
    "pick_exemplars",
    "read_jsonl",
    "read_molecules",
    "read_summary",
]
