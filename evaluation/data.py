"""Evaluation inputs: rows of the conversation schema (`llamo.processing.schema`) from any source, checked and turned
into prompt + reference pairs; fingerprints of the rows, the model and the index, which identify a run.

The reference answer of a row is its last assistant message; the prompt is the conversation before it. Rows that
cannot be evaluated (no final assistant answer, malformed turns, unparsable SMILES, a property row without a numeric
target, a repeated id) are skipped and counted with their reason, never fatal."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamo.processing.schema import make_record, record_metadata, to_chat_messages

from .properties import PropertyTarget, property_target

if TYPE_CHECKING:
    from .config import EvaluationConfig

PROPERTY_TASK = "property"


@dataclass(frozen=True)
class DatasetInfo:
    """Where evaluation rows came from, as written into the results."""

    name: str
    source: str
    kind: str
    split: str | None = None
    num_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "kind": self.kind, "split": self.split, "rows": self.num_rows}


@dataclass(frozen=True)
class EvalExample:
    """One row to evaluate: its prompt (the conversation before the last assistant message) and that reference."""

    index: int
    id: str
    task: str
    smiles: str
    prompt: tuple[dict[str, str], ...]
    reference: str
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    target: PropertyTarget | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the row within a run: ids are unique per source, not across tasks."""
        return (self.task, self.id)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The prompt for `LlamoProcessor.apply_chat_template`, the molecule as a content block."""
        return to_chat_messages({"smiles": self.smiles, "messages": list(self.prompt)})

    def approximate_length(self) -> int:
        return len(self.smiles) + sum(len(message["content"]) for message in self.prompt)


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of the evaluation, and why; `target` is set for a property question with a target that no model
    can be asked (its SMILES is unparsable): it still counts in the valid-answer ratio, as unanswered."""

    index: int
    id: str | None
    task: str | None
    reason: str
    target: PropertyTarget | None = None


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is no text
        if text.lstrip().startswith("["):
            return json.loads(text)  # a list
        lines = text.split("\n")  # not `splitlines`: U+2028 (a line break to it) may stand inside a JSON string
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ValueError(f"line {line} is not UTF-8 text") from None
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise ValueError(f"not a JSON list ({getattr(error, 'msg', error)})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (ValueError, RecursionError) as error:
            raise ValueError(f"line {number}: not valid JSON ({getattr(error, 'msg', error)})") from None
    return rows


def load_rows(source: Any, split: str | None = None) -> tuple[list[dict[str, Any]], DatasetInfo]:
    """Read evaluation rows from a `datasets.Dataset` (or `DatasetDict`), a list of row dicts, a JSONL / JSON / Parquet
    file, a `save_to_disk` folder, or a Hub dataset id (`split` defaults to `test` where there are splits). Raises
    `FileNotFoundError` for a missing path that is no Hub id, `ValueError` for an unreadable file or a missing split."""
    import datasets

    if isinstance(source, list):
        return source, DatasetInfo("in-memory", "in-memory", "in-memory", split, len(source))
    path = None if isinstance(source, (datasets.Dataset, datasets.DatasetDict)) else Path(source)
    if path is None:
        loaded, kind = source, "in-memory"
    elif path.is_file():
        try:
            loaded = datasets.Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else _read_json_rows(path)
        except ValueError as error:  # not UTF-8, not JSON (lines), not Parquet
            raise ValueError(f"{path}: {str(error)[:300]}.") from None
        name, kind = path.stem, "file"
    elif path.is_dir():
        loaded, name, kind = datasets.load_from_disk(str(path)), path.name, "disk"
    elif str(source).count("/") == 1 and not str(source).startswith((".", "/", "~")) and not path.suffix:  # a Hub id
        split = split or "test"
        try:
            loaded = list(datasets.load_dataset(str(source), split=split))
        except Exception as error:  # offline, unknown id, missing split: the Hub's own message says which
            raise FileNotFoundError(f"Dataset {source} could not be loaded from the Hub: {error}") from error
        name, kind = str(source), "hub"
    else:
        raise FileNotFoundError(f"Dataset not found: {source} (a JSONL/JSON/Parquet file, a folder, or a Hub id).")
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "test"
        if split not in loaded:
            where = "the dataset" if path is None else str(path)
            raise ValueError(f"{where} has no split {split!r}; its splits: {', '.join(loaded)} (choose one).")
        loaded = loaded[split]
    if path is None:
        name, split = loaded.info.dataset_name or "in-memory", split or (str(loaded.split or "") or None)
    rows = list(loaded)
    origin = name if kind in ("in-memory", "hub") else str(path.resolve())
    return rows, DatasetInfo(name, origin, kind, split, len(rows))


def _task_of(row: Any) -> str | None:
    """The row's task: a non-empty printable string (None for any other value, lone surrogates included)."""
    task = row.get("task") if isinstance(row, dict) else None
    return task if isinstance(task, str) and task.isprintable() and task else None


def check_row(row: Any, index: int) -> tuple[EvalExample | None, str | None, PropertyTarget | None]:
    """The row as an example, or the reason it cannot be evaluated (with its property target, if it has one)."""
    from llamo import parse_smiles

    if not isinstance(row, dict):
        return None, "not a record", None
    record_id, task, smiles, messages = row.get("id"), _task_of(row), row.get("smiles"), row.get("messages")
    if record_id is None or str(record_id) == "":
        return None, "missing id", None
    if task is None:
        return None, "missing task", None
    try:
        make_record(str(record_id), str(smiles), list(messages or []), task, "")
    except (TypeError, ValueError, AttributeError) as error:
        return None, f"malformed conversation: {error}", None
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        return None, "no assistant answer to compare with", None
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
    reference = messages[-1]["content"]
    try:
        metadata = record_metadata(row)
    except (ValueError, TypeError, RecursionError):
        metadata = None
    is_property = task == PROPERTY_TASK and isinstance(metadata, dict)
    target = property_target(metadata, reference, prompt[-1]["content"]) if is_property else None
    try:
        parse_smiles(smiles)
    except ValueError:
        return None, "unparsable SMILES", target
    if not isinstance(metadata, dict):
        return None, "metadata is not a JSON object", None
    if task == PROPERTY_TASK and target is None:
        return None, "no numeric target (metadata value or number in the reference)", None
    return EvalExample(index, str(record_id), task, smiles, prompt, reference, metadata, target), None, None


def select_examples(
    rows: Sequence[dict[str, Any]], tasks: Iterable[str] | None = None, max_rows: int | None = None
) -> tuple[list[EvalExample], list[SkippedRow]]:
    """The rows of the wanted `tasks` (all when None), the first `max_rows` of them, as examples; the others that cannot
    be evaluated as `SkippedRow`s. A requested task absent from the data is a `ValueError`."""
    present = {_task_of(row) for row in rows} - {None}
    wanted = set(tasks) if tasks else None
    if wanted is not None and wanted - present:
        shown = ", ".join(sorted(str(task)[:40] for task in present)[:12])
        raise ValueError(f"Task(s) {', '.join(sorted(wanted - present))} not in the data; tasks present: {shown}.")
    examples, skipped, seen = [], [], set()
    chosen = [(i, row) for i, row in enumerate(rows) if wanted is None or _task_of(row) in wanted]
    for index, row in chosen[:max_rows]:
        example, reason, target = check_row(row, index)
        row_id, task = row.get("id") if isinstance(row, dict) else None, _task_of(row)
        key = (task, str(row_id))
        if example is not None or target is not None:
            if key in seen:
                example, reason, target = None, "duplicate id", None
            seen.add(key)
        if example is None:
            skipped.append(SkippedRow(index, None if row_id is None else str(row_id), task, str(reason), target))
        else:
            examples.append(example)
    return examples, skipped


def rows_fingerprint(rows: Sequence[dict[str, Any]], tasks: Iterable[str] | None = None) -> str:
    """A content hash of the rows of `tasks`: whether two runs evaluate the same data, wherever it was read from."""
    wanted = set(tasks) if tasks else None
    digest = hashlib.sha256()
    for row in rows:
        if not isinstance(row, dict) or (wanted is not None and _task_of(row) not in wanted):
            continue
        fields = [row.get(name) for name in ("id", "task", "smiles", "messages", "metadata")]
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def model_fingerprint(folder: str | Path) -> str | None:
    """A saved model's cheap identity: its configs and its weights' names, sizes and mtimes (retraining changes it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "generation_config.json", "processor_config.json", "chat_template.jinja"):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def checked_index(path: str, examples: Sequence[EvalExample]):
    """The evaluation's molecule index and its fingerprint; refused when it holds an evaluated molecule, or answers of
    a task that no evaluated row asks for."""
    from llamo.processing.index import MoleculeIndex

    from .naming import inchikey

    index = MoleculeIndex.load(path)
    if index.task and index.task not in (tasks := sorted({example.task for example in examples})):
        raise ValueError(
            f"The index {path} holds {index.task} answers, but the evaluated rows ask for {', '.join(tasks)}: give an "
            "index of their task (`llamo index build ... --task TASK`)."
        )
    known = index.inchikeys
    if leaked := sorted({example.smiles for example in examples if inchikey(example.smiles) in known}):
        shown = ", ".join(smiles[:40] for smiles in leaked[:3])
        raise ValueError(
            f"The index {path} holds {len(leaked)} of the evaluated molecules (e.g. {shown}): an evaluation index "
            "must not know the test molecules. Build it from the training side only (`llamo index build ... "
            "--holdout 0.1` for the shipped hold-out)."
        )
    fingerprint = hashlib.sha256(json.dumps(index.describe(), sort_keys=True).encode())
    fingerprint.update("".join(sorted(known)).encode())
    return index, fingerprint.hexdigest()[:16]


@dataclass
class RunState:
    """What one call of `evaluate` learned about its inputs, for the run config and the results."""

    data: DatasetInfo
    data_fingerprint: str
    examples: list[EvalExample]
    skipped: list[SkippedRow]
    model_fingerprint: str | None = None
    train: DatasetInfo | None = None
    train_fingerprint: str | None = None
    train_rows: list[dict[str, Any]] | None = field(default=None, repr=False)
    baseline_info: dict[str, Any] = field(default_factory=dict)
    index: Any = field(default=None, repr=False)
    index_fingerprint: str | None = None


def prepare(config: EvaluationConfig, dataset=None, train_dataset=None, model=None) -> RunState:
    """Read the run's rows (and training rows, index) and fingerprint what defines its predictions."""
    rows, info = load_rows(dataset if dataset is not None else config.data, config.split)
    examples, skipped = select_examples(rows, config.tasks, config.max_rows)
    if not examples and not any(row.task for row in skipped):
        reasons = dict(Counter(row.reason for row in skipped))
        raise ValueError(f"{info.source} holds no row of a task to evaluate ({len(rows)} rows, skipped: {reasons}).")
    state = RunState(info, rows_fingerprint(rows, config.tasks), examples, skipped)
    if config.generates:
        state.model_fingerprint = model_fingerprint(config.model) if model is None else "in-memory"
    if config.trained_baseline and not config.index_retrieval:
        source = train_dataset if train_dataset is not None else config.train_data
        state.train_rows, state.train = load_rows(source, config.train_split)
        state.train_fingerprint = rows_fingerprint(state.train_rows)
    if config.index:
        state.index, state.index_fingerprint = checked_index(config.index, examples)
    return state
