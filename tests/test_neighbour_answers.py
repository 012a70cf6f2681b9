"""The neighbours' own answers competing with the model's (`rank_neighbour_answers`): the score, the pipeline's choice,
and its settings in `llamo generate` and `llamo evaluate`."""

import json
import shutil

import pytest
import torch
from transformers import pipeline

from llamo import add_neighbours
from llamo.generation_llamo import answer_log_likelihoods

from .conftest import molecule_messages
from .test_index import name_records


@pytest.fixture(scope="module")
def names_index():
    from llamo.processing.index import MoleculeIndex

    return MoleculeIndex.from_records(name_records(), "iupac", progress=False)[0]


def test_an_answer_scores_its_mean_log_probability_after_the_prompt(tiny_llamo):
    model, processor = tiny_llamo
    conversation = add_neighbours(molecule_messages("CCCO", "Name it."), [{"smiles": "CCO", "answer": "ethanol"}])
    render = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    eos = processor.tokenizer.eos_token_id
    answers = [[11, 12, 13, 14, eos], [15, eos], [eos]]  # unequal lengths: the shorter ones are padded
    scores = answer_log_likelihoods(model, processor.apply_chat_template([conversation], **render), answers, 0)
    one = processor.apply_chat_template([conversation], **render)
    length = one["input_ids"].shape[1]
    for answer, score in zip(answers, scores, strict=True):
        ids = torch.cat([one["input_ids"], torch.tensor([answer])], dim=1)
        with torch.no_grad():
            logits = model(**{**one, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits[0]
        steps = logits[length - 1 : length - 1 + len(answer)].log_softmax(-1)
        expected = steps[torch.arange(len(answer)), torch.tensor(answer)].mean().item()
        assert score == pytest.approx(expected, abs=1e-4)
    assert len(set(scores)) == 3


def test_the_pipeline_gives_the_answer_the_model_scores_highest(tiny_llamo, names_index, monkeypatch):
    import llamo.pipeline_llamo as pipeline_module

    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=3)
    question = {"smiles": "CCCCCO", "text": "What is its IUPAC name?"}  # neighbours: butan-1-ol, then propan-1-ol
    own = pipe(question, index=names_index, neighbours=2, return_tensors=True)[0]
    seen, scores = [], [-2.0, -1.5, -0.5]
    real = pipeline_module.answer_log_likelihoods

    def scorer(model, prompt, answers, pad_token_id):
        seen.append((prompt["input_ids"].shape[0], answers, real(model, prompt, answers, pad_token_id)))
        return scores

    monkeypatch.setattr(pipeline_module, "answer_log_likelihoods", scorer)
    ranked = pipe(question, index=names_index, neighbours=2, rank_neighbour_answers=True)[0]
    assert ranked["generated_text"] == "propan-1-ol" and ranked["from_neighbour"] == 1
    assert ranked["answer_scores"] == scores
    batch, answers, real_scores = seen[0]
    eos = processor.tokenizer.eos_token_id
    assert batch == 1 and len(answers) == 3 and answers[0] == [*own["generated_token_ids"], eos][: len(answers[0])]
    assert answers[0][-1] == eos and answers[0].count(eos) == 1
    tokenize = processor.tokenizer
    assert answers[1:] == [
        tokenize(n, add_special_tokens=False)["input_ids"] + [eos] for n in ("butan-1-ol", "propan-1-ol")
    ]
    assert all(score < 0 for score in real_scores)
    scores[0] = 0.0  # the model's own answer scores highest: it is given
    kept = pipe(question, index=names_index, neighbours=2, rank_neighbour_answers=True)[0]
    assert kept["generated_text"] == own["generated_text"] and kept["from_neighbour"] is None
    # nothing to rank: no neighbours, or a follow-up question (the neighbours' answers answer the first one)
    assert "from_neighbour" not in pipe(question, rank_neighbour_answers=True)[0]
    follow_up = [*molecule_messages("CCCCCO", "Name it."), {"role": "assistant", "content": "pentanol"}]
    follow_up.append({"role": "user", "content": "And its formula?"})
    assert "from_neighbour" not in pipe(follow_up, index=names_index, neighbours=2, rank_neighbour_answers=True)[0]
    assert len(seen) == 2
    config = model.generation_config
    before = config.num_return_sequences, config.num_beams
    config.num_return_sequences, config.num_beams = 2, 2  # a model's own setting: several answers, none ranked
    try:
        several = pipe(question, index=names_index, neighbours=2, rank_neighbour_answers=True)
    finally:
        config.num_return_sequences, config.num_beams = before
    assert len(several) == 2 and not any("from_neighbour" in answer for answer in several)
    for refused in ({"verify_names": lambda names: [None] * len(names)}, {"num_return_sequences": 2, "num_beams": 2}):
        with pytest.raises(ValueError, match="rank_neighbour_answers gives one answer per input"):
            pipe(question, index=names_index, rank_neighbour_answers=True, **refused)


def test_neighbours_are_bounded_a_long_answer_is_cut_and_is_no_candidate(tiny_llamo, monkeypatch):
    import llamo.pipeline_llamo as pipeline_module
    from llamo.chat_template_llamo import NEIGHBOUR_ANSWER_MAX_CHARS
    from llamo.processing.index import MoleculeIndex

    model, processor = tiny_llamo
    long = "ethanol, " * 600  # 5,400 characters: about 3,000 tokens, over the tiny model's context of 2,048
    shown = add_neighbours(molecule_messages("CCCO"), [{"smiles": "CCO", "answer": long}])[0]["content"][3]["text"]
    assert shown.endswith(" ...\n") and len(shown) <= NEIGHBOUR_ANSWER_MAX_CHARS + 5 and long.startswith(shown[:-5])
    index = MoleculeIndex.from_records(name_records({"CCO": long, "CCCCO": "butan-1-ol"}), "iupac", progress=False)[0]
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=2)
    scored = []
    real = pipeline_module.answer_log_likelihoods
    monkeypatch.setattr(pipeline_module, "answer_log_likelihoods", lambda *a: scored.append(a[2]) or real(*a))
    answer = pipe({"smiles": "CCCO", "text": "Name it."}, index=index, neighbours=2, rank_neighbour_answers=True)[0]
    cut = [entry["answer"] for entry in answer["neighbours"]].index(long)
    assert answer["answer_scores"][1 + cut] is None and len(scored[0]) == 2  # the model's answer and butan-1-ol
    assert answer["generated_text"] != long.strip()
    entries = [{"smiles": "CCO", "answer": " \n "}, {"smiles": "CCCCO", "answer": "butan-1-ol"}]  # a hand-made index
    render = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    conversation = add_neighbours(molecule_messages("CCCO", "Name it."), entries)
    ranked = pipeline_module.rank_answers(model, processor, conversation, [11, 12], entries, render)
    assert ranked[1][1] is None and len(scored[-1]) == 2  # an empty answer is never given
    two_long = MoleculeIndex.from_records(name_records({"CCO": long, "CCCCO": long}), "iupac", progress=False)[0]
    with pytest.raises(ValueError, match="2048 tokens, with 2 index neighbours before the question: ask for fewer"):
        pipe({"smiles": "CCCO", "text": "Name it."}, index=two_long, neighbours=2)
    most = 2048 // model.config.num_graph_tokens  # refused before any neighbour is looked up or featurized
    with pytest.raises(ValueError, match=rf"neighbours={most + 1} cannot fit: .* \(at most {most} neighbours\)"):
        pipe({"smiles": "CCCO", "text": "Name it."}, index=index, neighbours=most + 1)
    assert pipe({"smiles": "CCCO", "text": "Name it."}, index=index, neighbours=most)[0]["neighbours"]
    for wrong in (-1, 2.5, "2", True):
        with pytest.raises(ValueError, match="neighbours must be a whole number >= 0, got"):
            pipe({"smiles": "CCCO", "text": "Name it."}, index=index, neighbours=wrong)
    with pytest.raises(TypeError, match=r"index must be a molecule index .* got str"):
        pipe({"smiles": "CCCO", "text": "Name it."}, index="path/to/an/index")
    with pytest.raises(TypeError, match="name_hint must return a name"):
        pipe({"smiles": "CCCO", "text": "Name it."}, name_hint=lambda smiles: 5)
    for wrong in ("0.85", 1.5, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="near_twin must be a similarity from 0 to 1, got"):
            pipe({"smiles": "CCCO", "text": "Name it."}, index=index, near_twin=wrong)
    for without_index in ({"neighbours": 2}, {"near_twin": 0.9}):  # they were ignored without a word
        with pytest.raises(ValueError, match=f"{next(iter(without_index))} need an index"):
            pipe({"smiles": "CCCO", "text": "Name it."}, **without_index)

    class Custom:  # a user's own index: what it returns is checked, and never more than asked for
        def __init__(self, found):
            self.found = found

        def neighbours(self, smiles, k, question=None):
            return self.found

    many = [{"smiles": "C" * (i + 1), "answer": f"alkane {i}", "similarity": 0.5} for i in range(50)]
    answer = pipe({"smiles": "CCCO", "text": "Name it."}, index=Custom(many), neighbours=2, near_twin=0.4)[0]
    assert [entry["answer"] for entry in answer["neighbours"]] == ["alkane 0"]  # dicts get the near-twin rule too
    assert "neighbours" not in pipe({"smiles": "CCCO", "text": "Name it."}, index=Custom(None), neighbours=2)[0]
    for malformed in ([{"smiles": "CC"}], [{"answer": "x"}], ["CC"], [{"smiles": "CC", "answer": None}]):
        with pytest.raises(TypeError, match=r"index\.neighbours must return entries with a 'smiles' and an 'answer'"):
            pipe({"smiles": "CCCO", "text": "Name it."}, index=Custom(malformed), neighbours=2)


