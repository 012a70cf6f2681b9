"""What both training stages share: the trainer (TRL's `SFTTrainer`, with a full disk while checkpointing said
plainly), safe run folders, resumable checkpoints, loading a model and LoRA kept inside the language model."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import PartialState
from transformers.utils import get_current_accelerator
from trl import SFTTrainer, get_peft_config

from llamo.processing.collators import LlamoDataCollator
from llamo.storage import DiskFullError, disk_full_guard, folder_bytes, is_disk_full

from .config import RUN_CONFIG, SUMMARY, StageArguments, same_setting, upgrade_saved_settings
from .data import build_training_dataset
from .interrupt import GracefulInterrupt

FINAL_SAVE_KEPT = "Training finished and its last checkpoint is kept: the rerun only saves the final model."
_LAUNCH = ("overwrite_output_dir", "resume_from_checkpoint", "run_name", "project", "local_rank", "use_cpu")
_REPORTING = ("disable_tqdm", "report_to", "logging_steps", "logging_first_step", "logging_strategy", "log_level")
_HUB = ("push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_revision")
_WORKERS = ("dataloader_num_workers", "dataset_num_proc", "num_proc_min_rows", "data_cache_dir", "save_total_limit")
IGNORED_FOR_RESUME = {*_LAUNCH, "ddp_timeout", *_REPORTING, "log_level_replica", *_HUB, *_WORKERS}
"""Settings that may change between a run and its resumption (reporting, workers, caches, the launch)."""


class LlamoSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer` for both stages. A full disk while a checkpoint is written removes the partial `checkpoint-N`
    folder, keeps the last complete checkpoint and raises a `DiskFullError` saying how much a checkpoint needs."""

    def _save_checkpoint(self, model, trial) -> None:
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if not is_disk_full(error):
                raise
            run_dir = Path(self._get_output_dir(trial=trial))
            partial = run_dir / f"checkpoint-{self.state.global_step}"
            shutil.rmtree(partial, ignore_errors=True)
            previous = last_complete_checkpoint(run_dir, set_aside_incomplete=False)
            kept = f"The partial {partial.name} was removed; " + (
                f"the last complete checkpoint, {previous.name}, is kept: the rerun resumes from it."
                if previous
                else "no complete checkpoint was saved before: the rerun starts over."
            )
            raise DiskFullError(run_dir, partial.name, self.checkpoint_bytes(previous), kept) from error

    def checkpoint_bytes(self, previous: Path | None = None) -> int:
        """What one checkpoint of this run takes: `previous`'s size, else the model's saved state (the trainable
        part only for a PEFT model, whose checkpoints hold the adapter) plus the optimizer's state."""
        if previous is not None:
            return folder_bytes(previous)
        states = self.optimizer.state.values() if self.optimizer is not None else ()
        moments = sum(v.numel() * v.element_size() for state in states for v in state.values() if torch.is_tensor(v))
        if not hasattr(self.model, "peft_config"):  # parameters and buffers
            return self.model.get_memory_footprint() + moments
        return sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad) + moments


def train(
    arguments: StageArguments, state, model, processor, checkpoint: Path | None, log, peft_config=None, callbacks=()
):
    """Build the training set (the main process first), then run `LlamoSFTTrainer` (LLaMo's collator, further
    `callbacks`; from `checkpoint` unless `resume_from_checkpoint` is given; SIGTERM / Ctrl-C save a checkpoint and
    exit). Returns the trainer and the run's part of the stage's `SUMMARY` (trainable parameters counted before an
    adapter is merged; `log_history`: loss, learning rate and grad norm every `logging_steps`)."""
    with state.main_process_first():
        dataset, reports = build_training_dataset(arguments, log)
    training_args = arguments.training
    trainer = LlamoSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=LlamoDataCollator(processor, max_length=training_args.max_length),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    interrupt = GracefulInterrupt(log)
    trainer.add_callback(interrupt)
    resume = training_args.resume_from_checkpoint or (str(checkpoint) if checkpoint else None)
    started = time.time()
    with interrupt:
        result = trainer.train(resume_from_checkpoint=resume)
    interrupt.exit_if_interrupted(trainer.state)
    return trainer, {
        "metrics": result.metrics,
        "global_step": trainer.state.global_step,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "wall_seconds": time.time() - started,
        "resumed_from": checkpoint.name if checkpoint else None,
        "data": [report.to_dict() for report in reports],
        "log_history": trainer.state.log_history,
    }


def checkpoint_is_complete(folder: Path) -> bool:
    """A Trainer checkpoint is complete once its `trainer_state.json` (written last) exists and parses (and no
    transformers JIT-checkpoint marker says it is still being written)."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("scheduler.pt", "rng_state.pth")
    return all((folder / name).is_file() for name in files) and not (folder / "checkpoint-is-incomplete.txt").exists()


def last_complete_checkpoint(output_dir: Path, set_aside_incomplete: bool = True) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir`; incomplete ones (a run killed while saving) are renamed
    `checkpoint-N.incomplete` so that neither we nor the Trainer's rotation mistake them for real ones."""
    found = [f for f in output_dir.glob("checkpoint-*") if f.is_dir() and f.name.removeprefix("checkpoint-").isdigit()]
    for folder in sorted(found, key=lambda folder: int(folder.name.removeprefix("checkpoint-")), reverse=True):
        if checkpoint_is_complete(folder):
            return folder
        target = folder.with_name(folder.name + ".incomplete")
        if set_aside_incomplete and not target.exists():
            folder.rename(target)
    return None


