"""Two-stage training on tiny random models: masks, schedule, stage 1, stage 2 (LoRA + projector), resume after
SIGKILL, and a 2-process accelerate run."""

import itertools
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llamo import LlamoForConditionalGeneration, LlamoProcessor
from llamo.builder import build_llamo, save_llamo
from llamo.processing.collators import IGNORE_INDEX, LlamoDataCollator
from llamo.processing.schema import make_record
from llamo.training import stage1, stage2
from llamo.training.common import (
    RECIPES_DIR,
    last_complete_checkpoint,
    lora_target_regex,
    prepare_run_dir,
    warmup_cosine_schedule,
)
from llamo.training.config import Stage1Config, Stage2Config

from .conftest import subprocess_env

PAIRS = [
    ("CC(=O)Oc1ccccc1C(=O)O", "an aromatic ester acid"),
    ("CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "a purine alkaloid"),
    ("OCC1OC(O)C(O)C(O)C1O", "a hexose sugar"),
    ("c1ccc2ccccc2c1", "a fused aromatic hydrocarbon"),
    ("CCO", "a primary alcohol"),
    ("CC(=O)O", "a carboxylic acid"),
    ("C1CCCCC1", "a saturated ring"),
    ("CN", "a primary amine"),
]
GRAPH_KEYS = ("atom_features", "atom_mask", "bond_index", "bond_features", "bond_mask", "motif_features", "motif_mask")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def toy_pairs(workdir) -> Path:
    path = workdir / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index, (smiles, description) in enumerate(PAIRS):
            messages = [
                {"role": "user", "content": "Describe this molecule."},
                {"role": "assistant", "content": description},
            ]
            handle.write(json.dumps(make_record(f"toy:{index}", smiles, messages, "description", "toy")) + "\n")
    return path


@pytest.fixture(scope="module")
def init_dir(tiny_llm_dir, workdir) -> Path:
    """An untrained tiny LLaMo whose prompts show no SMILES text: only the graph tells the molecules apart."""
    torch.manual_seed(0)
    model, processor = build_llamo(
        str(tiny_llm_dir),
        graph_config={"hidden_size": 32, "num_layers": 2},
        projector_config={"num_heads": 2, "mlp_depth": 2},
        chat_template="llama2",
        processor_kwargs={"prompt_smiles": "none"},
    )
    return save_llamo(model, processor, workdir / "init")


def common(workdir, toy_pairs, **overrides) -> dict:
    settings = {
        "sources": [{"type": "conversations", "path": str(toy_pairs)}],
        "data_cache_dir": str(workdir / "cache"),
        "per_device_train_batch_size": 8,
        "warmup_steps": 5,
        "logging_steps": 5,
        "save_steps": 1000,
        "disable_tqdm": True,
    }
    settings.update(overrides)
    return settings


def molecule_inputs(processor, smiles_list):
    messages = [
        [
            {
                "role": "user",
                "content": [{"type": "molecule", "smiles": s}, {"type": "text", "text": "Describe this molecule."}],
            }
        ]
        for s in smiles_list
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)


# --- masks, schedule, folders, targets --------------------------------------------------------------------------


def test_labels_mask_exactly_the_assistant_turns(tiny_llamo):
    processor = tiny_llamo[1]
    turns = [
        ("Describe this molecule.", "It is an ester."),
        ("Is it acidic?", "Yes, it has a carboxylic acid."),
        ("Name it.", "2-acetyloxybenzoic acid"),
    ]
    messages = []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    import datasets

    from llamo.processing.datasets import featurize_dataset
    from llamo.processing.schema import CONVERSATION_FEATURES

    row = make_record("t:1", "CC(=O)Oc1ccccc1C(=O)O", messages, "conversation", "t")
    featurized, _ = featurize_dataset(datasets.Dataset.from_list([row], features=CONVERSATION_FEATURES))
    batch = LlamoDataCollator(processor)(list(featurized))
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    tokenizer = processor.tokenizer
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept])
    assert tokenizer.decode(ids[kept]) == "".join(f" {answer}</s>" for _, answer in turns)
    # nothing of the prompts, the SMILES text or the graph placeholders is a target
    assert not kept[ids == processor.graph_token_id].any()
    assert (ids == processor.graph_token_id).sum() == processor.num_graph_tokens
    prompt_text = tokenizer.decode(ids[~kept & (batch["attention_mask"][0] == 1)])
    for question, answer in turns:
        assert question in prompt_text and answer not in prompt_text
    assert "CC(=O)Oc1ccccc1C(=O)O" in prompt_text


