"""Stage 2, instruction tuning with TRL's SFTTrainer: LoRA on the LLM, the projector trained in full, the graph
encoder frozen (BatchNorm in eval mode), loss on assistant turns only.

    llamo train stage2 --config recipe.yaml [--model_name_or_path runs/stage1 --output_dir runs/stage2]
    accelerate launch -m llamo.training.stage2 --config recipe.yaml

Results: `OUTPUT_DIR/adapter` (LoRA + projector, onto the stage-1 model) and `OUTPUT_DIR/merged` (a full model).
SIGTERM or Ctrl-C saves a checkpoint at the end of the current step and exits; the same command resumes from it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from peft import PeftModel
from trl import ModelConfig, SFTConfig

from llamo.processing.instruction_store import write_json_atomically
from llamo.storage import exit_on_disk_full

from .common import final_save_guard, load_for_training, lora_config, start_run, train
from .config import SUMMARY, Stage2Arguments, StageArguments, parse_stage_arguments


def main(
    script_args: Stage2Arguments, training_args: SFTConfig, model_args: ModelConfig, log=print, callbacks=()
) -> Path:
    """Run stage 2 (or resume it, or find it finished); save the adapter and the merged model under
    `training_args.output_dir`. `callbacks`: further `TrainerCallback`s (e.g. `TimeBudgetCallback`)."""
    if not model_args.model_name_or_path:
        raise ValueError("Stage 2 needs `model_name_or_path`: a stage-1 output folder")
    arguments = StageArguments(script_args, training_args, model_args)
    state, log, output_dir, checkpoint, finished = start_run(arguments, log)
    if finished:
        return output_dir
    model, processor = load_for_training(model_args.model_name_or_path, model_args.dtype)
    model.freeze_graph_encoder()
    if script_args.adapter_path:  # continue an earlier stage-2 adapter (LoRA + projector), its weights trainable
        adapter = Path(script_args.adapter_path)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"No stage-2 adapter to continue in {adapter} (adapter_config.json missing)")
        log(f"[stage2] continuing the adapter in {adapter}")
        model, peft_config = PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None
    else:
        peft_config = lora_config(model, model_args)
    trainer, run = train(arguments, state, model, processor, checkpoint, log, peft_config, callbacks)
    with final_save_guard(output_dir, "the final adapter and merged model", trainer.model):
        adapter_dir, merged_dir = output_dir / "adapter", output_dir / "merged"
        trainer.save_model(str(adapter_dir))
        if state.is_main_process:
            processor.save_pretrained(adapter_dir)
            if script_args.save_merged:
                trainer.model.merge_and_unload().save_pretrained(merged_dir)
                processor.save_pretrained(merged_dir)
            summary = {"stage": 2, "base_model": str(model_args.model_name_or_path), **run}
            write_json_atomically(output_dir / SUMMARY, summary)
            log(
                f"[stage2] done: adapter in {adapter_dir}"
                + (f", merged model in {merged_dir}" if script_args.save_merged else "")
            )
    return output_dir


parse = partial(parse_stage_arguments, "stage2")
"""Stage 2's `(script, training, model)` arguments from a command line (`--config RECIPE` and flags)."""


if __name__ == "__main__":
    with exit_on_disk_full("llamo.training.stage2"):
        main(*parse())
