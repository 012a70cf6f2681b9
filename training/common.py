"""What both training stages share: the paper's learning-rate schedule, safe run folders, resumable checkpoints (and
a full disk while saving one, said plainly: `CheckpointSpaceMixin`)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

RECIPES_DIR = Path(__file__).parent / "recipes"
ACCELERATE_DIR = Path(__file__).parent / "accelerate"
RUN_CONFIG = "llamo_run_config.json"
SUMMARY = "training_summary.json"
FINAL_SAVE_KEPT = "Training finished and its last checkpoint is kept: the rerun only saves the final model."
IGNORED_FOR_RESUME = {
    "overwrite_output_dir",
    "disable_tqdm",
    "report_to",
    "logging_steps",
    "dataloader_num_workers",
    "num_proc",
    "num_proc_min_rows",
    "data_cache_dir",
    "save_total_limit",
}


def resolve_recipe_argument(argv: list[str]) -> list[str]:
    """Let `--config NAME` name a shipped recipe (`llamo recipes` lists them) when NAME is not a file."""
    argv = list(argv)
    for index, value in enumerate(argv[:-1]):
        if value == "--config" and not Path(argv[index + 1]).is_file():
            candidate = RECIPES_DIR / f"{argv[index + 1].removesuffix('.yaml')}.yaml"
            if candidate.is_file():
                argv[index + 1] = str(candidate)
            else:
                names = ", ".join(sorted(path.stem for path in RECIPES_DIR.glob("*.yaml")))
                raise FileNotFoundError(f"Recipe not found: {argv[index + 1]} (neither a file nor one of: {names})")
    return argv


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    peak_lr: float,
    warmup_start_lr: float,
    min_lr: float,
) -> LambdaLR:
    """
    LLaMo's schedule: linear warm-up from `warmup_start_lr` to `peak_lr` over `warmup_steps`, then cosine decay to
    `min_lr` at `total_steps`. Warm-up is cut to the run's length when the run is shorter.
    """
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            lr = warmup_start_lr + (peak_lr - warmup_start_lr) * step / warmup_steps
        else:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return lr / peak_lr

    return LambdaLR(optimizer, factor)


class PaperScheduleMixin:
    """A Trainer mixin that creates `warmup_cosine_schedule` from `self.llamo_schedule` (peak/start/min lr, warm-up)."""

    llamo_schedule: dict

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = warmup_cosine_schedule(
                optimizer if optimizer is not None else self.optimizer,
                total_steps=num_training_steps,
                **self.llamo_schedule,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler


def state_bytes(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Bytes of a module's saved state: its parameters and buffers (tied tensors once), or its trainable parameters."""
    if trainable_only:
        tensors = [param for param in module.parameters() if param.requires_grad]
    else:
        tensors = list(module.state_dict().values())
    unique = {(tensor.data_ptr(), tensor.numel()): tensor for tensor in tensors}
    return sum(tensor.numel() * tensor.element_size() for tensor in unique.values())


def optimizer_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of an optimizer's state tensors (AdamW: two moments per trainable parameter)."""
    if optimizer is None:
        return 0
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


class CheckpointSpaceMixin:
    """
    A Trainer mixin for a full disk while a checkpoint is written: the partial `checkpoint-N` folder is removed (so
    that it is never resumed from, nor fills the disk), the last complete checkpoint is kept, and a `DiskFullError`
    says which folder is full and how much a checkpoint needs (the last complete one's size, else the model's saved
    state plus the optimizer's).
    """

    def _save_checkpoint(self, model, trial) -> None:
        from llamo.storage import DiskFullError, is_disk_full

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
        from llamo.storage import folder_bytes

        if previous is not None:
            return folder_bytes(previous)
        peft = hasattr(self.model, "peft_config")
        return state_bytes(self.model, trainable_only=peft) + optimizer_bytes(self.optimizer)


def checkpoint_is_complete(folder: Path) -> bool:
    """A Trainer checkpoint is complete once its `trainer_state.json` (written last) exists and parses."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return (folder / "scheduler.pt").is_file() and (folder / "rng_state.pth").is_file()


def last_complete_checkpoint(output_dir: Path, set_aside_incomplete: bool = True) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir`; incomplete ones (a run killed while saving) are renamed
    `checkpoint-N.incomplete` so that neither we nor the Trainer's rotation mistake them for real ones."""
    found = []
    for folder in output_dir.glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if folder.is_dir() and suffix.isdigit():
            found.append((int(suffix), folder))
    for _, folder in sorted(found, reverse=True):
        if checkpoint_is_complete(folder):
            return folder
        target = folder.with_name(folder.name + ".incomplete")
        if set_aside_incomplete and not target.exists():
            folder.rename(target)
    return None


