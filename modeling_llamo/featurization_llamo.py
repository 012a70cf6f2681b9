"""Molecule featurization for LLaMo: SMILES -> OGB graph features + functional-group (motif) vectors.

One RDKit parse per molecule yields everything the model needs:

* the 9 atom features and 3 bond features of `ogb.utils.smiles2graph` (ogb 1.3.5 tables), every bond in both
  directions, in RDKit's bond order;
* the functional groups of LLaMo's motif tokens (the ReLMole rule set, reproduced with its exact grouping
  behaviour) as 73-dim count vectors.

This file travels to the Hub as remote code: it imports only numpy, torch and RDKit.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem, rdBase

ATOM_FEATURE_SIZES = (119, 4, 12, 12, 10, 6, 6, 2, 2)
BOND_FEATURE_SIZES = (5, 6, 2)
MOTIF_FEATURE_SIZE = 73

_CHIRALITY = {
    Chem.ChiralType.CHI_UNSPECIFIED: 0,
    Chem.ChiralType.CHI_TETRAHEDRAL_CW: 1,
    Chem.ChiralType.CHI_TETRAHEDRAL_CCW: 2,
    Chem.ChiralType.CHI_OTHER: 3,
}
# ogb 1.3.5 has no row for the newer RDKit tags (allene, square planar, ...); they share CHI_OTHER's row.
_CHIRALITY_OTHER = 3
_HYBRIDIZATION = {
    Chem.HybridizationType.SP: 0,
    Chem.HybridizationType.SP2: 1,
    Chem.HybridizationType.SP3: 2,
    Chem.HybridizationType.SP3D: 3,
    Chem.HybridizationType.SP3D2: 4,
}
_HYBRIDIZATION_MISC = 5
_BOND_TYPE = {
    Chem.BondType.SINGLE: 0,
    Chem.BondType.DOUBLE: 1,
    Chem.BondType.TRIPLE: 2,
    Chem.BondType.AROMATIC: 3,
}
_BOND_TYPE_MISC = 4
_BOND_STEREO = {
    Chem.BondStereo.STEREONONE: 0,
    Chem.BondStereo.STEREOZ: 1,
    Chem.BondStereo.STEREOE: 2,
    Chem.BondStereo.STEREOCIS: 3,
    Chem.BondStereo.STEREOTRANS: 4,
    Chem.BondStereo.STEREOANY: 5,
}
# Atropisomer stereo (RDKit >= 2023) has no ogb row; it is stereo of an unlisted kind, like STEREOANY.
_BOND_STEREO_OTHER = 5

# Motif vector layout: counted property -> (offset, one-hot slots); counts past the last slot clip to it, and a
# single slot is a presence flag. Properties 0-6 count atoms by element class, 7-10 bonds by type, 11 ring bonds.
_MOTIF_LAYOUT = (
    (0, 11),  # carbon
    (11, 6),  # oxygen
    (17, 6),  # nitrogen
    (23, 6),  # phosphorus
    (29, 6),  # sulfur
    (35, 1),  # any halogen
    (36, 1),  # any other element
    (37, 11),  # single bonds
    (48, 8),  # double bonds
    (56, 8),  # triple bonds
    (64, 8),  # aromatic bonds
    (72, 1),  # ring
)
_ELEMENT_CLASS = {6: 0, 8: 1, 7: 2, 15: 3, 16: 4, 9: 5, 17: 5, 35: 5, 53: 5}
_ELEMENT_CLASS_OTHER = 6
_BOND_CLASS = {Chem.BondType.SINGLE: 7, Chem.BondType.DOUBLE: 8, Chem.BondType.TRIPLE: 9, Chem.BondType.AROMATIC: 10}
_RING_SLOT = 11
_ACETAL_NEIGHBOURS = (7, 8, 16)

MAX_SMILES_LENGTH = 16_384
"""Longer strings are refused before RDKit sees them, whatever `max_atoms` is: 512 atoms at 32 characters each, far
above what real SMILES use (at most 7 per atom in ChEBI-20). RDKit's sanitization grows faster than linearly with
size, so this keeps one parse within seconds even with `max_atoms=None`."""

MESSAGE_CHARS = 80
"""How much of an input an error message shows (see `shorten_for_message`)."""

MAX_RING_BONDS_PER_ATOM = 12
"""An atom may carry at most this many ring-bond labels (ChEBI-20's SMILES carry at most 2). Dense graphs need many:
RDKit's ring perception and the ring merging of the motif rules take about a minute for a 50-atom clique."""
RING_ALLOWANCE = (2, 16)
"""A molecule may write at most `2 * atoms + 16` ring bonds and have as many rings: no real molecule comes close
(ChEBI-20's densest, cubane, has 5 ring bonds for 8 atoms), while the merging of rings takes quadratic time."""

# One match per token of a SMILES that matters for its size: bracket atoms, then the organic subset (two-letter
# symbols before one-letter ones), and ring-bond labels. Bracket hydrogens without isotope get their own groups:
# RDKit's default parse removes those bonded to another atom (`bound_h`, not counted) and keeps a fragment made of
# hydrogens only (`[H+]`, `[H][H]`). A bracket cannot contain `[`, which keeps the scan linear even when unclosed.
_HYDROGEN = r"\[H(?![a-z])[^\[\]]*\]"
_SMILES_TOKEN = re.compile(
    rf"(?P<hydrogens>(?:^|(?<=\.))(?:{_HYDROGEN})+(?=\.|$))|(?P<bound_h>{_HYDROGEN})"
    r"|(?P<atom>\[[^\[\]]*\]|Cl|Br|[BCNOPSFI*bcnops])|(?P<ring>%\(\d+\)|%\d\d|\d)"
)


@dataclass
class MoleculeGraph:
    """The featurized form of one molecule.

    Attributes:
        atom_features: `(num_atoms, 9)` int64, OGB atom feature indices.
        edge_index: `(2, num_edges)` int64, both directions of every bond (PyG convention).
        edge_features: `(num_edges, 3)` int64, OGB bond feature indices.
        motif_features: `(num_motifs, 73)` uint8, one row per functional group; zero rows where the rule set finds
            no group (methane), in which case the model keeps its raw motif queries.
    """

    atom_features: np.ndarray
    edge_index: np.ndarray
    edge_features: np.ndarray
    motif_features: np.ndarray

    @property
    def num_atoms(self) -> int:
        return int(self.atom_features.shape[0])

    def to_dict(self) -> dict:
        """Plain lists, for `datasets.map` and JSON."""
        return {
            "atom_features": self.atom_features.tolist(),
            "edge_index": self.edge_index.tolist(),
            "edge_features": self.edge_features.tolist(),
            "motif_features": self.motif_features.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> MoleculeGraph:
        edge_index = np.asarray(data["edge_index"], dtype=np.int64).reshape(2, -1)
        return cls(
            atom_features=np.asarray(data["atom_features"], dtype=np.int64).reshape(-1, len(ATOM_FEATURE_SIZES)),
            edge_index=edge_index,
            edge_features=np.asarray(data["edge_features"], dtype=np.int64).reshape(-1, len(BOND_FEATURE_SIZES)),
            motif_features=np.asarray(data["motif_features"], dtype=np.uint8).reshape(-1, MOTIF_FEATURE_SIZE),
        )


class OversizedMoleculeError(ValueError):
    """A molecule (or its SMILES text) over a size limit.

    Attributes:
        size: the measure over the limit, in `unit`s.
        limit: the limit it exceeds.
        unit: "atoms", "characters", "ring bonds", "ring bonds on one atom" or "rings".
    """

    def __init__(self, message: str, size: int, limit: int, unit: str = "atoms") -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.unit = unit

    def __reduce__(self) -> tuple:
        # the default pickling passes only the message back to __init__ (process pools send errors pickled)
        return type(self), (str(self), self.size, self.limit, self.unit)


def shorten_for_message(value: object, limit: int = MESSAGE_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters for an error message, saying how long the value was when cut.

    Only the head of a long string is ever converted, so a 10 MB input costs no more than a short one.
    """
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[: limit + 1])
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{text[:limit]}... ({len(value)} {unit})"
    text = _bounded_repr(value, limit)
    return text if len(text) <= limit + 2 else f"{text[:limit]}..."


def _bounded_repr(value: object, limit: int) -> str:
    """`reprlib`'s repr (containers and strings inside them cut), or a placeholder if `__repr__` fails."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    try:
        return short.repr(value)
    except Exception:  # a broken __repr__ must not hide the error being reported
        return f"<{type(value).__name__} object>"


@dataclass(frozen=True)
class _SmilesText:
    """What the text of a SMILES says about its size, read without parsing it."""

    atoms: int
    ring_bonds: int
    most_ring_bonds_on_one_atom: int


def _read_smiles_text(smiles: str) -> _SmilesText:
    words = smiles.split(None, 1)
    atoms = labels = most = current = 0
    for token in _SMILES_TOKEN.finditer(words[0] if words else ""):
        kind = token.lastgroup
        if kind == "ring":
            labels += 1
            current += 1
            most = max(most, current)
            continue
        current = 0
        if kind == "atom":
            atoms += 1
        elif kind == "hydrogens":
            atoms += token.group().count("[")
    return _SmilesText(atoms, labels // 2, most)


def count_smiles_atoms(smiles: str) -> int:
    """The atoms written in a SMILES string, counted on its text without parsing it.

    For a valid SMILES this equals RDKit's `GetNumAtoms()` after its default parse, except that bracket hydrogens
    without isotope bonded to other atoms are not counted, as RDKit removes them; it keeps a few (a stereo
    `[H]/C=C`), so the count is a lower bound, never more than RDKit's. Text after the first whitespace (a name or
    CXSMILES extension) is not part of the molecule.
    """
    return _read_smiles_text(smiles).atoms


def ring_allowance(num_atoms: int) -> int:
    """The most ring bonds (and rings) a molecule of `num_atoms` atoms may have: see `RING_ALLOWANCE`."""
    per_atom, extra = RING_ALLOWANCE
    return per_atom * num_atoms + extra


def _where(index: int | None) -> str:
    return f" at index {index}" if index is not None else ""


def _oversized(
    where: str, num_atoms: int, max_atoms: int, shown: str, at_least: bool = False
) -> OversizedMoleculeError:
    """The error of a molecule over `max_atoms`; `at_least` when only part of its SMILES was counted."""
    count = f"at least {num_atoms}" if at_least else str(num_atoms)
    return OversizedMoleculeError(
        f"Molecule{where} has {count} atoms, over the limit of {max_atoms}: {shown} (raise `max_atoms` to accept it).",
        num_atoms,
        max_atoms,
    )


def _check_type(smiles: object, where: str) -> None:
    if not isinstance(smiles, str):
        raise ValueError(f"SMILES{where} must be a string, got {type(smiles).__name__}: {shorten_for_message(smiles)}")
    if not smiles or smiles.isspace():
        raise ValueError(f"Empty SMILES{where}: a molecule needs at least one atom.")


def _check_length(smiles: str, where: str, text: _SmilesText, max_atoms: int | None) -> None:
    """Refuse more atoms than `max_atoms` (counted on the first `MAX_SMILES_LENGTH` characters only, so any length
    costs the same), then more characters than `MAX_SMILES_LENGTH`."""
    too_long = len(smiles) > MAX_SMILES_LENGTH
    if max_atoms is not None and text.atoms > max_atoms:
        raise _oversized(where, text.atoms, max_atoms, shorten_for_message(smiles), at_least=too_long)
    if too_long:
        raise OversizedMoleculeError(
            f"SMILES{where} has {len(smiles)} characters, over the limit of {MAX_SMILES_LENGTH}: "
            f"{shorten_for_message(smiles)}",
            len(smiles),
            MAX_SMILES_LENGTH,
            "characters",
        )


def _check_ring_bonds(smiles: str, where: str, text: _SmilesText) -> None:
    """Refuse SMILES of dense graphs, which RDKit's ring perception takes minutes to read."""
    if text.most_ring_bonds_on_one_atom > MAX_RING_BONDS_PER_ATOM:
        raise OversizedMoleculeError(
            f"SMILES{where} gives one atom {text.most_ring_bonds_on_one_atom} ring bonds, over the limit of "
            f"{MAX_RING_BONDS_PER_ATOM}: {shorten_for_message(smiles)}",
            text.most_ring_bonds_on_one_atom,
            MAX_RING_BONDS_PER_ATOM,
            "ring bonds on one atom",
        )
    allowed = ring_allowance(text.atoms)
    if text.ring_bonds > allowed:
        raise OversizedMoleculeError(
            f"SMILES{where} writes {text.ring_bonds} ring bonds for {text.atoms} atoms, over the limit of {allowed}: "
            f"{shorten_for_message(smiles)}",
            text.ring_bonds,
            allowed,
            "ring bonds",
        )


def _check_characters(smiles: str, where: str) -> None:
    """Refuse NUL characters (RDKit would silently stop reading there) and text that cannot be encoded."""
    if "\x00" in smiles:
        raise ValueError(f"Unparsable SMILES{where}: {shorten_for_message(smiles)} (it contains a NUL character).")
    try:
        smiles.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"Unparsable SMILES{where}: {shorten_for_message(smiles)} (it is not valid Unicode text)."
        ) from None


def _check_rings(mol: Chem.Mol, where: str, shown: str) -> None:
    """Refuse a parsed molecule with more rings than `ring_allowance` (merging rings takes quadratic time)."""
    rings, allowed = mol.GetRingInfo().NumRings(), ring_allowance(mol.GetNumAtoms())
    if rings > allowed:
        raise OversizedMoleculeError(
            f"Molecule{where} has {rings} rings for {mol.GetNumAtoms()} atoms, over the limit of {allowed}: {shown}",
            rings,
            allowed,
            "rings",
        )


def parse_smiles(smiles: str, index: int | None = None, max_atoms: int | None = None) -> Chem.Mol:
    """Parse a SMILES string with RDKit's default sanitization, raising a `ValueError` that names the input.

    Cheap checks run before RDKit sees the string and take milliseconds whatever its length: they refuse what is
    not a SMILES (non-strings, blank text, NUL characters, lone surrogates) and, raising `OversizedMoleculeError`,
    SMILES that write more atoms than `max_atoms` (`count_smiles_atoms`), have more than `MAX_SMILES_LENGTH`
    characters or describe a dense graph (`MAX_RING_BONDS_PER_ATOM`, `RING_ALLOWANCE`), on which RDKit's time grows
    faster than linearly. A parsed molecule with more rings than `RING_ALLOWANCE` allows is refused too. The exact
    atom count of the parsed molecule is left to `check_size`.
    """
    where = _where(index)
    _check_type(smiles, where)
    text = _read_smiles_text(smiles[:MAX_SMILES_LENGTH])
    _check_length(smiles, where, text, max_atoms)
    _check_ring_bonds(smiles, where, text)
    _check_characters(smiles, where)
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(
            f"Unparsable SMILES{where}: {shorten_for_message(smiles)} (RDKit could not read or sanitize it)."
        )
    if mol.GetNumAtoms() == 0:
        raise ValueError(f"SMILES{where} has no atoms: {shorten_for_message(smiles)}")
    _check_rings(mol, where, shorten_for_message(smiles))
    return mol


@dataclass
class _MoleculeScan:
    """What one pass over a molecule's atoms and bonds collects for both the OGB features and the motif rules."""

    atom_rows: list[tuple[int, ...]]
    atomic_nums: list[int]
    atom_in_ring: list[bool]
    bond_rows: list[tuple[int, int, int]]
    bond_ends: list[tuple[int, int]]
    bond_types: list[Chem.BondType]
    bond_in_ring: list[bool]
    marked: set[int]


def _scan_molecule(mol: Chem.Mol) -> _MoleculeScan:
    atom_rows = []
    atomic_nums = []
    atom_in_ring = []
    acetal_candidates = []
    marked = set()
    for atom in mol.GetAtoms():
        atomic_num = atom.GetAtomicNum()
        degree = atom.GetTotalDegree()
        charge = atom.GetFormalCharge()
        num_hs = atom.GetTotalNumHs()
        radicals = atom.GetNumRadicalElectrons()
        aromatic = atom.GetIsAromatic()
        in_ring = atom.IsInRing()
        atom_rows.append(
            (
                atomic_num - 1 if 1 <= atomic_num <= 118 else 118,
                _CHIRALITY.get(atom.GetChiralTag(), _CHIRALITY_OTHER),
                degree if degree <= 10 else 11,
                charge + 5 if -5 <= charge <= 5 else 11,
                num_hs if num_hs <= 8 else 9,
                radicals if radicals <= 4 else 5,
                _HYBRIDIZATION.get(atom.GetHybridization(), _HYBRIDIZATION_MISC),
                int(aromatic),
                int(in_ring),
            )
        )
        atomic_nums.append(atomic_num if not aromatic else -atomic_num)
        atom_in_ring.append(in_ring)
        if atomic_num != 6:
            marked.add(len(atomic_nums) - 1)
        elif degree == 4 and not aromatic:
            acetal_candidates.append(len(atomic_nums) - 1)

    bond_rows = []
    bond_ends = []
    bond_types = []
    bond_in_ring = []
    acetal_partners: dict[int, int] = {}
    candidates = set(acetal_candidates)
    for bond in mol.GetBonds():
        begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bond_type = bond.GetBondType()
        bond_rows.append(
            (
                _BOND_TYPE.get(bond_type, _BOND_TYPE_MISC),
                _BOND_STEREO.get(bond.GetStereo(), _BOND_STEREO_OTHER),
                int(bond.GetIsConjugated()),
            )
        )
        bond_ends.append((begin, end))
        bond_types.append(bond_type)
        bond_in_ring.append(bond.IsInRing())
        if bond_type == Chem.BondType.DOUBLE or bond_type == Chem.BondType.TRIPLE:
            marked.add(begin)
            marked.add(end)
        if candidates:
            # atomic_nums holds aromatic atoms negated, so only aliphatic O/N/S count (SMARTS `[O,N,S]`)
            if begin in candidates and atomic_nums[end] in _ACETAL_NEIGHBOURS:
                acetal_partners[begin] = acetal_partners.get(begin, 0) + 1
            if end in candidates and atomic_nums[begin] in _ACETAL_NEIGHBOURS:
                acetal_partners[end] = acetal_partners.get(end, 0) + 1
    marked.update(atom for atom, partners in acetal_partners.items() if partners >= 2)
    return _MoleculeScan(
        atom_rows, [abs(z) for z in atomic_nums], atom_in_ring, bond_rows, bond_ends, bond_types, bond_in_ring, marked
    )


def _ogb_arrays(scan: _MoleculeScan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    atom_features = np.array(scan.atom_rows, dtype=np.int64).reshape(-1, len(ATOM_FEATURE_SIZES))
    num_bonds = len(scan.bond_ends)
    ends = np.array(scan.bond_ends, dtype=np.int64).reshape(num_bonds, 2)
    edge_index = np.empty((2, 2 * num_bonds), dtype=np.int64)
    edge_index[0, 0::2], edge_index[1, 0::2] = ends[:, 0], ends[:, 1]
    edge_index[0, 1::2], edge_index[1, 1::2] = ends[:, 1], ends[:, 0]
    edge_features = np.repeat(
        np.array(scan.bond_rows, dtype=np.int64).reshape(num_bonds, len(BOND_FEATURE_SIZES)), 2, axis=0
    )
    return atom_features, edge_index, edge_features


def atom_and_bond_features(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The OGB 1.3.5 `smiles2graph` arrays of a molecule: `(atom_features, edge_index, edge_features)`."""
    return _ogb_arrays(_scan_molecule(mol))


def _merged_rings(rings: list[tuple[int, ...]]) -> list[set[int]]:
    """Rings sharing more than two atoms merged until none do."""
    rings = [set(ring) for ring in rings]
    changed = True
    while changed:
        changed = False
        for i in range(len(rings)):
            if not rings[i]:
                continue
            for j in range(i + 1, len(rings)):
                if len(rings[i] & rings[j]) > 2:
                    rings[i] |= rings[j]
                    rings[j] = set()
                    changed = True
    return [ring for ring in rings if ring]


def _group_atoms(scan: _MoleculeScan, rings: list[tuple[int, ...]]) -> list[set[int]]:
    marked = scan.marked
    groups: list[set[int]] = []
    membership: dict[int, list[int]] = {}
    for atom_idx in sorted(marked):
        groups.append({atom_idx})
        membership[atom_idx] = [len(groups) - 1]

    for (first, second), in_ring in zip(scan.bond_ends, scan.bond_in_ring, strict=False):
        if in_ring:
            continue
        if first in marked:
            if second in marked:
                target, source = membership[first][0], membership[second][0]
                groups[target].update(groups[source])
                groups[source] = set()
                membership[second] = membership[first]
            else:
                groups[membership[first][0]].add(second)
        elif second in marked:
            groups[membership[second][0]].add(first)
        else:
            groups.append({first, second})

    kept = [group for group in groups if len(group) > 1 or (group and not scan.atom_in_ring[next(iter(group))])]
    return kept + _merged_rings(rings)


def functional_groups(mol: Chem.Mol) -> list[set[int]]:
    """LLaMo's functional groups (atom index sets): non-ring groups first, then merged rings.

    Rings are RDKit's symmetrised SSSR, merged where they share more than two atoms. Atoms matching the SMARTS
    `[!#6]`, `*=,#*` or `[CX4]([O,N,S])[O,N,S]` are marked (tested directly, not by substructure search); marked atoms
    joined by non-ring bonds are merged, an unmarked neighbour of a marked atom joins its group, other non-ring bonds
    become two-atom groups, and single ring atoms are dropped. Group membership is tracked exactly as the original
    code tracks it: a merged atom takes over the membership *list* of its partner, so an atom that joined a group
    earlier can keep pointing at a group a later merge emptied. For molecules parsed from ordinary SMILES this never
    changes the result (bonds are created in writing order); it can for molecules built in another atom order, and
    there we still agree with the original.
    """
    return _group_atoms(_scan_molecule(mol), [tuple(ring) for ring in Chem.GetSymmSSSR(mol)])


def _motif_vectors(scan: _MoleculeScan, groups: list[set[int]]) -> np.ndarray:
    counts = [[0] * len(_MOTIF_LAYOUT) for _ in groups]
    atom_groups: dict[int, list[int]] = {}
    for group_idx, group in enumerate(groups):
        for atom_idx in group:
            atom_groups.setdefault(atom_idx, []).append(group_idx)
    atomic_nums = scan.atomic_nums
    for atom_idx, group_ids in atom_groups.items():
        element_class = _ELEMENT_CLASS.get(atomic_nums[atom_idx], _ELEMENT_CLASS_OTHER)
        for group_idx in group_ids:
            counts[group_idx][element_class] += 1
    for (first, second), bond_type, in_ring in zip(scan.bond_ends, scan.bond_types, scan.bond_in_ring, strict=False):
        first_groups = atom_groups.get(first)
        second_groups = atom_groups.get(second)
        if first_groups is None or second_groups is None:
            continue
        bond_class = _BOND_CLASS.get(bond_type)
        for group_idx in first_groups:
            if group_idx in second_groups:
                if bond_class is not None:
                    counts[group_idx][bond_class] += 1
                if in_ring:
                    counts[group_idx][_RING_SLOT] = 1

    vectors = np.zeros((len(groups), MOTIF_FEATURE_SIZE), dtype=np.uint8)
    for row, group_counts in enumerate(counts):
        for value, (offset, slots) in zip(group_counts, _MOTIF_LAYOUT, strict=False):
            if slots == 1:
                vectors[row, offset] = value > 0
            else:
                vectors[row, offset + (value if value < slots else slots - 1)] = 1
    return vectors


def motif_features(mol: Chem.Mol) -> np.ndarray:
    """The `(num_groups, 73)` uint8 count vectors of a molecule's functional groups."""
    scan = _scan_molecule(mol)
    return _motif_vectors(scan, _group_atoms(scan, [tuple(ring) for ring in Chem.GetSymmSSSR(mol)]))


def featurize_molecule(mol: Chem.Mol, rings_from_sanitization: bool = False) -> MoleculeGraph:
    """Featurize an RDKit molecule: OGB atom and bond features plus motif vectors, in one scan.

    `rings_from_sanitization=True` reuses the ring perception RDKit stored while sanitizing (the symmetrised SSSR,
    identical to `Chem.GetSymmSSSR`) instead of recomputing it; only pass it for molecules sanitized by RDKit's
    default parser.
    """
    if rings_from_sanitization:
        rings = list(mol.GetRingInfo().AtomRings())
    else:
        rings = [tuple(ring) for ring in Chem.GetSymmSSSR(mol)]
    scan = _scan_molecule(mol)
    atom_features, edge_index, edge_features = _ogb_arrays(scan)
    return MoleculeGraph(
        atom_features=atom_features,
        edge_index=edge_index,
        edge_features=edge_features,
        motif_features=_motif_vectors(scan, _group_atoms(scan, rings)),
    )


def prompt_smiles(mol: Chem.Mol, max_length: int | None = 128) -> str:
    """The SMILES LLaMo's prompts show the LLM: canonical, non-isomeric, cut at `max_length` characters."""
    text = Chem.MolToSmiles(mol, isomericSmiles=False)
    return text if max_length is None else text[:max_length]


def featurize_smiles(smiles: str | Chem.Mol, max_atoms: int | None = None, index: int | None = None) -> MoleculeGraph:
    """Parse `smiles` once and featurize it.

    Args:
        smiles: a SMILES string (or an RDKit molecule).
        max_atoms: refuse molecules with more atoms (heavy atoms plus explicit hydrogens) than this; `None`: no limit.
        index: position of the molecule in a batch, named in error messages.

    Raises:
        ValueError: the SMILES is empty or unparsable; `OversizedMoleculeError` (a `ValueError`) when the molecule is
            larger than `max_atoms`, or too long or dense for RDKit (see `parse_smiles`).
    """
    parsed_here = not isinstance(smiles, Chem.Mol)
    mol = parse_smiles(smiles, index=index, max_atoms=max_atoms) if parsed_here else smiles
    check_size(mol, max_atoms, smiles, index)
    return featurize_molecule(mol, rings_from_sanitization=parsed_here)


def check_size(mol: Chem.Mol, max_atoms: int | None, smiles: str | Chem.Mol, index: int | None = None) -> None:
    """Raise an `OversizedMoleculeError` naming the molecule when it has more than `max_atoms` atoms."""
    if max_atoms is None or mol.GetNumAtoms() <= max_atoms:
        return
    shown = shorten_for_message(smiles) if isinstance(smiles, str) else _molecule_head(mol)
    raise _oversized(_where(index), mol.GetNumAtoms(), max_atoms, shown)


def _molecule_head(mol: Chem.Mol) -> str:
    """A SMILES of the molecule's first atoms, for messages: writing a whole huge molecule would take minutes."""
    atoms = min(mol.GetNumAtoms(), MESSAGE_CHARS)
    text = Chem.MolFragmentToSmiles(mol, atomsToUse=list(range(atoms)), canonical=False)
    shown = shorten_for_message(text)
    return shown if atoms == mol.GetNumAtoms() else f"{shown} (its first {atoms} atoms)"


def collate_molecule_graphs(graphs: list[MoleculeGraph]) -> dict[str, torch.Tensor]:
    """Pad a list of molecules into batch-first tensors (every tensor's first dimension is the batch).

    Returns:
        `atom_features` `(B, N, 9)` long, `atom_mask` `(B, N)` bool, `bond_index` `(B, E, 2)` long (atom indices
        local to each molecule), `bond_features` `(B, E, 3)` long, `bond_mask` `(B, E)` bool, `motif_features`
        `(B, G, 73)` float, `motif_mask` `(B, G)` bool. `G` is at least 1 so attention always has a key; a molecule
        without groups has an all-False motif row.
    """
    if not graphs:
        raise ValueError("collate_molecule_graphs needs at least one molecule.")
    batch = len(graphs)
    max_atoms = max(g.atom_features.shape[0] for g in graphs)
    max_edges = max(g.edge_index.shape[1] for g in graphs)
    max_motifs = max(1, max(g.motif_features.shape[0] for g in graphs))

    atom_features = np.zeros((batch, max_atoms, len(ATOM_FEATURE_SIZES)), dtype=np.int64)
    atom_mask = np.zeros((batch, max_atoms), dtype=bool)
    bond_index = np.zeros((batch, max_edges, 2), dtype=np.int64)
    bond_features = np.zeros((batch, max_edges, len(BOND_FEATURE_SIZES)), dtype=np.int64)
    bond_mask = np.zeros((batch, max_edges), dtype=bool)
    motifs = np.zeros((batch, max_motifs, MOTIF_FEATURE_SIZE), dtype=np.float32)
    motif_mask = np.zeros((batch, max_motifs), dtype=bool)
    for row, graph in enumerate(graphs):
        n, e, g = graph.atom_features.shape[0], graph.edge_index.shape[1], graph.motif_features.shape[0]
        atom_features[row, :n] = graph.atom_features
        atom_mask[row, :n] = True
        bond_index[row, :e] = graph.edge_index.T
        bond_features[row, :e] = graph.edge_features
        bond_mask[row, :e] = True
        motifs[row, :g] = graph.motif_features
        motif_mask[row, :g] = True
    return {
        "atom_features": torch.from_numpy(atom_features),
        "atom_mask": torch.from_numpy(atom_mask),
        "bond_index": torch.from_numpy(bond_index),
        "bond_features": torch.from_numpy(bond_features),
        "bond_mask": torch.from_numpy(bond_mask),
        "motif_features": torch.from_numpy(motifs),
        "motif_mask": torch.from_numpy(motif_mask),
    }
