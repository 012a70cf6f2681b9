"""llamo.evaluation on hostile inputs: data files, a resumed run's own files, and answers to score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS
from llamo.cli import main
from llamo.evaluation import EvaluationConfig, evaluate, runner
from llamo.evaluation.baselines import MeanBaseline, RetrievalBaseline
from llamo.evaluation.data import load_rows, select_examples
from llamo.evaluation.predictions import PREDICTIONS_FILE, RUN_CONFIG_FILE, tsv_name
from llamo.evaluation.properties import PropertyTarget, parse_number, property_metrics
from llamo.processing.index import MoleculeIndex

from .test_evaluation import SCIBERT_VOCAB, homo, qa_row, write_jsonl
from .test_index import name_records

GOOD = [qa_row("e:1", "CCCO", "description", "A primary alcohol."), homo("e:2", "CCCO", -0.24)]
TRAIN = [qa_row("t:1", "CCO", "description", "An alcohol."), homo("t:2", "CCO", -0.26)]


def config(tmp_path: Path, data: Path, baseline: str = "retrieval", **changes) -> EvaluationConfig:
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    settings = dict(data=str(data), baseline=baseline, train_data=str(train), scibert_vocab=None, progress=False)
    return EvaluationConfig(
        **{"output_dir": str(tmp_path / "out"), "nltk_data": str(tmp_path / "none"), **settings, **changes}
    )


def test_data_files_read_bom_crlf_and_u2028_and_name_the_file_and_line_of_a_problem(tmp_path):
    text = "".join(
        json.dumps(row, ensure_ascii=False) + "\r\n" for row in [*GOOD, qa_row("u", "C", "iupac", "a\u2028b")]
    )
    (tmp_path / "ok.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    rows, _ = load_rows(tmp_path / "ok.jsonl")
    assert [row["id"] for row in rows] == ["e:1", "e:2", "u"] and rows[2]["messages"][1]["content"] == "a\u2028b"
    (tmp_path / "latin1.jsonl").write_bytes(text.encode() + b'{"id": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl: line 4 is not UTF-8 text"):
        load_rows(tmp_path / "latin1.jsonl")
    for name, content in [("cut.json", b'[{"id": 1},'), ("deep.jsonl", b"{}\n" + b"[" * 100_000 + b"]" * 100_000)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}: .*JSON") as error:
            load_rows(tmp_path / name)
        assert len(str(error.value)) < 400
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"x\.parquet: "):
        load_rows(tmp_path / "x.parquet")


def test_rows_with_fields_of_the_wrong_type_are_skipped_and_counted():
    deep = "[" * 100_000 + "]" * 100_000
    rows = [
        *GOOD,
        {**GOOD[0], "id": "a", "task": ["description"]},
        {**GOOD[0], "id": "b", "task": "descr\ud800"},
        {**GOOD[1], "id": "c", "metadata": json.dumps({"property": 5, "value": True})},  # the reference's number
        {**GOOD[1], "id": "d", "metadata": '{"property": "HOMO", "value": ' + "9" * 400 + "}"},
        {**GOOD[1], "id": "e", "metadata": deep},
    ]
    examples, skipped = select_examples(rows)
    assert [(e.id, e.target.value if e.target else None) for e in examples] == [
        ("e:1", None), ("e:2", -0.24), ("c", -0.24), ("d", -0.24),
    ]  # fmt: skip
    assert examples[2].target.property == "5"
    assert [(row.id, row.task, row.reason) for row in skipped] == [
        ("a", None, "missing task"), ("b", None, "missing task"), ("e", "property", "metadata is not a JSON object"),
    ]  # fmt: skip
    assert select_examples(rows, tasks=["property"])[0][0].id == "e:2"


def test_data_without_a_row_to_evaluate_is_refused_naming_it(tmp_path):
    for content in (b"", b"\n \n", b"[]", b"1\nnull\n"):
        data = tmp_path / "empty.jsonl"
        data.write_bytes(content)
        with pytest.raises(ValueError, match=r"empty\.jsonl holds no row of a task to evaluate"):
            evaluate(config(tmp_path, data))
    assert not (tmp_path / "out").exists()


def test_skip_reasons_are_counted_without_each_rows_details(tmp_path, capsys):
    empty_answer = [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": " "}]
    broken = [{**GOOD[0], "id": f"{'x' * 5000}{i}", "messages": empty_answer} for i in range(3)]
    data = write_jsonl(tmp_path / "data.jsonl", [*GOOD, *broken, qa_row("t", "CCO", "t" * 5000, "an answer")])
    common = ["--baseline", "retrieval", "--train-data", str(write_jsonl(tmp_path / "train.jsonl", TRAIN))]
    common += ["--scibert-vocab", str(SCIBERT_VOCAB)]
    assert main(["evaluate", "--data", str(data), "--output-dir", str(tmp_path / "out"), *common, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "description: 1 of 4 rows predicted, 3 skipped {'malformed conversation': 3}" in out
    assert max(map(len, out.splitlines())) < 200 and len(tsv_name("t" * 5000)) < 120
    data = write_jsonl(tmp_path / "broken.jsonl", broken)  # nothing to answer: the summary, then a failing status
    argv = ["evaluate", "--data", str(data), "--output-dir", str(tmp_path / "none"), *common, "--no-progress"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "0 of 3 rows predicted" in captured.out and "no row could be answered" in captured.err


def test_retrieval_and_mean_baselines_leave_malformed_training_rows_out():
    bad = [
        5,
        {"id": "m", "task": "description", "smiles": "CCO"},
        {**TRAIN[0], "id": "s", "messages": TRAIN[0]["messages"][:1]},
    ]
    bad += [{**TRAIN[1], "id": "j", "metadata": "not json"}]
    retrieval = RetrievalBaseline([*bad, *TRAIN])
    assert retrieval.train_rows == 2
    assert retrieval(select_examples(GOOD)[0]) == ["An alcohol.", "-0.26"]
    with pytest.raises(ValueError, match="mean baseline's training data holds no usable property row"):
        MeanBaseline([*bad, TRAIN[0]])


def test_retrieval_keeps_training_rows_that_share_their_molecules_id():
    rows = [homo("m1", "CCO", -0.26), homo("m1", "CCO", 0.05, "LUMO"), homo("m1", "CCO", 0.31, "gap")]
    assert RetrievalBaseline(rows).train_rows == 3  # one id per molecule, one row per property


def corrupt_first_line(output_dir: Path, **changes) -> None:
    path = output_dir / PREDICTIONS_FILE
    first, *rest = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text(json.dumps({**json.loads(first), **changes}) + "\n" + "".join(rest), encoding="utf-8")


def test_a_resumed_runs_corrupt_files_are_refused_naming_them(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", GOOD)
    out = tmp_path / "out"
    evaluate(config(tmp_path, data))
    for field, value in [("prediction", 5), ("skipped", False), ("index", "0"), ("k" * 100_000, 1)]:
        saved = (out / PREDICTIONS_FILE).read_text()
        corrupt_first_line(out, **{field: value})
        with pytest.raises(ValueError, match=rf"{PREDICTIONS_FILE}, record 1, is not a prediction record") as error:
            evaluate(config(tmp_path, data))
        assert len(str(error.value)) < 500 and field[:20] in str(error.value)
        (out / PREDICTIONS_FILE).write_text(saved)
    corrupt_first_line(out, reference="the answer of another data set")
    with pytest.raises(ValueError, match=r"holds 1 predictions of rows whose SMILES or reference is not the data's"):
        evaluate(config(tmp_path, data))
    (out / RUN_CONFIG_FILE).write_text('{"model": nu')  # cut by a crash
    with pytest.raises(FileExistsError, match=f"with an unreadable {RUN_CONFIG_FILE}.*--overwrite"):
        evaluate(config(tmp_path, data))
    assert evaluate(config(tmp_path, data, overwrite=True))["results"][0]["counts"]["predicted"] == 1
    (out / PREDICTIONS_FILE).unlink()
    (out / PREDICTIONS_FILE).mkdir()
    argv = ["evaluate", "--data", str(data), "--output-dir", str(out), "--baseline", "mean", "--no-progress"]
    assert main([*argv, "--train-data", str(tmp_path / "train.jsonl"), "--overwrite"]) == 2
    assert "Is a directory" in capsys.readouterr().err


def test_property_answers_at_the_edge_of_floats_keep_the_mae_finite():
    assert [parse_number(text) for text in ("1e309", "nan", "-inf", "0x1p-3", "9" * 400)] == [None] * 5
    assert parse_number("-0") == 0
    report, counts = property_metrics([PropertyTarget("homo", -0.25)] * 3, ["1e308", "1.5e308", "-0"])
    assert report.values()["mae_hartree"] == pytest.approx(1e308 / 3 + 1.5e308 / 3)
    assert counts["valid"] == 3


def test_rouge_reads_a_bounded_prefix_of_each_text(monkeypatch):
    from llamo.evaluation import text_metrics

    monkeypatch.setattr(text_metrics, "ROUGE_MAX_CHARS", 20)
    report = text_metrics.compute_text_metrics(
        ["an acid with a base " + "x " * 9999], ["an acid with a base " + "y"], []
    )
    assert report.values() == {"rouge1_molt5_raw_text": 100, "rouge2_molt5_raw_text": 100, "rougeL_molt5_raw_text": 100}


def test_neighbour_settings_out_of_range_are_refused_before_anything_loads(tmp_path):
    common = dict(model=str(tmp_path / "unread"), data=str(tmp_path / "unread.jsonl"), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="neighbours must be at least 0, got -1"):
        EvaluationConfig(neighbours=-1, **common)
    with pytest.raises(ValueError, match=r"near_twin must be a similarity from 0 to 1, got 1\.5"):
        EvaluationConfig(near_twin=1.5, **common)
    assert EvaluationConfig(neighbours=0, near_twin=1.0, **common).near_twin == 1.0
    for name in ("scibert_vocab", "llm_tokenizer"):  # a mistyped path failed only after the whole generation
        for mistyped in ("nosuch", "data/scibert/vocab.txt"):
            with pytest.raises(ValueError, match=f"{name} '{mistyped}' is neither a file or folder here nor a Hub"):
                EvaluationConfig(**{name: mistyped}, **common)
        assert getattr(EvaluationConfig(**{name: "owner/name"}, **common), name) == "owner/name"


def test_threads_temperature_and_top_p_out_of_range_are_refused_by_the_parser(tmp_path, capsys):
    argv = ["evaluate", str(tmp_path / "unread"), "--data", str(tmp_path / "unread.jsonl"), "--do-sample"]
    refused = [
        ("--threads", "5000", "an integer from 1 to 256"),  # 5000 crashed generation (SIGSEGV)
        ("--threads", "0", "an integer from 1 to 256"),
        ("--temperature", "inf", "a finite number above 0"),
        ("--temperature", "nan", "a finite number above 0"),
        ("--top-p", "5", "a number above 0, at most 1"),
        ("--top-p", "nan", "a number above 0, at most 1"),
        ("--top-p", "0", "a number above 0, at most 1"),
    ]
    for option, value, expected in refused:
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--output-dir", str(tmp_path / "out"), option, value])
        assert exit_.value.code == 2
        assert f"argument {option}: '{value}': expected {expected}" in capsys.readouterr().err
    common = dict(model=str(tmp_path / "unread"), data=str(tmp_path / "unread.jsonl"), output_dir=str(tmp_path))
    for changes, message in [
        ({"threads": 257}, "threads must be from 1 to 256, got 257"),
        ({"temperature": float("inf")}, "temperature must be a finite number above 0, got inf"),
        ({"top_p": float("nan")}, r"top_p must be above 0 and at most 1, got nan"),
    ]:
        with pytest.raises(ValueError, match=message):
            EvaluationConfig(**changes, **common)
    assert not (tmp_path / "out").exists()


def test_neighbour_options_without_an_index_are_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    argv = ["evaluate", str(tmp_path / "unread"), "--data", str(tmp_path / "unread.jsonl")]
    argv += ["--output-dir", str(tmp_path / "out")]
    given = [["--neighbours", "5"], ["--neighbours", str(DEFAULT_NEIGHBOURS)], ["--near-twin", "0.5"]]
    for extra in [*given, ["--rank-neighbour-answers"]]:
        assert main([*argv, *extra]) == 2
        assert f"{extra[0]} needs a molecule index: give --index" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    configs: list[EvaluationConfig] = []
    monkeypatch.setattr(runner, "evaluate", lambda config: configs.append(config) or {"results": []})
    for extra in (["--index", "I"], ["--index", "I", "--neighbours", "5"]):
        assert main([*argv, "--no-progress", *extra]) == 0
    assert [config.neighbours for config in configs] == [DEFAULT_NEIGHBOURS, 5]  # the default applies


def test_an_index_of_another_task_is_refused_naming_both(tmp_path, capsys):
    MoleculeIndex.from_records(name_records(), "iupac", progress=False)[0].save(tmp_path / "names")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(qa_row("d:1", "CCCO", "description", "It is propanol.")) + "\n")
    argv = ["evaluate", "--data", str(rows), "--output-dir", str(tmp_path / "out"), "--baseline", "retrieval"]
    assert main([*argv, "--index", str(tmp_path / "names"), "--no-progress"]) == 2
    assert "holds iupac answers, but the evaluated rows ask for description" in capsys.readouterr().err
