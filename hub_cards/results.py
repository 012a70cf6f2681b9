"""Evaluation results (`llamo evaluate`'s `results.json`) -> a model card's `model-index` and its metric tables.

Every metric name in the card says its protocol (e.g. "BLEU-4 (MolT5 protocol, SciBERT tokens)"), because numbers
under different protocols are not comparable. Property MAE always comes with its valid-answer ratio, in the order the
evaluator wrote them (each MAE followed by its ratio).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamo.evaluation.predictions import RESULTS_FORMAT

SUPPORTED_FORMAT_VERSIONS = (1,)

PROTOCOL_LABELS = {
    "molt5_scibert": "MolT5 protocol, SciBERT tokens",
    "llamo_llm_tokens": "LLaMo protocol, LLM tokens",
    "molt5_raw_text": "MolT5 protocol, raw text",
}
"""How each evaluation protocol is named in cards (see `llamo.evaluation.text_metrics`)."""

_TEXT_METRICS = {
    "bleu2": "BLEU-2",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
}
_FIXED_NAMES = {
    "exact_match_normalized": "Exact match (case and whitespace ignored)",
    "exact_match_stripped": "Exact match (surrounding whitespace ignored)",  # results of earlier versions
    "parse_rate_opsin": "OPSIN parse rate (predicted names read back to a structure)",
    "structure_match_opsin_inchikey": "Structure match (OPSIN, full InChIKey)",
    "structure_match_opsin_inchikey_connectivity": "Structure match (OPSIN, InChIKey connectivity block)",
}
_PROPERTIES = {"homo": "HOMO", "lumo": "LUMO", "gap": "HOMO-LUMO gap"}


class ResultsFileError(ValueError):
    """A results file that cannot be read into a card (named in the message)."""


@dataclass
class MetricEntry:
    """One reported number, with the name a card shows."""

    id: str
    type: str
    value: float
    unit: str
    protocol: str | None
    display_name: str

    @property
    def formatted(self) -> str:
        if self.unit == "percent":
            return f"{self.value:.2f}"
        return f"{self.value:.4g} {self.unit}"


@dataclass
class TaskEntry:
    """The results of one task on one dataset, from one results file."""

    name: str
    title: str
    type: str
    dataset: dict[str, Any]
    counts: dict[str, Any]
    metrics: list[MetricEntry]
    unavailable: list[dict[str, str]]

    @property
    def dataset_label(self) -> str:
        name = self.dataset.get("name") or self.dataset.get("source") or "unnamed dataset"
        split = self.dataset.get("split")
        return f"{name} ({split})" if split else str(name)


@dataclass
class EvaluationResults:
    """One `results.json`: what was evaluated (the model or a baseline), how it decoded, and its tasks."""

    path: Path
    evaluated: str
    baseline: dict[str, Any] | None
    decoding: dict[str, Any] | None
    created_at: str | None
    tasks: list[TaskEntry] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.evaluated != "model"

    @property
    def decoding_label(self) -> str:
        if not self.decoding:
            return "no generation (a non-generating baseline)"
        settings = self.decoding
        label = f"{settings.get('strategy', 'greedy')}, at most {settings.get('max_new_tokens')} new tokens"
        if settings.get("num_beams", 1) > 1:
            label += f", {settings['num_beams']} beams"
        if settings.get("do_sample"):
            label += f", temperature {settings.get('temperature')}, top-p {settings.get('top_p')}"
        return label


def _property_label(key: str) -> str:
    return _PROPERTIES.get(key, key.replace("_", " ")) if key else "all properties"


def metric_display_name(metric: dict[str, Any]) -> str:
    """The card name of a results metric, e.g. `bleu4_molt5_scibert` -> "BLEU-4 (MolT5 protocol, SciBERT tokens)"."""
    name, kind, protocol = metric["name"], metric.get("type"), metric.get("protocol")
    if protocol is None:  # unavailable metrics carry no protocol field: their name still ends with it
        protocol = next((known for known in PROTOCOL_LABELS if name.endswith(f"_{known}")), None)
    if protocol and name.endswith(f"_{protocol}"):
        base = name[: -len(protocol) - 1]
        label = PROTOCOL_LABELS.get(protocol, f"{protocol} protocol")
        return f"{_TEXT_METRICS.get(base, base)} ({label})"
    if kind == "mae":
        unit = str(metric.get("unit") or "")
        unit_suffix = "_" + re.sub(r"[^a-z0-9]+", "_", unit.lower())
        key = name.removeprefix("mae").removesuffix(unit_suffix).strip("_")
        return f"MAE, {_property_label(key)} ({unit}, valid answers only)"
    if kind == "valid_ratio":
        return f"Valid-answer ratio, {_property_label(name.removeprefix('valid_ratio').strip('_'))} (%)"
    return _FIXED_NAMES.get(name, name)


def read_json(path: Path, error: type[Exception], what: str) -> Any:
    """The JSON in `path`; `error`, with a message naming the file (`what` it is), when it is missing or invalid."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except json.JSONDecodeError as failure:
        raise error(f"{path} is not valid JSON: {failure}") from None


