"""The molecule side of LLaMo's processor: SMILES in, batch-first graph tensors out.

`LlamoMoleculeFeaturizer` (or `prepare_molecule`, its per-molecule step) is the one featurization entry point. A batch
is padded to `(batch, max_molecules, ...)`, so generation can repeat rows without knowing about molecules. This file
travels to the Hub as remote code: it imports only numpy, torch, RDKit and its sibling files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rdkit import Chem

from .featurization_llamo import MoleculeGraph, featurize_molecule, pad_molecule_graphs, prompt_smiles
from .smiles_llamo import check_size, oversized_error, parse_smiles, position_text

MoleculeInput = str | Chem.Mol | MoleculeGraph | dict
"""A molecule as callers give it: a SMILES string, an RDKit molecule, or an already featurized `MoleculeGraph` (or
its `to_dict()`)."""


@dataclass
class PreparedMolecule:
    """One molecule, featurized once for a prompt: the `graph` the model reads, its canonical non-isomeric `smiles`
    (uncut) that prompts show, and the parsed RDKit `mol` for callers that need more of it (an InChIKey for the
    datasets cache); `smiles` and `mol` are `None` where only a precomputed graph was given."""

    graph: MoleculeGraph
    smiles: str | None
    mol: Chem.Mol | None = None


def prepare_molecule(
    molecule: MoleculeInput, max_atoms: int | None = None, index: int | None = None, canonical: bool = True
) -> PreparedMolecule:
    """Parse a molecule once, check its size (at most `max_atoms`, `None`: any), and featurize it; a `MoleculeGraph`
    or its dict is passed through, size-checked. `index` is named in errors; `canonical` also computes the prompt's
    canonical SMILES. A `ValueError` names the index and a cut copy of an empty, unparsable or too large input."""
    if isinstance(molecule, (MoleculeGraph, dict)):
        try:
            graph = molecule if isinstance(molecule, MoleculeGraph) else MoleculeGraph.from_dict(molecule)
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(
                f"Molecule{position_text(index)} is a dict but not a featurized graph ({type(error).__name__}: "
                f"{error}); give molecules as SMILES strings, RDKit molecules or `MoleculeGraph`s."
            ) from error
        if max_atoms is not None and graph.num_atoms > max_atoms:
            raise oversized_error(position_text(index), graph.num_atoms, max_atoms, "a featurized graph")
        return PreparedMolecule(graph, None)
    parsed_here = not isinstance(molecule, Chem.Mol)
    mol = parse_smiles(molecule, index=index, max_atoms=max_atoms) if parsed_here else molecule
    if not parsed_here and (mol.GetNumAtoms() == 0 or mol.NeedsUpdatePropertyCache()):
        what = "has no atoms" if mol.GetNumAtoms() == 0 else "is not sanitized (Chem.SanitizeMol it first)"
        raise ValueError(f"The RDKit molecule{position_text(index)} {what}.")
    check_size(mol, max_atoms, molecule, index)
    graph = featurize_molecule(mol, rings_from_sanitization=parsed_here, parsed_from=molecule if parsed_here else None)
    return PreparedMolecule(graph, prompt_smiles(mol, None) if canonical else None, mol)


def collate_sequence_molecules(molecules: Sequence[Sequence[MoleculeGraph]]) -> dict[str, torch.Tensor]:
    """Pad the molecules of a batch of sequences into batch-first tensors. `M` is the most molecules any sequence holds
    (a sequence with fewer has all-False masks in its spare slots), `N`, `E` and `G` the most atoms, directed bonds
    and functional groups of any molecule. Returns:
        `atom_features` `(B, M, N, 9)` long, `atom_mask` `(B, M, N)` bool, `bond_index` `(B, M, E, 2)` long (atom
        indices local to each molecule), `bond_features` `(B, M, E, 3)` long, `bond_mask` `(B, M, E)` bool,
        `motif_features` `(B, M, G, 73)` float, `motif_mask` `(B, M, G)` bool. `G` is at least 1 so attention always
        has a key. A real molecule has at least one atom, so `atom_mask.any(-1)` marks the real molecules."""
    graphs = [graph for row in molecules for graph in row]
    if not graphs:
        raise ValueError("collate_sequence_molecules needs at least one molecule in the batch.")
    positions = [(row, slot) for row, sequence in enumerate(molecules) for slot in range(len(sequence))]
    batch = pad_molecule_graphs(graphs, positions, (len(molecules), max(len(row) for row in molecules)))
    # an empty tensor (no bonds in the batch) gets torch's own strides, not the ones numpy gives empty arrays
    return {name: value if value.numel() else value.new_zeros(value.shape) for name, value in batch.items()}


class LlamoMoleculeFeaturizer:
    """Featurizes molecules and collates them per sequence (the processor's `featurizer`). Molecules over `max_atoms`
    (`None`: no limit) are refused with a `ValueError`, the bound checked on the SMILES text before RDKit parses it."""

    def __init__(self, max_atoms: int | None = 512):
        if max_atoms is not None and (not isinstance(max_atoms, int) or isinstance(max_atoms, bool) or max_atoms < 1):
            raise ValueError(f"max_atoms must be an int of at least 1, or None, got {max_atoms!r}.")
        self.max_atoms = max_atoms

    def prepare(self, molecule: MoleculeInput, index: int | None = None) -> PreparedMolecule:
        """One molecule featurized, with its canonical prompt SMILES (see `prepare_molecule`)."""
        return prepare_molecule(molecule, self.max_atoms, index)

    def featurize(self, molecules: Sequence[MoleculeInput]) -> list[MoleculeGraph]:
        """Featurize a flat list of molecules, raising a `ValueError` that names the bad one's index."""
        return [prepare_molecule(m, self.max_atoms, index, canonical=False).graph for index, m in enumerate(molecules)]

    def __call__(self, molecules: Sequence[Sequence[MoleculeInput]]) -> dict[str, torch.Tensor]:
        """Featurize and collate the molecules of each sequence (a list per sequence, in placeholder order): the tensors
        of `collate_sequence_molecules`, or `{}` when no sequence holds a molecule."""
        rows = [list(row) for row in molecules]
        graphs = iter(self.featurize([molecule for row in rows for molecule in row]))
        rows = [[next(graphs) for _ in row] for row in rows]
        return collate_sequence_molecules(rows) if any(rows) else {}


__all__ = [
    "LlamoMoleculeFeaturizer",
    "MoleculeInput",
    "PreparedMolecule",
    "collate_sequence_molecules",
    "prepare_molecule",
]
