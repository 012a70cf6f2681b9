"""Stage 1, graph-language alignment: train the graph encoder + projector on description pairs, LLM frozen.

llamo train stage1 --config recipe.yaml [--output_dir ...]
accelerate launch -m llamo.training.stage1 --config recipe.yaml

SIGTERM or Ctrl-C saves a checkpoint at the end of the current step and exits; the same command resumes from it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from llamo.processing.collators import LlamoDataCollator
from llamo.storage import disk_full_guard, exit_on_disk_full

from .common import (
    FINAL_SAVE_KEPT,
    CheckpointSpaceMixin,
    PaperScheduleMixin,
    distributed_state,
    load_for_training,
    prepare_run_dir,
    resolve_recipe_argument,
    schedule_of,
    state_bytes,
    trainer_arguments,
    write_summary,
)
from .config import Stage1Config
from .data import build_training_dataset
from .interrupt import GracefulInterrupt


class LlamoTrainer(CheckpointSpaceMixin, PaperScheduleMixin, SFTTrainer):
    """TRL's `SFTTrainer` (its fused LM head scores only the answer positions, never the full-vocabulary logits of
    the prompt) with LLaMo's warm-up + cosine schedule; no PEFT in stage 1. A full disk while checkpointing keeps the
    last complete checkpoint and says so (`CheckpointSpaceMixin`)."""


def _starting_model(config: Stage1Config, output_dir: Path, state, log) -> Path:
    if config.model_path:
        return Path(config.model_path)
    if not config.init_llm:
        raise ValueError("Stage 1 needs `model_path` (a `llamo init` folder) or `init_llm` (an LM to build one around)")
    folder = output_dir / "init"
    with state.main_process_first():
        if state.is_main_process and not (folder / "config.json").is_file():
            from llamo.builder import build_llamo, save_llamo

            log(f"[stage1] building the starting LLaMo around {config.init_llm}")
            model, processor = build_llamo(config.init_llm, **config.init_options)
            save_llamo(model, processor, folder, overwrite=True, metadata={"llm": config.init_llm, "stage": "init"})
    return folder


def freeze_language_model(model) -> None:
    """Stage 1: nothing of the LLM trains, embeddings and LM head included (unlike the original code)."""
    for param in model.model.language_model.parameters():
        param.requires_grad_(False)
    for param in model.lm_head.parameters():
        param.requires_grad_(False)
    model.freeze_graph_encoder(False)
    for param in model.model.graph_projector.parameters():
        param.requires_grad_(True)


def main(config: Stage1Config, log=print) -> Path:
    state = distributed_state()
    log = log if state.is_main_process else (lambda *args, **kwargs: None)
    with state.main_process_first():
        output_dir, checkpoint, finished = prepare_run_dir(config, log, state.is_main_process)
    if finished:
        return output_dir
    model, processor = load_for_training(_starting_model(config, output_dir, state, log), config.lm_dtype)
    freeze_language_model(model)
    with state.main_process_first():
        dataset, reports = build_training_dataset(config, log)

    trainer = LlamoTrainer(
        model=model,
        args=trainer_arguments(
            config, SFTConfig, max_length=None, packing=False, dataset_kwargs={"skip_prepare_dataset": True}
        ),
        train_dataset=dataset,
        data_collator=LlamoDataCollator(processor, max_length=config.max_length),
        processing_class=processor,
    )
    trainer.llamo_schedule = schedule_of(config)
    interrupt = GracefulInterrupt(log)
    trainer.add_callback(interrupt)
    started = time.time()
    with interrupt:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    interrupt.exit_if_interrupted(trainer.state)
    with disk_full_guard(output_dir, "the final model", lambda: state_bytes(model), FINAL_SAVE_KEPT):
        trainer.save_model(str(output_dir))
        if state.is_main_process:
            processor.save_pretrained(output_dir)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            write_summary(
                output_dir,
                {
                    "stage": 1,
                    "metrics": result.metrics,
                    "global_step": trainer.state.global_step,
                    "trainable_parameters": trainable,
                    "wall_seconds": time.time() - started,
                    "resumed_from": checkpoint.name if checkpoint else None,
                    "data": [report.to_dict() for report in reports],
                },
            )
            log(f"[stage1] done: model saved to {output_dir}")
    return output_dir


def parse(argv: list[str] | None = None) -> Stage1Config:
    from trl import TrlParser

    argv = resolve_recipe_argument(sys.argv[1:] if argv is None else argv)
    (config,) = TrlParser((Stage1Config,)).parse_args_and_config(args=argv)
    return config


if __name__ == "__main__":
    with exit_on_disk_full("llamo.training.stage1"):
        main(parse(sys.argv[1:]))
