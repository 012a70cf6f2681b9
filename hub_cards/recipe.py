"""The training recipe of a model, read from its run folders (`llamo_run_config.json`, `training_summary.json`).

A stage-2 run names its stage-1 model in `model_name_or_path` (`model_path` in run folders of earlier versions, whose
settings are read in today's keys: `llamo.training.config.upgrade_saved_settings`), so starting from the last run the
whole chain is found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamo.training.config import upgrade_saved_settings

RUN_CONFIG = "llamo_run_config.json"
RUN_SUMMARY = "training_summary.json"


class RunFolderError(ValueError):
    """A run folder whose files cannot be read (named in the message)."""


@dataclass
class TrainingRun:
    """One training stage: its saved configuration and, once it finished, its summary."""

    folder: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None

    @property
    def stage(self) -> int:
        if self.summary and self.summary.get("stage") in (1, 2):
            return int(self.summary["stage"])
        return 2 if self.config.get("use_peft") else 1

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def source_types(self) -> list[str]:
        return [str(source.get("type")) for source in self.config.get("sources") or [] if source.get("type")]

    @property
    def source_paths(self) -> list[str]:
        return [str(source["path"]) for source in self.config.get("sources") or [] if source.get("path")]

    def recipe_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs describing the run, for a card's table."""
        config = self.config
        rows = [("Trained parts", _trained_parts(self.stage, config))]
        start = config.get("model_name_or_path") or (
            f"`llamo init` around {config['init_llm']}" if config.get("init_llm") else None
        )
        if start:
            rows.append(("Started from", str(start)))
        mode = config.get("mode") or "generalist"
        rows.append(("Mode", f"{mode} ({config['task']})" if config.get("task") else mode))
        rows.append(("Data", "; ".join(_source_label(source) for source in config.get("sources") or []) or "n/a"))
        rows.append(("Optimiser and schedule", _schedule(config)))
        length = f"{config.get('num_train_epochs')} epoch(s)"
        if (config.get("max_steps") or -1) > 0:
            length += f", capped at {config['max_steps']} steps"
        rows.append(("Length", length))
        rows.append(
            (
                "Batch",
                f"{config.get('per_device_train_batch_size')} per device x {config.get('gradient_accumulation_steps')} "
                "accumulation step(s)",
            )
        )
        rows.append(("Max text length", f"{config.get('max_length')} tokens"))
        precision = "bf16" if config.get("bf16") else str(config.get("dtype") or "float32")
        rows.append(
            ("Precision", precision + (", gradient checkpointing" if config.get("activation_checkpointing") else ""))
        )
        if self.stage == 2:
            targets = config.get("lora_target_modules") or []
            targets = ", ".join([targets] if isinstance(targets, str) else targets)
            rows.append(
                (
                    "LoRA",
                    f"r {config.get('lora_r')}, alpha {config.get('lora_alpha')}, dropout {config.get('lora_dropout')},"
                    f" on {targets} of the LM",
                )
            )
        rows.append(("Seed", str(config.get("seed"))))
        rows.extend(self._summary_rows())
        return rows

    def _summary_rows(self) -> list[tuple[str, str]]:
        if self.summary is None:
            return [("Status", "not finished (no training_summary.json)")]
        summary = self.summary
        rows = [("Optimiser steps", str(summary.get("global_step")))]
        loss = (summary.get("metrics") or {}).get("train_loss")
        if loss is not None:
            rows.append(("Mean training loss", f"{loss:.4f}"))
        if summary.get("trainable_parameters") is not None:
            rows.append(("Trainable parameters", f"{summary['trainable_parameters'] / 1e6:.2f}M"))
        if summary.get("wall_seconds") is not None:
            hours = f"{summary['wall_seconds'] / 3600:.2f} h"
            if summary.get("resumed_from"):
                hours += f" (the last run only, resumed from {summary['resumed_from']}; earlier runs not counted)"
            rows.append(("Wall time", hours))
        for report in summary.get("data") or []:
            dropped = report.get("dropped") or {}
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items())) or "none dropped"
            rows.append(
                (f"Data: {report.get('name')}", f"read {report.get('read')}, kept {report.get('kept')} ({reasons})")
            )
        return rows


