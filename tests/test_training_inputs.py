"""Hostile training data: every source type skips and counts a bad row (never crashes on one), names the file of a
whole-file problem briefly, and nothing it keeps makes the collator fail in the middle of a run."""

import json

import pytest
import selfies
import yaml

from llamo.processing.collators import LlamoDataCollator
from llamo.processing.featurization import featurize_dataset
from llamo.processing.index import attach_neighbours
from llamo.processing.loaders import (
    load_chebi20,
    load_chemicals_iupac,
    load_conversations,
    load_iupac_pairs,
    load_mol_instructions,
    load_pubchem324k,
    load_qm9_properties,
)
from llamo.processing.schema import MAX_TURNS
from llamo.training.config import DataSourceConfig, stage_arguments
from llamo.training.data import prepare_source


def row(record_id: str, smiles="CCO", question="Describe.", answer="An alcohol.", **fields) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": record_id, "smiles": smiles, "messages": messages, "task": "description", **fields}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in rows))
    return str(path)


def test_a_conversations_file_keeps_its_good_rows_around_bytes_it_cannot_read(tmp_path):
    path = tmp_path / "conversations.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"  # a byte order mark before the first (good) row
        + json.dumps(row("good:1")).encode()
        + b'\n{"id": "\xff\xfe not utf-8"}\n'
        + json.dumps(row("deep", metadata="[" * 50_000 + "]" * 50_000)).encode()
        + b"\n"
        + ("[" * 100_000).encode()  # too deep for the JSON parser
        + b"\r\n"
        + json.dumps(row("good:2", "c1ccccc1")).encode()
        + b"\r\n"
    )
    dataset, report = load_conversations(str(path))
    assert dataset["id"] == ["good:1", "good:2"]
    assert report.read == 5 and report.dropped.total() == 3


def test_a_lone_surrogate_drops_its_row_only(tmp_path):
    rows = [row("good:1"), row("bad:smiles", smiles="CC\ud800O"), row("bad:text", answer="An \udfff alcohol.")]
    dataset, report = load_conversations(write_jsonl(tmp_path / "c.jsonl", rows))  # JSON writes \ud800 escapes
    assert dataset["id"] == ["good:1"] and report.dropped.total() == 2


@pytest.mark.parametrize(
    "name, text, source_type",
    [
        ("empty.jsonl", "", "conversations"),
        ("blank.jsonl", "\n \n", "conversations"),
        ("h.tsv", "CID\tSMILES\tdescription\n", "chebi20"),
    ],
)
def test_a_source_without_rows_prepares_to_an_empty_dataset(tmp_path, name, text, source_type):
    (tmp_path / name).write_text(text)
    source = DataSourceConfig(type=source_type, path=str(tmp_path / name))
    dataset, reports = prepare_source(source, tmp_path / "cache", max_atoms=512)
    assert len(dataset) == 0 and "inchikey" in dataset.column_names
    assert [report.kept for report in reports] == [0, 0]
    again, _ = prepare_source(source, tmp_path / "cache", max_atoms=512)  # the cached empty copy loads
    assert len(again) == 0


def test_rows_the_collator_cannot_batch_are_dropped_and_counted_at_featurization(tmp_path, tiny_llamo):
    rows = [
        row("good:1"),
        row("good:2", smiles=["CCO", "c1ccccc1"]),
        row("bad:second-smiles", smiles=["CCO", "not-a-smiles"]),
        row("bad:further", metadata=json.dumps({"molecules": ["not-a-smiles"]})),
        row("bad:further-huge", metadata=json.dumps({"molecules": ["C" * 600]})),
        row("bad:further-none", metadata=json.dumps({"molecules": [None]})),
        row("bad:further-str", metadata=json.dumps({"molecules": "CCO"})),
        row("bad:metadata-list", metadata="[1, 2]"),
        row("bad:graph-question", question="Look at <graph> here."),
        row("bad:graph-answer", answer="<graph>"),
    ]
    loaded, load_report = load_conversations(write_jsonl(tmp_path / "c.jsonl", rows))
    featurized, report = featurize_dataset(loaded, max_atoms=512)
    assert featurized["id"] == ["good:1", "good:2"]
    assert load_report.dropped.total() + report.dropped.total() == len(rows) - 2
    assert report.dropped["text holds the graph token <graph>"] == 2
    assert report.dropped["further molecule: unparsable SMILES"] == 2
    assert report.dropped["further molecule: oversized molecule"] == 1
    with_neighbours = attach_neighbours(featurized, 2, share=1.0)  # a bad answer would reach other rows' prompts
    batch = LlamoDataCollator(tiny_llamo[1])(list(with_neighbours))
    assert batch["input_ids"].shape[0] == 2