def test_paper_schedule_shape():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-4)
    schedule = warmup_cosine_schedule(
        optimizer, warmup_steps=10, total_steps=110, peak_lr=1e-4, warmup_start_lr=1e-6, min_lr=1e-5
    )
    rates = []
    for _ in range(111):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-6)
    assert rates[5] == pytest.approx(1e-6 + (1e-4 - 1e-6) / 2)
    assert rates[10] == pytest.approx(1e-4)
    assert rates[60] == pytest.approx(1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rates[110] == pytest.approx(1e-5)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_run_folder_guard(tmp_path):
    config = Stage1Config(output_dir=str(tmp_path / "run"), sources=[{"type": "chebi20", "path": "x.tsv"}])
    output_dir, checkpoint, finished = prepare_run_dir(config, log=lambda *a: None)
    assert checkpoint is None and not finished and (output_dir / "llamo_run_config.json").is_file()
    other = Stage1Config(output_dir=str(tmp_path / "run"), sources=[{"type": "chebi20", "path": "y.tsv"}])
    with pytest.raises(FileExistsError, match="differs in: sources"):
        prepare_run_dir(other, log=lambda *a: None)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="holds no llamo run"):
        prepare_run_dir(Stage1Config(output_dir=str(tmp_path / "mine"), sources=[{"type": "chebi20", "path": "x"}]))
    # a checkpoint killed while saving (no trainer_state.json) is set aside, the complete one is resumed
    for step, complete in ((2, True), (4, False)):
        folder = output_dir / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            for name in ("trainer_state.json", "scheduler.pt", "rng_state.pth"):
                (folder / name).write_text("{}")
    assert last_complete_checkpoint(output_dir).name == "checkpoint-2"
    assert (output_dir / "checkpoint-4.incomplete").is_dir()
    (output_dir / "training_summary.json").write_text("{}")
    assert prepare_run_dir(config, log=lambda *a: None)[2] is True


def test_lora_targets_stay_inside_the_language_model(tiny_llamo):
    import re

    model = tiny_llamo[0]
    pattern = lora_target_regex(model, ["q_proj", "v_proj"])
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    assert matched and all(name.startswith("model.language_model.") for name in matched)
    everything = lora_target_regex(model, ["all-linear"])
    matched = [name for name, _ in model.named_modules() if re.fullmatch(everything, name)]
    assert any(name.endswith("down_proj") for name in matched)
    assert not any("graph" in name or name == "lm_head" for name in matched)
    with pytest.raises(ValueError, match="do not exist"):
        lora_target_regex(model, ["query_key_value"])


@pytest.mark.parametrize("recipe", sorted(path.name for path in RECIPES_DIR.glob("*.yaml")))
def test_shipped_recipes_parse(recipe):
    raw = yaml.safe_load((RECIPES_DIR / recipe).read_text())
    if "placeholders" in raw:  # a whole pipeline: its stages must be valid configs once the paths are given
        from llamo.training.pipeline import load_pipeline, stage_configs

        with pytest.raises(ValueError, match="needs --"):
            load_pipeline(recipe.removesuffix(".yaml"), {})
        values = {name: "data.tsv" for name, value in raw["placeholders"].items() if value is None}
        first, second = stage_configs(load_pipeline(recipe.removesuffix(".yaml"), values))
        assert first.sources and second.model_path == first.output_dir and second.lora_r > 0
        return
    stage = stage1 if "stage1" in recipe else stage2
    config = stage.parse(["--config", recipe.removesuffix(".yaml")])
    assert config.sources and config.output_dir
    if stage is stage2:
        assert config.lora_r > 0 and config.learning_rate == pytest.approx(5e-5 if "tiny" not in recipe else 1e-2)
    assert raw["output_dir"] == config.output_dir


# --- stage 1 ----------------------------------------------------------------------------------------------------