def _schedule(config: dict[str, Any]) -> str:
    """The optimiser and the learning-rate schedule in words (the paper's, or the transformers scheduler named)."""
    peak, warmup, kwargs = config.get("learning_rate"), config.get("warmup_steps"), config.get("lr_scheduler_kwargs")
    text = f"AdamW, weight decay {config.get('weight_decay')}; "
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    if config.get("lr_scheduler_type") != "cosine_warmup_with_min_lr" or "min_lr" not in kwargs:
        return text + f"{config.get('lr_scheduler_type')} schedule to {peak} ({warmup} warm-up steps, {kwargs})"
    rate = kwargs.get("warmup_lr_rate")
    start = f"{peak * rate:g}" if isinstance(peak, float) and rate is not None else "0"
    return text + f"linear warm-up from {start} over {warmup} steps to {peak}, cosine decay to {kwargs['min_lr']}"


def _trained_parts(stage: int, config: dict[str, Any]) -> str:
    if stage == 1:
        return "graph encoder and projector (stage 1, graph-language alignment); the LM frozen"
    projector = "the projector in full and " if "graph_projector" in (config.get("lora_modules_to_save") or []) else ""
    return f"{projector}LoRA on the LM (stage 2, instruction tuning); the graph encoder frozen, BatchNorm in eval mode"


def _source_label(source: dict[str, Any]) -> str:
    details = []
    if source.get("path"):
        details.append("/".join(Path(str(source["path"])).parts[-2:]))  # no machine-specific prefix in a card
    for key in ("split", "part", "task"):
        if source.get(key):
            details.append(f"{key} {source[key]}")
    if source.get("limit"):
        details.append(f"first {source['limit']} rows")
    if source.get("holdout"):
        details.append(f"{source['holdout']:.0%} of molecules held out")
    if source.get("weight", 1.0) != 1.0:
        details.append(f"weight {source['weight']}")
    return f"{source.get('type')} ({', '.join(details)})" if details else str(source.get("type"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} does not hold a JSON object.")
    return data


def read_run(folder: str | Path) -> TrainingRun:
    """Read one run folder (it must hold `llamo_run_config.json`)."""
    folder = Path(folder)
    config_path = folder / RUN_CONFIG
    if not config_path.is_file():
        raise RunFolderError(f"{folder} is not a llamo training run: it has no {RUN_CONFIG}.")
    summary_path = folder / RUN_SUMMARY
    summary = _read_json(summary_path) if summary_path.is_file() else None
    return TrainingRun(folder, upgrade_saved_settings(_read_json(config_path)), summary)


def _resolve(path_text: str, base: Path) -> Path | None:
    """A run config's `model_name_or_path`, which is relative to where training was launched: try it as given, then
    from the runs around `base`."""
    path = Path(path_text)
    for candidate in (path, *(parent / path for parent in base.parents)):
        if candidate.is_dir():
            return candidate
    return None


def find_runs(model_dir: str | Path) -> list[TrainingRun]:
    """The training runs behind a model folder, earliest stage first.

    The folder itself or its parent (a stage-2 `merged/` folder) holds the last run; each run's `model_name_or_path`
    leads to the one before. Returns `[]` for a folder that no run produced.
    """
    model_dir = Path(model_dir).resolve()
    start = next((folder for folder in (model_dir, model_dir.parent) if (folder / RUN_CONFIG).is_file()), None)
    runs: list[TrainingRun] = []
    seen: set[Path] = set()
    while start is not None and start not in seen:
        seen.add(start)
        run = read_run(start)
        runs.append(run)
        previous = run.config.get("model_name_or_path")
        found = _resolve(str(previous), start) if previous else None
        start = next((f for f in (found, found.parent) if (f / RUN_CONFIG).is_file()), None) if found else None
    return list(reversed(runs))


__all__ = ["RUN_CONFIG", "RUN_SUMMARY", "RunFolderError", "TrainingRun", "find_runs", "read_run"]
