"""Fuzzing the input path: hostile inputs through `llamo.featurize_smiles`, `LlamoProcessor` and the pipeline with a
molecule index.

    python3 benchmarks/fuzz_inputs.py --seed 0 --count 3000 [--targets featurize_smiles processor chat ...]

The inputs come from `--seed` (`fuzz_values.py`): random printable and Unicode text, NUL characters, lone surrogates,
very long SMILES (up to 10 MB), mutated golden molecules, huge rings, deep branches, many dots, odd bracket atoms,
ring-bond chaos, dense graphs (cliques), names and CXSMILES tails, molecules near the 512-atom limit, explicit
hydrogens and non-string values. The targets:
- `featurize_smiles`: `featurize_smiles(value, max_atoms=512, index=i)`;
- `processor`: `processor(text=["<graph> Describe this molecule."], smiles=[value])`, with the test suite's tiny
  tokenizer;
- `chat`: `processor.apply_chat_template(conversation, tokenize=True)`, the input placed in one of the conversation
  shapes of `CHAT_SHAPES` in turn: as a molecule block's SMILES, a text block's text, a message's content, a whole
  message, a content block, a molecule beside a text that writes `<graph>` itself, a system message;
- `neighbours`: the value as the query molecule of the pipeline (an untrained tiny LLaMo, 2 new tokens) with an index
  of golden molecules, 2 neighbours;
- `index_entry`: an index built (`MoleculeIndex.from_records`) with the value as one entry's SMILES, as the answer of
  the query molecule's own entry, or as a whole row, in turn; then a golden molecule asked with that index, the
  model ranking its answer against the neighbours' (`rank_neighbour_answers=True`).

Every call runs in a worker process; a call still running after `--timeout` seconds is a hang (the worker is
killed and restarted). Outcomes: ok; a ValueError naming the input (its message holds "index", "Input",
"Conversation", "Sequence" or the cut input and is under 400 characters; for the chat target a TypeError for a
malformed structure counts too); any other ValueError; other exception types; hangs. Targets: no hangs, nothing but
errors naming the input.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fuzz_values import GENERATORS

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS as MAX_ATOMS

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "featurization_golden.jsonl"
MESSAGE_LIMIT = 400
PROMPT = "<graph> Describe this molecule."
NEEDS = {
    "featurize_smiles": set(),
    "processor": {"processor"},
    "chat": {"processor"},
    "neighbours": {"pipeline", "index"},
    "index_entry": {"pipeline", "golden"},
}
"""Each target and what the worker must have built for it (`_build_tools`)."""
TARGETS = tuple(NEEDS)
INDEX_SIZE = 30

# --- inputs -------------------------------------------------------------------------------------------------------


def _user(*content: Any) -> list[dict]:
    return [{"role": "user", "content": list(content)}]


CHAT_SHAPES = (
    lambda value: _user({"type": "molecule", "smiles": value}, {"type": "text", "text": "Describe this molecule."}),
    lambda value: _user({"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": value}),
    lambda value: [{"role": "user", "content": value}],
    lambda value: [{"role": "user", "content": "Hello."}, value],
    lambda value: _user(value),
    lambda value: _user({"type": "molecule", "smiles": value}, {"type": "text", "text": "<graph> and"}),
    lambda value: [{"role": "system", "content": value}],
)
"""Conversations around a fuzzed value, for the chat target (shape `index % len(CHAT_SHAPES)`)."""


def read_golden(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["smiles"] for line in handle]


def generate_inputs(seed: int, count: int, golden: list[str]) -> list[tuple[str, Any]]:
    """`count` (kind, value) pairs, the kinds taken in turn so that every kind gets its share."""
    rng = random.Random(seed)
    kinds = list(GENERATORS)
    return [(kinds[i % len(kinds)], GENERATORS[kinds[i % len(kinds)]](rng, golden)) for i in range(count)]


# --- the worker: runs one call at a time --------------------------------------------------------------------------


def _description_record(smiles: Any, answer: Any) -> dict:
    messages = [{"role": "user", "content": "Describe this molecule."}, {"role": "assistant", "content": answer}]
    return {"smiles": smiles, "task": "description", "messages": messages}


def _known_records(golden: list[str]) -> list[dict]:
    """The fuzz index's entries: the first `INDEX_SIZE` golden molecules with made-up answers."""
    return [_description_record(smiles, f"Known answer {i}.") for i, smiles in enumerate(golden[:INDEX_SIZE])]


