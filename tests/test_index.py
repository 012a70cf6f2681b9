"""Molecule indexes: building, nearest neighbours, hold-out, saving, and neighbours in prompts and the pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline

from llamo import add_neighbours
from llamo.pipeline_llamo import DEFAULT_NEIGHBOURS
from llamo.processing.index import MoleculeIndex
from llamo.processing.index_commands import build_index
from llamo.processing.loaders import PROPERTY_QUESTIONS, property_from_text, stable_fraction
from llamo.processing.schema import make_record

from .conftest import CHEBI_VALIDATION, SMILES, molecule_messages, subprocess_env

NAMES = {
    "CCO": "ethanol",
    "CCCO": "propan-1-ol",
    "CCCCO": "butan-1-ol",
    "CC(C)O": "propan-2-ol",
    "c1ccccc1": "benzene",
    "Cc1ccccc1": "toluene",
    "CC(=O)O": "acetic acid",
    "CCC(=O)O": "propanoic acid",
}


def name_records(names=NAMES):
    return [
        make_record(
            f"t:{i}",
            smiles,
            [{"role": "user", "content": "What is its IUPAC name?"}, {"role": "assistant", "content": name}],
            "iupac",
            "t",
        )
        for i, (smiles, name) in enumerate(names.items())
    ]


@pytest.fixture(scope="module")
def index():
    built, counts = MoleculeIndex.from_records(name_records(), "iupac", progress=False)
    assert counts["indexed"] == len(NAMES)
    return built


def test_an_exact_duplicate_comes_first_and_is_marked(index):
    found = index.neighbours("OCC", k=3)  # ethanol written differently
    assert found[0].answer == "ethanol" and found[0].exact and found[0].similarity == 1.0
    assert [n.exact for n in found[1:]] == [False, False]
    assert found[1].similarity >= found[2].similarity
    assert index.neighbours("CCCCCO", k=2)[0].answer == "butan-1-ol"  # nearest, not exact


def test_a_training_example_never_gets_itself(index):
    own = index.query_fingerprint("CCO")[1]
    for wrong in (2.5, "2", None):
        with pytest.raises(TypeError, match="k must be a whole number of neighbours"):
            index.neighbours("CCO", k=wrong)
    with pytest.raises(ValueError, match=r"holds no answers of key 'dipole'; its keys: \['iupac'\]"):
        index.neighbours("CCO", key="dipole")  # all answers came back, of any key, before
    for exclude in ([own], own):  # one InChIKey as a string is that key, not its characters
        found = index.neighbours("CCO", k=len(NAMES), exclude=exclude)
        assert "ethanol" not in [n.answer for n in found]
        assert len(found) == len(NAMES) - 1
        assert len(index.excluding(exclude)) == len(index) - 1


def test_stereoisomers_stay_two_different_neighbours():
    from llamo import featurize_smiles

    names = {"C[C@H](N)C(=O)O": "(2s)-2-aminopropanoic acid", "C[C@@H](N)C(=O)O": "(2r)-2-aminopropanoic acid"}
    built, _ = MoleculeIndex.from_records(name_records(names), "iupac", progress=False)
    found = {n.answer: n.smiles for n in built.neighbours("C[C@H](N)C(=O)OC", k=2)}
    assert found == {"(2s)-2-aminopropanoic acid": "C[C@H](N)C(=O)O", "(2r)-2-aminopropanoic acid": "C[C@@H](N)C(=O)O"}
    graphs = [featurize_smiles(smiles) for smiles in found.values()]  # what a prompt's neighbour graphs are built from
    assert not (graphs[0].atom_features == graphs[1].atom_features).all()  # the chirality tag tells them apart


def test_property_index_picks_the_asked_property():
    records = []
    for i, smiles in enumerate(["CCO", "CCCO", "CCN"]):
        for prop, value in (("HOMO", -0.25 - i / 100), ("LUMO", 0.05 + i / 100)):
            question = f"What is the {prop} energy of this molecule, in Hartree?"
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": f"{value:.4f}"}]
            records.append(make_record(f"q:{i}:{prop}", smiles, messages, "property", "qm9", {"property": prop}))
    index, counts = MoleculeIndex.from_records(records, "property", progress=False)
    assert counts["indexed"] == 6 and index.describe()["keys"] == {"HOMO": 3, "LUMO": 3}
    homo = index.neighbours("CCO", k=3, question="Predict the HOMO energy (Hartree) of this molecule.")
    assert homo[0].answer == "-0.2500" and all(float(n.answer) < 0 for n in homo)
    lumo = index.neighbours("CCO", k=3, question="What is the LUMO energy?")
    assert all(float(n.answer) > 0 for n in lumo)
    for template in PROPERTY_QUESTIONS["gap"]:  # the one without "gap" names both orbitals (it got LUMO neighbours)
        assert property_from_text(template) == "gap"
    assert property_from_text("Give the highest occupied and lowest unoccupied orbital energies' difference.") == "gap"
    assert property_from_text("Its energy?") is None


def homo_records(smiles_list, task="property"):
    question = "What is the HOMO energy of this molecule, in Hartree?"
    return [
        make_record(
            f"q:{i}:HOMO",
            smiles,
            [{"role": "user", "content": question}, {"role": "assistant", "content": "-0.25"}],
            task,
            "qm9",
            {"property": "HOMO"},
        )
        for i, smiles in enumerate(smiles_list)
    ]


def test_property_neighbours_count_substructures_other_tasks_use_bits(tmp_path):
    alcohols = ["CCCCO", "CCCCCCCCCCO"]  # pentanol's nearest: butanol by counts; as bits decanol holds all its parts
    by_counts = MoleculeIndex.from_records(homo_records(alcohols), "property", progress=False)[0]
    assert [n.smiles for n in by_counts.neighbours("CCCCCO", k=2)] == alcohols
    by_bits = MoleculeIndex.from_records(homo_records(alcohols, "iupac"), "iupac", progress=False)[0]
    assert [n.smiles for n in by_bits.neighbours("CCCCCO", k=2)] == alcohols[::-1]
    # a property index of bit fingerprints (as llamo built it before) is refused with a short error
    by_bits.table.map(lambda row: {"task": "property"}).save_to_disk(str(tmp_path / "old"))
    with pytest.raises(ValueError, match=r"not radius-1 Morgan count vectors of 2048 \(an older llamo's index"):
        MoleculeIndex.load(tmp_path / "old")


def test_holdout_leaves_out_exactly_the_test_molecules():
    index, counts = MoleculeIndex.from_records(name_records(), "iupac", holdout=0.5, progress=False)
    held = {key for key in MoleculeIndex.from_records(name_records(), "iupac", progress=False)[0].inchikeys}
    test = {key for key in held if stable_fraction(key, "holdout") < 0.5}
    assert test and counts["held out"] == len(test)
    assert index.inchikeys == held - test


def test_save_load_and_refusals(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = MoleculeIndex.load(tmp_path / "idx")
    assert len(loaded) == len(index) and loaded.neighbours("CCO", k=1)[0].answer == "ethanol"
    with pytest.raises(FileExistsError, match="not empty"):
        index.save(tmp_path / "idx")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a saved molecule index"):
        MoleculeIndex.load(tmp_path / "other")
    smaller = index.excluding(index.query_fingerprint(s)[1] for s in ("CCO", "CCCO"))
    assert len(smaller) == len(index) - 2


def test_from_records_refuses_limits_that_would_index_nothing_or_everything():
    for options in ({"max_atoms": 0}, {"max_atoms": -5}, {"holdout": 2.0}, {"holdout": -1}, {"holdout": float("nan")}):
        with pytest.raises(ValueError, match="must be"):  # every row was a "bad molecule", or held out, before
            MoleculeIndex.from_records(name_records(), "iupac", progress=False, **options)
    rows = [{k: v for k, v in name_records()[0].items() if k != "smiles"}, *name_records()]
    _, counts = MoleculeIndex.from_records(rows, "iupac", progress=False)  # no smiles key: a KeyError before
    assert counts["bad molecule"] == 1 and counts["indexed"] == len(NAMES)


def test_bad_and_oversized_molecules_are_counted_not_fatal():
    records = name_records({"CCO": "ethanol", "C1CC": "broken ring", "C" * 600: "a long chain"})
    index, counts = MoleculeIndex.from_records(records, "iupac", progress=False)
    assert len(index) == 1 and counts["bad molecule"] == 2


def test_rows_that_are_not_a_question_and_a_text_answer_are_counted_not_fatal():
    good = name_records({"CCO": "ethanol"})[0]
    question = good["messages"][0]
    malformed = [
        "CCO",
        None,
        {"smiles": "CCN", "task": "iupac"},
        {**good, "messages": "ethanamine"},
        {**good, "messages": [{"role": "assistant", "content": "ethanamine"}]},
        *({**good, "messages": [question, {"role": "assistant", "content": answer}]} for answer in (None, 5, [], " ")),
        {**good, "metadata": "[1, 2]"},
    ]
    index, counts = MoleculeIndex.from_records([*malformed, good], "iupac", progress=False)
    assert [entry["answer"] for entry in index.table] == ["ethanol"]
    assert counts["bad row"] == len(malformed) and counts["read"] == len(malformed) + 1


def test_first_use_index_of_a_slice_of_the_chemicals_table():
    pytest.importorskip("chemicals")
    index, _, counts = build_index("chemicals", "iupac", limit=200)
    assert counts["indexed"] >= 190 and index.task == "iupac"
    entry = index.table[0]
    assert index.neighbours(entry["smiles"], k=1)[0].answer == entry["answer"]


@pytest.mark.skipif(not CHEBI_VALIDATION.is_file(), reason="needs ../shared/data/chebi20/validation.txt")
def test_cli_builds_a_description_index_from_chebi20(tmp_path):
    out = tmp_path / "chebi-index"
    command = [sys.executable, "-m", "llamo.cli", "index", "build", str(CHEBI_VALIDATION), "-o", str(out)]
    done = subprocess.run(
        [*command, "--task", "description", "--limit", "40", "--holdout", "0.1"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Indexed" in done.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "llamo.cli", "index", "show", str(out)], capture_output=True, text=True, timeout=300
    )
    assert json.loads(shown.stdout)["task"] == "description"
    again = subprocess.run([*command, "--task", "description"], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "not empty" in again.stderr


def test_cli_refuses_what_is_not_an_index_and_a_file_as_output(tmp_path, capsys):
    from llamo.cli import main

    assert main(["index", "show", str(tmp_path)]) == 2
    assert "is not a saved molecule index" in capsys.readouterr().err
    taken = tmp_path / "taken.txt"
    taken.write_text("mine\n", encoding="utf-8")
    assert main(["index", "build", str(CHEBI_VALIDATION), "-o", str(taken), "--task", "description"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err and taken.read_text(encoding="utf-8") == "mine\n"
    rows = tmp_path / "rows.jsonl"  # conversation rows without their `id`: the loader's reasons reach the user
    rows.write_text(json.dumps({"smiles": "CCO", "messages": [{"role": "user", "content": "Name it."}]}) + "\n{\n")
    assert main(["index", "build", str(rows), "-o", str(tmp_path / "new"), "--task", "iupac"]) == 2
    assert "dropped 2 (1 malformed row (no 'id'), 1 line is not a JSON object" in capsys.readouterr().err


def test_neighbour_prompt_format_is_the_documented_one(tiny_llamo):
    processor = tiny_llamo[1]
    conversation = add_neighbours(
        molecule_messages("CCN", "What is its IUPAC name?"),
        [{"smiles": "CCO", "answer": "ethanol"}, {"smiles": "CCCO", "answer": "propan-1-ol\n"}],
    )
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.endswith(
        "Known molecules similar to the query, with their answers:\n"
        "1. CCO<graph> ethanol\n"
        "2. CCCO<graph> propan-1-ol\n"
        "Query molecule: CCN<graph> What is its IUPAC name? [/INST]"
    )
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["atom_mask"].sum(-1).tolist() == [[3, 4, 3]]  # neighbours first, the query last
    found = MoleculeIndex.from_records(name_records(), "iupac", progress=False)[0].neighbours("CCN", k=2)
    as_dicts = [{"smiles": n.smiles, "answer": n.answer} for n in found]  # what the index returns is taken as it is
    question = molecule_messages("CCN", "What is its IUPAC name?")
    assert add_neighbours(question, found) == add_neighbours(question, as_dicts)


def test_name_hint_prompt_format_is_the_documented_one(tiny_llamo):
    from llamo import add_name_hint

    processor = tiny_llamo[1]
    named = add_name_hint(molecule_messages("CCN", "Describe this molecule."), "ethan\namine")
    both = add_neighbours(named, [{"smiles": "CCO", "answer": "An alcohol."}])
    prompt = processor.apply_chat_template(both, add_generation_prompt=True)
    assert prompt.endswith(
        "Known molecules similar to the query, with their answers:\n"
        "1. CCO<graph> An alcohol.\n"
        "Query molecule: CCN<graph> Its IUPAC name is ethan amine. Describe this molecule. [/INST]"
    )
    bare = [{"role": "user", "content": [{"type": "molecule", "smiles": "CCN"}]}]
    assert add_name_hint(bare, "ethanamine")[0]["content"][-1] == {
        "type": "text",
        "text": "Its IUPAC name is ethanamine.",
    }
    assert bare[0]["content"] == [{"type": "molecule", "smiles": "CCN"}]  # the input is not changed
    with pytest.raises(ValueError, match="add_name_hint needs a user turn with a molecule block"):
        add_name_hint([{"role": "user", "content": "Describe ethanamine."}], "ethanamine")


def test_pipeline_answers_with_neighbours_and_says_when_the_molecule_is_known(tiny_llamo, index):
    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=4)
    plain = pipe({"smiles": "CCO", "text": "What is its IUPAC name?"})
    assert set(plain[0]) == {"generated_text"}
    known = pipe({"smiles": "OCC", "text": "What is its IUPAC name?"}, index=index)
    assert known[0]["found_in_index"] is True
    assert known[0]["neighbours"][0]["answer"] == "ethanol"
    assert len(known[0]["neighbours"]) == DEFAULT_NEIGHBOURS
    unknown = pipe({"smiles": "CCCCCCO", "text": "Name it."}, index=index, neighbours=3)
    assert unknown[0]["found_in_index"] is False and len(unknown[0]["neighbours"]) == 3
    both = pipe([{"smiles": ["CCO", "CCN"], "text": "Compare."}, {"smiles": "C", "text": "Name it."}], batch_size=2)
    assert len(both) == 2


def test_an_oversized_query_is_refused_before_lookup_and_oversized_entries_are_left_out(tiny_llamo):
    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=2)
    read = []

    class Index:
        def neighbours(self, smiles, k, question=None):
            read.append(("index", smiles))
            return []

    def hint(smiles):
        read.append(("hint", smiles))

    chain = "C" * 600  # its fingerprint and InChIKey took 0.7 s before the check; 100,000 atoms take minutes
    with pytest.raises(ValueError, match="Molecule at index 0 has 600 atoms, over the limit of 512"):
        pipe({"smiles": chain, "text": "Describe this molecule."}, index=Index(), name_hint=hint)
    assert read == []
    pipe({"smiles": chain, "text": "Describe this molecule."}, index=Index(), name_hint=hint, max_atoms=None)
    assert read == [("hint", chain), ("index", chain)]
    # an index built for larger molecules than the model's: its entries over the limit are left out of the prompt
    records = name_records({chain: "hexacontahectane", "CCO": "ethanol"})
    larger = MoleculeIndex.from_records(records, "iupac", max_atoms=None, progress=False)[0]
    answer = pipe({"smiles": "CCCCCCCC", "text": "Name it."}, index=larger, neighbours=2)[0]
    assert [entry["smiles"] for entry in answer["neighbours"]] == ["CCO"]
    answer = pipe({"smiles": "CCCCCCCC", "text": "Name it."}, index=larger, neighbours=2, max_atoms=None)[0]
    assert [entry["smiles"] for entry in answer["neighbours"]] == [chain, "CCO"]


def test_a_near_twin_is_given_alone_in_the_pipeline_the_cli_and_evaluation(tiny_llamo, index, tmp_path):
    from llamo.evaluation.data import select_examples
    from llamo.evaluation.predict import GenerationPredictor
    from llamo.pipeline_llamo import MoleculeBatch
    from llamo.retrieval import near_twin_for

    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=2)
    question = {"smiles": "CCCCCO", "text": "What is its IUPAC name?"}  # nearest: butan-1-ol
    found = index.neighbours("CCCCCO", k=2)
    similarity = found[0].similarity
    assert found[1].similarity < similarity < 1
    twin = pipe(question, index=index, neighbours=2, near_twin=similarity)[0]["neighbours"]
    assert [n["answer"] for n in twin] == ["butan-1-ol"]
    assert len(pipe(question, index=index, neighbours=2, near_twin=similarity + 0.01)[0]["neighbours"]) == 2
    prompt = processor.tokenizer.decode(
        pipe.preprocess(MoleculeBatch([molecule_messages("CCCCCO", "Name it.")]), index=index, near_twin=0.0)[
            "input_ids"
        ][0]
    )
    assert "1. " in prompt and "2. " not in prompt
    assert near_twin_for({"task_near_twin": {"description": 0.85}}, "description") == 0.85
    assert near_twin_for({"task_near_twin": {"description": 0.85}}, "iupac") is None
    row = name_records({"CCCCCO": "pentan-1-ol"})[0]
    examples, _ = select_examples([row])
    predictor = GenerationPredictor(model, processor, {}, index=index, neighbours=2, near_twin=similarity)
    prompt = processor.tokenizer.decode(predictor._render(examples)["input_ids"][0])  # the pipeline's lookup
    assert "<graph> butan-1-ol\n" in prompt and "2. " not in prompt


def test_name_verification_prefers_a_verified_then_a_readable_candidate(tiny_llamo):
    from llamo.pipeline_llamo import inchikey, verified_answer

    target = inchikey("CCO")
    candidates = [{"generated_text": "methanol"}, {"generated_text": "ethanol"}, {"generated_text": "ethyl alcohol"}]
    known = {"ethanol": target, "ethyl alcohol": target, "methanol": inchikey("CO")}

    def checker(names):
        return [known.get(name) for name in names]

    chosen = verified_answer(candidates, "CCO", checker)
    assert chosen["generated_text"] == "ethanol" and chosen["verified"] is True
    assert chosen["candidates"] == ["methanol", "ethanol", "ethyl alcohol"]
    none = verified_answer(candidates, "CCN", checker)
    assert none["generated_text"] == "methanol" and none["verified"] is False
    # unverified: a name that reads as some molecule beats a cut-off top beam; with none readable, the top beam
    cut = [{"generated_text": "1,2,3,4,5,6,"}, {"generated_text": "methanol"}, {"generated_text": "ethanol"}]
    assert verified_answer(cut, "CCN", checker)["generated_text"] == "methanol"
    assert verified_answer(cut, None, checker)["generated_text"] == "methanol"
    unreadable = [{"generated_text": "1,2,3,"}, {"generated_text": "oxo-oxo-"}]
    assert verified_answer(unreadable, "CCN", checker)["generated_text"] == "1,2,3,"
    for wrong in (lambda names: None, lambda names: [None], lambda names: {"a": 1}, lambda names: [5] * len(names)):
        with pytest.raises(TypeError, match=r"verify_names must return one InChIKey \(or None\) per name, for 2"):
            verified_answer(unreadable, "CCN", wrong)  # an IndexError, a TypeError, or read silently, before
    with pytest.raises(TypeError, match="propose_names must return a name"):
        verified_answer(unreadable, "CCN", checker, proposer=lambda smiles: 5)

    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=3)
    answer = pipe({"smiles": SMILES["aspirin"], "text": "Name it."}, verify_names=lambda names: [None] * len(names))
    assert len(answer) == 1 and answer[0]["verified"] is False and len(answer[0]["candidates"]) == 4


def test_a_proposed_name_is_answered_only_when_verified(tiny_llamo):
    from llamo.pipeline_llamo import inchikey, query_molecule, verified_answer

    known = {"ethanol": inchikey("CCO"), "methanol": inchikey("CO"), "propan-1-ol": inchikey("CCCO")}
    calls = []

    def checker(names):
        calls.append(list(names))
        return [known.get(name) for name in names]

    beams = [{"generated_text": "ethyl-"}, {"generated_text": "methanol"}]
    rescued = verified_answer(beams, "CCO", checker, lambda smiles: "ethanol")
    assert rescued == {
        "generated_text": "ethanol",
        "verified": True,
        "candidates": ["ethyl-", "methanol"],
        "from_namer": True,
    }
    assert calls == [["ethyl-", "methanol", "ethanol"]]  # one OPSIN call for beams and proposal
    # a wrong proposal is never answered, even when it reads as a molecule and no beam does
    wrong = verified_answer(beams[:1], "CCO", checker, lambda smiles: "propan-1-ol")
    assert wrong["generated_text"] == "ethyl-" and wrong["verified"] is False and wrong["from_namer"] is False
    # a verified beam comes before a verified proposal; a namer that names nothing adds no candidate
    first = verified_answer([{"generated_text": "ethanol"}], "CCO", checker, lambda smiles: "ethanol")
    assert first["from_namer"] is False and first["verified"] is True
    verified_answer(beams, "CCO", checker, lambda smiles: None)
    assert calls[-1] == ["ethyl-", "methanol"]

    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=3)
    answer = pipe({"smiles": "CCO", "text": "Name it."}, verify_names=checker, propose_names=lambda smiles: "ethanol")
    assert answer[0]["generated_text"] == "ethanol" and answer[0]["from_namer"] is True
    # a conversation that already holds neighbours is verified against its query molecule, not its first neighbour
    names = {"CCO": "ethanol", "CCCO": "propan-1-ol"}
    with_neighbours = add_neighbours(molecule_messages("CCCO", "Name it."), [{"smiles": "CCO", "answer": "ethanol"}])
    answer = pipe(with_neighbours, verify_names=checker, propose_names=names.get)
    assert answer[0]["generated_text"] == "propan-1-ol" and answer[0]["verified"] is True
    assert query_molecule(with_neighbours) == ("CCCO", "Name it.")
    with pytest.raises(TypeError, match="propose_names"):
        pipe({"smiles": "CCO", "text": "Name it."}, propose_names=lambda smiles: "ethanol")


def test_the_rule_based_namer_names_molecules_that_opsin_reads_back():
    pytest.importorskip("openclatura")
    from llamo.evaluation.naming import opsin_unavailable_reason
    from llamo.pipeline_llamo import inchikey
    from llamo.retrieval import opsin_checker, rule_namer

    namer = rule_namer()
    molecules = ["CCOC(=O)c1ccc(Cl)cc1", "CC(C)O", "OC(=O)c1ccccc1O"]
    names = [namer(smiles) for smiles in molecules]
    assert all(isinstance(name, str) and name for name in names)
    assert namer("not a molecule") is None
    if opsin_unavailable_reason() is None:
        assert opsin_checker()(names) == [inchikey(smiles) for smiles in molecules]


def test_opsin_checker_reads_names_back_to_molecules():
    from llamo.evaluation.naming import opsin_unavailable_reason
    from llamo.pipeline_llamo import inchikey, verified_answer
    from llamo.retrieval import opsin_checker

    reason = opsin_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    checker = opsin_checker()
    assert checker(["ethanol", "propan-2-ol", "not a chemical name"]) == [inchikey("CCO"), inchikey("CC(C)O"), None]
    candidates = [{"generated_text": "propan-1-ol"}, {"generated_text": "propan-2-ol"}]
    chosen = verified_answer(candidates, "CC(O)C", checker)
    assert chosen["generated_text"] == "propan-2-ol" and chosen["verified"] is True


def test_questions_pick_their_task():
    from llamo.retrieval import question_task

    assert question_task("What is the IUPAC name of this molecule?") == "iupac"
    assert question_task("Predict the HOMO-LUMO gap (Hartree) of this molecule.") == "property"
    assert question_task("Describe this molecule.") == "description"


# --- evaluation with an index -------------------------------------------------------------------------------------


def eval_rows(tmp_path, names):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in name_records(names)), encoding="utf-8")
    return path


def test_evaluation_refuses_an_index_that_knows_a_test_molecule(tmp_path, index):
    from llamo.evaluation import EvaluationConfig, evaluate

    index.save(tmp_path / "idx")
    test = eval_rows(tmp_path, {"OCC": "ethanol", "CCCCCO": "pentan-1-ol"})
    config = EvaluationConfig(
        output_dir=str(tmp_path / "out"),
        data=str(test),
        baseline="retrieval",
        index=str(tmp_path / "idx"),
        progress=False,
    )
    with pytest.raises(ValueError, match="holds 1 of the evaluated molecules"):
        evaluate(config)


def test_evaluation_with_an_index_answers_with_neighbours_and_retrieval_copies_from_it(tmp_path, index, tiny_llamo):
    from llamo.evaluation import EvaluationConfig, evaluate
    from llamo.evaluation.data import select_examples
    from llamo.evaluation.predict import GenerationPredictor

    index.excluding([index.query_fingerprint("CCO")[1]]).save(tmp_path / "idx")
    test = eval_rows(tmp_path, {"CCO": "ethanol", "CCCCCO": "pentan-1-ol"})
    common = {"data": str(test), "index": str(tmp_path / "idx"), "progress": False, "scibert_vocab": None}
    evaluate(EvaluationConfig(output_dir=str(tmp_path / "retrieval"), baseline="retrieval", **common))
    lines = [json.loads(line) for line in (tmp_path / "retrieval" / "predictions.jsonl").read_text().splitlines()]
    assert {row["id"]: row["prediction"] for row in lines} == {"t:0": "propan-1-ol", "t:1": "butan-1-ol"}

    model, processor = tiny_llamo
    loaded = MoleculeIndex.load(tmp_path / "idx")
    predictor = GenerationPredictor(model, processor, {"max_new_tokens": 2}, index=loaded, neighbours=2)
    examples, _ = select_examples(name_records({"CCO": "ethanol"}))
    inputs = predictor._render(examples)
    assert inputs["atom_mask"].any(-1).sum().item() == 3  # two neighbours and the query
    prompt = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "1. CCCO<graph>" in prompt and "<graph> propan-1-ol\n2. " in prompt


def test_a_full_disk_while_saving_an_index_leaves_no_partial_folder(index, tmp_path, monkeypatch):
    import errno

    import datasets

    from llamo.storage import DiskFullError

    def full(self, path, *args, **kwargs):
        (Path(path) / "data-00000-of-00001.arrow").parent.mkdir(parents=True, exist_ok=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "data-00000-of-00001.arrow"))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    with pytest.raises(DiskFullError, match="a molecule index"):
        index.save(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    index.save(tmp_path / "idx")  # space is back: the same command works
    assert len(MoleculeIndex.load(tmp_path / "idx")) == len(index)


def test_evaluation_reranks_names_with_a_checker(tiny_llamo):
    from llamo.evaluation.data import select_examples
    from llamo.evaluation.predict import GenerationPredictor
    from llamo.pipeline_llamo import VERIFY_CANDIDATES, inchikey

    model, processor = tiny_llamo
    examples, _ = select_examples(name_records({"CCO": "ethanol", "CCN": "ethanamine"}))
    seen = []

    def checker(names):  # the second candidate names ethanol; for the second molecule no candidate reads
        seen.append(list(names))
        keys = [None, inchikey("CCO"), None, None] if len(seen) == 1 else [None] * 4
        return keys[: len(names)]

    predictor = GenerationPredictor(model, processor, {"max_new_tokens": 3}, name_checker=checker)
    plain = GenerationPredictor(model, processor, {"max_new_tokens": 3, "num_beams": VERIFY_CANDIDATES})
    answers = predictor(examples)
    assert [len(names) for names in seen] == [VERIFY_CANDIDATES, VERIFY_CANDIDATES]
    assert answers[0] == seen[0][1]  # verified candidate chosen over the first
    assert answers[1] == seen[1][0] == plain(examples)[1]  # nothing verified nor readable: the best beam


def test_a_model_sets_its_neighbours_per_task(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from llamo import retrieval
    from llamo.hub_cards.space.neighbours import Retrieval

    settings = {"neighbours": 2, "task_neighbours": {"property": 1}, "default_indexes": {"iupac": "x", "property": "y"}}
    (tmp_path / retrieval.RETRIEVAL_FILE).write_text(json.dumps(settings))
    monkeypatch.setattr(retrieval, "default_index", lambda task: f"{task} index")
    homo, name = "What is the HOMO energy of this molecule, in Hartree?", "What is the IUPAC name of this molecule?"
    assert retrieval.load_index(None, tmp_path, homo) == ("property index", 1)
    assert retrieval.load_index("auto", tmp_path, name) == ("iupac index", 2)
    assert retrieval.load_index(None, tmp_path, "Describe this molecule.") == (None, None)  # no default index
    given = SimpleNamespace(neighbours=None)  # a loaded index: every task uses it, with that task's K
    demo = Retrieval(index=given, model_dir=tmp_path)
    assert demo.index_for(homo) == (given, 1) and demo.index_for(name) == (given, 2)
    assert Retrieval(index=given, model_dir=tmp_path, neighbours=3).index_for(homo) == (given, 3)  # the user's K wins


def test_the_default_property_index_is_all_of_qm9_and_replaces_earlier_subsets(tmp_path, monkeypatch):
    from llamo import retrieval
    from llamo.processing import index_commands

    built = []

    def fake_build(source, task, limit=None):
        built.append((source, task, limit))
        index, report = MoleculeIndex.from_records(name_records(), "iupac", progress=False)
        return index, report, {"indexed": len(index)}

    monkeypatch.setattr(index_commands, "build_index", fake_build)
    monkeypatch.setenv("LLAMO_INDEX_CACHE", str(tmp_path))
    for old in ("property-qm9-v3-first30000", "property-qm9-v2-first30000", "property-qm9-v2", "iupac-chemicals-v2"):
        (tmp_path / old).mkdir()
    retrieval.default_index("property", limit=50)  # a subset: the other copies of this version stay
    assert built == [("qm9", "property", 50)]
    assert {p.name for p in tmp_path.iterdir()} == {"property-qm9-v3-first30000", "property-qm9-v3-first50"} | {
        "iupac-chemicals-v2"
    }
    retrieval.default_index("property")
    assert built[-1] == ("qm9", "property", None)
    assert {p.name for p in tmp_path.iterdir()} == {"property-qm9-v3", "iupac-chemicals-v2"}