def test_stage1_trains_graph_modules_only_and_loss_falls(init_dir, workdir, toy_pairs):
    config = Stage1Config(
        output_dir=str(workdir / "stage1"),
        model_path=str(init_dir),
        **common(workdir, toy_pairs, max_steps=30, learning_rate=1e-2, min_learning_rate=1e-3),
    )
    output = stage1.main(config, log=lambda *a: None)
    state = (
        json.loads((output / "checkpoint-30" / "trainer_state.json").read_text())
        if (output / "checkpoint-30").exists()
        else None
    )
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["global_step"] == 30
    initial = LlamoForConditionalGeneration.from_pretrained(init_dir).state_dict()
    trained = LlamoForConditionalGeneration.from_pretrained(output).state_dict()
    for name, tensor in trained.items():
        if name.startswith(("model.language_model.", "lm_head.")):
            assert torch.equal(tensor, initial[name]), name
    assert not torch.equal(
        trained["model.graph_projector.level_queries"], initial["model.graph_projector.level_queries"]
    )
    assert not torch.equal(
        trained["model.graph_encoder.layers.0.norm.running_mean"],
        initial["model.graph_encoder.layers.0.norm.running_mean"],
    )
    # full-batch steps on a fixed set: with the LLM frozen the loss must fall at every logged step
    losses = [entry["loss"] for entry in _log_history(output) if "loss" in entry]
    assert all(later <= earlier for earlier, later in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.01, losses
    assert state is None or state["global_step"] == 30


def _log_history(output_dir: Path) -> list[dict]:
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"))
    if states:
        return json.loads(states[-1].read_text())["log_history"]
    return json.loads((output_dir / "training_summary.json").read_text()).get("log_history", [])


# --- stage 2 ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit_run(init_dir, workdir, toy_pairs) -> Path:
    config = Stage2Config(
        output_dir=str(workdir / "stage2"),
        model_path=str(init_dir),
        **common(
            workdir,
            toy_pairs,
            max_steps=220,
            learning_rate=1e-2,
            min_learning_rate=1e-3,
            save_steps=220,
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            lora_target_modules=["all-linear"],
        ),
    )
    return stage2.main(config, log=lambda *a: None)


def test_stage2_overfits_from_the_graph_alone(overfit_run):
    merged = LlamoForConditionalGeneration.from_pretrained(overfit_run / "merged").eval()
    processor = LlamoProcessor.from_pretrained(overfit_run / "merged")
    inputs = molecule_inputs(processor, [smiles for smiles, _ in PAIRS])
    assert processor.prompt_smiles == "none" and "C" not in processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "x"}]}]
    ).split("<<SYS>>")[-1].replace("<graph>", "")
    with torch.no_grad():
        answers = processor.batch_decode(merged.generate(**inputs, max_new_tokens=16, do_sample=False))
        graph = merged.get_graph_features(**{key: inputs[key] for key in GRAPH_KEYS})
        blind = merged.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            graph_embeds=torch.zeros_like(graph),
            max_new_tokens=16,
            do_sample=False,
        )
    blind_answers = processor.batch_decode(blind, prompt_length=inputs["input_ids"].shape[1])
    assert answers == [description for _, description in PAIRS]
    assert len(set(blind_answers)) == 1  # without the graph every molecule gets the same answer
    assert sum(a == d for a, (_, d) in zip(blind_answers, PAIRS, strict=True)) <= 1
    losses = [entry["loss"] for entry in _log_history(overfit_run) if "loss" in entry]
    assert losses[-1] < losses[0]


