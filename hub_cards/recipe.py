"""The training recipe of a model, from its run folders (`llamo_run_config.json`, `training_summary.json`, settings of
earlier versions read in today's keys). A stage-2 run names its stage-1 model in `model_name_or_path`, so the whole
chain is found from the last run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamo.training.config import RUN_CONFIG, SUMMARY, upgrade_saved_settings

from .results import read_json


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
    def sources(self) -> list[dict[str, Any]]:
        return self.config.get("sources") or []

    def recipe_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs describing the run, for a card's table."""
        config = self.config
        rows = [("Trained parts", _trained_parts(self.stage, config))]
        init = f"`llamo init` around {config['init_llm']}" if config.get("init_llm") else None
        if start := config.get("model_name_or_path") or init:
            rows.append(("Started from", str(start)))
        mode = config.get("mode") or "generalist"
        rows.append(("Mode", f"{mode} ({config['task']})" if config.get("task") else mode))
        rows.append(("Data", "; ".join(_source_label(source) for source in self.sources) or "n/a"))
        peak, warmup = config.get("learning_rate"), config.get("warmup_steps")
        kwargs = config["lr_scheduler_kwargs"] if isinstance(config.get("lr_scheduler_kwargs"), dict) else {}
        schedule = f"AdamW, weight decay {config.get('weight_decay')}; "
        if config.get("lr_scheduler_type") != "cosine_warmup_with_min_lr" or "min_lr" not in kwargs:
            schedule += f"{config.get('lr_scheduler_type')} schedule to {peak} ({warmup} warm-up steps, {kwargs})"
        else:  # the paper's
            rate = kwargs.get("warmup_lr_rate")
            start = f"{peak * rate:g}" if isinstance(peak, float) and rate is not None else "0"
            schedule += f"linear warm-up from {start} over {warmup} steps to {peak}, cosine decay to {kwargs['min_lr']}"
        rows.append(("Optimiser and schedule", schedule))
        length = f"{config.get('num_train_epochs')} epoch(s)"
        if (config.get("max_steps") or -1) > 0:
            length += f", capped at {config['max_steps']} steps"
        rows.append(("Length", length))
        batch = config.get("per_device_train_batch_size"), config.get("gradient_accumulation_steps")
        rows.append(("Batch", "{} per device x {} accumulation step(s)".format(*batch)))
        rows.append(("Max text length", f"{config.get('max_length')} tokens"))
        precision = "bf16" if config.get("bf16") else str(config.get("dtype") or "float32")
        gradients = ", gradient checkpointing" if config.get("activation_checkpointing") else ""
        rows.append(("Precision", precision + gradients))
        if self.stage == 2:
            targets = config.get("lora_target_modules") or []
            targets = ", ".join([targets] if isinstance(targets, str) else targets)
            lora = f"r {config.get('lora_r')}, alpha {config.get('lora_alpha')}, dropout {config.get('lora_dropout')}"
            rows.append(("LoRA", f"{lora}, on {targets} of the LM"))
        rows.append(("Seed", str(config.get("seed"))))
        summary = self.summary
        if summary is None:
            return [*rows, ("Status", "not finished (no training_summary.json)")]
        rows.append(("Optimiser steps", str(summary.get("global_step"))))
        if (loss := (summary.get("metrics") or {}).get("train_loss")) is not None:
            rows.append(("Mean training loss", f"{loss:.4f}"))
        if summary.get("trainable_parameters") is not None:
            rows.append(("Trainable parameters", f"{summary['trainable_parameters'] / 1e6:.2f}M"))
        if summary.get("wall_seconds") is not None:
            hours = f"{summary['wall_seconds'] / 3600:.2f} h"
            if summary.get("resumed_from"):
                hours += f" (the last run only, resumed from {summary['resumed_from']}; earlier runs not counted)"
            rows.append(("Wall time", hours))
        for report in summary.get("data") or []:
            dropped = sorted((report.get("dropped") or {}).items())
            reasons = ", ".join(f"{count} {reason}" for reason, count in dropped) or "none dropped"
            counts = f"read {report.get('read')}, kept {report.get('kept')} ({reasons})"
            rows.append((f"Data: {report.get('name')}", counts))
        return rows


def _trained_parts(stage: int, config: dict[str, Any]) -> str:
    if stage == 1:
        return "graph encoder and projector (stage 1, graph-language alignment); the LM frozen"
    projector = "the projector in full and " if "graph_projector" in (config.get("lora_modules_to_save") or []) else ""
    return f"{projector}LoRA on the LM (stage 2, instruction tuning); the graph encoder frozen, BatchNorm in eval mode"


def _source_label(source: dict[str, Any]) -> str:
    details = []
    if source.get("path"):
        details.append("/".join(Path(str(source["path"])).parts[-2:]))  # no machine-specific prefix in a card
    details.extend(f"{key} {source[key]}" for key in ("split", "part", "task") if source.get(key))
    if source.get("limit"):
        details.append(f"first {source['limit']} rows")
    if source.get("holdout"):
        details.append(f"{source['holdout']:.0%} of molecules held out")
    if source.get("weight", 1.0) != 1.0:
        details.append(f"weight {source['weight']}")
    return f"{source.get('type')} ({', '.join(details)})" if details else str(source.get("type"))


def read_run(folder: str | Path) -> TrainingRun:
    """Read one run folder (it must hold `llamo_run_config.json`)."""
    folder = Path(folder)
    if not (folder / RUN_CONFIG).is_file():
        raise RunFolderError(f"{folder} is not a llamo training run: it has no {RUN_CONFIG}.")
    config = read_json(folder / RUN_CONFIG, RunFolderError, RUN_CONFIG)
    summary = read_json(folder / SUMMARY, RunFolderError, SUMMARY) if (folder / SUMMARY).is_file() else None
    return TrainingRun(folder, upgrade_saved_settings(config), summary)


def _run_folder(folder: Path | None) -> Path | None:
    """`folder` or its parent (a stage-2 `merged/` folder), whichever holds a run config."""
    return next((f for f in (folder, folder.parent) if (f / RUN_CONFIG).is_file()), None) if folder else None


def find_runs(model_dir: str | Path) -> list[TrainingRun]:
    """The training runs behind a model folder, earliest stage first (`[]` for a folder no run produced). Each run's
    `model_name_or_path`, relative to where training was launched, is tried as given, then from the runs' parents."""
    start = _run_folder(Path(model_dir).resolve())
    runs: list[TrainingRun] = []
    while start is not None and start not in {run.folder for run in runs}:
        runs.append(read_run(start))
        previous = Path(str(runs[-1].config.get("model_name_or_path") or ""))
        candidates = (previous, *(parent / previous for parent in start.parents)) if previous.name else ()
        start = _run_folder(next((path for path in candidates if path.is_dir()), None))
    return list(reversed(runs))
