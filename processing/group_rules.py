"""Functional groups (ester, carboxylic acid, amide, benzene ring, ...) from one table of SMARTS rules, shared by the
grounded teacher's "functional groups" facts (`group_counts`) and the demo's names of LLaMo's motif groups
(`llamo.hub_cards.space.group_names`).

Each rule's SMARTS matches only the *core* atoms of its group, its surroundings written as recursive SMARTS (`$(...)`).
Rules run in table order, specific first; a match inside an earlier kept one is skipped (an ester is no carbonyl)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import lru_cache

from rdkit import Chem

MAX_MATCHES_PER_RULE = 256
"""At most this many matches of one rule are read per molecule by default, which bounds the work on large molecules."""

_NOT_ACYL_N = "!$(N[#6,#16,#15]=[O,S,N])"  # not an amide, sulfonamide, amidine, ... nitrogen
_METALS = "Li,Na,K,Rb,Cs,Be,Mg,Ca,Sr,Ba,Al,Zn,Fe,Cu,Co,Ni,Mn,Ag,Au,Pt,Pd,Hg,Sn,Pb"
_ETHER_O = "[OX2H0;$(O[#6])]"

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
    ("carbamate", f"[#7X3][#6X3](=[OX1]){_ETHER_O}"),
    ("carbonate", f"{_ETHER_O}[#6X3](=[OX1]){_ETHER_O}"),
    ("carboxylic acid", "[#6X3](=[OX1])[OX2H1]"),
    ("carboxylate", "[#6X3](=[OX1])[OX1-]"),
    ("lactone", "[#6X3;R;$([#6][#6])](=[OX1])@[OX2H0;R;$(O[#6])]"),
    ("ester", f"[#6X3](=[OX1]){_ETHER_O}"),
    ("thioester", "[#6X3;$([#6][#6])](=[OX1])[SX2;$(S[#6])]"),
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
    ("epoxide", "[OX2r3]1[#6r3][#6r3]1"),
    ("ether", "[OX2H0;$(O([#6])[#6]);!$(O[#6]=[O,S,N])]"),
    ("thiol", "[SX2H1;$(S[#6])]"),
    ("disulfide", "[SX2;$(S[#6])][SX2;$(S[#6])]"),
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
    if broken := [smarts for (_, smarts), (_, pattern) in zip(RULES, compiled, strict=True) if pattern is None]:
        raise ValueError(f"The SMARTS of these rules do not parse: {broken}")
    return compiled


def rule_matches(mol: Chem.Mol, max_matches: int = MAX_MATCHES_PER_RULE) -> Iterator[tuple[int, str, frozenset[int]]]:
    """`(rule position, name, core atoms)` of each unique match of each rule in `mol`, in table order."""
    for position, (name, pattern) in enumerate(compiled_rules()):
        for atoms in mol.GetSubstructMatches(pattern, uniquify=True, maxMatches=max_matches):
            yield position, name, frozenset(atoms)


def group_counts(mol: Chem.Mol) -> dict[str, int]:
    """{name: number of matches} of the groups in `mol`, in table order; a match inside an earlier kept one is skipped
    (see the module docstring). Reads up to RDKit's default of 1,000 matches per rule: every one a molecule of a few
    hundred atoms has."""
    kept: list[tuple[str, frozenset[int]]] = []
    for _, name, atoms in rule_matches(mol, max_matches=1000):
        if not any(atoms <= earlier for _, earlier in kept):
            kept.append((name, atoms))
    return dict(Counter(name for name, _ in kept))
