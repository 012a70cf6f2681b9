"""Hostile values for `fuzz_inputs.py`: `GENERATORS` maps a kind to `(rng, golden SMILES) -> value`."""

from __future__ import annotations

import random
import string
from typing import Any

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