def _build_tools() -> tuple[dict[str, Any], str]:
    """A processor around the test suite's tiny tokenizer; a pipeline of an untrained tiny LLaMo around it with an
    index of golden molecules (for the neighbours targets); or what could be built and why not the rest."""
    tools: dict[str, Any] = {}
    try:
        sys.path.insert(0, str(REPO))
        from transformers import pipeline

        from llamo import LlamoProcessor
        from llamo.builder import build_llamo
        from llamo.processing.index import MoleculeIndex
        from tests.conftest import TINY_GRAPH, TINY_PROJECTOR, make_tiny_llama, make_tokenizer

        tokenizer = make_tokenizer()
        tokenizer.add_tokens(["<graph>"], special_tokens=True)
        tools["processor"] = LlamoProcessor(tokenizer, num_graph_tokens=4, max_atoms=MAX_ATOMS)
        tools["processor"](text=[PROMPT], smiles=["CCO"])
        with tempfile.TemporaryDirectory() as folder:
            tokenizer = make_tokenizer()
            make_tiny_llama(len(tokenizer)).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            model, processor = build_llamo(folder, graph_config=TINY_GRAPH, projector_config=TINY_PROJECTOR)
        tools["pipeline"] = pipeline(
            "molecule-text-generation", model=model.eval(), processor=processor, device="cpu", max_new_tokens=2
        )
        tools["golden"] = read_golden(GOLDEN)
        tools["index"] = MoleculeIndex.from_records(_known_records(tools["golden"]), "description", progress=False)[0]
        return tools, ""
    except Exception as error:  # the API may change: the harness still fuzzes what it could build
        return tools, f"{type(error).__name__}: {error}"


def _names_input(message: str, value: Any) -> bool:
    from llamo.smiles_llamo import shorten_for_message

    words = ("index", "Input", "Conversation", "Sequence", shorten_for_message(value))
    return len(message) < MESSAGE_LIMIT and any(word in message for word in words)


def _index_entry(index: int, value: Any, tools: dict[str, Any]) -> None:
    """An index holding `value` as one entry's SMILES, as the answer of an entry of the query molecule, or as a whole
    row (`index % 3`), then a ranked question about a golden molecule with that index."""
    from llamo.processing.index import MoleculeIndex

    query = tools["golden"][index % INDEX_SIZE]
    hostile = [_description_record(value, "Hostile entry."), _description_record(query, value), value][index % 3]
    records = [*_known_records(tools["golden"]), hostile]
    built = MoleculeIndex.from_records(records, "description", progress=False)[0]
    question = {"smiles": query, "text": "Describe this molecule."}
    tools["pipeline"](question, index=built, neighbours=2, rank_neighbour_answers=True)


def _call(target: str, index: int, value: Any, tools: dict[str, Any]) -> dict:
    import time

    from llamo import featurize_smiles

    start = time.perf_counter()
    try:
        if target == "processor":
            tools["processor"](text=[PROMPT], smiles=[value])
        elif target == "chat":
            tools["processor"].apply_chat_template(CHAT_SHAPES[index % len(CHAT_SHAPES)](value), tokenize=True)
        elif target == "neighbours":
            question = {"smiles": value, "text": "Describe this molecule."}
            tools["pipeline"](question, index=tools["index"], neighbours=2)
        elif target == "index_entry":
            _index_entry(index, value, tools)
        else:
            featurize_smiles(value, max_atoms=MAX_ATOMS, index=index)
        result = {"outcome": "ok"}
    except Exception as error:
        message = str(error)
        if isinstance(error, ValueError) or (target == "chat" and isinstance(error, TypeError)):
            outcome = "value_error_naming_input" if _names_input(message, value) else "other_value_error"
        else:
            outcome = "other_exception"
        result = {"outcome": outcome, "type": type(error).__name__, "message": message[:300], "length": len(message)}
    result["seconds"] = time.perf_counter() - start
    return result


def _serve(connection: Connection, with_tools: bool) -> None:
    from rdkit import RDLogger

    import llamo  # imported before the first call, whose time limit must not pay for it

    RDLogger.DisableLog("rdApp.*")
    llamo.featurize_smiles("CCO")
    tools, note = _build_tools() if with_tools else ({}, "not requested")
    connection.send((sorted(tools), note))
    while (job := connection.recv()) is not None:
        target, index, value = job
        connection.send(_call(target, index, value, tools))