def test_conversations_without_a_final_answer_or_with_too_many_turns_are_dropped(tmp_path):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(MAX_TURNS + 2)]
    rows = [
        row("good:1"),
        {**row("user-only"), "messages": [{"role": "user", "content": "Describe."}]},
        {**row("ends-with-user"), "messages": [*row("x")["messages"], {"role": "user", "content": "And?"}]},
        {**row("too-many-turns"), "messages": turns},
    ]
    loaded, report = load_conversations(write_jsonl(tmp_path / "c.jsonl", rows))
    assert loaded["id"] == ["good:1"] and report.dropped["no assistant turn at the end"] == 2
    assert report.dropped.total() == 3
    featurized, _ = featurize_dataset(loaded)
    attach_neighbours(featurized, 2, share=1.0)  # the index reads the last two turns as question and answer


def test_mol_instructions_entries_of_wrong_types_are_counted_and_a_broken_file_is_named(tmp_path):
    good = {"instruction": "Describe.", "input": selfies.encoder("CCO"), "output": "An alcohol."}
    entries = [good, "text", None, {**good, "metadata": "train"}, {**good, "output": 5}, {**good, "instruction": {}}]
    path = tmp_path / "mol.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(entries).encode())
    dataset, report = load_mol_instructions(str(path))
    assert len(dataset) == 1 and report.dropped.total() == 5
    path.write_text(json.dumps(entries)[:-30])
    with pytest.raises(ValueError, match=r"mol\.json: not a readable JSON file") as error:
        load_mol_instructions(str(path))
    assert len(str(error.value)) < 400


def test_tables_count_rows_that_are_not_utf8_and_name_files_they_cannot_read(tmp_path):
    table = tmp_path / "chebi.tsv"
    table.write_bytes(b"CID\tSMILES\tdescription\n1\tCCO\tAn alcohol.\textra\n2\tCCC\tpro\xffpane\n")
    dataset, report = load_chebi20(str(table))
    assert dataset["smiles"] == ["CCO"] and report.dropped["invalid UTF-8"] == 1  # the extra field is ignored
    table.write_text("")
    with pytest.raises(ValueError, match=r"chebi\.tsv: not a readable table"):
        load_chebi20(str(table))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('SMILES,iupac\nCCO,"ethanol\nCCC,propane\n')
    with pytest.raises(ValueError, match=r"pairs\.csv: not a readable table"):
        load_iupac_pairs(str(pairs))
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(bytes(range(1, 256)) * 40)  # its "header" is one long line of tabs and garbage
    with pytest.raises(ValueError, match="has no column") as error:
        load_chebi20(str(binary))
    assert len(str(error.value)) < 400 + len(str(binary))
    chemicals = tmp_path / "chemicals.tsv"
    chemicals.write_bytes(b"1\tcas\tf\t1.0\tCCO\ti\tKEY1\tethanol\n2\tcas\tf\t1.0\tCCC\ti\tKEY2\tpro\xffpane\n")
    dataset, report = load_chemicals_iupac(str(chemicals))
    assert dataset["smiles"] == ["CCO"] and report.dropped["invalid UTF-8"] == 1 and report.read == 2


def test_qm9_values_that_are_no_finite_number_are_counted(tmp_path):
    table = tmp_path / "qm9.csv"
    table.write_text("SMILES,HOMO_au,LUMO_au,HOMO_LUMO_gap_au\nCCO,-0.25,0.01,0.26\nCCC,abc,inf,1e999\n")
    dataset, report = load_qm9_properties(str(table))
    assert len(dataset) == 3
    assert report.dropped == {"non-numeric HOMO": 1, "non-finite LUMO": 1, "non-finite gap": 1}


