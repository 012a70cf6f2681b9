"""Chemical names for LLaMo's motif groups (ester, carboxylic acid, amide, benzene ring, ...), from a small table of
SMARTS rules. No model and no browser needed.

Each rule's SMARTS matches only the *core* atoms of its group (the atoms a chemist would circle); the surroundings
that decide the name are written as recursive SMARTS (`$(...)`), so a ketone matches its C=O only and a phenol its O
only. A rule names a motif group when more than half of a match's atoms lie in the group: a whole match inside it, or
two of an amide's three atoms where LLaMo's rules split a ring carbonyl from its ring nitrogen (caffeine). A ring
system (a group of ring atoms only) takes only names whose match lies wholly inside it: what hangs off a ring is a
group of its own.

Rules run in table order, specific before general; a match inside (or equal to) a match that already named the
group is skipped, so an ester is not also called a carbonyl, nor a phenol a hydroxyl.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from rdkit import Chem

MAX_MATCHES_PER_RULE = 256
"""At most this many matches of one rule are read per molecule, which bounds the work on large molecules."""

_NOT_ACYL_N = "!$(N[#6,#16,#15]=[O,S,N])"  # not an amide, sulfonamide, amidine, ... nitrogen
_METALS = "Li,Na,K,Rb,Cs,Be,Mg,Ca,Sr,Ba,Al,Zn,Fe,Cu,Co,Ni,Mn,Ag,Au,Pt,Pd,Hg,Sn,Pb"

RULES: tuple[tuple[str, str], ...] = (
    ("sulfonamide", "[SX4](=[OX1])(=[OX1])[NX3]"),
    ("sulfonic acid", "[SX4](=[OX1])(=[OX1])[OX2H1]"),
    ("sulfonate", "[SX4](=[OX1])(=[OX1])[$([OX1-]),$([OX2][#6])]"),
    ("sulfone", "[SX4;$(S([#6])[#6])](=[OX1])=[OX1]"),
    ("phosphate", "[PX4](=[OX1])([$([OX2]),$([OX1-])])([$([OX2]),$([OX1-])])[$([OX2]),$([OX1-])]"),
    ("phosphonate", "[PX4;$(P[#6])](=[OX1])([$([OX2]),$([OX1-])])[$([OX2]),$([OX1-])]"),
    ("nitro", "[NX3+](=[OX1])[OX1-]"),
    ("nitro", "[NX3](=[OX1])=[OX1]"),
    ("urea", "[#7X3][#6X3](=[OX1])[#7X3]"),
    ("carbamate", "[#7X3][#6X3](=[OX1])[OX2H0;$(O[#6])]"),
    ("carboxylic acid", "[#6X3](=[OX1])[OX2H1]"),
    ("carboxylate", "[#6X3](=[OX1])[OX1-]"),
    ("ester", "[#6X3](=[OX1])[OX2H0;$(O[#6])]"),
    ("amide", "[#7X3][#6X3]=[OX1]"),
    ("aldehyde", "[CX3H1;$(C[#6])]=[OX1]"),
    ("aldehyde", "[CX3H2]=[OX1]"),
    ("ketone", "[#6X3;$([#6X3]([#6])([#6])=[OX1])]=[OX1]"),
    ("carbonyl", "[#6X3]=[OX1]"),
    ("nitrile", "[CX2]#[NX1]"),
    ("imine", "[CX3]=[NX2]"),
    ("phenol", "[OX2H1;$(Oc)]"),
    ("alcohol", "[OX2H1;$(O[CX4])]"),
    ("hydroxyl", "[OX2H1]"),
    ("ether", "[OX2H0;$(O([#6])[#6]);!$(O[#6]=[O,S,N])]"),
    ("thiol", "[SX2H1;$(S[#6])]"),
    ("thioether", "[SX2H0;$(S([#6])[#6]);!$(S[#6]=[O,S,N])]"),
    ("primary amine", f"[NX3;H2;+0;$(N[#6]);{_NOT_ACYL_N}]"),
    ("secondary amine", f"[NX3;H1;+0;$(N([#6])[#6]);{_NOT_ACYL_N}]"),
    ("tertiary amine", f"[NX3;H0;+0;$(N([#6])([#6])[#6]);{_NOT_ACYL_N}]"),
    ("ammonium", "[NX4+]"),
    ("halide", "[F,Cl,Br,I;$(*[#6])]"),
    ("halide ion", "[F-,Cl-,Br-,I-]"),
    ("metal ion", f"[{_METALS}]"),
    ("alkyne", "[CX2]#[CX2]"),
    ("alkene", "[CX3]=[CX3]"),
    ("benzene ring", "c1ccccc1"),
    ("heteroaromatic ring", "[a;!#6]1aaaaa1"),
    ("heteroaromatic ring", "[a;!#6]1aaaa1"),
    ("aromatic ring", "a1aaaaa1"),
    ("aromatic ring", "a1aaaa1"),
)
"""(name, SMARTS of its core atoms), specific before general."""


@lru_cache(maxsize=1)
def compiled_rules() -> tuple[tuple[str, Chem.Mol], ...]:
    """`(name, query molecule)` per rule, compiled once (a SMARTS that does not parse is a `ValueError`)."""
    compiled = tuple((name, Chem.MolFromSmarts(smarts)) for name, smarts in RULES)
    broken = [smarts for (_, smarts), (_, pattern) in zip(RULES, compiled, strict=True) if pattern is None]
    if broken:
        raise ValueError(f"The SMARTS of these rules do not parse: {broken}")
    return compiled


def _names_of(mol: Chem.Mol, group: frozenset[int], candidates) -> tuple[str, ...]:
    """The names of one group from the `(rule position, name, atoms)` matches touching it (see the module docstring;
    a ring system is a group of three or more atoms, all in rings)."""
    ring_system = len(group) >= 3 and all(mol.GetAtomWithIdx(atom).IsInRing() for atom in group)
    used: list[frozenset[int]] = []
    names: list[str] = []
    for _, name, atoms in sorted(candidates, key=lambda match: (match[0], sorted(match[2]))):
        names_it = atoms <= group if ring_system else 2 * len(atoms & group) > len(atoms)
        if not names_it or any(atoms <= earlier for earlier in used):
            continue
        used.append(atoms)
        if name not in names:
            names.append(name)
    return tuple(names)


def group_names(mol: Chem.Mol, groups: Sequence[Iterable[int]]) -> list[tuple[str, ...]]:
    """Chemical names of each group of `mol` (atom index sets, e.g. from
    `llamo.featurization_llamo.functional_groups`): one tuple per group, empty where no rule knows it."""
    by_atom: dict[int, list[tuple[int, str, frozenset[int]]]] = {}
    for position, (name, pattern) in enumerate(compiled_rules()):
        for atoms in mol.GetSubstructMatches(pattern, uniquify=True, maxMatches=MAX_MATCHES_PER_RULE):
            for atom in atoms:
                by_atom.setdefault(atom, []).append((position, name, frozenset(atoms)))
    named = []
    for group in groups:
        members = frozenset(group)
        named.append(_names_of(mol, members, {match for atom in members for match in by_atom.get(atom, ())}))
    return named
