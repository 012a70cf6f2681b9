"""Chemical names for LLaMo's motif groups (ester, carboxylic acid, amide, benzene ring, ...), from the SMARTS rules of
`llamo.processing.group_rules` (core atoms only, specific before general). No model and no browser needed.

A rule names a motif group when more than half of a match's atoms lie in it (two of an amide's three atoms, where
LLaMo's rules split a ring carbonyl from its ring nitrogen); a ring system takes only matches wholly inside it. A match
inside one that already named the group is skipped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rdkit import Chem

from llamo.processing.group_rules import rule_matches


def group_names(mol: Chem.Mol, groups: Sequence[Iterable[int]]) -> list[tuple[str, ...]]:
    """Chemical names of each group (atom index set) of `mol`: one tuple per group, empty where no rule knows it (see
    the module docstring; a ring system is a group of three or more atoms, all in rings)."""
    by_atom: dict[int, list[tuple[int, str, frozenset[int]]]] = {}  # (rule position, name, atoms) matches per atom
    for match in rule_matches(mol):
        for atom in match[2]:
            by_atom.setdefault(atom, []).append(match)
    found = []
    for group in map(frozenset, groups):
        candidates = {match for atom in group for match in by_atom.get(atom, ())}
        ring_system = len(group) >= 3 and all(mol.GetAtomWithIdx(atom).IsInRing() for atom in group)
        used: list[frozenset[int]] = []
        names: dict[str, None] = {}  # in order, each once
        for _, name, atoms in sorted(candidates, key=lambda match: (match[0], sorted(match[2]))):
            names_it = atoms <= group if ring_system else 2 * len(atoms & group) > len(atoms)
            if not names_it or any(atoms <= earlier for earlier in used):
                continue
            used.append(atoms)
            names.setdefault(name)
        found.append(tuple(names))
    return found
