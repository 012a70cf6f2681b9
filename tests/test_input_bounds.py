"""Hostile inputs on the SMILES path: huge molecules are refused before RDKit parses them, error messages stay short
whatever the input, and text RDKit cannot even receive (lone surrogates, NUL characters) gives the usual ValueError."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
from rdkit import Chem, rdBase

from llamo.featurization_llamo import featurize_smiles
from llamo.hub_cards.space.demo import render_molecule
from llamo.processing.featurization import featurize_dataset
from llamo.processing.schema import CONVERSATION_FEATURES, make_record
from llamo.smiles_llamo import (
    MAX_RING_BONDS_PER_ATOM,
    MAX_SMILES_LENGTH,
    OversizedMoleculeError,
    check_size,
    count_smiles_atoms,
    parse_smiles,
    shorten_for_message,
)

from .conftest import CHEBI_VALIDATION, golden_rows

HUGE = {
    "chain": "C" * 100_000,
    "branches": "C(C)" * 25_000,
    "benzenes": "c1ccccc1" * 125_000,
}
"""100,000-atom-scale SMILES that took RDKit minutes to parse and canonicalise."""
SHORT_MESSAGE = 300


@pytest.mark.parametrize("name", sorted(HUGE))
def test_huge_smiles_is_refused_by_the_atom_bound(name):
    with pytest.raises(OversizedMoleculeError, match="over the limit of 512") as error:
        parse_smiles(HUGE[name], index=4, max_atoms=512)
    assert "index 4" in str(error.value) and "atoms" in str(error.value)
    assert len(str(error.value)) < SHORT_MESSAGE
    with pytest.raises(ValueError, match=r"index 2 has at least \d+ atoms, over the limit of 512"):
        featurize_smiles(HUGE[name], max_atoms=512, index=2)


def test_huge_smiles_is_refused_by_the_length_cap_without_an_atom_bound():
    with pytest.raises(OversizedMoleculeError, match=f"100000 characters, over the limit of {MAX_SMILES_LENGTH}"):
        parse_smiles(HUGE["chain"])
    with pytest.raises(OversizedMoleculeError, match="characters"):
        featurize_smiles("C" * (MAX_SMILES_LENGTH + 1), max_atoms=None)


def test_exact_atom_count_is_named_under_the_length_cap():
    with pytest.raises(OversizedMoleculeError, match="has 513 atoms, over the limit of 512") as error:
        parse_smiles("C" * 513, max_atoms=512)
    assert (error.value.size, error.value.limit, error.value.unit) == (513, 512, "atoms")
    assert parse_smiles("C" * 512, max_atoms=512).GetNumAtoms() == 512


def test_featurize_dataset_counts_huge_molecules_as_oversized():
    import datasets

    smiles = [*HUGE.values(), "C" * (MAX_SMILES_LENGTH + 1), "CCO", "C1CC", ""]
    rows = [
        make_record(f"t:{i}", text, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "x", "t")
        for i, text in enumerate(smiles)
    ]
    dataset = datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)
    featurized, report = featurize_dataset(dataset, max_atoms=512)
    assert featurized["smiles"] == ["CCO"]
    assert report.dropped == Counter({"oversized molecule": 4, "unparsable SMILES": 1, "empty SMILES": 1})


@pytest.mark.parametrize(
    ("text", "max_atoms"),
    [
        ("C" * 1_000_000, 512),
        ("C" * 1_000_000, None),
        ("\x00" * 1_000_000, 512),
        ("\x00" * 1_000, None),
        ("X" * (MAX_SMILES_LENGTH - 1), None),
        ("\udcff" * 1_000_000, None),
    ],
    ids=["1M-atoms", "1M-atoms-no-bound", "1M-NUL", "1k-NUL", "unparsable-16k", "1M-surrogates"],
)
def test_messages_stay_short_for_megabyte_inputs(text, max_atoms):
    with pytest.raises(ValueError) as error:
        parse_smiles(text, index=9, max_atoms=max_atoms)
    message = str(error.value)
    assert len(message) < SHORT_MESSAGE and "index 9" in message
    assert f"({len(text)} characters)" in message


def test_shorten_for_message():
    assert shorten_for_message("CCO") == "'CCO'"
    cut = shorten_for_message("C" * 100)
    assert cut.endswith("... (100 characters)") and len(cut) < 110
    assert shorten_for_message(b"x" * 1000).endswith("... (1000 bytes)")
    assert len(shorten_for_message(list(range(100_000)))) < 110
    assert shorten_for_message(None) == "None"


def test_a_pipeline_input_that_is_no_smiles_is_named_briefly():
    from llamo.pipeline_llamo import molecule_conversation

    message = r"^Input 3: `smiles` must be non-empty SMILES strings, got \[0, 1, 2"
    with pytest.raises(ValueError, match=message) as caught:
        molecule_conversation(["CCO", list(range(100_000))], "Describe it.", index=3)
    assert len(str(caught.value)) < 160


def test_lone_surrogate_is_an_unparsable_smiles():
    with pytest.raises(ValueError, match=r"Unparsable SMILES at index 3: 'CC\\udcff'") as error:
        parse_smiles("CC\udcff", index=3)
    assert not isinstance(error.value, UnicodeError)
    with pytest.raises(ValueError, match="Unparsable SMILES at index 0") as error:
        featurize_smiles("c1ccccc1\ud800", index=0)
    assert not isinstance(error.value, UnicodeError)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("CC\x00O", r"Unparsable SMILES at index 1: 'CC\\x00O' \(it contains a NUL character\)"),
        ("\x00", "Unparsable SMILES at index 1"),
        (" \t\n ", "Empty SMILES at index 1"),
        (b"CCO", "SMILES at index 1 must be a string, got bytes: b'CCO'"),
        (12, "SMILES at index 1 must be a string, got int"),
        (["C"] * 10_000, "SMILES at index 1 must be a string, got list"),
    ],
    ids=["NUL-inside", "NUL", "whitespace", "bytes", "int", "list"],
)
def test_odd_inputs_give_a_value_error_naming_them(value, message):
    with pytest.raises(ValueError, match=message) as error:
        featurize_smiles(value, max_atoms=512, index=1)
    assert len(str(error.value)) < SHORT_MESSAGE


def test_check_size_of_a_huge_rdkit_molecule_shows_its_head():
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles("c1ccccc1" * 200)
    with pytest.raises(OversizedMoleculeError, match="1200 atoms, over the limit of 512") as error:
        check_size(mol, 512, mol, index=5)
    assert "index 5" in str(error.value) and len(str(error.value)) < SHORT_MESSAGE


def test_oversized_error_survives_pickling():
    error = pickle.loads(pickle.dumps(OversizedMoleculeError("too big", 600, 512)))
    assert (str(error), error.size, error.limit, error.unit) == ("too big", 600, 512, "atoms")


def _assert_count_matches_rdkit(smiles_list: list[str]) -> int:
    """The text count equals RDKit's on every molecule RDKit reads, and none of them is refused by a bound."""
    compared = 0
    with rdBase.BlockLogs():
        for smiles in smiles_list:
            mol = Chem.MolFromSmiles(smiles)
            if mol is not None:
                assert count_smiles_atoms(smiles) == mol.GetNumAtoms(), smiles
                assert parse_smiles(smiles, max_atoms=mol.GetNumAtoms()).GetNumAtoms() == mol.GetNumAtoms()
                compared += 1
    return compared


