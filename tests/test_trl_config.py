"""Training takes TRL's own configuration: `SFTConfig` / `ModelConfig` flags from the recipe and the command line reach
the trainer, LoRA comes from `ModelConfig` and stays inside the language model, the paper's schedule is transformers'
`cosine_warmup_with_min_lr`, old recipe keys are refused with their new names, and a user's own TRL script fine-tunes
a saved LLaMo."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from llamo import LlamoForConditionalGeneration
from llamo.processing.schema import make_record
from llamo.training import common as training_common
from llamo.training.common import RUN_CONFIG, lora_config, prepare_run_dir
from llamo.training.config import LEGACY_KEYS, STAGE_DEFAULTS, DataSourceConfig, stage_arguments, stage_help

README = Path(__file__).resolve().parents[1] / "README.md"
PAIRS = [("CCO", "a primary alcohol"), ("CC(=O)O", "a carboxylic acid"), ("CN", "a primary amine"), ("C", "methane")]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Four one-turn conversations in the conversation schema (JSONL)."""
    path = tmp_path_factory.mktemp("trl_config") / "pairs.jsonl"
    lines = []
    for index, (smiles, answer) in enumerate(PAIRS):
        messages = [{"role": "user", "content": "Describe this molecule."}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps(make_record(f"t:{index}", smiles, messages, "description", "toy")))
    path.write_text("\n".join(lines) + "\n")
    return path


def sources(pairs: Path) -> list[dict]:
    return [{"type": "conversations", "path": str(pairs)}]


# --- flags ------------------------------------------------------------------------------------------------------


def test_recipe_and_command_line_flags_of_sftconfig_reach_the_trainer(
    tiny_llamo_dir, pairs, tmp_path, monkeypatch, capsys
):
    from llamo.cli import main

    trainers = []

    class RecordingTrainer(training_common.LlamoSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_llamo_dir),
                "sources": sources(pairs),
                "data_cache_dir": str(tmp_path / "cache"),
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "max_grad_norm": 0.3,  # the command line overrides it
                "gradient_checkpointing": True,  # TRL's names of transformers' activation checkpointing
                "gradient_checkpointing_kwargs": {"use_reentrant": False},
                "logging_steps": 1,
                "disable_tqdm": True,
            }
        )
    )
    monkeypatch.setattr(training_common, "LlamoSFTTrainer", RecordingTrainer)
    flags = ["--max_grad_norm", "0.5", "--lr_scheduler_type", "linear", "--warmup_steps", "0", "--seed", "7"]
    output = tmp_path / "run"
    argv = ["train", "stage1", "--config", str(recipe), "--output_dir", str(output), *flags]
    assert main([*argv, "--eval_strategy", "no", "--report_to", "none"]) == 0, capsys.readouterr().err
    trainer = trainers[0]
    assert trainer.args.max_grad_norm == 0.5 and trainer.args.seed == 7 and trainer.args.lr_scheduler_type == "linear"
    assert trainer.args.lr_scheduler_kwargs == {}  # the paper's kwargs went with the paper's scheduler
    assert trainer.args.activation_checkpointing and trainer.args.activation_checkpointing_kwargs == {
        "use_reentrant": False
    }
    assert all(layer.gradient_checkpointing for layer in trainer.model.model.language_model.layers)
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    peak = STAGE_DEFAULTS["stage1"]["learning_rate"]
    assert rates == pytest.approx([peak, peak / 2])  # transformers' linear decay over the 2 steps
    saved = json.loads((output / RUN_CONFIG).read_text())  # what a resume is checked against
    assert (
        saved["max_grad_norm"] == 0.5 and saved["lr_scheduler_type"] == "linear" and saved["hub_token"] == "<HUB_TOKEN>"
    )


