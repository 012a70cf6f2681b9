"""Fuzzing the SMILES input path: hostile inputs through `llamo.featurize_smiles` and `LlamoProcessor`.

    python3 benchmarks/fuzz_inputs.py --seed 0 --count 3000

The inputs come from `--seed`: random printable and Unicode text, NUL characters, lone surrogates, very long
SMILES (up to 10 MB), mutated golden molecules, huge rings, deep branches, many dots, odd bracket atoms, ring-bond
chaos, dense graphs (cliques), names and CXSMILES tails, molecules near the 512-atom limit, explicit hydrogens and
non-string values.
Each input goes to `featurize_smiles(value, max_atoms=512, index=i)` and, when a processor can be built from a
tiny tokenizer, to `processor(text=["<graph> Describe this molecule."], smiles=[value])` and to
`processor.apply_chat_template(conversation, tokenize=True)`, the input placed in one of the conversation shapes of
`CHAT_SHAPES` in turn: as a molecule block's SMILES, a text block's text, a message's content, a whole message, a
content block, a molecule beside a text that writes `<graph>` itself, a system message.

Every call runs in a worker process; a call still running after `--timeout` seconds is a hang (the worker is
killed and restarted). Outcomes: ok; a ValueError naming the input (its message holds "index", "Conversation",
"Sequence" or the cut input and is under 400 characters; for the chat target a TypeError for a malformed structure
counts too); any other ValueError; other exception types; hangs. Targets: no hangs, nothing but errors naming the
input.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import string
import sys
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS as MAX_ATOMS

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "featurization_golden.jsonl"
MESSAGE_LIMIT = 400
PROMPT = "<graph> Describe this molecule."
TARGETS = ("featurize_smiles", "processor", "chat")

# --- inputs -------------------------------------------------------------------------------------------------------

SMILES_ALPHABET = "CNOSPFIBrcnospbl[]()=#$:/\\@+-.%0123456789H*"
ELEMENTS = ("C", "N", "O", "S", "P", "Fe", "Na", "Cl", "Br", "U", "Og", "Xx", "c", "n", "se", "as", "*", "H", "D")
REPEATED_UNITS = ("C", "C(C)", "c1ccccc1", "C1CCCCC1", "CC(=O)O", "[H]", "O", "[Na+].")


def _printable(rng: random.Random, golden: list[str]) -> str:
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200)))


def _unicode(rng: random.Random, golden: list[str]) -> str:
    ranges = ((0x20, 0x7E), (0xA0, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF))
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 100)))


def _insert(rng: random.Random, text: str, piece: str, times: int) -> str:
    for _ in range(times):
        where = rng.randint(0, len(text))
        text = text[:where] + piece + text[where:]
    return text


def _with_nul(rng: random.Random, golden: list[str]) -> str:
    if rng.random() < 0.2:
        return "\x00" * rng.choice([1, 1000, 1_000_000])
    return _insert(rng, rng.choice(golden), "\x00", rng.randint(1, 3))


def _with_surrogate(rng: random.Random, golden: list[str]) -> str:
    surrogate = chr(rng.randint(0xD800, 0xDFFF))
    return _insert(rng, rng.choice(golden), surrogate, rng.randint(1, 3))


def _long(rng: random.Random, golden: list[str]) -> str:
    if rng.random() < 0.01:
        return "C" * 10_000_000
    return rng.choice(REPEATED_UNITS) * rng.choice([600, 2_000, 4_096, 25_000, 100_000, 125_000])


def _mutated(rng: random.Random, golden: list[str]) -> str:
    text = rng.choice(golden)
    for _ in range(rng.randint(1, 6)):
        where = rng.randint(0, len(text))
        choice = rng.random()
        if choice < 0.35:
            text = text[:where] + rng.choice(SMILES_ALPHABET) + text[where:]
        elif choice < 0.6:
            text = text[:where] + text[where + 1 :]
        elif choice < 0.85:
            text = text[:where] + rng.choice(SMILES_ALPHABET) + text[where + 1 :]
        else:
            text = text[:where] + text[where : where + rng.randint(1, 20)] * rng.randint(2, 40) + text[where:]
    return text


def _huge_ring(rng: random.Random, golden: list[str]) -> str:
    size = rng.choice([100, 400, 509, 510, 511, 600, 5_000, 50_000])
    atom = rng.choice(["C", "c", "N", "[Si]"])
    return f"{atom}1{atom * size}{atom}1"


def _deep_branches(rng: random.Random, golden: list[str]) -> str:
    depth = rng.choice([10, 255, 256, 500, 1_000, 10_000, 100_000])
    close = ")" * (depth if rng.random() < 0.7 else rng.randint(0, depth))
    return "C(" * depth + "C" + close


def _many_dots(rng: random.Random, golden: list[str]) -> str:
    count = rng.choice([10, 500, 513, 5_000, 100_000])
    return rng.choice([".", "C.", "[Na+].", ".."]) * count + rng.choice(["", "C"])


def _bracket_atom(rng: random.Random) -> str:
    isotope = rng.choice(["", "", "0", "2", "13", "999", "65536", "99999999999"])
    chirality = rng.choice(["", "", "@", "@@", "@TH1", "@OH30", "@SP3", "@TB20", "@AL2"])
    hydrogens = rng.choice(["", "", "H", "H4", "H9", "H99"])
    charge = rng.choice(["", "", "+", "-", "+3", "-4", "+15", "-15", "+++", "+99999999999"])
    atom_map = rng.choice(["", "", ":1", ":0", ":99999", ":99999999999"])
    return f"[{isotope}{rng.choice(ELEMENTS)}{chirality}{hydrogens}{charge}{atom_map}]"


def _bracket_atoms(rng: random.Random, golden: list[str]) -> str:
    bonds = ("", "", "-", "=", "#", "$", ":", "/", "\\", ".")
    return "".join(_bracket_atom(rng) + rng.choice(bonds) for _ in range(rng.randint(1, 30)))


def _ring_bonds(rng: random.Random, golden: list[str]) -> str:
    closures = ("1", "2", "9", "%10", "%99", "%(123)", "%(99999)", "=1", "#2", "%")
    atoms = [rng.choice(["C", "c", "N", "O", "[C]"]) + "".join(rng.choices(closures, k=rng.randint(0, 4)))]
    atoms += [rng.choice(["C", "c", "N"]) + rng.choice(closures) for _ in range(rng.randint(0, 200))]
    return "".join(atoms)


def _clique(size: int, atom: str) -> str:
    """A SMILES of `size` atoms all bonded to each other: a chain plus a `%(n)` ring bond for every other pair."""
    labels: dict[tuple[int, int], int] = {}
    parts = []
    for i in range(size):
        closing = [labels.pop((j, i)) for j in range(i - 1)]
        opening = []
        for j in range(i + 2, size):
            labels[(i, j)] = i * size + j  # unique per pair
            opening.append(labels[(i, j)])
        parts.append(atom + "".join(f"%({label})" for label in closing + opening))
    return "".join(parts)


def _dense_rings(rng: random.Random, golden: list[str]) -> str:
    atom = rng.choice(["[Fe]", "[U]", "C", "[C]"])
    if rng.random() < 0.5:
        return _clique(rng.choice([5, 8, 12, 15, 20, 30, 40, 50]), atom) + "C" * rng.choice([0, 100, 450])
    return ".".join(_clique(rng.choice([5, 8, 11, 14]), atom) for _ in range(rng.choice([2, 10, 20, 40])))


def _name_or_extension(rng: random.Random, golden: list[str]) -> str:
    tail = _printable(rng, golden) if rng.random() < 0.5 else "|" + _printable(rng, golden) + "|"
    return rng.choice(golden) + rng.choice([" ", "\t", "\n"]) + tail


def _near_limit(rng: random.Random, golden: list[str]) -> str:
    unit, atoms = rng.choice([("C", 1), ("C1CCCCC1", 6), ("NCC(=O)", 4), ("c1ccccc1", 6), ("OC(CO)", 4)])
    return unit * (rng.randint(440, 580) // atoms)


def _hydrogens(rng: random.Random, golden: list[str]) -> str:
    return rng.choice(["[H][H].", "[H]", "[2H]", "[H]C", "[H+].", "[H]/C=C/"]) * rng.choice([1, 10, 300, 600, 3_000])


def _non_string(rng: random.Random, golden: list[str]) -> Any:
    return rng.choice([None, 42, 3.5, b"CCO", bytearray(b"C" * 1_000), ["C"] * 10_000, {"smiles": "C"}, ("C",)])


def _golden(rng: random.Random, golden: list[str]) -> str:
    return rng.choice(golden)


GENERATORS = {
    "printable": _printable,
    "unicode": _unicode,
    "nul": _with_nul,
    "surrogate": _with_surrogate,
    "long": _long,
    "mutated": _mutated,
    "huge_ring": _huge_ring,
    "deep_branches": _deep_branches,
    "many_dots": _many_dots,
    "bracket_atoms": _bracket_atoms,
    "ring_bonds": _ring_bonds,
    "dense_rings": _dense_rings,
    "name_or_extension": _name_or_extension,
    "near_limit": _near_limit,
    "hydrogens": _hydrogens,
    "non_string": _non_string,
    "golden": _golden,
}


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


def _build_processor() -> tuple[Any, str]:
    """A processor around a tiny tokenizer (the test suite's), or None and why not."""
    try:
        sys.path.insert(0, str(REPO))
        from llamo import LlamoProcessor
        from tests.conftest import make_tokenizer

        tokenizer = make_tokenizer()
        tokenizer.add_tokens(["<graph>"], special_tokens=True)
        processor = LlamoProcessor(tokenizer, num_graph_tokens=4, max_atoms=MAX_ATOMS)
        processor(text=[PROMPT], smiles=["CCO"])
        return processor, ""
    except Exception as error:  # the processor's API may change: the harness still fuzzes featurize_smiles
        return None, f"{type(error).__name__}: {error}"


def _names_input(message: str, value: Any) -> bool:
    from llamo.smiles_llamo import shorten_for_message

    named = any(word in message for word in ("index", "Conversation", "Sequence", shorten_for_message(value)))
    return len(message) < MESSAGE_LIMIT and named


def _call(target: str, index: int, value: Any, processor: Any) -> dict:
    import time

    from llamo import featurize_smiles

    start = time.perf_counter()
    try:
        if target == "processor":
            processor(text=[PROMPT], smiles=[value])
        elif target == "chat":
            processor.apply_chat_template(CHAT_SHAPES[index % len(CHAT_SHAPES)](value), tokenize=True)
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


def _serve(connection: Connection, with_processor: bool) -> None:
    from rdkit import RDLogger

    import llamo  # imported before the first call, whose time limit must not pay for it

    RDLogger.DisableLog("rdApp.*")
    llamo.featurize_smiles("CCO")
    processor, note = _build_processor() if with_processor else (None, "not requested")
    connection.send((processor is not None, note))
    while (job := connection.recv()) is not None:
        target, index, value = job
        connection.send(_call(target, index, value, processor))


class Worker:
    """One worker process; a call over the time limit kills it and starts a fresh one."""

    def __init__(self, with_processor: bool) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._with_processor = with_processor
        self.has_processor, self.note = self._start()

    def _start(self) -> tuple[bool, str]:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self._with_processor), daemon=True)
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


