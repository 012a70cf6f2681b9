"""Stage 2, instruction tuning with TRL's SFTTrainer: LoRA on the LLM, the projector trained in full, the graph
encoder frozen (BatchNorm in eval mode), loss on assistant turns only.

    llamo train stage2 --config recipe.yaml [--model_path runs/stage1 --output_dir runs/stage2]
    accelerate launch -m llamo.training.stage2 --config recipe.yaml

Results: `OUTPUT_DIR/adapter` (the LoRA adapter + trained projector, for `PeftModel.from_pretrained` onto the stage-1
model) and `OUTPUT_DIR/merged` (a full model folder for `AutoModelForCausalLM` / `AutoProcessor`). SIGTERM or Ctrl-C
saves a checkpoint at the end of the current step and exits; the same command resumes from it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from llamo.processing.collators import LlamoDataCollator
from llamo.storage import disk_full_guard, exit_on_disk_full

from .common import (
    FINAL_SAVE_KEPT,
    CheckpointSpaceMixin,
    PaperScheduleMixin,
    distributed_state,
    load_for_training,
    lora_target_regex,
    prepare_run_dir,
    resolve_recipe_argument,
    schedule_of,
    state_bytes,
    trainer_arguments,
    write_summary,
)
from .config import Stage2Config
from .data import build_training_dataset
from .interrupt import GracefulInterrupt


class LlamoSFTTrainer(CheckpointSpaceMixin, PaperScheduleMixin, SFTTrainer):
    """TRL's `SFTTrainer` with LLaMo's warm-up + cosine schedule; a full disk while checkpointing keeps the last
    complete checkpoint and says so (`CheckpointSpaceMixin`)."""


def lora_config(model, config: Stage2Config) -> LoraConfig:
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(model, list(config.lora_target_modules)),
        modules_to_save=["graph_projector"] if config.train_projector else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def continued_adapter(model, adapter_path: str, log=print):
    """The stage-1 model wrapped in an earlier stage-2 adapter (LoRA + projector), its weights trainable."""
    from peft import PeftModel

    adapter = Path(adapter_path)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No stage-2 adapter to continue in {adapter} (adapter_config.json missing)")
    log(f"[stage2] continuing the adapter in {adapter}")
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def main(config: Stage2Config, log=print) -> Path:
    state = distributed_state()
    log = log if state.is_main_process else (lambda *args, **kwargs: None)
    if not config.model_path:
        raise ValueError("Stage 2 needs `model_path`: a stage-1 output folder")
    with state.main_process_first():
        output_dir, checkpoint, finished = prepare_run_dir(config, log, state.is_main_process)
    if finished:
        return output_dir
    model, processor = load_for_training(config.model_path, config.lm_dtype)
    model.freeze_graph_encoder()
    if config.adapter_path:
        model, peft_config = continued_adapter(model, config.adapter_path, log), None
    else:
        peft_config = lora_config(model, config)
    with state.main_process_first():
        dataset, reports = build_training_dataset(config, log)

    args = trainer_arguments(
        config, SFTConfig, max_length=None, packing=False, dataset_kwargs={"skip_prepare_dataset": True}
    )
    trainer = LlamoSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=LlamoDataCollator(processor, max_length=config.max_length),
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.llamo_schedule = schedule_of(config)
    interrupt = GracefulInterrupt(log)
    trainer.add_callback(interrupt)
    started = time.time()
    with interrupt:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    interrupt.exit_if_interrupted(trainer.state)
    with disk_full_guard(
        output_dir, "the final adapter and merged model", lambda: state_bytes(trainer.model), FINAL_SAVE_KEPT
    ):
        adapter_dir, merged_dir = output_dir / "adapter", output_dir / "merged"
        trainer.save_model(str(adapter_dir))
        if state.is_main_process:
            processor.save_pretrained(adapter_dir)
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            if config.save_merged:
                merged = trainer.model.merge_and_unload()
                merged.save_pretrained(merged_dir)
                processor.save_pretrained(merged_dir)
            write_summary(
                output_dir,
                {
                    "stage": 2,
                    "base_model": str(config.model_path),
                    "metrics": result.metrics,
                    "global_step": trainer.state.global_step,
                    "trainable_parameters": trainable,
                    "wall_seconds": time.time() - started,
                    "resumed_from": checkpoint.name if checkpoint else None,
                    "data": [report.to_dict() for report in reports],
                },
            )
            log(
                f"[stage2] done: adapter in {adapter_dir}"
                + (f", merged model in {merged_dir}" if config.save_merged else "")
            )
    return output_dir


def parse(argv: list[str] | None = None) -> Stage2Config:
    from trl import TrlParser

    argv = resolve_recipe_argument(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser((Stage2Config,)).parse_args_and_config(args=argv)
    return config


if __name__ == "__main__":
    with exit_on_disk_full("llamo.training.stage2"):
        main(parse(sys.argv[1:]))
