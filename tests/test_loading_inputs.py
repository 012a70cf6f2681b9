"""What a user hands the model loader and `llamo generate` / `llamo chat`: broken model folders and hostile options
give one short line naming the culprit, never a traceback, a hang or a model built at a size its weights lack."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from llamo.cli import main

from .conftest import subprocess_env

DECODING = ["--max-new-tokens", "2", "--device", "cpu", "--no-stream", "--verify-names", "off", "--name-hint", "off"]


@pytest.fixture
def folder(tiny_llamo_dir, tmp_path):
    """A copy of the tiny saved LLaMo, to break."""
    return shutil.copytree(tiny_llamo_dir, tmp_path / "model")


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def generate_error(folder, capsys, *argv: str) -> str:
    """`llamo generate` on `folder`: exit status 2 and one line on stderr, which is returned."""
    assert main(["generate", str(folder), "--smiles", "CCO", *argv, "Describe it.", *DECODING]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamo generate: error: ") and err.count("\n") == 1 and len(err) < 600, err
    return err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["graph_config"].update(hidden_size="16"), "Validation error for field 'hidden_size'"),
        (lambda c: c["graph_config"].update(atom_vocab_sizes=[-1, 4, 12, 12, 10, 6, 6, 2, 2]), "negative dimension"),
        (lambda c: c.update(text_config="llama"), "config.json does not describe a LLaMo"),
        (lambda c: c.update(graph_token_id=None), "sets no graph_token_id"),
        (lambda c: c.update(graph_token_id="400"), "Validation error for field 'graph_token_id'"),
        (lambda c: c.update(dtype="float99"), "config.json does not describe a LLaMo"),
        (lambda c: c["text_config"].update(num_hidden_layers=40), "the config does not fit the weights"),
        (lambda c: c.update(projector_config=None), "the config does not fit the weights"),
        (lambda c: c["graph_config"].update(atom_vocab_sizes=[119]), "do not fit its config.json"),
    ],
)
def test_a_broken_config_is_named_and_left_as_it_was(folder, capsys, change, message):
    edit_json(folder / "config.json", change)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    err = generate_error(folder, capsys)
    assert message in err and "config.json" in err, err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_weights_that_do_not_fit_are_said_in_one_line_without_transformers_load_report(folder):
    edit_json(folder / "config.json", lambda c: c["graph_config"].update(atom_vocab_sizes=[119]))
    argv = [sys.executable, "-m", "llamo.cli", "generate", str(folder), "--smiles", "C", "Describe it.", *DECODING]
    result = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "do not fit its config.json: 8 tensors missing, unexpected or of another shape" in result.stderr


def test_a_config_far_larger_than_its_weights_is_refused_before_the_model_is_built(folder, monkeypatch):
    """A lost `text_config` reads as a default 7B Llama: building it (before transformers compares the weights) would
    take about 27 GB."""
    from llamo import LlamoForConditionalGeneration
    from llamo.builder import load_llamo

    edit_json(folder / "config.json", lambda c: c.update(text_config=None))
    monkeypatch.setattr(
        LlamoForConditionalGeneration, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("built"))
    )
    with pytest.raises(ValueError, match=r"config.json describes 6,\d{3},\d{3},\d{3} weights, the folder's weights"):
        load_llamo(folder, "cpu")


@pytest.mark.parametrize("cut", [4, 20, 1000, -8])
def test_cut_short_weights_name_the_file(folder, capsys, cut):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    assert "model.safetensors is not a complete safetensors file" in generate_error(folder, capsys)


def test_a_missing_weight_shard_is_named(folder, tmp_path):
    from llamo import LlamoForConditionalGeneration
    from llamo.builder import load_llamo

    sharded = tmp_path / "sharded"
    shutil.copytree(folder, sharded)
    (sharded / "model.safetensors").unlink()
    LlamoForConditionalGeneration.from_pretrained(folder).save_pretrained(sharded, max_shard_size="50KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(ValueError, match=f"lists weight files that are missing: {shards[1].name}"):
        load_llamo(sharded, "cpu")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "generation_config.json' is not a valid JSON file"),  # was dropped without a word
        ("[]", "generation_config.json is broken"),
        ('{"num_beams": 0}', "num_beams must be an integer of at least 1, got 0"),
        ('{"num_beams": "3"}', "num_beams must be an integer of at least 1, got '3'"),
        ('{"eos_token_id": "x"}', "eos_token_id must be an integer of at least 0"),
    ],
)
def test_a_broken_generation_config_is_named(folder, capsys, text, message):
    from llamo.builder import load_llamo

    (folder / "generation_config.json").write_text(text)
    assert message in generate_error(folder, capsys)
    with pytest.raises(ValueError, match=r"generation_config\.json is broken"):  # also for `llamo evaluate`, `export`
        load_llamo(folder)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("tokenizer.json", "{broken", "The processor files in"),
        ("tokenizer_config.json", "{x", "The processor files in"),
        ("processor_config.json", "[]", "The processor files in"),
        ("processor_config.json", '{"num_graph_tokens": "16"}', "The processor files in"),
        ("processor_config.json", '{"num_graph_tokens": 5}', "Processor and model disagree on graph tokens"),
        ("chat_template.jinja", "{% for x in %}", "the model's chat template fails"),
    ],
)
def test_broken_processor_files_are_named(folder, capsys, name, text, message):
    (folder / name).write_text(text)
    assert message in generate_error(folder, capsys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{bad", "llamo_retrieval.json"),
        ("[1]", "llamo_retrieval.json must hold a JSON object"),
        ('{"task_generation": {"description": "x"}}', "'task_generation' must be an object of task -> object"),
        ('{"task_neighbours": [1]}', "'task_neighbours' must be an object of task -> integer"),
        ('{"neighbours": "x"}', "'neighbours' must be an integer"),
        ('{"task_generation": {"description": {"num_beams": 0}}}', "num_beams must be an integer of at least 1"),
    ],
)
def test_broken_retrieval_settings_are_named(folder, capsys, text, message):
    (folder / "llamo_retrieval.json").write_text(text)
    assert message in generate_error(folder, capsys, "--index", "none")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-new-tokens", "0"),
        ("--temperature", "inf"),
        ("--top-p", "2"),
        ("--seed", str(2**70)),
        ("--num-beams", "0"),
        ("--num-beams", "-2"),
        ("--num-beams", "100000"),
    ],
)
def test_out_of_range_options_are_usage_errors(tiny_llamo_dir, capsys, option, value):
    argv = ["generate", str(tiny_llamo_dir), "--smiles", "CCO", "Describe it.", *DECODING, "--do-sample"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--index", "none", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: '{value[:40]}': expected " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--smiles", "C", "Describe it."], "--smiles was given 2 times"),
        (["   "], "PROMPT is empty"),
        (["Describe it.", "--device", "nonsense"], "--device 'nonsense': "),
    ],
)
def test_hostile_generate_arguments(tiny_llamo_dir, capsys, argv, message):
    assert main(["generate", str(tiny_llamo_dir), "--smiles", "CCO", *DECODING, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and len(err) < 600, err


def test_the_default_answer_length_fits_a_short_context(folder, capsys, monkeypatch):
    from llamo import LlamoForConditionalGeneration

    edit_json(folder / "config.json", lambda c: c["text_config"].update(max_position_embeddings=100))
    asked = []

    def generate(self, input_ids=None, **kwargs):
        asked.append(kwargs["max_new_tokens"])
        return input_ids

    monkeypatch.setattr(LlamoForConditionalGeneration, "generate", generate)
    assert main(["generate", str(folder), "--smiles", "CCO", "Describe it.", "--device", "cpu", "--no-stream"]) == 0
    assert asked == [100]  # a description's default, 256 tokens, cut to the context
    edit_json(folder / "config.json", lambda c: c["text_config"].update(max_position_embeddings=0))
    assert main(["generate", str(folder), "--smiles", "CCO", "Describe it.", "--device", "cpu", "--no-stream"]) == 2
    assert "context of 0 tokens" in capsys.readouterr().err and asked == [100]  # 0 is no "no limit"


def test_an_answer_longer_than_the_context_is_refused_before_generating(tiny_llamo_dir, capsys, monkeypatch):
    """A huge `max_new_tokens` would run `generate` for hours; the pipeline refuses it for chat too."""
    from llamo import LlamoForConditionalGeneration

    monkeypatch.setattr(LlamoForConditionalGeneration, "generate", lambda *a, **k: pytest.fail("generated"))
    argv = ["generate", str(tiny_llamo_dir), "--smiles", "CCO", "Describe it.", *DECODING, "--max-new-tokens"]
    assert main([*argv, str(10**12)]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens must be an integer from 1 to the model's context of 2048 tokens, got 1000000000000" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe it.\n"))
    assert main(["chat", str(tiny_llamo_dir), "--smiles", "CCO", "--device", "cpu", "--max-new-tokens", "5000"]) == 2
    assert "the model's context of 2048 tokens, got 5000" in capsys.readouterr().err