def test_generate_and_evaluate_rank_where_the_model_says(tiny_llamo_dir, names_index, tmp_path, capsys, monkeypatch):
    import llamo.pipeline_llamo as pipeline_module
    from llamo import retrieval
    from llamo.cli import main
    from llamo.evaluation import EvaluationConfig, evaluate

    folder = tmp_path / "model"
    shutil.copytree(tiny_llamo_dir, folder)
    (folder / retrieval.RETRIEVAL_FILE).write_text(json.dumps({"neighbour_answer_tasks": ["iupac"]}))
    names_index.save(tmp_path / "names")
    monkeypatch.setattr(pipeline_module, "answer_log_likelihoods", lambda model, prompt, answers, pad: [-9, -1, -5])
    argv = ["generate", str(folder), "--smiles", "CCCCCO", "--max-new-tokens", "2", "--no-stream"]
    argv += ["--verify-names", "off", "--index", str(tmp_path / "names"), "--neighbours", "2", "Name it."]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "butan-1-ol"
    assert (
        "(this is the known answer of CCCCO (0." in err and "scores it -1.000 per token, its own answer -9.000" in err
    )
    assert main([*argv, "--neighbour-answers", "off"]) == 0
    out, err = capsys.readouterr()
    assert "known answer" not in err
    assert main([*argv[:-1], "Describe this molecule."]) == 0  # descriptions are not listed: the model's own answer
    err = capsys.readouterr().err
    assert "known answer" not in err
    assert "(note: the index holds iupac answers; this question reads as description)" in err
    assert main([*argv[:-1], "Describe this molecule.", "--neighbour-answers", "on"]) == 0
    assert "known answer" in capsys.readouterr().err
    monkeypatch.setattr(retrieval, "opsin_checker", lambda: lambda names: [None] * len(names))  # no Java needed
    assert main([*argv[:-3], "--verify-names", "on", "--neighbour-answers", "on", "Name it."]) == 0
    verified = capsys.readouterr().err
    assert main([*argv[:-3], "--verify-names", "on", "What is its HOMO energy?"]) == 0  # no name for a property
    err = capsys.readouterr().err
    assert "(note: names are verified for naming questions only; this question reads as property)" in err
    assert "verified" in verified and "(verified" not in err and "OPSIN" not in err
    assert "known answer" not in verified  # a verified name is chosen among the beams instead
    assert main([*argv[:7], "--verify-names", "off", "--neighbour-answers", "on", "Name it."]) == 2
    assert "--neighbour-answers on needs a molecule index" in capsys.readouterr().err
    assert main([*argv[:7], "--neighbours", "2", "Describe this molecule."]) == 2  # no default index for descriptions
    assert "--neighbours needs a molecule index: give --index (there is no default one for description)" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main([*argv[:-2], "-1", "Name it."])
    assert "argument --neighbours: '-1': expected an integer of at least 0" in capsys.readouterr().err

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(name_records({"CCCCCO": "pentan-1-ol"})[0]) + "\n")
    common = dict(model=str(folder), data=str(rows), index=str(tmp_path / "names"), neighbours=2, max_new_tokens=2)
    common |= dict(scibert_vocab=None, progress=False)
    evaluate(EvaluationConfig(output_dir=str(tmp_path / "ranked"), rank_neighbour_answers=True, **common))
    prediction = json.loads((tmp_path / "ranked" / "predictions.jsonl").read_text())["prediction"]
    config = json.loads((tmp_path / "ranked" / "run_config.json").read_text())
    assert prediction == "butan-1-ol" and config["rank_neighbour_answers"] is True
    evaluate(EvaluationConfig(output_dir=str(tmp_path / "own"), **common))
    assert json.loads((tmp_path / "own" / "predictions.jsonl").read_text())["prediction"] != "butan-1-ol"
    assert "rank_neighbour_answers" not in json.loads((tmp_path / "own" / "run_config.json").read_text())
