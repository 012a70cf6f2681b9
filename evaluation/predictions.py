"""Predictions written as they are made, so that an interrupted evaluation resumes where it stopped.

An output folder holds:

- `run_config.json`: the settings that define the predictions, and fingerprints of the model and data. Only the same
  run reuses the folder; another is refused, naming each differing setting, unless `overwrite` clears it.
- `predictions.jsonl`: the source of truth, one `PredictionRecord` per row; a half-written last line is cut and that
  row predicted again.
- `predictions.<task>.tsv`: MolT5's layout (`SMILES<TAB>ground truth<TAB>output`, tabs and newlines replaced by
  spaces), rebuilt from the JSONL on resume and at the end.
- `results.json`: the metrics (see `llamo.evaluation`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_type_hints

PREDICTIONS_FILE = "predictions.jsonl"
RUN_CONFIG_FILE = "run_config.json"
RESULTS_FILE = "results.json"
TSV_HEADER = ("SMILES", "ground truth", "output")
_TSV_UNSAFE = re.compile(r"[\t\r\n]+")


@dataclass(frozen=True)
class Skip:
    """A predictor's answer for a row it cannot take (the row is then counted as skipped, with `reason`)."""

    reason: str


@dataclass
class PredictionRecord:
    """A row's outcome: its prediction, or the reason it was skipped."""

    index: int
    id: str
    task: str
    smiles: str
    reference: str
    prediction: str | None = None
    skipped: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def tsv_name(task: str) -> str:
    """The TSV file of a task (task names are sanitized for the file system)."""
    return f"predictions.{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)[:100]}.tsv"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    dotted = (_flatten(value, f"{prefix}.{key}" if prefix else str(key)) for key, value in data.items())
    return {key: value for flat in dotted for key, value in flat.items()}


def describe_differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """The settings that differ between two run configs, dotted, with their saved and new values:
    `max_rows (saved 100, now 300), ...`; empty when none does."""
    old, new = _flatten(saved), _flatten(current)
    missing = "(not recorded)"
    return ", ".join(
        f"{key} (saved {json.dumps(old.get(key, missing))}, now {json.dumps(new.get(key, missing))})"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    )


class PredictionStore:
    """The prediction files of one output folder (see the module docstring)."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.predictions_path = self.output_dir / PREDICTIONS_FILE
        self.config_path = self.output_dir / RUN_CONFIG_FILE

    def start(self, run_config: dict[str, Any], overwrite: bool = False) -> dict[tuple[str, str], PredictionRecord]:
        """Claim the folder for `run_config` and return the predictions already made by this same run. A folder holding
        another run's files (or files of unknown origin) is a `FileExistsError` unless `overwrite` clears it."""
        names = {PREDICTIONS_FILE, RUN_CONFIG_FILE, RESULTS_FILE}
        if existing := [
            path
            for path in self.output_dir.glob("*")  # nothing when the folder does not exist
            if path.name in names or (path.name.startswith("predictions.") and path.suffix == ".tsv")
        ]:
            try:
                saved = json.loads(self.config_path.read_text(encoding="utf-8")) if self.config_path.is_file() else None
            except ValueError:  # not UTF-8, not JSON (e.g. cut by a crash)
                saved = "unreadable"
            if not isinstance(saved, dict):
                without = "with an unreadable" if saved else "without"
                problem = f"holds {', '.join(sorted(p.name for p in existing))} {without} {RUN_CONFIG_FILE}"
            else:
                differences = describe_differences(saved, run_config)
                problem = differences and f"holds predictions of a run with other settings: {differences}"
            if problem and not overwrite:
                raise FileExistsError(
                    f"{self.output_dir} {problem}; choose another output folder, or pass --overwrite to discard them."
                )
            if problem:
                for path in existing:
                    path.unlink()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(run_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        records = self.load()
        self.write_tsvs(sorted(records.values(), key=lambda record: record.index))
        return records

    def load(self) -> dict[tuple[str, str], PredictionRecord]:
        """The saved records by key; a half-written last line is removed from the file first."""
        from llamo.processing.instruction_store import read_jsonl

        records: dict[tuple[str, str], PredictionRecord] = {}
        types = get_type_hints(PredictionRecord)
        for number, row in enumerate(read_jsonl(self.predictions_path, repair=True), start=1):
            try:
                record = PredictionRecord(**row)
                if wrong := [name for name, value in vars(record).items() if not isinstance(value, types[name])]:
                    raise TypeError(f"{', '.join(wrong)} of the wrong type")
            except TypeError as error:
                raise ValueError(
                    f"{self.predictions_path}, record {number}, is not a prediction record ({str(error)[:200]}); "
                    "remove that line to predict the row again."
                ) from None
            records.setdefault(record.key, record)
        return records

    def append(self, records: Iterable[PredictionRecord]) -> None:
        """Append records to the JSONL and the TSVs, flushed to disk before returning."""
        records = list(records)
        with open(self.predictions_path, "a", encoding="utf-8") as handle:
            handle.write("".join(record.to_json() + "\n" for record in records))
            handle.flush()
            os.fsync(handle.fileno())
        self._append_tsvs(records)

    def saved_count(self) -> int:
        """How many complete prediction lines the JSONL holds (read only: nothing is repaired)."""
        return self.predictions_path.read_bytes().count(b"\n") if self.predictions_path.is_file() else 0

    def write_tsvs(self, records: Iterable[PredictionRecord]) -> dict[str, str]:
        """Rewrite every task's TSV from `records` (in the given order); returns `{task: file name}`."""
        for path in self.output_dir.glob("predictions.*.tsv"):
            path.unlink()
        return self._append_tsvs(records)

    def _append_tsvs(self, records: Iterable[PredictionRecord]) -> dict[str, str]:
        by_task: dict[str, list[str]] = {}
        for record in records:
            if record.skipped is None:
                fields = (record.smiles, record.reference, record.prediction or "")
                by_task.setdefault(record.task, []).append("\t".join(_TSV_UNSAFE.sub(" ", f) for f in fields) + "\n")
        for task, lines in by_task.items():
            with open(self.output_dir / tsv_name(task), "a", encoding="utf-8") as handle:
                handle.write(("" if handle.tell() else "\t".join(TSV_HEADER) + "\n") + "".join(lines))
        return {task: tsv_name(task) for task in by_task}
