"""Speed that users feel (issue 16): two ratios, each measured in one process with the contenders alternating.

1. Molecules per second through the user's path, `processor.apply_chat_template(...)` for one molecule and a question
   with featurization and tokenization (`tokenize=True, return_dict=True`, as the README calls it), against
   `ogb.utils.smiles2graph` (ogb 1.3.5, the 9 atom and 3 bond features only) on the same ChEBI-20 molecules, in
   process CPU time. Two more contenders run in the same rounds for reference: `llamo.featurize_smiles` (features
   and motifs, no text) and the floor of the user's path, what it cannot do without (RDKit's parse, writing the
   canonical SMILES the prompt shows, and the tokenizer's backend on the prompt).
   The processor is the bundled default model's (`modeling_llamo/bundled/llamo-smollm2-135m`: the SmolLM2 tokenizer
   with `<graph>`, its chat template, canonical SMILES in the prompt).
2. Decoding tokens per second of LLaMo against its bare language model: a LLaMo with SmolLM2-135M's shape (random
   weights, float32) and a `LlamaForCausalLM` holding the same language-model weights, given the same prompts (the
   processor's `input_ids`; the bare model reads the `<graph>` placeholders as ordinary tokens, so the prompt length
   is the same), greedy, `min_new_tokens = max_new_tokens`. A logits processor stamps every step, so prefill (where
   LLaMo also encodes the graph) and decoding are timed apart.

Pin it to one core (the second one may be busy with other work):

    taskset -c 1 python3 benchmarks/bench_speed_ratios.py --repeats 7 --output speed.json

Needs `pip install --no-deps ogb==1.3.5` (a benchmark-only dependency; `--no-deps` keeps pip from touching torch).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import CHEBI20, SMOLLM2_135M, conversation, median_and_best, parse_config, read_smiles, report, throughput
from rdkit import Chem, rdBase
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from llamo import LlamoConfig, LlamoForConditionalGeneration, LlamoProcessor
from llamo.featurization_llamo import featurize_smiles

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"processor_to_ogb": 1.0, "decoding_llamo_to_bare_lm": 0.95}


@dataclass
class BenchConfig:
    data: str = field(default=CHEBI20, metadata={"help": "ChEBI-20 style TSV (CID, SMILES, description)"})
    processor: str = field(
        default=str(REPO / "modeling_llamo" / "bundled" / "llamo-smollm2-135m"),
        metadata={"help": "a LLaMo processor folder"},
    )
    question: str = "Describe this molecule."
    num_molecules: int = 2000
    repeats: int = field(default=7, metadata={"help": "alternating rounds, processor part"})
    decode_prompts: int = 4
    max_new_tokens: int = 32
    decode_repeats: int = 5
    threads: int = field(default=1, metadata={"help": "torch threads (1: one core)"})
    skip_processor: bool = False
    skip_decoding: bool = False
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def processor_ratio(config: BenchConfig, processor: LlamoProcessor) -> dict:
    from ogb.utils import smiles2graph

    smiles = read_smiles(config.data, config.num_molecules)

    def user_path(item: str) -> object:
        return processor.apply_chat_template(
            conversation(item, config.question), add_generation_prompt=True, tokenize=True, return_dict=True
        )

    # What the user's path cannot do without: RDKit's parse, the canonical SMILES it writes into the prompt, and the
    # tokenizer's backend on the rendered prompt (rendered beforehand, outside the timing).
    prompts = {}
    with rdBase.BlockLogs():
        for item in smiles:
            with contextlib.suppress(ValueError):
                prompts[item] = processor.apply_chat_template(
                    conversation(item, config.question), add_generation_prompt=True
                )
    backend = processor.tokenizer.backend_tokenizer

    def floor(item: str) -> object:
        Chem.MolToSmiles(Chem.MolFromSmiles(item), isomericSmiles=False)
        return backend.encode(prompts[item], add_special_tokens=False)

    contenders = {
        "ogb_smiles2graph": smiles2graph,
        "llamo_processor": user_path,
        "llamo_featurize_smiles": featurize_smiles,
        "floor_parse_write_smiles_tokenize": floor,
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    failed: dict[str, int] = {}
    with rdBase.BlockLogs():
        for function in contenders.values():  # warm-up: template compilation, tokenizer caches, imports
            throughput(function, smiles[:100])
        for round_idx in range(config.repeats):
            order = list(contenders) if round_idx % 2 == 0 else list(reversed(contenders))
            for name in order:
                rate, failed[name] = throughput(contenders[name], smiles)
                rates[name].append(rate)

    def ratio(name: str) -> dict[str, float]:
        paired = [ours / theirs for ours, theirs in zip(rates[name], rates["ogb_smiles2graph"], strict=True)]
        return {
            "median_of_paired_rounds": round(statistics.median(paired), 3),
            "min": round(min(paired), 3),
            "max": round(max(paired), 3),
        }

    return {
        "molecules": len(smiles),
        "rounds": config.repeats,
        "mol_per_s": {name: median_and_best(values) for name, values in rates.items()},
        "ratio_processor_to_ogb": ratio("llamo_processor"),
        "ratio_featurize_smiles_to_ogb": ratio("llamo_featurize_smiles"),
        "ratio_floor_to_ogb": ratio("floor_parse_write_smiles_tokenize"),
        "failed": failed,
        "rounds_mol_per_s": {name: [round(v, 1) for v in values] for name, values in rates.items()},
    }


class StepClock(LogitsProcessor):
    """Records the time of every generation step (called once per new token, right after that step's forward)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(time.perf_counter())
        return scores


def timed_generate(model, inputs: dict, config: BenchConfig, pad_token_id: int) -> dict[str, float]:
    clock = StepClock()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_token_id,
            logits_processor=LogitsProcessorList([clock]),
        )
    end = time.perf_counter()
    new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    if new_tokens != config.max_new_tokens or len(clock.stamps) != new_tokens:
        raise RuntimeError(f"expected {config.max_new_tokens} new tokens, got {new_tokens}")
    return {
        "prefill_s": clock.stamps[0] - start,
        "decode_tokens_per_s": (new_tokens - 1) / (clock.stamps[-1] - clock.stamps[0]),
        "generate_tokens_per_s": new_tokens / (end - start),
    }