def prepare_run_dir(
    arguments: StageArguments, log=print, is_main_process: bool = True
) -> tuple[Path, Path | None, bool]:
    """Check the run folder before training. Returns `(output_dir, checkpoint_to_resume_or_None, finished)`.

    A new or empty folder starts a run; one of the same run (same saved settings but `IGNORED_FOR_RESUME`) resumes
    from its last complete checkpoint or reports it finished; anything else is refused unless `overwrite_output_dir`.
    Only the main process changes the folder: the others only read it."""
    script, training, model = arguments
    output_dir = Path(training.output_dir)
    saved_file = output_dir / RUN_CONFIG  # the stage's settings as one flat JSON mapping (tokens are masked)
    current = json.loads(json.dumps({**asdict(script), **training.to_dict(), **asdict(model)}, default=str))
    if not is_main_process:
        finished = (output_dir / SUMMARY).is_file()
        return output_dir, None if finished else last_complete_checkpoint(output_dir, False), finished
    if script.overwrite_output_dir and saved_file.is_file():
        log(f"[run] --overwrite_output_dir: starting {output_dir} over")
        shutil.rmtree(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not script.overwrite_output_dir:
        if not saved_file.is_file():
            raise FileExistsError(
                f"{output_dir} is not empty and holds no llamo run: choose another output_dir (or pass "
                "--overwrite_output_dir to train there anyway)."
            )
        saved = upgrade_saved_settings(json.loads(saved_file.read_text()))
        shared = (saved.keys() & current.keys()) - IGNORED_FOR_RESUME
        if differing := sorted(key for key in shared if not same_setting(saved[key], current[key])):
            raise FileExistsError(
                f"{output_dir} holds a run with another configuration (differs in: {', '.join(differing)}): resume it "
                "with the same recipe, choose another output_dir, or pass --overwrite_output_dir."
            )
        if (output_dir / SUMMARY).is_file():
            log(f"[run] {output_dir} already holds this finished run; nothing to do.")
            return output_dir, None, True
        checkpoint = last_complete_checkpoint(output_dir)
        log(f"[run] resuming {output_dir} from {checkpoint.name}" if checkpoint else f"[run] restarting {output_dir}")
        return output_dir, checkpoint, False
    output_dir.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(json.dumps(current, indent=2))
    return output_dir, None, False


def start_run(arguments: StageArguments, log):
    """Open a stage's run: the distributed state, `log` silenced off the main process, and the run folder
    (`prepare_run_dir`, the main process first). Returns `(state, log, output_dir, checkpoint, finished)`."""
    state = PartialState(cpu=no_accelerator())
    log = log if state.is_main_process else (lambda *args, **kwargs: None)
    with state.main_process_first():
        output_dir, checkpoint, finished = prepare_run_dir(arguments, log, state.is_main_process)
    return state, log, output_dir, checkpoint, finished


def final_save_guard(output_dir: Path, writing: str, module: torch.nn.Module):
    """`disk_full_guard` for a stage's final save: names `output_dir`, `module`'s size and the last checkpoint kept."""
    return disk_full_guard(output_dir, writing, lambda: module.get_memory_footprint(), FINAL_SAVE_KEPT)


def load_for_training(model_path: str | Path, dtype: str = "float32"):
    """Load a LLaMo folder for training: the language model in `dtype` (ModelConfig's), the trained graph encoder and
    projector in float32 with their saved values (the model's `_keep_in_fp32_modules_strict`)."""
    from llamo import LlamoForConditionalGeneration, LlamoProcessor

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No LLaMo model in {path} (config.json missing): give a `llamo init` or stage output")
    return LlamoForConditionalGeneration.from_pretrained(path, dtype=dtype), LlamoProcessor.from_pretrained(path)


def lora_target_regex(model, names: list[str]) -> str:
    """A PEFT `target_modules` regex matching the given module names inside the language model only (never the GIN
    or the projector). `["all-linear"]` expands to every linear layer of the LM's decoder."""
    named = dict(model.model.language_model.named_modules())
    if names == ["all-linear"]:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in named.items() if isinstance(m, torch.nn.Linear) and "." in n})
    if missing := sorted(set(names) - {name.rsplit(".", 1)[-1] for name in named if name}):
        raise ValueError(f"LoRA target module(s) {missing} do not exist in the language model")
    return rf"^model\.language_model\..*\.({'|'.join(sorted(names))})$"


def lora_config(model, model_args):
    """TRL's `get_peft_config(model_args)`, with its targets kept inside the language model (`lora_target_regex`):
    LoRA never adapts the graph encoder or the projector, and the graph encoder (frozen, BatchNorm in eval mode) is
    never among `lora_modules_to_save` (`[graph_projector]`, the default, trains and saves the projector in full)."""
    if not model_args.lora_target_modules or model_args.lora_target_parameters:
        raise ValueError(
            "Give lora_target_modules (module names of the language model, or all-linear) and no "
            "lora_target_parameters: LoRA stays inside the language model"
        )
    if any("graph_encoder" in name for name in model_args.lora_modules_to_save or []):
        raise ValueError("The graph encoder stays frozen in stage 2: remove it from lora_modules_to_save")
    targets = model_args.lora_target_modules  # ModelConfig turns a one-name list into the name
    config = get_peft_config(model_args)
    config.target_modules = lora_target_regex(model, [targets] if isinstance(targets, str) else list(targets))
    return config


def no_accelerator() -> bool:
    """True on a machine without a usable CUDA, XPU, MPS, ... device (a CUDA build of torch on a machine without a GPU
    included): then training runs on the CPU (`use_cpu`, so a bf16 recipe trains there), and several processes (e.g.
    `accelerate launch --multi_gpu --num_processes 2`, which uses torchrun) use the gloo backend."""
    return get_current_accelerator() is None or not torch.accelerator.is_available()
