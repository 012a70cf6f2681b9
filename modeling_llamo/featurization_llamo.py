"""Molecule featurization for LLaMo: SMILES -> OGB graph features + functional-group (motif) vectors.

One RDKit parse per molecule yields the 9 atom and 3 bond features of `ogb.utils.smiles2graph` (ogb 1.3.5 tables,
every bond in both directions, in RDKit's bond order) and the functional groups of LLaMo's motif tokens (the ReLMole
rule set, with its exact grouping behaviour) as 73-dim count vectors. Reading the SMILES text is `smiles_llamo.py`'s.
This file travels to the Hub as remote code: it imports only numpy, torch, RDKit and its sibling files."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import numpy as np
import torch
from rdkit import Chem

from .smiles_llamo import MAX_SMILES_LENGTH, SmilesText, check_size, parse_smiles, read_smiles_text

ATOM_FEATURE_SIZES = (119, 4, 12, 12, 10, 6, 6, 2, 2)
BOND_FEATURE_SIZES = (5, 6, 2)
MOTIF_FEATURE_SIZE = 73


def _rows(enum, names: str) -> dict:
    """RDKit enum member -> its row in the ogb feature table: the position of its name in `names`."""
    return {getattr(enum, name): row for row, name in enumerate(names.split())}


_CHIRALITY = _rows(Chem.ChiralType, "CHI_UNSPECIFIED CHI_TETRAHEDRAL_CW CHI_TETRAHEDRAL_CCW CHI_OTHER")
# ogb 1.3.5 has no row for the newer RDKit tags (allene, square planar, ...); they share CHI_OTHER's row.
_CHIRALITY_OTHER = _CHIRALITY[Chem.ChiralType.CHI_OTHER]
_HYBRIDIZATION = _rows(Chem.HybridizationType, "SP SP2 SP3 SP3D SP3D2")
_HYBRIDIZATION_MISC = len(_HYBRIDIZATION)  # the row after the listed ones
_BOND_TYPE = _rows(Chem.BondType, "SINGLE DOUBLE TRIPLE AROMATIC")
_BOND_TYPE_MISC = len(_BOND_TYPE)
_BOND_STEREO = _rows(Chem.BondStereo, "STEREONONE STEREOZ STEREOE STEREOCIS STEREOTRANS STEREOANY")
# Atropisomer stereo (RDKit >= 2023) has no ogb row; it is stereo of an unlisted kind, like STEREOANY.
_BOND_STEREO_OTHER = _BOND_STEREO[Chem.BondStereo.STEREOANY]

# Motif vector layout: the one-hot slots of each counted property, one property after the other; counts past the last
# slot clip to it, and a single slot is a presence flag. Properties 0-6 count atoms by element class (carbon, oxygen,
# nitrogen, phosphorus, sulfur, any halogen, any other element), 7-10 single, double, triple and aromatic bonds, 11
# ring bonds.
_SLOTS = np.array((11, 6, 6, 6, 6, 1, 1, 11, 8, 8, 8, 1), dtype=np.int64)
_OFFSETS = _SLOTS.cumsum() - _SLOTS  # where each property's slots start
_COUNTED = _SLOTS > 1  # properties one-hot encoded by count; the others are presence flags
_ELEMENT_CLASS = {6: 0, 8: 1, 7: 2, 15: 3, 16: 4, 9: 5, 17: 5, 35: 5, 53: 5}
_ELEMENT_CLASS_OTHER = 6
_BOND_CLASS_FIRST = 7  # properties 7-10 count single, double, triple and aromatic bonds, in OGB's bond-type order
_RING_SLOT = 11
_ACETAL_NEIGHBOURS = (7, 8, 16)


@dataclass
class MoleculeGraph:
    """The featurized form of one molecule.

    Attributes:
        atom_features: `(num_atoms, 9)` int64, OGB atom feature indices.
        edge_index: `(2, num_edges)` int64, both directions of every bond (PyG convention).
        edge_features: `(num_edges, 3)` int64, OGB bond feature indices.
        motif_features: `(num_motifs, 73)` uint8, one row per functional group; zero rows where the rule set finds
            no group (methane), in which case the model keeps its raw motif queries."""

    atom_features: np.ndarray
    edge_index: np.ndarray
    edge_features: np.ndarray
    motif_features: np.ndarray

    @property
    def num_atoms(self) -> int:
        return int(self.atom_features.shape[0])

    def to_dict(self) -> dict:
        """Plain lists, for `datasets.map` and JSON."""
        return {field.name: getattr(self, field.name).tolist() for field in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> MoleculeGraph:
        return cls(
            atom_features=np.asarray(data["atom_features"], dtype=np.int64).reshape(-1, len(ATOM_FEATURE_SIZES)),
            edge_index=np.asarray(data["edge_index"], dtype=np.int64).reshape(2, -1),
            edge_features=np.asarray(data["edge_features"], dtype=np.int64).reshape(-1, len(BOND_FEATURE_SIZES)),
            motif_features=np.asarray(data["motif_features"], dtype=np.uint8).reshape(-1, MOTIF_FEATURE_SIZE),
        )


# `GetBondTypeAsDouble()` -> OGB bond type, for the bond types a SMILES without dative bonds can hold: 1.0 is only
# SINGLE there and 1.5 only AROMATIC (ONEANDAHALF bonds come from other formats); other orders ask for the bond type.
_ORDER_KIND = {1.0: 0, 2.0: 1, 3.0: 2, 1.5: 3}

_Atom, _Bond = Chem.Atom, Chem.Bond
# Single-atom queries compare `Atom.GetHybridization()` in C++: two searches cost less than reading the enum of every
# atom from Python.
_SP2_QUERY = Chem.MolFromSmarts("[^2]")
_SP3_QUERY = Chem.MolFromSmarts("[^3]")


@dataclass
class _MoleculeScan:
    """What one pass over a molecule's atoms and bonds collects for both the OGB features and the motif rules.

    Attributes:
        atom_features, edge_index, edge_features: the OGB arrays (see `MoleculeGraph`).
        atomic_nums, atom_in_ring: per atom, its atomic number and whether it is in a ring.
        bond_ends, bond_kinds, bond_in_ring: per bond, in bond order, its `(begin, end)` atom indices, its OGB bond type
            (0 single, 1 double, 2 triple, 3 aromatic, 4 other) and whether it is in a ring.
        marked: the atoms the motif rules mark (see `functional_groups`)."""

    atom_features: np.ndarray
    edge_index: np.ndarray
    edge_features: np.ndarray
    atomic_nums: list[int]
    atom_in_ring: list[bool]
    bond_ends: list[tuple[int, int]]
    bond_kinds: list[int]
    bond_in_ring: list[bool]
    marked: set[int]


def _bond_kinds(bonds: list[Chem.Bond], text: SmilesText | None) -> list[int]:
    """The OGB bond type of every bond. Reading the bond order as a number costs a third of reading the bond type
    (an enum), and tells the types apart wherever the SMILES text writes no dative bond (`->`, `<-`)."""
    if text is not None and not text.dative_bonds:
        with contextlib.suppress(RuntimeError):  # a bond type without an order, which no SMILES makes
            kinds = [_ORDER_KIND.get(order, -1) for order in map(_Bond.GetBondTypeAsDouble, bonds)]
            if -1 in kinds:
                kinds = [
                    kind if kind >= 0 else _BOND_TYPE.get(bond.GetBondType(), _BOND_TYPE_MISC)
                    for bond, kind in zip(bonds, kinds, strict=True)
                ]
            return kinds
    return [_BOND_TYPE.get(bond_type, _BOND_TYPE_MISC) for bond_type in map(_Bond.GetBondType, bonds)]


def _hybridization(mol: Chem.Mol | None, atoms: list[Chem.Atom]) -> list[int]:
    """The OGB hybridization index of every atom: with `mol` (a molecule sanitized by RDKit's SMILES parser), SP2 and
    SP3 atoms are found by substructure search and only the others are asked one by one."""
    if mol is None:
        return [_HYBRIDIZATION.get(value, _HYBRIDIZATION_MISC) for value in map(_Atom.GetHybridization, atoms)]
    hybridization = [-1] * len(atoms)
    for (atom_idx,) in mol.GetSubstructMatches(_SP2_QUERY, uniquify=False, maxMatches=len(atoms)):
        hybridization[atom_idx] = _HYBRIDIZATION[Chem.HybridizationType.SP2]
    for (atom_idx,) in mol.GetSubstructMatches(_SP3_QUERY, uniquify=False, maxMatches=len(atoms)):
        hybridization[atom_idx] = _HYBRIDIZATION[Chem.HybridizationType.SP3]
    for atom_idx, value in enumerate(hybridization):
        if value < 0:
            hybridization[atom_idx] = _HYBRIDIZATION.get(atoms[atom_idx].GetHybridization(), _HYBRIDIZATION_MISC)
    return hybridization


def _scan_molecule(
    mol: Chem.Mol, text: SmilesText | None = None, rings: tuple[tuple[int, ...], ...] | None = None
) -> _MoleculeScan:
    """Read the atom and bond properties the features need, one property at a time: `map` over RDKit's getters
    costs about half of a Python loop over atoms, and most of the time here is spent in those getters.

    `text`: what the parsed SMILES says. RDKit's parser gives chiral tags only to atoms written with `@`, radicals only
    to bracket atoms, and bond stereo only where `/` or `\\` is written, so the others are not asked; used only when
    the text's atoms are the molecule's atoms in order (plain text, no bracket hydrogen, the same atom count).
    `rings`: the ring perception RDKit's parser stored, which then gives ring membership and lets hybridization be
    found by substructure search."""
    num_atoms, num_bonds = mol.GetNumAtoms(), mol.GetNumBonds()
    if text is not None and (not text.plain or text.hydrogens or text.atoms != num_atoms):
        text = None
    atoms = list(map(mol.GetAtomWithIdx, range(num_atoms)))
    bonds = list(map(mol.GetBondWithIdx, range(num_bonds)))
    begin = list(map(_Bond.GetBeginAtomIdx, bonds))
    end = list(map(_Bond.GetEndAtomIdx, bonds))

    atomic_nums = list(map(_Atom.GetAtomicNum, atoms))
    num_hs = list(map(_Atom.GetTotalNumHs, atoms))
    degree = num_hs.copy()  # `GetTotalDegree()` is the degree in the graph plus `GetTotalNumHs()`
    for atom_idx in begin + end:
        degree[atom_idx] += 1
    charges = list(map(_Atom.GetFormalCharge, atoms))
    aromatic = list(map(_Atom.GetIsAromatic, atoms))
    if rings is None:
        in_ring = list(map(_Atom.IsInRing, atoms))
    else:
        ring_atoms = set().union(*rings)
        in_ring = [atom_idx in ring_atoms for atom_idx in range(num_atoms)]
    if text is None:
        chirality = [_CHIRALITY.get(tag, _CHIRALITY_OTHER) for tag in map(_Atom.GetChiralTag, atoms)]
        radicals = list(map(_Atom.GetNumRadicalElectrons, atoms))
    else:
        chirality = [0] * num_atoms
        for atom_idx in text.chiral_atoms:
            chirality[atom_idx] = _CHIRALITY.get(atoms[atom_idx].GetChiralTag(), _CHIRALITY_OTHER)
        radicals = [0] * num_atoms
        for atom_idx in text.bracket_atoms:
            radicals[atom_idx] = atoms[atom_idx].GetNumRadicalElectrons()
    columns = np.array(
        [
            [z - 1 if 1 <= z <= 118 else 118 for z in atomic_nums],
            chirality,
            degree if max(degree, default=0) <= 10 else [d if d <= 10 else 11 for d in degree],
            [c + 5 if -5 <= c <= 5 else 11 for c in charges],
            num_hs if max(num_hs, default=0) <= 8 else [h if h <= 8 else 9 for h in num_hs],
            radicals if max(radicals, default=0) <= 4 else [r if r <= 4 else 5 for r in radicals],
            _hybridization(mol if rings is not None else None, atoms),
            aromatic,
            in_ring,
        ],
        dtype=np.int64,
    ).reshape(len(ATOM_FEATURE_SIZES), num_atoms)
    atom_features = columns.T.copy()

    kinds = _bond_kinds(bonds, text)
    if text is not None and not text.directional_bonds:
        stereo = [0] * num_bonds
    else:
        stereo = [_BOND_STEREO.get(value, _BOND_STEREO_OTHER) for value in map(_Bond.GetStereo, bonds)]
    bond_rows = np.array([kinds, stereo, list(map(_Bond.GetIsConjugated, bonds))], dtype=np.int64)
    edge_features = np.repeat(bond_rows.reshape(len(BOND_FEATURE_SIZES), num_bonds).T, 2, axis=0)
    ends = np.array([begin, end], dtype=np.int64).reshape(2, num_bonds)
    edge_index = np.empty((2, 2 * num_bonds), dtype=np.int64)
    edge_index[:, 0::2] = ends
    edge_index[:, 1::2] = ends[::-1]

    # the motif rules' marks: atoms other than carbon, both ends of double and triple bonds, and acetal-like carbons
    # (aliphatic, four connections, two of them to aliphatic O, N or S: SMARTS `[CX4]([O,N,S])[O,N,S]`)
    marked = {atom_idx for atom_idx, z in enumerate(atomic_nums) if z != 6}
    candidates = {
        atom_idx
        for atom_idx in range(num_atoms)
        if degree[atom_idx] == 4 and atomic_nums[atom_idx] == 6 and not aromatic[atom_idx]
    }
    partners: dict[int, int] = {}
    for first, second, kind in zip(begin, end, kinds, strict=True):
        if kind == 1 or kind == 2:
            marked.update((first, second))
        elif candidates:
            if first in candidates and atomic_nums[second] in _ACETAL_NEIGHBOURS and not aromatic[second]:
                partners[first] = partners.get(first, 0) + 1
            if second in candidates and atomic_nums[first] in _ACETAL_NEIGHBOURS and not aromatic[first]:
                partners[second] = partners.get(second, 0) + 1
    marked.update(atom_idx for atom_idx, count in partners.items() if count >= 2)
    bond_ends, bond_in_ring = list(zip(begin, end, strict=True)), list(map(_Bond.IsInRing, bonds))
    return _MoleculeScan(
        atom_features, edge_index, edge_features, atomic_nums, in_ring, bond_ends, kinds, bond_in_ring, marked
    )


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
    groups = [{atom_idx} for atom_idx in sorted(marked)]
    membership = {atom_idx: [group_idx] for group_idx, atom_idx in enumerate(sorted(marked))}
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
    become two-atom groups, and single ring atoms are dropped. Membership is tracked exactly as the original code does
    (a merged atom takes over its partner's membership *list*), so molecules built in another atom order than their
    SMILES's still get the original's groups."""
    return _group_atoms(_scan_molecule(mol), [tuple(ring) for ring in Chem.GetSymmSSSR(mol)])


def _motif_vectors(scan: _MoleculeScan, groups: list[set[int]]) -> np.ndarray:
    counts = [[0] * len(_SLOTS) for _ in groups]
    atom_groups: dict[int, list[int]] = {}
    element_class = [_ELEMENT_CLASS.get(z, _ELEMENT_CLASS_OTHER) for z in scan.atomic_nums]
    for group_idx, group in enumerate(groups):
        group_counts = counts[group_idx]
        for atom_idx in group:
            group_counts[element_class[atom_idx]] += 1
            atom_groups.setdefault(atom_idx, []).append(group_idx)
    for (first, second), kind, in_ring in zip(scan.bond_ends, scan.bond_kinds, scan.bond_in_ring, strict=True):
        second_groups = atom_groups.get(second, ())
        for group_idx in atom_groups.get(first, ()):
            if group_idx in second_groups:
                if kind < _BOND_TYPE_MISC:
                    counts[group_idx][_BOND_CLASS_FIRST + kind] += 1
                if in_ring:
                    counts[group_idx][_RING_SLOT] = 1

    # every counted property sets the slot of its count (the last slot for any larger count), every flag property its
    # one slot when the count is above zero
    table = np.array(counts, dtype=np.int64).reshape(len(groups), len(_SLOTS))
    columns = _OFFSETS + np.minimum(table, _SLOTS - 1)
    rows, properties = np.nonzero(_COUNTED | (table > 0))
    vectors = np.zeros((len(groups), MOTIF_FEATURE_SIZE), dtype=np.uint8)
    vectors[rows, columns[rows, properties]] = 1
    return vectors


def motif_features(mol: Chem.Mol) -> np.ndarray:
    """The `(num_groups, 73)` uint8 count vectors of a molecule's functional groups."""
    return featurize_molecule(mol).motif_features


def featurize_molecule(
    mol: Chem.Mol, rings_from_sanitization: bool = False, parsed_from: str | None = None
) -> MoleculeGraph:
    """Featurize an RDKit molecule: OGB atom and bond features plus motif vectors, in one scan.

    `rings_from_sanitization=True` reuses the ring perception stored by RDKit's default parser (the symmetrised SSSR);
    `parsed_from`, the SMILES `parse_smiles` read, spares asking RDKit what that text rules out (same result)."""
    rings = mol.GetRingInfo().AtomRings() if rings_from_sanitization else tuple(map(tuple, Chem.GetSymmSSSR(mol)))
    text = read_smiles_text(parsed_from[:MAX_SMILES_LENGTH]) if isinstance(parsed_from, str) else None
    scan = _scan_molecule(mol, text, rings if rings_from_sanitization else None)
    motifs = _motif_vectors(scan, _group_atoms(scan, rings))
    return MoleculeGraph(scan.atom_features, scan.edge_index, scan.edge_features, motifs)


def prompt_smiles(mol: Chem.Mol, max_length: int | None = 128) -> str:
    """The SMILES LLaMo's prompts show the LLM: canonical, non-isomeric, cut at `max_length` characters."""
    return Chem.MolToSmiles(mol, isomericSmiles=False)[:max_length]


def featurize_smiles(smiles: str | Chem.Mol, max_atoms: int | None = None, index: int | None = None) -> MoleculeGraph:
    """Parse `smiles` (or take an RDKit molecule) once and featurize it. A `ValueError` (naming `index`, the position
    in a batch) for an empty or unparsable SMILES; an `OversizedMoleculeError` for a molecule with more atoms (heavy
    atoms plus explicit hydrogens) than `max_atoms` (`None`: any size) or too long or dense (see `parse_smiles`)."""
    parsed_here = not isinstance(smiles, Chem.Mol)
    mol = parse_smiles(smiles, index=index, max_atoms=max_atoms) if parsed_here else smiles
    check_size(mol, max_atoms, smiles, index)
    return featurize_molecule(mol, rings_from_sanitization=parsed_here, parsed_from=smiles if parsed_here else None)


def collate_molecule_graphs(graphs: list[MoleculeGraph]) -> dict[str, torch.Tensor]:
    """Pad a list of molecules into batch-first tensors (every tensor's first dimension is the batch):
    `atom_features` `(B, N, 9)` long, `atom_mask` `(B, N)` bool, `bond_index` `(B, E, 2)` long (atom indices
    local to each molecule), `bond_features` `(B, E, 3)` long, `bond_mask` `(B, E)` bool, `motif_features`
    `(B, G, 73)` float, `motif_mask` `(B, G)` bool. `G` is at least 1 so attention always has a key; a molecule
    without groups has an all-False motif row."""
    if not graphs:
        raise ValueError("collate_molecule_graphs needs at least one molecule.")
    return pad_molecule_graphs(graphs, [(row,) for row in range(len(graphs))], (len(graphs),))


def pad_molecule_graphs(
    graphs: list[MoleculeGraph], positions: list[tuple[int, ...]], leading: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """Pad molecules into tensors of shape `(*leading, ...)`, molecule `i` at index `positions[i]` (see
    `collate_molecule_graphs` for the names and trailing shapes); padding and unused positions are zero and False."""
    max_atoms = max(g.atom_features.shape[0] for g in graphs)
    max_edges = max(g.edge_index.shape[1] for g in graphs)
    max_motifs = max(1, max(g.motif_features.shape[0] for g in graphs))

    padded = {
        "atom_features": np.zeros((*leading, max_atoms, len(ATOM_FEATURE_SIZES)), dtype=np.int64),
        "atom_mask": np.zeros((*leading, max_atoms), dtype=bool),
        "bond_index": np.zeros((*leading, max_edges, 2), dtype=np.int64),
        "bond_features": np.zeros((*leading, max_edges, len(BOND_FEATURE_SIZES)), dtype=np.int64),
        "bond_mask": np.zeros((*leading, max_edges), dtype=bool),
        "motif_features": np.zeros((*leading, max_motifs, MOTIF_FEATURE_SIZE), dtype=np.float32),
        "motif_mask": np.zeros((*leading, max_motifs), dtype=bool),
    }
    for position, graph in zip(positions, graphs, strict=True):
        n, e, g = graph.atom_features.shape[0], graph.edge_index.shape[1], graph.motif_features.shape[0]
        padded["atom_features"][(*position, slice(n))] = graph.atom_features
        padded["atom_mask"][(*position, slice(n))] = True
        padded["bond_index"][(*position, slice(e))] = graph.edge_index.T
        padded["bond_features"][(*position, slice(e))] = graph.edge_features
        padded["bond_mask"][(*position, slice(e))] = True
        padded["motif_features"][(*position, slice(g))] = graph.motif_features
        padded["motif_mask"][(*position, slice(g))] = True
    return {name: torch.from_numpy(array) for name, array in padded.items()}
