from collections import Counter

import numpy as np
import pytest
import torch
from rdkit import Chem

from llamo import featurization_llamo, smiles_llamo
from llamo.featurization_llamo import (
    ATOM_FEATURE_SIZES,
    BOND_FEATURE_SIZES,
    MOTIF_FEATURE_SIZE,
    MoleculeGraph,
    collate_molecule_graphs,
    featurize_molecule,
    featurize_smiles,
    functional_groups,
    motif_features,
    prompt_smiles,
)

from .conftest import SMILES, golden_rows


def _rows(matrix) -> Counter:
    return Counter(map(tuple, np.asarray(matrix).tolist()))


def test_golden_featurization_all_molecules():
    rows = golden_rows()
    assert len(rows) == 430
    for row in rows:
        graph = featurize_smiles(row["smiles"])
        assert graph.atom_features.tolist() == row["x"], row["smiles"]
        assert graph.edge_index.tolist() == row["edge_index"], row["smiles"]
        assert graph.edge_features.tolist() == row["edge_attr"], row["smiles"]
        expected = row["motifs"] if row["motifs"] is not None else []
        assert _rows(graph.motif_features) == _rows(expected), row["smiles"]


def test_parsed_mol_and_smiles_paths_agree():
    """Reusing sanitization's rings (SMILES path) and recomputing SSSR (Mol path) give the same groups."""
    for row in golden_rows()[:60]:
        mol = Chem.MolFromSmiles(row["smiles"])
        from_mol = featurize_molecule(mol)
        from_smiles = featurize_smiles(row["smiles"])
        assert _rows(from_mol.motif_features) == _rows(from_smiles.motif_features)
        assert _rows(motif_features(mol)) == _rows(from_smiles.motif_features)


def test_feature_ranges_fit_the_released_tables():
    for row in golden_rows():
        graph = featurize_smiles(row["smiles"])
        assert (graph.atom_features.max(axis=0, initial=0) < np.array(ATOM_FEATURE_SIZES)).all()
        assert (graph.edge_features.max(axis=0, initial=0) < np.array(BOND_FEATURE_SIZES)).all()
        assert graph.motif_features.shape[1] == MOTIF_FEATURE_SIZE


def test_aspirin_groups():
    groups = functional_groups(Chem.MolFromSmiles(SMILES["aspirin"]))
    # acetyl ester chain, carboxylic acid, benzene ring
    assert sorted(len(group) for group in groups) == [4, 5, 6]
    benzene = {4, 5, 6, 7, 8, 9}
    assert benzene in groups


def test_methane_has_no_groups_and_no_bonds():
    graph = featurize_smiles("C")
    assert graph.num_atoms == 1
    assert graph.edge_index.shape == (2, 0)
    assert graph.edge_features.shape == (0, 3)
    assert graph.motif_features.shape == (0, MOTIF_FEATURE_SIZE)


def test_salt_without_bonds_is_valid():
    graph = featurize_smiles(SMILES["salt"])
    assert graph.num_atoms == 2
    assert graph.edge_index.shape == (2, 0)
    assert graph.motif_features.shape[0] == 2


def test_newer_rdkit_stereo_tags_map_to_existing_rows():
    square_planar = featurize_smiles("Cl[Pt@SP1](Cl)(N)N")
    assert square_planar.atom_features[:, 1].max() == 3  # CHI_OTHER row of the 4-row chirality table


@pytest.mark.parametrize(
    ("smiles", "message"),
    [("", "Empty SMILES"), ("   ", "Empty SMILES"), ("C1CC", "Unparsable SMILES"), ("c1ccccc", "Unparsable")],
)
def test_bad_smiles_errors_name_the_input(smiles, message):
    with pytest.raises(ValueError, match=message) as error:
        featurize_smiles(smiles, index=7)
    assert "index 7" in str(error.value)


def test_non_string_smiles():
    with pytest.raises(ValueError, match="must be a string"):
        featurize_smiles(None, index=0)


