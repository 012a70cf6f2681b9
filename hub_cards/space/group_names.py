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
from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem

MAX_MATCHES_PER_RULE = 256
"""At most this many matches of one rule are read per molecule, which bounds the work on large molecules."""


@dataclass(frozen=True)
class GroupRule:
    """One chemical name and a SMARTS pattern of its core atoms."""

    name: str
    smarts: str


_NOT_ACYL_N = "!$(N[#6,#16,#15]=[O,S,N])"  # not an amide, sulfonamide, amidine, ... nitrogen
_METALS = "Li,Na,K,Rb,Cs,Be,Mg,Ca,Sr,Ba,Al,Zn,Fe,Cu,Co,Ni,Mn,Ag,Au,Pt,Pd,Hg,Sn,Pb"

RULES: tuple[GroupRule, ...] = (
    GroupRule("sulfonamide", "[SX4](=[OX1])(=[OX1])[NX3]"),
    GroupRule("sulfonic acid", "[SX4](=[OX1])(=[OX1])[OX2H1]"),
    GroupRule("sulfonate", "[SX4](=[OX1])(=[OX1])[$([OX1-]),$([OX2][#6])]"),
    GroupRule("sulfone", "[SX4;$(S([#6])[#6])](=[OX1])=[OX1]"),
    GroupRule("phosphate", "[PX4](=[OX1])([$([OX2]),$([OX1-])])([$([OX2]),$([OX1-])])[$([OX2]),$([OX1-])]"),
    GroupRule("phosphonate", "[PX4;$(P[#6])](=[OX1])([$([OX2]),$([OX1-])])[$([OX2]),$([OX1-])]"),
    GroupRule("nitro", "[NX3+](=[OX1])[OX1-]"),
    GroupRule("nitro", "[NX3](=[OX1])=[OX1]"),
    GroupRule("urea", "[#7X3][#6X3](=[OX1])[#7X3]"),
    GroupRule("carbamate", "[#7X3][#6X3](=[OX1])[OX2H0;$(O[#6])]"),
    GroupRule("carboxylic acid", "[#6X3](=[OX1])[OX2H1]"),
    GroupRule("carboxylate", "[#6X3](=[OX1])[OX1-]"),
    GroupRule("ester", "[#6X3](=[OX1])[OX2H0;$(O[#6])]"),
    GroupRule("amide", "[#7X3][#6X3]=[OX1]"),
    GroupRule("aldehyde", "[CX3H1;$(C[#6])]=[OX1]"),
    GroupRule("aldehyde", "[CX3H2]=[OX1]"),
    GroupRule("ketone", "[#6X3;$([#6X3]([#6])([#6])=[OX1])]=[OX1]"),
    GroupRule("carbonyl", "[#6X3]=[OX1]"),
    GroupRule("nitrile", "[CX2]#[NX1]"),
    GroupRule("imine", "[CX3]=[NX2]"),
    GroupRule("phenol", "[OX2H1;$(Oc)]"),
    GroupRule("alcohol", "[OX2H1;$(O[CX4])]"),
    GroupRule("hydroxyl", "[OX2H1]"),
    GroupRule("ether", "[OX2H0;$(O([#6])[#6]);!$(O[#6]=[O,S,N])]"),
    GroupRule("thiol", "[SX2H1;$(S[#6])]"),
    GroupRule("thioether", "[SX2H0;$(S([#6])[#6]);!$(S[#6]=[O,S,N])]"),
    GroupRule("primary amine", f"[NX3;H2;+0;$(N[#6]);{_NOT_ACYL_N}]"),
    GroupRule("secondary amine", f"[NX3;H1;+0;$(N([#6])[#6]);{_NOT_ACYL_N}]"),
    GroupRule("tertiary amine", f"[NX3;H0;+0;$(N([#6])([#6])[#6]);{_NOT_ACYL_N}]"),
    GroupRule("ammonium", "[NX4+]"),
    GroupRule("halide", "[F,Cl,Br,I;$(*[#6])]"),
    GroupRule("halide ion", "[F-,Cl-,Br-,I-]"),
    GroupRule("metal ion", f"[{_METALS}]"),
    GroupRule("alkyne", "[CX2]#[CX2]"),
    GroupRule("alkene", "[CX3]=[CX3]"),
    GroupRule("benzene ring", "c1ccccc1"),
    GroupRule("heteroaromatic ring", "[a;!#6]1aaaaa1"),
    GroupRule("heteroaromatic ring", "[a;!#6]1aaaa1"),
    GroupRule("aromatic ring", "a1aaaaa1"),
    GroupRule("aromatic ring", "a1aaaa1"),
)
"""The rules, specific before general (see the module docstring for how they name groups)."""


@lru_cache(maxsize=1)
def compiled_rules() -> tuple[tuple[str, Chem.Mol], ...]:
    """`(name, query molecule)` per rule, compiled once.

    Raises:
        ValueError: a rule's SMARTS does not parse (a broken table, caught by the tests).
    """
    compiled = []
    for rule in RULES:
        pattern = Chem.MolFromSmarts(rule.smarts)
        if pattern is None:
            raise ValueError(f"The SMARTS of rule {rule.name!r} does not parse: {rule.smarts}")
        compiled.append((rule.name, pattern))
    return tuple(compiled)


Match = tuple[int, str, frozenset[int]]
"""A rule's match: the rule's position in the table, its name and the matched atoms."""


def rule_matches(mol: Chem.Mol) -> list[Match]:
    """Every rule's matches in `mol` (at most `MAX_MATCHES_PER_RULE` per rule), in table order."""
    matches: list[Match] = []
    for position, (name, pattern) in enumerate(compiled_rules()):
        for atoms in mol.GetSubstructMatches(pattern, uniquify=True, maxMatches=MAX_MATCHES_PER_RULE):
            matches.append((position, name, frozenset(atoms)))
    return matches


def names_group(match: frozenset[int], group: frozenset[int], ring_system: bool = False) -> bool:
    """Whether a match names a group: more than half of its atoms lie in the group (all of them for a ring system)."""
    if ring_system:
        return match <= group
    return 2 * len(match & group) > len(match)


def is_ring_system(mol: Chem.Mol, group: frozenset[int]) -> bool:
    """Whether a group is one of LLaMo's merged rings: three or more atoms, all in rings."""
    return len(group) >= 3 and all(mol.GetAtomWithIdx(atom).IsInRing() for atom in group)


def _names_of(group: frozenset[int], candidates: Iterable[Match], ring_system: bool) -> tuple[str, ...]:
    """The names of one group from the matches touching it, skipping a match inside one already used."""
    used: list[frozenset[int]] = []
    names: list[str] = []
    for _, name, atoms in sorted(candidates, key=lambda match: (match[0], sorted(match[2]))):
        if not names_group(atoms, group, ring_system) or any(atoms <= earlier for earlier in used):
            continue
        used.append(atoms)
        if name not in names:
            names.append(name)
    return tuple(names)


def group_names(mol: Chem.Mol, groups: Sequence[Iterable[int]]) -> list[tuple[str, ...]]:
    """Chemical names of each group of `mol` (atom index sets, e.g. from
    `llamo.featurization_llamo.functional_groups`): one tuple per group, empty where no rule knows it."""
    by_atom: dict[int, list[Match]] = {}
    for match in rule_matches(mol):
        for atom in match[2]:
            by_atom.setdefault(atom, []).append(match)
    named = []
    for group in groups:
        members = frozenset(group)
        candidates = {match for atom in members for match in by_atom.get(atom, ())}
        named.append(_names_of(members, candidates, is_ring_system(mol, members)))
    return named