def test_every_trainer_and_model_flag_parses(pairs, tmp_path):
    from llamo.training import stage2

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "sources": sources(pairs)}))
    flags = {
        "--eval_strategy": "steps",
        "--eval_steps": "5",
        "--max_grad_norm": "0.7",
        "--report_to": "tensorboard",
        "--push_to_hub": "false",
        "--optim": "adafactor",
        "--activation_checkpointing": "true",
        "--dtype": "bfloat16",
        "--lora_r": "4",
        "--lora_alpha": "8",
        "--lora_target_modules": "all-linear",
    }
    script, training, model = stage2.parse(
        ["--config", str(recipe), *[item for pair in flags.items() for item in pair]]
    )
    assert (training.eval_strategy, training.eval_steps, training.max_grad_norm) == ("steps", 5, 0.7)
    assert training.report_to == ["tensorboard"] and training.optim == "adafactor" and not training.push_to_hub
    assert training.activation_checkpointing and model.dtype == "bfloat16"
    assert (model.lora_r, model.lora_alpha, model.lora_target_modules) == (4, 8, "all-linear")
    assert script.sources[0].path == str(pairs)


def test_a_cuda_build_of_torch_without_a_gpu_trains_a_bf16_recipe_on_the_cpu(monkeypatch, pairs):
    # pip's default torch on Linux is a CUDA build: `torch.accelerator` then names cuda even where no GPU is present
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args, **kwargs: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    arguments = stage_arguments("stage2", {"sources": sources(pairs), "output_dir": "unused", "bf16": True})
    assert arguments.training.use_cpu and arguments.training.bf16


