"""Stage 1, graph-language alignment: train the graph encoder + projector on description pairs, LLM frozen.

    llamo train stage1 --config recipe.yaml [--output_dir ... --any_SFTConfig_or_ModelConfig_field ...]
    accelerate launch -m llamo.training.stage1 --config recipe.yaml

SIGTERM or Ctrl-C saves a checkpoint at the end of the current step and exits; the same command resumes from it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from trl import ModelConfig, SFTConfig

from llamo.builder import build_llamo, save_llamo
from llamo.processing.instruction_store import write_json_atomically
from llamo.storage import exit_on_disk_full

from .common import final_save_guard, load_for_training, start_run, train
from .config import SUMMARY, Stage1Arguments, StageArguments, parse_stage_arguments


def main(script_args: Stage1Arguments, training_args: SFTConfig, model_args: ModelConfig, log=print) -> Path:
    """Run stage 1 (or resume it, or find it finished) and save the model into `training_args.output_dir`."""
    arguments = StageArguments(script_args, training_args, model_args)
    state, log, output_dir, checkpoint, finished = start_run(arguments, log)
    if finished:
        return output_dir
    start = Path(model_args.model_name_or_path or output_dir / "init")
    if not model_args.model_name_or_path:
        if not script_args.init_llm:
            raise ValueError(
                "Stage 1 needs `model_name_or_path` (a `llamo init` folder) or `init_llm` (an LM to build one around)"
            )
        with state.main_process_first():
            if state.is_main_process and not (start / "config.json").is_file():
                log(f"[stage1] building the starting LLaMo around {script_args.init_llm}")
                model, processor = build_llamo(script_args.init_llm, **script_args.init_options)
                metadata = {"llm": script_args.init_llm, "stage": "init"}
                save_llamo(model, processor, start, overwrite=True, metadata=metadata)
    model, processor = load_for_training(start, model_args.dtype)
    # nothing of the LLM trains, embeddings and LM head included (unlike the original code)
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    model.freeze_graph_encoder(False)
    model.model.graph_projector.requires_grad_(True)
    trainer, run = train(arguments, state, model, processor, checkpoint, log)
    with final_save_guard(output_dir, "the final model", model):
        trainer.save_model(str(output_dir))
        if state.is_main_process:
            processor.save_pretrained(output_dir)
            write_json_atomically(output_dir / SUMMARY, {"stage": 1, **run})
            log(f"[stage1] done: model saved to {output_dir}")
    return output_dir


parse = partial(parse_stage_arguments, "stage1")
"""Stage 1's `(script, training, model)` arguments from a command line (`--config RECIPE` and flags)."""


if __name__ == "__main__":
    with exit_on_disk_full("llamo.training.stage1"):
        main(*parse())