def test_pubchem_text_files_not_utf8_are_counted_and_unpaired_files_are_named(tmp_path):
    root = tmp_path / "train"
    (root / "text").mkdir(parents=True)
    (root / "smiles").mkdir()
    (root / "text" / ".ipynb_checkpoints").mkdir()  # a folder among the files is not one of them
    for cid, smiles, text in [("1", b"CCO", b"An alcohol."), ("2", b"CCC", b"pro\xffpane")]:
        (root / "smiles" / f"smiles_{cid}.txt").write_bytes(smiles)
        (root / "text" / f"text_{cid}.txt").write_bytes(text)
    dataset, report = load_pubchem324k(str(tmp_path))
    assert dataset["smiles"] == ["CCO"] and report.dropped["invalid UTF-8"] == 1
    (root / "text" / "text_2.txt").rename(root / "text" / "text_3.txt")
    with pytest.raises(ValueError, match=r"text_3\.txt has no SMILES file of its id"):
        load_pubchem324k(str(tmp_path))


def test_a_row_whose_molecules_do_not_fit_is_left_out_of_its_batch(tmp_path, tiny_llamo, caplog):
    processor = tiny_llamo[1]
    many = ["C" * (i + 1) for i in range(8)]  # 8 molecules: 8 runs of placeholders, more than max_length holds
    rows = [row("fits"), row("too-many", smiles=many)]
    loaded, _ = load_conversations(write_jsonl(tmp_path / "c.jsonl", rows))
    featurized, _ = featurize_dataset(loaded, max_atoms=512)
    max_length = 4 * processor.num_graph_tokens
    collator = LlamoDataCollator(processor, max_length=max_length)
    with caplog.at_level("WARNING"):
        batch = collator(list(featurized))
    assert batch["input_ids"].shape[0] == 1 and collator.dropped == 1
    assert "Row too-many (max_length=64) left out of its batch" in caplog.text
    assert batch["atom_mask"].shape[1] == 1  # the kept row's one molecule
    with pytest.raises(ValueError, match=r"Row too-many .* keeps .* graph placeholders"):
        collator([featurized[1]])


# --- training settings: refused by `llamo train` before any model or data loads ------------------------------------


def write_recipe(tmp_path, **settings) -> str:
    """A stage-1 recipe whose data and model do not exist: only a refusal of the settings ends the command cleanly."""
    recipe = {"output_dir": str(tmp_path / "run"), "sources": [{"type": "chebi20", "path": str(tmp_path / "x.tsv")}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**recipe, **settings}))
    return str(tmp_path / "recipe.yaml")


def refusal(capsys, argv: list[str]) -> str:
    """What `llamo train` says when it refuses `argv` (usage exit status 2) before anything is written."""
    from llamo.cli import main

    assert main(["train", *argv]) == 2
    return capsys.readouterr().err.strip().removeprefix("llamo train: error: invalid stage1 configuration: ")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("learning_rate", "inf", "learning_rate must be a finite number >= 0, got inf"),
        ("learning_rate", "-1e-4", "learning_rate must be a finite number >= 0, got -0.0001"),
        ("weight_decay", "nan", "weight_decay must be a finite number >= 0, got nan"),
        ("weight_decay", "inf", "weight_decay must be a finite number >= 0, got inf"),
        ("weight_decay", "-0.05", "weight_decay must be a finite number >= 0, got -0.05"),
        ("max_grad_norm", "nan", "max_grad_norm must be a number >= 0 (0: no clipping) or inf (no clipping, the norm"),
        ("max_grad_norm", "-1", "max_grad_norm must be a number >= 0 (0: no clipping) or inf (no clipping, the norm"),
        ("num_train_epochs", "nan", "num_train_epochs must be a finite number >= 0, got nan"),
        ("num_train_epochs", "inf", "num_train_epochs must be a finite number >= 0, got inf"),
        ("num_train_epochs", "-1", "num_train_epochs must be a finite number >= 0, got -1.0"),
        ("neighbour_share", "2", "neighbour_share must be a number in [0, 1], got 2.0"),
        ("neighbour_share", "nan", "neighbour_share must be a number in [0, 1], got nan"),
        ("neighbours", "-1", "neighbours must be an integer >= 0, got -1"),
        ("gradient_accumulation_steps", "0", "gradient_accumulation_steps must be an integer >= 1, got 0"),
        ("adam_beta1", "nan", "adam_beta1 must be a finite number, got nan"),  # NaN in any float setting
        ("lora_dropout", "inf", "lora_dropout must be a finite number, got inf"),
        ("logging_steps", "inf", "cannot convert float infinity to integer"),  # transformers' own check, no traceback
    ],
)
def test_training_numbers_that_cannot_train_are_refused_naming_the_option(tmp_path, capsys, flag, value, message):
    assert refusal(capsys, ["stage1", "--config", write_recipe(tmp_path), f"--{flag}={value}"]).startswith(message)
    assert not (tmp_path / "run").exists()