def test_stage_help_is_llamos_own_arguments_and_help_all_is_trls(capsys):
    from llamo.cli import main

    assert stage_help("stage2").startswith("usage: llamo train stage2 --config RECIPE")
    with pytest.raises(SystemExit) as done:
        main(["train", "stage2", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "--sources" in text and "--adapter_path" in text and "--help-all" in text
    assert "--max_grad_norm" not in text and "cosine_warmup_with_min_lr" in text
    with pytest.raises(SystemExit) as done:
        main(["train", "stage2", "--help-all"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    for flag in ("--sources", "--max_grad_norm", "--deepspeed", "--lr_scheduler_kwargs", "--lora_r", "--dtype"):
        assert flag in text, flag


def test_unsupported_trainer_settings_are_refused_with_the_reason(pairs):
    base = {"output_dir": "unused", "sources": sources(pairs)}
    for settings, message in (
        ({"remove_unused_columns": True}, "remove_unused_columns: false"),
        ({"packing": True}, "packing"),
        ({"enable_jit_checkpoint": True}, "SIGTERM and Ctrl-C themselves"),
        ({"use_peft": False}, "keep use_peft: true"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            stage_arguments("stage2", {**base, **settings})
    with pytest.raises(ValueError, match=re.escape("LoRA (use_peft) is for stage 2")):
        stage_arguments("stage1", {**base, "use_peft": True})


# --- LoRA from ModelConfig --------------------------------------------------------------------------------------


def test_lora_from_model_config_never_targets_the_graph_modules(tiny_llamo, pairs):
    from peft import get_peft_model

    model = tiny_llamo[0]
    graph_only = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".graph_" in f".{name}"
        }
        - {name.rsplit(".", 1)[-1] for name, _ in model.model.language_model.named_modules()}
    )
    assert graph_only  # linear layers that exist in the GIN / projector only
    base = {"output_dir": "unused", "sources": sources(pairs)}
    for targets in (["all-linear"], ["q_proj", "v_proj"], ["down_proj"]):
        model_args = stage_arguments("stage2", {**base, "lora_target_modules": targets}).model
        config = lora_config(model, model_args)
        assert (config.r, config.lora_alpha, config.modules_to_save) == (8, 32, ["graph_projector"])
        names = [name for name, _ in model.named_modules() if re.fullmatch(config.target_modules, name)]
        assert names and all(name.startswith("model.language_model.") for name in names), targets
        adapted = get_peft_model(LlamoForConditionalGeneration(model.config), config)
        lora = [name for name, _ in adapted.named_parameters() if "lora_" in name]
        assert lora and all(".language_model." in name for name in lora), targets
    for settings, message in (
        ({"lora_target_modules": [graph_only[0]]}, "do not exist in the language model"),
        ({"lora_target_modules": ["q_proj", graph_only[0]]}, "do not exist in the language model"),
        ({"lora_target_parameters": ["model.graph_encoder.layers.0.weight"]}, "stays inside the language model"),
        ({"lora_modules_to_save": ["graph_projector", "graph_encoder"]}, "graph encoder stays frozen"),
    ):
        with pytest.raises(ValueError, match=message):
            lora_config(model, stage_arguments("stage2", {**base, **settings}).model)


# --- schedule ---------------------------------------------------------------------------------------------------


def paper_rate(step: int, peak: float, start: float, minimum: float, warmup: int, total: int) -> float:
    """The paper's schedule in closed form (what llamo computed before): linear from `start` to `peak` over `warmup`
    steps, then cosine to `minimum` at `total`."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    return minimum + (peak - minimum) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


@pytest.mark.parametrize(
    ("stage", "warmup", "total"), [("stage1", 10, 110), ("stage2", 1000, 5000), ("stage2", 8, 144)]
)
def test_the_paper_schedule_is_transformers_cosine_warmup_with_min_lr(stage, warmup, total, pairs):
    from transformers import get_scheduler

    settings = {"output_dir": "unused", "sources": sources(pairs), "warmup_steps": warmup}
    args = stage_arguments(stage, settings).training
    peak, minimum = args.learning_rate, args.lr_scheduler_kwargs["min_lr"]
    start = peak * args.lr_scheduler_kwargs["warmup_lr_rate"]
    assert (peak, minimum, start) == pytest.approx((1e-4, 1e-5, 1e-6) if stage == "stage1" else (5e-5, 5e-6, 5e-7))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = get_scheduler(  # as the Trainer creates it from its arguments
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(total),
        num_training_steps=total,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # the rates at a few steps: warm-up from `start`, the peak one step before the paper's, then the paper's decay
    # one step ahead, ending at exactly `minimum` (the difference `llamo.training.config.PAPER_SCHEDULE` states)
    assert rates[0] == pytest.approx(start) and rates[warmup - 1] == pytest.approx(peak)
    assert rates[warmup // 2] == pytest.approx(start + (peak - start) * (warmup // 2) / (warmup - 1))
    for step in (warmup, (warmup + total) // 2, total - 2):
        assert rates[step] == pytest.approx(paper_rate(step + 1, peak, start, minimum, warmup, total), rel=1e-9)
    assert rates[-1] == pytest.approx(minimum)
    bound = max((peak - start) / warmup, (peak - minimum) * math.pi / (2 * (total - warmup)))
    gaps = [abs(rate - paper_rate(step, peak, start, minimum, warmup, total)) for step, rate in enumerate(rates)]
    assert max(gaps) <= bound * 1.0001
    if warmup == 1000:
        assert max(gaps) <= 0.001 * peak  # the paper's 1000 warm-up steps: within 0.1% of the peak


# --- recipes and run folders of earlier versions ----------------------------------------------------------------


OLD_RECIPE = {
    "output_dir": "runs/old",
    "model_path": "runs/stage1",
    "sources": [{"type": "chebi20", "path": "data.tsv"}],
    "lm_dtype": "bfloat16",
    "learning_rate": 3.0e-4,
    "warmup_steps": 50,
    "min_learning_rate": 3.0e-5,
    "warmup_start_learning_rate": 1.0e-6,
    "num_proc": 4,
    "group_by_length": True,
    "train_projector": True,
}


def test_old_recipe_keys_are_refused_naming_the_new_ones(tmp_path, capsys):
    from llamo.cli import main

    expected = {
        "min_learning_rate": "lr_scheduler_kwargs: {min_lr: VALUE}",
        "warmup_start_learning_rate": "warmup_lr_rate",
        "lm_dtype": "`dtype",
        "model_path": "`model_name_or_path",
        "num_proc": "`dataset_num_proc",
        "group_by_length": "train_sampling_strategy: group_by_length",
        "train_projector": "lora_modules_to_save",
    }
    assert set(expected) == set(LEGACY_KEYS) <= set(OLD_RECIPE)
    for key, new in expected.items():
        with pytest.raises(ValueError, match=re.escape(f"`{key}` is no longer a recipe key: use ")) as refused:
            stage_arguments("stage2", {"output_dir": "x", "sources": OLD_RECIPE["sources"], key: OLD_RECIPE[key]})
        assert new in str(refused.value)
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump(OLD_RECIPE))
    assert main(["train", "stage2", "--config", str(recipe)]) == 2
    message = capsys.readouterr().err
    assert message.startswith("llamo train: error: invalid stage2 configuration: `")
    assert all(f"`{key}`" in message for key in LEGACY_KEYS)
    assert main(["train", "stage1", "--config", "tiny_random_stage1", "--lm_dtype", "bfloat16"]) == 2
    assert "`lm_dtype` is no longer a recipe key: use `dtype (ModelConfig's)`" in capsys.readouterr().err


def test_a_run_folder_of_an_earlier_version_resumes_and_describes_itself(tmp_path):
    from llamo.hub_cards.recipe import read_run

    saved = {**OLD_RECIPE, "output_dir": str(tmp_path / "run"), "lora_r": 8, "lora_target_modules": ["q_proj"]}
    saved["sources"] = [asdict(DataSourceConfig(**source)) for source in OLD_RECIPE["sources"]]  # saved in full
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_CONFIG).write_text(json.dumps(saved))
    same = {
        "output_dir": saved["output_dir"],
        "model_name_or_path": "runs/stage1",
        "sources": OLD_RECIPE["sources"],
        "dtype": "bfloat16",
        "learning_rate": 3.0e-4,
        "warmup_steps": 50,
        "lr_scheduler_kwargs": {"min_lr": 3.0e-5, "warmup_lr_rate": 0.00333333333333},
        "dataset_num_proc": 4,
        "train_sampling_strategy": "group_by_length",
        "lora_target_modules": ["q_proj"],
    }
    quiet = {"log": lambda *a: None}
    assert prepare_run_dir(stage_arguments("stage2", same), **quiet)[1:] == (None, False)  # the same run: resumed
    for changed in ({"dtype": "float32"}, {"lr_scheduler_kwargs": {"min_lr": 1e-5, "warmup_lr_rate": 0.01}}):
        with pytest.raises(FileExistsError, match=f"differs in: {next(iter(changed))}"):
            prepare_run_dir(stage_arguments("stage2", {**same, **changed}), **quiet)
    rows = dict(read_run(tmp_path / "run").recipe_rows())
    assert rows["Started from"] == "runs/stage1" and rows["Precision"] == "bfloat16"
    assert rows["Optimiser and schedule"].endswith(
        "linear warm-up from 1e-06 over 50 steps to 0.0003, cosine decay to 3e-05"
    )
    assert rows["LoRA"].endswith("on q_proj of the LM") and rows["Trained parts"].startswith("the projector in full")


def test_a_new_run_folder_describes_itself(tmp_path, pairs):
    from llamo.hub_cards.recipe import read_run

    settings = {"output_dir": str(tmp_path / "run"), "sources": sources(pairs), "activation_checkpointing": True}
    prepare_run_dir(stage_arguments("stage2", settings), log=lambda *a: None)
    run = read_run(tmp_path / "run")
    rows = dict(run.recipe_rows())
    assert run.stage == 2 and rows["Precision"] == "float32, gradient checkpointing"
    assert rows["Optimiser and schedule"] == (
        "AdamW, weight decay 0.05; linear warm-up from 5e-07 over 1000 steps to 5e-05, cosine decay to 5e-06"
    )
    assert rows["LoRA"] == "r 8, alpha 32, dropout 0.05, on q_proj, v_proj of the LM"


# --- a user's own TRL script ------------------------------------------------------------------------------------


def readme_script() -> str:
    """The README's "Fine-tune with your own TRL script" example."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Fine-tune with your own TRL script") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("```\n", 10)]


def test_the_readme_trl_script_fine_tunes_a_saved_llamo(tiny_llamo_dir, tmp_path):
    script = readme_script()
    assert len(script.strip().splitlines()) <= 30 and "SFTTrainer(model=folder" in script
    for old, new in (
        ('folder = "runs/stage2/merged"', f"folder = {str(tiny_llamo_dir)!r}"),
        ('output_dir="runs/my-finetune"', f"output_dir={str(tmp_path / 'mine')!r}, logging_steps=1, report_to='none'"),
        ("max_steps=100", "max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3"),
    ):
        assert old in script
        script = script.replace(old, new)
    namespace: dict = {}
    exec(compile(script, str(README), "exec"), namespace)  # the user's script, as printed
    trainer = namespace["trainer"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    before = LlamoForConditionalGeneration.from_pretrained(tiny_llamo_dir).state_dict()
    after = LlamoForConditionalGeneration.from_pretrained(tmp_path / "mine").state_dict()
    assert before.keys() == after.keys()
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert any(name.startswith("model.language_model.") for name in moved)
    assert any(name.startswith("model.graph_projector.") for name in moved)