def _metric(raw: dict[str, Any], where: str) -> MetricEntry:
    missing = [key for key in ("name", "type", "value") if key not in raw]
    if missing:
        raise ResultsFileError(f"{where}: a metric lacks {missing}: {raw}")
    return MetricEntry(
        id=raw["name"],
        type=raw["type"],
        value=float(raw["value"]),
        unit=raw.get("unit", "percent"),
        protocol=raw.get("protocol"),
        display_name=metric_display_name(raw),
    )


def load_results(path: str | Path) -> EvaluationResults:
    """Read and check one results file written by `llamo evaluate`."""
    path = Path(path)
    data = read_json(path, ResultsFileError, "Results file")
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ResultsFileError(f'{path} is not a `llamo evaluate` results file (no "format": "{RESULTS_FORMAT}").')
    if data.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        raise ResultsFileError(
            f"{path} has format_version {data.get('format_version')!r}; this llamo reads {SUPPORTED_FORMAT_VERSIONS}."
        )
    tasks = []
    for index, raw in enumerate(data.get("results") or []):
        where = f"{path}, results[{index}]"
        try:
            task = raw["task"]
            tasks.append(
                TaskEntry(
                    name=task["name"],
                    title=task.get("title") or task["name"],
                    type=task.get("type") or "text-generation",
                    dataset=dict(raw.get("dataset") or data.get("dataset") or {}),
                    counts=dict(raw.get("counts") or {}),
                    metrics=[_metric(metric, where) for metric in raw.get("metrics") or []],
                    unavailable=[
                        {**missing, "display_name": metric_display_name(missing)}
                        for missing in raw.get("unavailable_metrics") or []
                    ],
                )
            )
        except (KeyError, TypeError) as error:
            raise ResultsFileError(f"{where} is malformed (missing {error}).") from None
    if not tasks:
        raise ResultsFileError(f"{path} holds no task results.")
    model = data.get("model") or {}
    return EvaluationResults(
        path=path,
        evaluated=model.get("evaluated") or "model",
        baseline=data.get("baseline"),
        decoding=data.get("decoding"),
        created_at=data.get("created_at"),
        tasks=tasks,
    )


def _dataset_type(dataset: dict[str, Any]) -> str:
    """The model-index `dataset.type`: the Hub id when the data came from the Hub, else the dataset's name."""
    if dataset.get("kind") == "hub" and dataset.get("source"):
        return str(dataset["source"])
    return str(dataset.get("name") or dataset.get("source") or "unknown")


def check_no_duplicates(results: list[EvaluationResults]) -> None:
    """Refuse two files reporting the same metric of the same task on the same data (which one would be true?)."""
    seen: dict[tuple, Path] = {}
    for result in results:
        for task in result.tasks:
            for metric in task.metrics:
                key = (result.evaluated, task.name, _dataset_type(task.dataset), task.dataset.get("split"), metric.id)
                if key in seen and seen[key] != result.path:
                    raise ResultsFileError(
                        f"{seen[key]} and {result.path} both report {metric.id} for task {task.name} on "
                        f"{task.dataset_label}: pass only one of them."
                    )
                seen[key] = result.path


def model_index_results(results: list[EvaluationResults]):
    """The `EvalResult`s of a card's `model-index`: the model's own results only (baselines go in the card's text).

    The task name is used as the dataset config, so that tasks evaluated on the same file stay apart.
    """
    from huggingface_hub import EvalResult

    check_no_duplicates(results)
    entries = []
    for result in results:
        if result.is_baseline:
            continue
        for task in result.tasks:
            for metric in task.metrics:
                entries.append(
                    EvalResult(
                        task_type=task.type,
                        task_name=task.title,
                        dataset_type=_dataset_type(task.dataset),
                        dataset_name=str(task.dataset.get("name") or _dataset_type(task.dataset)),
                        dataset_config=task.name,
                        dataset_split=task.dataset.get("split"),
                        metric_type=metric.type,
                        metric_value=round(metric.value, 4),
                        metric_name=metric.display_name,
                        metric_config=metric.protocol,
                    )
                )
    return entries


def dataset_mentions(results: list[EvaluationResults]) -> list[str]:
    """Names and sources of the evaluation datasets (for data credits)."""
    mentions = []
    for result in results:
        for task in result.tasks:
            mentions.extend(str(task.dataset.get(key) or "") for key in ("name", "source"))
    return [mention for mention in mentions if mention]


__all__ = [
    "PROTOCOL_LABELS",
    "EvaluationResults",
    "MetricEntry",
    "ResultsFileError",
    "TaskEntry",
    "check_no_duplicates",
    "dataset_mentions",
    "load_results",
    "metric_display_name",
    "model_index_results",
]