def test_edge_values_that_train_are_kept(tmp_path):
    from llamo.training import stage1

    for flags in (
        ["--max_grad_norm", "0", "--neighbour_share", "0", "--weight_decay", "0", "--gradient_accumulation_steps", "1"],
        ["--max_grad_norm", "inf", "--neighbour_share", "1", "--num_train_epochs", "0.5", "--learning_rate", "0"],
    ):
        script, training, _ = stage1.parse(["--config", write_recipe(tmp_path), *flags])
        values = dict(zip(flags[::2], flags[1::2], strict=True))
        assert training.max_grad_norm == float(values["--max_grad_norm"])
        assert script.neighbour_share == float(values["--neighbour_share"])


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_dir_that_is_a_file_is_refused_naming_it(tmp_path, capsys, inside):
    file = tmp_path / "notes.txt"
    file.write_text("not a run folder")
    output_dir = file / "run" if inside else file
    message = refusal(capsys, ["stage1", "--config", write_recipe(tmp_path, output_dir=str(output_dir))])
    if inside:
        assert message == f"output_dir {output_dir} lies inside {file}, which is not a folder: choose another one"
    else:
        assert message == f"output_dir {file} exists and is not a folder: choose another one"
    assert file.read_text() == "not a run folder"


@pytest.mark.parametrize(
    "sources, message",
    [
        (5, "sources must be a list of data sources, got int"),
        ({"type": "chebi20", "path": "x.tsv"}, "sources must be a list of data sources, got dict"),
        ([5], "sources[0] must be a mapping (type, path, ...), got int"),
        ([{"type": "qm9"}, {"type": "qm9", "weight": float("nan")}], "sources[1]: weight must be a finite number >= 0"),
        ([{"type": "qm9", "weight": -1}], "sources[0]: weight must be a finite number >= 0, got -1"),
        ([{"type": "qm9", "weight": float("inf")}], "sources[0]: weight must be a finite number >= 0, got inf"),
        ([{"type": "qm9", "weight": "half"}], "sources[0]: weight must be a finite number >= 0, got 'half'"),
        ([{"type": "qm9", "holdout": 1}], "sources[0]: holdout must be a number in [0, 1), got 1"),
        ([{"type": "qm9", "wieght": 2}], "sources[0]: DataSourceConfig.__init__() got an unexpected keyword"),
        ([{"type": "qm8"}], "sources[0]: Unknown data source type 'qm8'"),
    ],
)
def test_malformed_recipe_sources_are_refused_naming_the_key(tmp_path, capsys, sources, message):
    assert refusal(capsys, ["stage1", "--config", write_recipe(tmp_path, sources=sources)]).startswith(message)


def test_a_value_of_the_wrong_type_is_named_in_one_line(tmp_path, capsys):
    from llamo.cli import main

    assert main(["train", "stage1", "--config", write_recipe(tmp_path, learning_rate="fast")]) == 2
    err = capsys.readouterr().err  # TRL's whole usage (about 160 lines) came first before
    assert err.strip() == "llamo train: error: invalid stage1 configuration: learning_rate: invalid float value: 'fast'"


def test_settings_that_would_be_ignored_are_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    argv = ["stage1", "--config", recipe, "--init_llm", "some/lm", "--model_name_or_path", str(tmp_path)]
    assert refusal(capsys, argv).startswith("give model_name_or_path (a `llamo init` folder) or init_llm")
    assert refusal(capsys, ["stage1", "--config", recipe, "--task", "iupac"]).startswith(
        "task (iupac) is for a specialist run: set mode: specialist, or drop task"
    )


def test_a_recipe_source_weight_of_nan_is_refused_as_yaml_writes_it(tmp_path, capsys):
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nsources:\n  - {{type: qm9, weight: .nan}}\n")
    assert (
        refusal(capsys, ["stage1", "--config", str(recipe)])
        == "sources[0]: weight must be a finite number >= 0, got nan"
    )


def test_source_numbers_written_as_yaml_strings_are_read_as_numbers(tmp_path):
    sources = [{"type": "qm9", "weight": "5e-1", "holdout": "1e-1"}, {"type": "qm9", "weight": 0}]
    script = stage_arguments("stage1", {"output_dir": str(tmp_path / "run"), "sources": sources}).script
    assert [(source.weight, source.holdout) for source in script.sources] == [(0.5, 0.1), (0, 0.0)]
