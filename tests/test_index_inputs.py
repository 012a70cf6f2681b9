"""Hostile inputs to molecule indexes: damaged saved folders, odd sources and outputs of `llamo index build`."""

import os

import datasets
import pytest
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from llamo.cli import main
from llamo.processing.index import INDEX_FEATURES, MoleculeIndex
from llamo.processing.schema import make_record

NAMES = {"CCO": "ethanol", "CCCO": "propan-1-ol", "CCN": "ethanamine"}


def index_of(names: dict[str, str]) -> tuple[MoleculeIndex, dict[str, int]]:
    turns = [{"role": "user", "content": "Name it."}, {"role": "assistant", "content": ""}]
    records = [
        make_record(f"t:{i}", smiles, [turns[0], {**turns[1], "content": name}], "iupac", "t")
        for i, (smiles, name) in enumerate(names.items())
    ]
    return MoleculeIndex.from_records(records, "iupac", progress=False)


def test_molecules_without_an_inchikey_are_kept_apart_and_never_exact():
    index, counts = index_of({"*CC": "an ethyl group", "*CCC": "a propyl group", "CCO": "ethanol"})
    assert counts["indexed"] == 3 and counts["duplicate"] == 0  # InChI cannot key `*` atoms: both were one molecule
    found = index.neighbours("*CCCC", k=3)
    assert not any(n.exact for n in found) and all(n.similarity < 1 for n in found)
    assert index.neighbours("*CCC", k=1)[0].answer == "a propyl group"


def _fingerprints(folder, size):
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=size)
    table = index_of(NAMES)[0].table
    fingerprints = [generator.GetFingerprint(Chem.MolFromSmiles(s)).ToBinary() for s in table["smiles"]]
    table.remove_columns("fingerprint").add_column("fingerprint", fingerprints).save_to_disk(str(folder))


def _table(folder, **columns):
    table = index_of(NAMES)[0].table
    datasets.Dataset.from_dict({**table.to_dict(), **columns}, features=INDEX_FEATURES).save_to_disk(str(folder))


DAMAGES = {
    "truncated arrow": lambda f: (a := next(f.glob("*.arrow"))).write_bytes(a.read_bytes()[:200]),
    "arrow file is a folder": lambda f: (next(f.glob("*.arrow")).unlink(), (f / "data-00000-of-00001.arrow").mkdir()),
    "state.json not JSON": lambda f: (f / "state.json").write_text("{", encoding="utf-8"),
    "state.json a list": lambda f: (f / "state.json").write_text("[]", encoding="utf-8"),
    "1024-bit fingerprints": lambda f: _fingerprints(f, 1024),
    "garbage fingerprints": lambda f: _table(f, fingerprint=[b""] * 3),
    "null answers": lambda f: _table(f, answer=[None] * 3),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_index_folder_is_a_short_error_naming_it(tmp_path, capsys, damage):
    folder = tmp_path / "idx"
    if damage.endswith(("fingerprints", "answers")):
        DAMAGES[damage](folder)
    else:
        index_of(NAMES)[0].save(folder)
        DAMAGES[damage](folder)
    with pytest.raises(ValueError, match=f"Could not load the molecule index {folder}"):
        MoleculeIndex.load(folder)
    assert main(["index", "show", str(folder)]) == 2
    error = capsys.readouterr().err
    assert str(folder) in error and len(error) < 600


def test_an_unreadable_entry_is_named_not_blamed_on_the_question(tiny_llamo_dir, tmp_path, capsys):
    table = index_of(NAMES)[0].table.to_dict()
    table["smiles"][1] = "C1CC(("  # an index table made by hand
    datasets.Dataset.from_dict(table, features=INDEX_FEATURES).save_to_disk(str(tmp_path / "idx"))
    argv = ["generate", str(tiny_llamo_dir), "--smiles", "CCCCO", "What is the IUPAC name of this molecule?"]
    options = ["--index", str(tmp_path / "idx"), "--neighbours", "3", "--max-new-tokens", "2", "--device", "cpu"]
    assert main([*argv, *options, "--no-stream", "--verify-names", "off", "--name-hint", "off"]) == 2
    error = capsys.readouterr().err
    assert "Entry 1 of the molecule index, SMILES 'C1CC((', is not a molecule RDKit reads" in error, error


def test_an_unreachable_hub_index_is_a_short_error(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/index' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="Could not load the molecule index someone/index"):
        MoleculeIndex.load("someone/index")
    assert main(["index", "build", "someone/index", "-o", "unused", "--task", "iupac"]) == 2
    assert "Couldn't reach 'someone/index'" in capsys.readouterr().err


def test_an_empty_index_saves_and_loads_back(tmp_path):
    empty, counts = index_of({})
    assert counts["read"] == 0
    empty.save(tmp_path / "idx")  # datasets wrote no shard for an empty table, and then could not load the folder
    loaded = MoleculeIndex.load(tmp_path / "idx")
    assert len(loaded) == 0 and loaded.neighbours("CCO") == []


def test_saving_leaves_a_users_partial_folder_alone_and_accepts_the_current_folder(tmp_path, monkeypatch):
    mine = tmp_path / "idx.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    index = index_of(NAMES)[0]
    index.save(tmp_path / "idx")
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "idx.partial"]
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    here = os.stat(".").st_ino
    index.save(".")
    assert len(MoleculeIndex.load(tmp_path / "here")) == len(NAMES)
    assert os.stat(".").st_ino == here == os.stat(tmp_path / "here").st_ino  # filled, not replaced under the shell
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "idx", "idx.partial"]


def test_build_refuses_a_folder_as_source_and_an_output_under_a_file(tmp_path, capsys):
    source = tmp_path / "names.csv"
    source.mkdir()
    assert main(["index", "build", str(source), "-o", str(tmp_path / "idx"), "--task", "iupac"]) == 2
    assert f"Is a directory: '{source}'" in capsys.readouterr().err
    source.rmdir()
    source.write_text("SMILES,iupac\nCCO,ethanol\n", encoding="utf-8")
    taken = tmp_path / "taken"
    taken.write_text("mine", encoding="utf-8")
    assert main(["index", "build", str(source), "-o", str(taken / "idx"), "--task", "iupac"]) == 2
    assert f"cannot write the index to {taken / 'idx'}: Not a directory" in capsys.readouterr().err
    assert taken.read_text(encoding="utf-8") == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "names.csv",
        "taken",
    ]


@pytest.mark.parametrize(("text", "problem"), [("{", "is not readable JSON"), ("[]", "must hold a JSON object")])
def test_a_broken_retrieval_file_is_named(tmp_path, text, problem):
    from llamo.retrieval import RETRIEVAL_FILE, retrieval_settings

    (tmp_path / RETRIEVAL_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"{tmp_path / RETRIEVAL_FILE} {problem}"):
        retrieval_settings(tmp_path)


def test_build_refuses_out_of_range_counts_and_holdout_before_reading(tmp_path, capsys):
    source = tmp_path / "never-read.tsv"  # refused before the source is opened
    base = ["index", "build", str(source), "-o", str(tmp_path / "idx"), "--task", "description"]
    for option, value, shown in (
        ("--limit", "-1", "--limit must be at least 1, got -1"),
        ("--max-atoms", "0", "--max-atoms must be at least 1, got 0"),
        ("--holdout", "1.5", "--holdout must be in [0, 1), got 1.5"),
    ):
        assert main([*base, option, value]) == 2
        assert shown in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
