"""The files of an instruction-data run (described in `llamo.processing.instruction_data`), written and read back."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .instruction_prompts import Exemplar
from .schema import make_record, record_metadata, records_dataset

logger = logging.getLogger(__name__)

IDENTITY_KEYS = ("teacher", "model", "prompt_version")


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file written by this module. A half-written last line (a killed job) is ignored, and
    with `repair` cut from the file; any other invalid line raises `ValueError` naming it."""
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # tail: b"" unless the last line is unfinished
    records = []
    for number, line in enumerate([*lines, tail], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            record = ValueError(str(error)[:200])
        if isinstance(record, dict):
            records.append(record)
            if number > len(lines) and repair:  # complete but for its newline
                with open(path, "ab") as handle:
                    handle.write(b"\n")
        elif number <= len(lines):
            problem = f"is not valid JSON ({record})" if isinstance(record, ValueError) else "is not a JSON object"
            raise ValueError(f"{path}:{number} {problem}; fix or remove that line.")
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
        view = memoryview((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_json_atomically(path: Path, obj: Any) -> None:
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # left only when the write failed (e.g. a full disk)


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
        self._output, self._status = _AppendOnlyJsonl(self.path), _AppendOnlyJsonl(self.status_path)

    def open(self, identity: dict[str, str], allow_mixed: bool = False, overwrite: bool = False) -> None:
        """Start over (`overwrite`) or load what is done, repairing half-written last lines; refuse files made by
        another teacher, model or prompt version (`identity`) unless `allow_mixed`."""
        self.identity, self.allow_mixed = identity, allow_mixed
        for path in (self.path, self.status_path, self.exemplars_path, self.summary_path) if overwrite else ():
            path.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for record in read_jsonl(self.path, repair=True):
            if not isinstance(record.get("id"), str) or not isinstance(record.get("messages"), list):
                raise ValueError(f"{self.path} holds a line that is not a conversation record: {str(record)[:200]}")
            self._check_identity(record_metadata(record))
            self.records[record["id"]] = record
        for status in read_jsonl(self.status_path, repair=True):
            if not isinstance(status.get("id"), str) or status.get("status") not in ("filtered", "failed"):
                raise ValueError(f"{self.status_path} holds a line that is not a status: {str(status)[:200]}")
            self._check_identity(status)
            self.statuses[status["id"]] = status

    def _check_identity(self, found: dict[str, Any]) -> None:
        if self.allow_mixed or all(found.get(key) == value for key, value in self.identity.items()):
            return
        made, now = (", ".join(f"{key}={of.get(key)!r}" for key in IDENTITY_KEYS) for of in (found, self.identity))
        raise ValueError(
            f"{self.path} already holds data made with {made}, but this run uses {now}. Choose another output, pass "
            "--overwrite to start over, or --allow-mixed to add to it anyway."
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
        write_json_atomically(self.exemplars_path, {**self.identity, "exemplars": [asdict(item) for item in exemplars]})


def load_generated_conversations(path: str | Path | list[str | Path]):
    """The generated records of one or more output JSONL files as a `datasets.Dataset` in the conversation schema
    (`CONVERSATION_FEATURES`). Each record's turn structure is checked; a half-written last line is ignored."""
    rows = []
    for one in map(Path, [path] if isinstance(path, (str, Path)) else path):
        if not one.exists():
            raise FileNotFoundError(f"Generated conversations not found: {one}")
        for number, record in enumerate(read_jsonl(one), start=1):
            try:
                fields = (record[key] for key in ("id", "smiles", "messages", "task", "source"))
                rows.append(make_record(*fields, record_metadata(record)))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{one}: record {number} is not a conversation record: {error}") from None
    return records_dataset(rows)