def build_models(processor: LlamoProcessor) -> tuple[LlamoForConditionalGeneration, LlamaForCausalLM]:
    torch.manual_seed(0)
    text_config = LlamaConfig(**{**SMOLLM2_135M, "vocab_size": len(processor.tokenizer)})
    model_config = LlamoConfig(
        text_config=text_config,
        graph_token_id=processor.graph_token_id,
        num_graph_tokens=processor.num_graph_tokens,
    )
    llamo = LlamoForConditionalGeneration(model_config).eval()
    bare = LlamaForCausalLM(model_config.text_config).eval()
    bare.model.load_state_dict(llamo.model.language_model.state_dict())
    bare.lm_head.weight = bare.model.embed_tokens.weight
    if not torch.equal(bare.lm_head.weight, llamo.lm_head.weight):
        raise RuntimeError("the bare language model does not hold LLaMo's language-model weights")
    return llamo, bare


def decoding_ratio(config: BenchConfig, processor: LlamoProcessor) -> dict:
    llamo, bare = build_models(processor)
    pad_token_id = processor.tokenizer.pad_token_id or 0
    prompts = [
        processor.apply_chat_template(
            conversation(item, config.question), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        for item in read_smiles(config.data, config.decode_prompts)
    ]
    contenders = {
        "llamo": (llamo, lambda inputs: dict(inputs)),
        "bare_lm": (
            bare,
            lambda inputs: {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]},
        ),
    }
    graph_calls = []
    hook = llamo.model.graph_encoder.register_forward_hook(lambda *args: graph_calls.append(1))
    for model, select in contenders.values():  # warm-up, counting LLaMo's graph encoder calls in one generate
        timed_generate(model, select(prompts[0]), config, pad_token_id)
    hook.remove()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for round_idx in range(config.decode_repeats):
        for prompt in prompts:
            order = list(contenders) if round_idx % 2 == 0 else list(reversed(contenders))
            for name in order:
                model, select = contenders[name]
                runs[name].append(timed_generate(model, select(prompt), config, pad_token_id))

    def paired(key: str) -> list[float]:
        return [ours[key] / theirs[key] for ours, theirs in zip(runs["llamo"], runs["bare_lm"], strict=True)]

    return {
        "prompt_tokens": [int(prompt["input_ids"].shape[1]) for prompt in prompts],
        "new_tokens": config.max_new_tokens,
        "generate_calls_per_model": len(runs["llamo"]),
        "graph_encoder_calls_per_generate": len(graph_calls),
        "decode_tokens_per_s": {
            name: round(statistics.median(run["decode_tokens_per_s"] for run in values), 2)
            for name, values in runs.items()
        },
        "generate_tokens_per_s": {
            name: round(statistics.median(run["generate_tokens_per_s"] for run in values), 2)
            for name, values in runs.items()
        },
        "prefill_ms": {
            name: round(1000 * statistics.median(run["prefill_s"] for run in values), 1)
            for name, values in runs.items()
        },
        "ratio_decode_llamo_to_bare": {
            "median_of_paired_runs": round(statistics.median(paired("decode_tokens_per_s")), 3),
            "min": round(min(paired("decode_tokens_per_s")), 3),
            "max": round(max(paired("decode_tokens_per_s")), 3),
        },
        "ratio_generate_llamo_to_bare": round(statistics.median(paired("generate_tokens_per_s")), 3),
    }


def main(config: BenchConfig) -> dict:
    torch.set_num_threads(config.threads)
    processor = LlamoProcessor.from_pretrained(config.processor)
    result: dict = {"targets": TARGETS}
    if not config.skip_processor:
        result["processor_vs_ogb"] = processor_ratio(config, processor)
    if not config.skip_decoding:
        result["decoding_vs_bare_lm"] = decoding_ratio(config, processor)
    result["machine"] = {
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
    }
    result["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rdkit": rdBase.rdkitVersion,
        "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
    }
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(BenchConfig, __doc__))