def test_atom_limit():
    long_chain = "C" * 40
    assert featurize_smiles(long_chain, max_atoms=40).num_atoms == 40
    with pytest.raises(ValueError, match=r"40 atoms, over the limit of 39.*index 3|index 3.*40 atoms"):
        featurize_smiles(long_chain, max_atoms=39, index=3)


def test_round_trip_through_plain_lists():
    graph = featurize_smiles(SMILES["caffeine"])
    again = MoleculeGraph.from_dict(graph.to_dict())
    for name in ("atom_features", "edge_index", "edge_features", "motif_features"):
        assert np.array_equal(getattr(graph, name), getattr(again, name))
    empty = MoleculeGraph.from_dict(featurize_smiles("C").to_dict())
    assert empty.edge_index.shape == (2, 0) and empty.motif_features.shape == (0, MOTIF_FEATURE_SIZE)


def test_collate_is_batch_first_and_padded():
    graphs = [featurize_smiles(SMILES[name]) for name in ("aspirin", "methane", "salt")]
    batch = collate_molecule_graphs(graphs)
    assert batch["atom_features"].shape == (3, 13, 9)
    assert batch["atom_mask"].sum(1).tolist() == [13, 1, 2]
    assert batch["bond_index"].shape == (3, 26, 2)
    assert batch["bond_mask"].sum(1).tolist() == [26, 0, 0]
    assert batch["motif_features"].shape == (3, 3, MOTIF_FEATURE_SIZE)
    assert batch["motif_mask"].sum(1).tolist() == [3, 0, 2]
    assert batch["motif_features"].dtype == torch.float32
    # every tensor is batch-first, so beam search's repeat_interleave(dim=0) keeps molecules aligned
    for value in batch.values():
        assert value.shape[0] == 3
    only_methane = collate_molecule_graphs([featurize_smiles("C")])
    assert only_methane["motif_features"].shape == (1, 1, MOTIF_FEATURE_SIZE)
    assert not only_methane["motif_mask"].any()
    with pytest.raises(ValueError):
        collate_molecule_graphs([])


def test_prompt_smiles_is_canonical_non_isomeric_and_cut():
    mol = Chem.MolFromSmiles("C[C@H](N)C(=O)O")
    assert prompt_smiles(mol) == "CC(N)C(=O)O"
    assert len(prompt_smiles(Chem.MolFromSmiles("C" * 300))) == 128
    assert prompt_smiles(Chem.MolFromSmiles("C" * 300), None) == "C" * 300


# SMILES whose atoms and bonds carry what the scan's shortcuts skip or read another way: chirality (tetrahedral,
# allene, square planar, ...), radicals, bond stereo, dative and quadruple bonds, charges, isotopes, explicit and
# bracket hydrogens, CXSMILES extensions, metals, dummy atoms and acetal-like carbons.
SHORTCUT_SMILES = [
    "C/C=C/C",
    "C/C=C\\C",
    "C1CC/C=C/CCC1",
    "C/1=C/CCCCCC1",
    "[H]/C(F)=C(\\F)[H]",
    "C[C@H](N)O",
    "N[C@@H](C)C(=O)O",
    "C1CC[C@H]2CCCC[C@@H]2C1",
    "CC=[C@AL1]=CC",
    "F[Pt@SP1](Cl)(Br)I",
    "O[As@TB1](F)(Cl)(Br)N",
    "O[Co@OH1](F)(Cl)(Br)(I)N",
    "C[S@@](=O)c1ccccc1",
    "[CH3]",
    "[O]",
    "C[CH2]",
    "[N]=O",
    "[C]",
    "[CH]",
    "[Si]",
    "[NH3]->[Pt](<-[NH3])(Cl)Cl",
    "C->[Fe]",
    "[Mo]$[Mo]",
    "C[C@H](F)Cl |&1:1|",
    "CC=CC |w:1.0|",
    "C[CH2] |^1:1|",
    "[NH4+]",
    "CN(=O)=O",
    "OCl(=O)(=O)=O",
    "F[P-](F)(F)(F)(F)F",
    "[C-]#[O+]",
    "[2H]C([2H])([2H])O",
    "[13CH4]",
    "[3H][3H]",
    "[H]C([H])([H])[H]",
    "[H][H]",
    "[H+]",
    "[Na+].[Cl-]",
    "C[Mg]Br",
    "[*]C",
    "*CC*",
    "[1*]C",
    "OC(O)C",
    "CC1(O)OCCO1",
    "C(O)(N)S",
    "c1cc[nH]c1",
    "[se]1cccc1",
    "C1=CC=CC=C1",
    "N#N",
    "C=C=C",
    "C" * 15,
]