class Worker:
    """One worker process; a call over the time limit kills it and starts a fresh one."""

    def __init__(self, with_tools: bool) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._with_tools = with_tools
        self.tools, self.note = self._start()

    def _start(self) -> tuple[list[str], str]:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self._with_tools), daemon=True)
        self._process.start()
        child.close()
        return self._connection.recv()

    def run(self, target: str, index: int, value: Any, timeout: float) -> dict | None:
        """The call's result, or None when it ran past `timeout` seconds."""
        self._connection.send((target, index, value))
        if self._connection.poll(timeout):
            return self._connection.recv()
        self._process.kill()
        self._process.join()
        self._start()
        return None

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=10)


# --- the tally ----------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes of one target."""

    outcomes: Counter = field(default_factory=Counter)
    error_types: Counter = field(default_factory=Counter)
    longest_message: int = 0
    slowest: tuple[float, str, int] = (0.0, "", 0)
    examples: list[str] = field(default_factory=list)

    def add(self, result: dict | None, kind: str, value: Any, timeout: float) -> None:
        length = len(value) if isinstance(value, (str, bytes, bytearray, list)) else 0
        if result is None:
            result = {"outcome": "hang", "seconds": timeout}
        self.outcomes[result["outcome"]] += 1
        if "type" in result:
            self.error_types[result["type"]] += 1
            self.longest_message = max(self.longest_message, result["length"])
        if result["seconds"] > self.slowest[0]:
            self.slowest = (result["seconds"], kind, length)
        if result["outcome"] in ("hang", "other_exception", "other_value_error") and len(self.examples) < 10:
            self.examples.append(f"{kind} (length {length}): {result['outcome']} {result.get('message', '')[:160]!r}")

    def summary(self) -> dict:
        return {
            "outcomes": dict(self.outcomes),
            "error_types": dict(self.error_types),
            "longest_message": self.longest_message,
            "slowest_seconds": round(self.slowest[0], 3),
            "slowest_input": f"{self.slowest[1]} (length {self.slowest[2]})",
            "examples": self.examples,
        }


def fuzz(seed: int, count: int, timeout: float, targets: Sequence[str]) -> dict:
    inputs = generate_inputs(seed, count, read_golden(GOLDEN))
    worker = Worker(with_tools=any(NEEDS[target] for target in targets))
    skipped = {target: NEEDS[target] - set(worker.tools) for target in targets if NEEDS[target] - set(worker.tools)}
    tallies = {target: Tally() for target in targets if target not in skipped}
    try:
        for index, (kind, value) in enumerate(inputs):
            for target, tally in tallies.items():
                tally.add(worker.run(target, index, value, timeout), kind, value, timeout)
    finally:
        worker.close()
    report = {"seed": seed, "count": count, "timeout_s": timeout, "max_atoms": MAX_ATOMS}
    report["inputs_by_kind"] = dict(Counter(kind for kind, _ in inputs))
    report["skipped"] = {
        target: f"no {', '.join(sorted(missing))} ({worker.note})" for target, missing in skipped.items()
    }
    report["targets"] = {target: tally.summary() for target, tally in tallies.items()}
    return report


def print_report(report: dict) -> None:
    print(f"seed {report['seed']}, {report['count']} inputs, {report['timeout_s']} s per call")
    for target, why in report["skipped"].items():
        print(f"{target}: skipped, {why}")
    for target, summary in report["targets"].items():
        print(f"\n{target}")
        for outcome in ("ok", "value_error_naming_input", "other_value_error", "other_exception", "hang"):
            print(f"  {outcome:26s} {summary['outcomes'].get(outcome, 0)}")
        print(f"  longest error message      {summary['longest_message']} characters")
        print(f"  slowest call               {summary['slowest_seconds']} s: {summary['slowest_input']}")
        print(f"  error types                {summary['error_types']}")
        for example in summary["examples"]:
            print(f"  ! {example}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=3000, help="number of inputs")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per call before it counts as a hang")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS), help="what to fuzz")
    parser.add_argument("--output", help="also write the report as JSON here")
    args = parser.parse_args()
    report = fuzz(args.seed, args.count, args.timeout, args.targets)
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