def test_text_atom_count_equals_rdkit_on_the_golden_molecules():
    assert _assert_count_matches_rdkit([row["smiles"] for row in golden_rows()]) == 430


def test_text_atom_count_equals_rdkit_on_chebi20():
    lines = CHEBI_VALIDATION.read_text(encoding="utf-8").splitlines()[1:]
    assert _assert_count_matches_rdkit([line.split("\t")[1] for line in lines]) > 3000


@pytest.mark.parametrize(
    ("smiles", "count", "rdkit"),
    [
        ("[H]C([H])([H])[H]", 1, 1),  # bound hydrogens are removed by RDKit
        ("[2H]C([2H])[2H]", 4, 4),  # isotopes are kept
        ("[H+].[Cl-]", 2, 2),  # a lone hydrogen is kept
        ("[H][H]", 2, 2),
        ("ClC(Br)c1cc[nH]c1*", 9, 9),
        ("CCO ethanol", 3, 3),  # a name after whitespace is not part of the molecule
        ("[H]/C=C/C", 3, 4),  # a stereo hydrogen RDKit keeps: the count stays a lower bound
    ],
)
def test_text_atom_count_is_exact_or_a_lower_bound(smiles, count, rdkit):
    assert count_smiles_atoms(smiles) == count
    assert Chem.MolFromSmiles(smiles).GetNumAtoms() == rdkit


def _clique(size: int, atom: str = "[Fe]") -> str:
    """`size` atoms all bonded to each other: a chain plus a ring bond `%(n)` for every other pair."""
    parts = []
    for i in range(size):
        closing = [f"%({j * size + i})" for j in range(i - 1)]
        opening = [f"%({i * size + j})" for j in range(i + 2, size)]
        parts.append(atom + "".join(closing + opening))
    return "".join(parts)


def test_dense_graphs_are_refused_before_rdkit_reads_them():
    with rdBase.BlockLogs():
        assert Chem.MolFromSmiles(_clique(6)).GetNumBonds() == 15
    assert featurize_smiles(_clique(6)).num_atoms == 6
    # a 50-atom clique took RDKit and the ring merging about a minute
    with pytest.raises(
        OversizedMoleculeError, match=f"one atom 48 ring bonds, over the limit of {MAX_RING_BONDS_PER_ATOM}"
    ):
        parse_smiles(_clique(50), index=1)
    eight_cliques = ".".join([_clique(8)] * 8)  # 8 x 21 ring bonds for 64 atoms
    with pytest.raises(OversizedMoleculeError, match="168 ring bonds for 64 atoms, over the limit of 144"):
        featurize_smiles(eight_cliques, max_atoms=512)
    with pytest.raises(OversizedMoleculeError, match="one atom 10000 ring bonds"):
        featurize_smiles("C" + "1" * 10_000, max_atoms=512)


def test_molecules_with_too_many_rings_are_refused_after_parsing():
    # 990 ring bonds for 492 atoms pass the text bounds, but RDKit finds 3,630 rings, which would take seconds to merge
    eleven_atom_cliques = ".".join([_clique(11)] * 22 + ["C" * 250])
    with pytest.raises(OversizedMoleculeError, match="3630 rings for 492 atoms, over the limit of 1000") as error:
        featurize_smiles(eleven_atom_cliques, max_atoms=512, index=3)
    assert error.value.unit == "rings" and "index 3" in str(error.value)


@pytest.mark.parametrize(
    "smiles", [HUGE["chain"], "\x00" * 1_000_000, "C(C)" * 1_000], ids=["100k-chain", "1M-NUL", "2000-atoms"]
)
def test_demo_message_for_a_huge_smiles_is_short(smiles):
    panels = render_molecule(smiles)
    assert panels.smiles is None and panels.drawing == "" and "llamo-error" in panels.status
    assert len(panels.status) < SHORT_MESSAGE


def test_demo_names_the_atom_count_of_a_large_molecule():
    panels = render_molecule("C(C)" * 1_000)
    assert "2000 atoms" in panels.status and "512" in panels.status