def test_lora_touches_only_llm_modules(overfit_run):
    weights = load_file(overfit_run / "adapter" / "adapter_model.safetensors")
    lora = [name for name in weights if "lora_" in name]
    saved_modules = [name for name in weights if "lora_" not in name]
    assert lora and all(".language_model." in name for name in lora)
    assert saved_modules and all(".graph_projector." in name for name in saved_modules)
    assert not any("graph_encoder" in name for name in weights)
    adapter_config = json.loads((overfit_run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["graph_projector"]


def test_frozen_encoder_and_its_batchnorm_are_unchanged(overfit_run, init_dir):
    initial = LlamoForConditionalGeneration.from_pretrained(init_dir).state_dict()
    merged = LlamoForConditionalGeneration.from_pretrained(overfit_run / "merged").state_dict()
    encoder = [name for name in merged if name.startswith("model.graph_encoder.")]
    assert any(name.endswith("running_var") for name in encoder)
    for name in encoder:
        assert torch.equal(merged[name], initial[name]), name
    assert not torch.equal(
        merged["model.graph_projector.level_queries"], initial["model.graph_projector.level_queries"]
    )


def test_merged_model_equals_adapter_on_the_base(overfit_run, init_dir):
    from peft import PeftModel

    base = LlamoForConditionalGeneration.from_pretrained(init_dir)
    adapted = PeftModel.from_pretrained(base, overfit_run / "adapter").eval()
    merged = LlamoForConditionalGeneration.from_pretrained(overfit_run / "merged").eval()
    processor = LlamoProcessor.from_pretrained(overfit_run / "adapter")
    inputs = molecule_inputs(processor, [smiles for smiles, _ in PAIRS[:4]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, merged(**inputs).logits, atol=1e-4, rtol=1e-4)
        assert torch.equal(
            adapted.generate(**inputs, max_new_tokens=8, do_sample=False),
            merged.generate(**inputs, max_new_tokens=8, do_sample=False),
        )


def test_merged_folder_loads_with_auto_classes(overfit_run):
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(overfit_run / "merged", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(overfit_run / "merged", trust_remote_code=True)
    assert type(model).__name__ == "LlamoForConditionalGeneration" and processor.num_graph_tokens == 16


def test_finished_run_is_not_trained_again(overfit_run, init_dir, workdir, toy_pairs):
    before = (overfit_run / "training_summary.json").read_text()
    config = Stage2Config(
        output_dir=str(overfit_run),
        model_path=str(init_dir),
        **common(
            workdir,
            toy_pairs,
            max_steps=220,
            learning_rate=1e-2,
            min_learning_rate=1e-3,
            save_steps=220,
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            lora_target_modules=["all-linear"],
        ),
    )
    assert stage2.main(config, log=lambda *a: None) == overfit_run
    assert (overfit_run / "training_summary.json").read_text() == before


# --- resume and several processes -------------------------------------------------------------------------------


def write_recipe(path: Path, init_dir: Path, workdir: Path, toy_pairs: Path, **overrides) -> Path:
    recipe = {
        "model_path": str(init_dir),
        "sources": [{"type": "conversations", "path": str(toy_pairs)}],
        "data_cache_dir": str(workdir / "cache"),
        "learning_rate": 5e-3,
        "min_learning_rate": 5e-4,
        "warmup_steps": 3,
        "logging_steps": 5,
        "lora_r": 8,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
        "disable_tqdm": True,
        "save_merged": False,
    }
    recipe.update(overrides)
    path.write_text(yaml.safe_dump(recipe))
    return path


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_resume_after_sigkill_gives_the_uninterrupted_weights(init_dir, workdir, toy_pairs):
    recipe = write_recipe(
        workdir / "resume.yaml", init_dir, workdir, toy_pairs, max_steps=60, save_steps=5, per_device_train_batch_size=4
    )
    llamo = shutil.which("llamo")
    env = subprocess_env()

    def command(output):
        return [llamo, "train", "stage2", "--config", str(recipe), "--output_dir", str(output)]

    straight, interrupted = workdir / "straight", workdir / "interrupted"
    done = subprocess.run(command(straight), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    process = subprocess.Popen(
        command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (interrupted / "checkpoint-15" / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "training_summary.json").exists(), "the run finished before the kill"
    killed_at = max(int(p.name.split("-")[1].split(".")[0]) for p in interrupted.glob("checkpoint-*"))
    assert killed_at < 60

    again = subprocess.run(command(interrupted), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((interrupted / "training_summary.json").read_text())
    assert summary["resumed_from"].startswith("checkpoint-") and summary["global_step"] == 60
    expected, got = adapter_weights(straight), adapter_weights(interrupted)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_two_process_accelerate_run_matches_one_process(init_dir, workdir, toy_pairs):
    recipe = write_recipe(
        workdir / "ddp.yaml",
        init_dir,
        workdir,
        toy_pairs,
        max_steps=6,
        save_steps=100,
        lora_dropout=0.0,
        lora_target_modules=["all-linear"],
    )
    env = subprocess_env()
    single, double = workdir / "one-process", workdir / "two-processes"
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "llamo.training.stage2",
            "--config",
            str(recipe),
            "--output_dir",
            str(single),
            "--per_device_train_batch_size",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    accelerate_config = Path(stage2.__file__).parent / "accelerate" / "cpu_2proc.yaml"
    two = subprocess.run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(accelerate_config),
            "-m",
            "llamo.training.stage2",
            "--config",
            str(recipe),
            "--output_dir",
            str(double),
            "--per_device_train_batch_size",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    for run in (single, double):
        assert json.loads((run / "training_summary.json").read_text())["global_step"] == 6
    expected, got = adapter_weights(single), adapter_weights(double)
    changed = [name for name in expected if "lora_B" in name and expected[name].abs().sum() > 0]
    assert changed, "training did not move the adapter"
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-3, msg=name)


def test_group_by_length_adds_length_estimates(workdir, toy_pairs):
    from llamo.training.data import build_training_dataset

    config = Stage1Config(output_dir=str(workdir / "unused"), group_by_length=True, **common(workdir, toy_pairs))
    dataset, _ = build_training_dataset(config, log=lambda *a: None)
    lengths = dict(zip(dataset["smiles"], dataset["length"], strict=True))
    assert lengths["CN1C=NC2=C1C(=O)N(C(=O)N2C)C"] > lengths["CN"] > 0
    assert (
        "length"
        not in build_training_dataset(
            Stage1Config(output_dir=str(workdir / "unused"), **common(workdir, toy_pairs)), log=lambda *a: None
        )[0].column_names
    )