def fuzz(seed: int, count: int, timeout: float, with_processor: bool) -> dict:
    inputs = generate_inputs(seed, count, read_golden(GOLDEN))
    worker = Worker(with_processor)
    targets = TARGETS if worker.has_processor else TARGETS[:1]
    tallies = {target: Tally() for target in targets}
    try:
        for index, (kind, value) in enumerate(inputs):
            for target in targets:
                tallies[target].add(worker.run(target, index, value, timeout), kind, value, timeout)
    finally:
        worker.close()
    report = {"seed": seed, "count": count, "timeout_s": timeout, "max_atoms": MAX_ATOMS}
    report["inputs_by_kind"] = dict(Counter(kind for kind, _ in inputs))
    report["processor"] = "used" if worker.has_processor else f"skipped ({worker.note})"
    report["targets"] = {target: tally.summary() for target, tally in tallies.items()}
    return report


def print_report(report: dict) -> None:
    print(f"seed {report['seed']}, {report['count']} inputs, {report['timeout_s']} s per call")
    print(f"processor: {report['processor']}")
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
    parser.add_argument("--no-processor", action="store_true", help="fuzz featurize_smiles only")
    parser.add_argument("--output", help="also write the report as JSON here")
    args = parser.parse_args()
    report = fuzz(args.seed, args.count, args.timeout, not args.no_processor)
    print_report(report)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
