"""`llamo evaluate` results files -> a model card's `model-index` (`huggingface_hub.EvalResult`) and metric tables.

Every metric's card name says its protocol, since numbers under different protocols are not comparable; each property
MAE is followed by its valid-answer ratio, in the evaluator's order."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamo.evaluation.score import RESULTS_FORMAT

SUPPORTED_FORMAT_VERSIONS = (1,)
PROTOCOL_LABELS = {
    "molt5_scibert": "MolT5 protocol, SciBERT tokens",
    "llamo_llm_tokens": "LLaMo protocol, LLM tokens",
    "molt5_raw_text": "MolT5 protocol, raw text",
}
_TEXT_METRICS = dict(
    bleu2="BLEU-2", bleu4="BLEU-4", meteor="METEOR", rouge1="ROUGE-1", rouge2="ROUGE-2", rougeL="ROUGE-L"
)
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


def read_json(path: Path, error: type[Exception], what: str) -> dict[str, Any]:
    """The JSON object in `path`; `error`, naming the file (`what` it is), when it is missing, invalid or no object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a JSON file.") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text: not a JSON file.") from None
    except json.JSONDecodeError as failure:
        raise error(f"{path} is not valid JSON: {failure}") from None
    if not isinstance(data, dict):
        raise error(f"{path} does not hold a JSON object.")
    return data


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
        key = name.removeprefix("mae").removesuffix("_" + re.sub(r"[^a-z0-9]+", "_", unit.lower())).strip("_")
        return f"MAE, {_property_label(key)} ({unit}, valid answers only)"
    if kind == "valid_ratio":
        return f"Valid-answer ratio, {_property_label(name.removeprefix('valid_ratio').strip('_'))} (%)"
    return _FIXED_NAMES.get(name, name)


@dataclass
class TaskEntry:
    name: str
    title: str
    type: str
    dataset: dict[str, Any]
    counts: dict[str, Any]
    metrics: list[dict[str, Any]]
    unavailable: list[dict[str, str]]

    @property
    def hub_id(self) -> str | None:
        return str(self.dataset["source"]) if self.dataset.get("kind") == "hub" and self.dataset.get("source") else None

    @property
    def dataset_type(self) -> str:
        """The model-index `dataset.type`: the Hub id when the data came from the Hub, else the dataset's name."""
        return self.hub_id or str(self.dataset.get("name") or self.dataset.get("source") or "unknown")

    @property
    def dataset_label(self) -> str:
        name = self.dataset.get("name") or self.dataset.get("source") or "unnamed dataset"
        return f"{name} ({split})" if (split := self.dataset.get("split")) else str(name)


@dataclass
class EvaluationResults:
    """One `results.json`: what was evaluated (the model or a baseline), how it decoded, and its tasks."""

    path: Path
    evaluated: str
    baseline: dict[str, Any] | None
    decoding: dict[str, Any] | None
    tasks: list[TaskEntry]

    @property
    def is_baseline(self) -> bool:
        return self.evaluated != "model"

    @property
    def decoding_label(self) -> str:
        if not (settings := self.decoding):
            return "no generation (a non-generating baseline)"
        label = f"{settings.get('strategy', 'greedy')}, at most {settings.get('max_new_tokens')} new tokens"
        if settings.get("num_beams", 1) > 1:
            label += f", {settings['num_beams']} beams"
        if settings.get("do_sample"):
            label += f", temperature {settings.get('temperature')}, top-p {settings.get('top_p')}"
        return label


def _metric(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A results metric with its card name (`display_name`) and its value as the card shows it (`formatted`)."""
    if missing := [key for key in ("name", "type", "value") if key not in raw]:
        raise ResultsFileError(f"{where}: a metric lacks {missing}: {raw}")
    value, unit = float(raw["value"]), raw.get("unit", "percent")
    formatted = f"{value:.2f}" if unit == "percent" else f"{value:.4g} {unit}"
    return {**raw, "value": value, "unit": unit, "display_name": metric_display_name(raw), "formatted": formatted}


def load_results(path: str | Path) -> EvaluationResults:
    """Read and check one results file written by `llamo evaluate`."""
    path = Path(path)
    data = read_json(path, ResultsFileError, "Results file")
    if data.get("format") != RESULTS_FORMAT:
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
    evaluated = (data.get("model") or {}).get("evaluated") or "model"
    return EvaluationResults(path, evaluated, data.get("baseline"), data.get("decoding"), tasks)


def model_index_results(results: list[EvaluationResults]):
    """The `EvalResult`s of a card's `model-index`: the model's own results only (baselines go in the card's text),
    with the task name as dataset config so that tasks evaluated on the same file stay apart. Two files reporting the
    same metric of the same task on the same data are refused (which one would be true?)."""
    from huggingface_hub import EvalResult

    seen: dict[tuple, Path] = {}
    entries = []
    for result in results:
        for task in result.tasks:
            for metric in task.metrics:
                key = (result.evaluated, task.name, task.dataset_type, task.dataset.get("split"), metric["name"])
                if seen.setdefault(key, result.path) != result.path:
                    raise ResultsFileError(
                        f"{seen[key]} and {result.path} both report {metric['name']} for task {task.name} on "
                        f"{task.dataset_label}: pass only one of them."
                    )
                if not result.is_baseline:
                    entries.append(
                        EvalResult(
                            task_type=task.type,
                            task_name=task.title,
                            dataset_type=task.dataset_type,
                            dataset_name=str(task.dataset.get("name") or task.dataset_type),
                            dataset_config=task.name,
                            dataset_split=task.dataset.get("split"),
                            metric_type=metric["type"],
                            metric_value=round(metric["value"], 4),
                            metric_name=metric["display_name"],
                            metric_config=metric.get("protocol"),
                        )
                    )
    return entries