def prepare_run_dir(config, log=print, is_main_process: bool = True) -> tuple[Path, Path | None, bool]:
    """
    Check the run folder before training. Returns `(output_dir, checkpoint_to_resume_or_None, finished)`.

    A new or empty folder starts a run; a folder of the same run (same saved config) resumes from its last complete
    checkpoint, or reports it finished; anything else (another run's folder, unrelated files) is refused unless
    `overwrite_output_dir`, which starts over. Only the main process changes the folder: the others (run after it,
    e.g. under `main_process_first`) only read it.
    """
    output_dir = Path(config.output_dir)
    saved_file = output_dir / RUN_CONFIG
    current = json.loads(json.dumps(asdict(config), default=str))
    if not is_main_process:
        finished = (output_dir / SUMMARY).is_file()
        return output_dir, None if finished else last_complete_checkpoint(output_dir, False), finished
    if config.overwrite_output_dir and saved_file.is_file():
        log(f"[run] --overwrite_output_dir: starting {output_dir} over")
        shutil.rmtree(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite_output_dir:
        if not saved_file.is_file():
            raise FileExistsError(
                f"{output_dir} is not empty and holds no llamo run: choose another output_dir (or pass "
                "--overwrite_output_dir to train there anyway)."
            )
        saved = json.loads(saved_file.read_text())
        differing = sorted(
            key
            for key in set(saved) | set(current)
            if key not in IGNORED_FOR_RESUME and saved.get(key) != current.get(key)
        )
        if differing:
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


def write_summary(output_dir: Path, summary: dict) -> None:
    """Write the run summary, the mark of a finished run, whole or not at all (a full disk leaves no half file)."""
    temporary = output_dir / f"{SUMMARY}.partial"
    try:
        temporary.write_text(json.dumps(summary, indent=2, default=str))
        temporary.replace(output_dir / SUMMARY)
    finally:
        temporary.unlink(missing_ok=True)


__all__ = [
    "CheckpointSpaceMixin",
    "PaperScheduleMixin",
    "checkpoint_is_complete",
    "last_complete_checkpoint",
    "prepare_run_dir",
    "warmup_cosine_schedule",
    "write_summary",
]


def load_for_training(model_path: str | Path, lm_dtype: str = "float32"):
    """
    Load a LLaMo folder for training: the language model in `lm_dtype` (bfloat16 halves a frozen 7B LLM's memory),
    the graph encoder and projector in float32 (they are trained; autocast computes in bf16 under `bf16=True`), with
    their saved float32 values, not values rounded through `lm_dtype` (the model's `_keep_in_fp32_modules_strict`).
    """
    from llamo import LlamoForConditionalGeneration, LlamoProcessor

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No LLaMo model in {path} (config.json missing): give a `llamo init` or stage output")
    model = LlamoForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, lm_dtype))
    return model, LlamoProcessor.from_pretrained(path)


def lora_target_regex(model, names: list[str]) -> str:
    """A PEFT `target_modules` regex matching the given module names inside the language model only (never the GIN
    or the projector). `["all-linear"]` expands to every linear layer of the LM's decoder."""
    prefix = "model.language_model."
    if names == ["all-linear"]:
        names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.model.language_model.named_modules()
                if isinstance(module, torch.nn.Linear) and "." in name
            }
        )
    found = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name.startswith(prefix) and name.rsplit(".", 1)[-1] in names
    }
    missing = sorted(set(names) - found)
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} do not exist in the language model")
    alternatives = "|".join(sorted(names))
    return rf"^model\.language_model\..*\.({alternatives})$"


def no_accelerator() -> bool:
    """True on a CPU-only machine: then several processes (e.g. `accelerate launch --multi_gpu --num_processes 2`,
    which uses torchrun) train with the gloo backend."""
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return not (
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or (mps is not None and mps.is_available())
    )


def distributed_state():
    """The process's `accelerate.PartialState`, on the CPU when there is no accelerator."""
    from accelerate import PartialState

    return PartialState(cpu=no_accelerator())


def trainer_arguments(config, cls, **extra):
    """The Trainer/SFTConfig arguments of a recipe (the schedule itself is created by `PaperScheduleMixin`)."""
    return cls(
        output_dir=str(config.output_dir),
        use_cpu=no_accelerator(),
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        optim="adamw_torch",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        bf16=config.bf16,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        report_to=config.report_to,
        dataloader_num_workers=config.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length",
        disable_tqdm=config.disable_tqdm,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        **extra,
    )


def schedule_of(config) -> dict:
    return {
        "warmup_steps": config.warmup_steps,
        "peak_lr": config.learning_rate,
        "warmup_start_lr": config.warmup_start_learning_rate,
        "min_lr": config.min_learning_rate,
    }