def _plain_features(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The OGB features read the plain way: every getter of every atom and bond, nothing inferred."""
    atoms = []
    for atom in mol.GetAtoms():
        z, degree, charge = atom.GetAtomicNum(), atom.GetTotalDegree(), atom.GetFormalCharge()
        hs, radicals = atom.GetTotalNumHs(), atom.GetNumRadicalElectrons()
        atoms.append(
            [
                z - 1 if 1 <= z <= 118 else 118,
                featurization_llamo._CHIRALITY.get(atom.GetChiralTag(), 3),
                min(degree, 11),
                charge + 5 if -5 <= charge <= 5 else 11,
                min(hs, 9),
                min(radicals, 5),
                featurization_llamo._HYBRIDIZATION.get(atom.GetHybridization(), 5),
                int(atom.GetIsAromatic()),
                int(atom.IsInRing()),
            ]
        )
    edges, bonds = [], []
    for bond in mol.GetBonds():
        row = [
            featurization_llamo._BOND_TYPE.get(bond.GetBondType(), 4),
            featurization_llamo._BOND_STEREO.get(bond.GetStereo(), 5),
            int(bond.GetIsConjugated()),
        ]
        begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        edges += [(begin, end), (end, begin)]
        bonds += [row, row]
    return (
        np.array(atoms, dtype=np.int64).reshape(-1, 9),
        np.array(edges, dtype=np.int64).reshape(-1, 2).T,
        np.array(bonds, dtype=np.int64).reshape(-1, 3),
    )


def test_scan_shortcuts_give_the_plain_getters_features():
    """Degrees counted from bonds, ring membership from the ring perception, bond types from bond orders, and the
    getters the SMILES text rules out: the features equal those read with every getter, with or without the text."""
    smiles_list = SHORTCUT_SMILES + [row["smiles"] for row in golden_rows()]
    for smiles in smiles_list:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, smiles
        expected = _plain_features(mol)
        from_text = featurize_smiles(smiles)
        from_mol = featurize_molecule(mol)
        for graph in (from_text, from_mol):
            for got, want in zip((graph.atom_features, graph.edge_index, graph.edge_features), expected, strict=True):
                assert got.dtype == want.dtype and got.shape == want.shape and got.flags.c_contiguous, smiles
                assert np.array_equal(got, want), smiles
        assert np.array_equal(from_text.motif_features, from_mol.motif_features), smiles


def test_smiles_text_hints():
    read = smiles_llamo.read_smiles_text
    text = read("C[C@H](N)[NH3+]")
    assert (text.atoms, text.bracket_atoms, text.chiral_atoms, text.hydrogens, text.plain) == (
        4,
        (1, 3),
        (1,),
        False,
        True,
    )
    assert read("[H]C").hydrogens and not read("CC |^1:1|").plain
    assert read("C/C=C/C").directional_bonds and not read("CC").directional_bonds
    assert read("C->[Fe]").dative_bonds and not read("CC").dative_bonds
    # text that cannot describe the molecule atom by atom (another atom count, an extension) is not used
    mol = Chem.MolFromSmiles("C[C@H](N)O")
    for wrong in ("CC(N)O.C", "C[CH](N)O |^1:1|", "[2H]C[C@H](N)O"):
        graph = featurize_molecule(mol, rings_from_sanitization=True, parsed_from=wrong)
        assert np.array_equal(graph.atom_features, _plain_features(mol)[0]), wrong
