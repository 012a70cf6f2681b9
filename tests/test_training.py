"""Two-stage training on tiny random models: masks, schedule, stage 1, stage 2 (LoRA + projector), resume after
SIGKILL, and a 2-process accelerate run."""

import errno
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llamo import LlamoForConditionalGeneration, LlamoProcessor
from llamo.builder import build_llamo, save_llamo
from llamo.processing.collators import IGNORE_INDEX, LlamoDataCollator
from llamo.processing.schema import make_record
from llamo.training import common as training_common
from llamo.training import stage1, stage2
from llamo.training.common import checkpoint_is_complete, last_complete_checkpoint, lora_target_regex, prepare_run_dir
from llamo.training.config import ACCELERATE_DIR, RECIPES_DIR, parse_stage_arguments, stage_arguments
from llamo.training.data import build_training_dataset
from llamo.training.interrupt import GracefulInterrupt

from .conftest import WITHOUT_LLAMO, free_port, subprocess_env

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


def schedule(peak: float, minimum: float, start: float = 1e-6) -> dict:
    """A recipe's learning rates: `peak`, cosine decay to `minimum`, warm-up from `start`."""
    return {"learning_rate": peak, "lr_scheduler_kwargs": {"min_lr": minimum, "warmup_lr_rate": start / peak}}


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


THREE_TURNS = [
    ("Describe this molecule.", "It is an ester."),
    ("Is it acidic?", "Yes, it has a carboxylic acid."),
    ("Name it.", "2-acetyloxybenzoic acid"),
]
# SmolLM2-Instruct's chat template: ChatML, with a system prompt inserted when the conversation has none.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SMOLLM2_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def collate_three_turns(processor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, labels, attention_mask)` of one 3-turn conversation about aspirin, through the training
    collator."""
    import datasets

    from llamo.processing.featurization import featurize_dataset
    from llamo.processing.schema import CONVERSATION_FEATURES

    messages = []
    for question, answer in THREE_TURNS:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    row = make_record("t:1", "CC(=O)Oc1ccccc1C(=O)O", messages, "conversation", "t")
    featurized, _ = featurize_dataset(datasets.Dataset.from_list([row], features=CONVERSATION_FEATURES))
    batch = LlamoDataCollator(processor)(list(featurized))
    return batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]


def assert_only_answers_are_targets(processor, ids, labels, attention, answer_format: str) -> str:
    """Labels equal the ids exactly on the answers (each as the template writes it, `answer_format`, end-of-turn
    text included) and are -100 elsewhere; returns the decoded rest (the prompt)."""
    tokenizer = processor.tokenizer
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept])
    assert tokenizer.decode(ids[kept]) == "".join(answer_format.format(answer) for _, answer in THREE_TURNS)
    # nothing of the prompts, the SMILES text or the graph placeholders is a target
    assert not kept[ids == processor.graph_token_id].any()
    assert (ids == processor.graph_token_id).sum() == processor.num_graph_tokens
    prompt_text = tokenizer.decode(ids[~kept & (attention == 1)])
    for question, answer in THREE_TURNS:
        assert question in prompt_text and answer not in prompt_text
    assert "CC(=O)Oc1ccccc1C(=O)O" in prompt_text
    return prompt_text


def test_labels_mask_exactly_the_assistant_turns(tiny_llamo):
    processor = tiny_llamo[1]
    ids, labels, attention = collate_three_turns(processor)
    # LLaMA-2: each answer follows "[/INST]" after a space, and ends with </s>
    assert_only_answers_are_targets(processor, ids, labels, attention, " {}</s>")


def test_labels_mask_the_assistant_turns_of_a_chatml_template(tiny_llm_dir, tmp_path):
    template = tmp_path / "smollm2.jinja"
    template.write_text(SMOLLM2_TEMPLATE)
    _, processor = build_llamo(
        str(tiny_llm_dir),
        graph_config={"hidden_size": 16, "num_layers": 2},
        projector_config={"num_heads": 2, "mlp_depth": 2},
        chat_template=str(template),
    )
    ids, labels, attention = collate_three_turns(processor)
    # ChatML: the answer, <|im_end|> and its newline are targets; "<|im_start|>assistant\n" is not
    prompt_text = assert_only_answers_are_targets(processor, ids, labels, attention, "{}<|im_end|>\n")
    assert prompt_text.startswith(f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert prompt_text.count(SMOLLM2_SYSTEM) == 1 and prompt_text.count("<|im_start|>assistant\n") == 3
    assert prompt_text.endswith("<|im_start|>assistant\n")  # the last answer's header; nothing after it


def test_run_folder_guard(tmp_path):
    def settings(output: str, data: str) -> dict:
        return {"output_dir": str(tmp_path / output), "sources": [{"type": "chebi20", "path": data}]}

    config = stage_arguments("stage1", settings("run", "x.tsv"))
    output_dir, checkpoint, finished = prepare_run_dir(config, log=lambda *a: None)
    assert checkpoint is None and not finished and (output_dir / "llamo_run_config.json").is_file()
    other = stage_arguments("stage1", settings("run", "y.tsv"))
    with pytest.raises(FileExistsError, match="differs in: sources"):
        prepare_run_dir(other, log=lambda *a: None)
    faster = stage_arguments("stage1", {**settings("run", "x.tsv"), "max_grad_norm": 0.5})  # an SFTConfig field
    with pytest.raises(FileExistsError, match="differs in: max_grad_norm"):
        prepare_run_dir(faster, log=lambda *a: None)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="holds no llamo run"):
        prepare_run_dir(stage_arguments("stage1", settings("mine", "x")))
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


def test_documented_second_round_of_the_default_recipe_parses(tmp_path):
    """The default recipe keeps its stage-2b experiment commented out; uncommented, it must be a valid round."""
    from llamo.training.pipeline import load_pipeline, stage2_rounds

    text = (RECIPES_DIR / "llamo_smollm2_135m.yaml").read_text()
    block = text[text.index("# stage2b:") : text.index("bundle:")]
    recipe = tmp_path / "with_stage2b.yaml"
    recipe.write_text(text.replace(block, "\n".join(line[2:] for line in block.splitlines()) + "\n"))
    first, second = stage2_rounds(load_pipeline(str(recipe), {"chebi20": "data.tsv", "work_dir": str(tmp_path)}))
    assert second.training.output_dir == str(tmp_path / "stage2b")
    assert second.model.model_name_or_path == first.model.model_name_or_path
    assert second.script.adapter_path == str(tmp_path / "stage2" / "adapter")
    assert [source.type for source in second.script.sources] == ["chemicals", "chebi20", "qm9", "conversations"]
    assert second.training.learning_rate == pytest.approx(1e-4) and first.training.learning_rate == pytest.approx(2e-4)


@pytest.mark.parametrize("recipe", sorted(path.name for path in RECIPES_DIR.glob("*.yaml")))
def test_shipped_recipes_parse(recipe, tmp_path):
    raw = yaml.safe_load((RECIPES_DIR / recipe).read_text())
    if "placeholders" in raw:  # a whole pipeline: its stages must be valid configs once the paths are given
        from llamo.training.pipeline import load_pipeline, stage2_rounds, stage_configs

        with pytest.raises(ValueError, match="needs --"):
            load_pipeline(recipe.removesuffix(".yaml"), {})
        # a placeholder named *bundle is the bundle folder an earlier round wrote
        values = {
            name: str(tmp_path) if name.endswith("bundle") else "data.tsv"
            for name, value in raw["placeholders"].items()
            if value is None
        }
        pipeline = load_pipeline(recipe.removesuffix(".yaml"), values)
        first, second = stage_configs(pipeline)
        if first is None:  # the pipeline continues a bundle instead of running stage 1
            assert pipeline.bundle_path().is_dir() and second.script.adapter_path == str(pipeline.bundle_path())
        else:
            assert first.script.sources and second.model.model_name_or_path == first.training.output_dir
        assert second.model.use_peft and second.model.lora_r > 0
        rounds = stage2_rounds(pipeline)
        assert rounds[0].training.output_dir == second.training.output_dir
        assert len(rounds) == 1 + bool(raw.get("stage2b"))
        for later in rounds[1:]:
            assert later.script.sources and later.model.model_name_or_path == second.model.model_name_or_path
            assert later.script.adapter_path == str(Path(second.training.output_dir) / "adapter")
            assert later.script.adapter_path != later.training.output_dir
        return
    stage = stage1 if "stage1" in recipe else stage2
    script, training, model = stage.parse(["--config", recipe.removesuffix(".yaml")])
    assert script.sources and training.output_dir and training.lr_scheduler_type == "cosine_warmup_with_min_lr"
    assert training.lr_scheduler_kwargs["min_lr"] == pytest.approx(training.learning_rate / 10)
    assert training.lr_scheduler_kwargs["warmup_lr_rate"] == pytest.approx(0.01)
    if stage is stage2:
        assert model.use_peft and model.lora_r > 0
        assert training.learning_rate == pytest.approx(5e-5 if "tiny" not in recipe else 1e-2)
    assert raw["output_dir"] == training.output_dir


def test_shipped_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from transformers.models.llama import modeling_llama

    configs = {path.stem: load_config_from_file(str(path)) for path in ACCELERATE_DIR.glob("*.yaml")}
    assert set(configs) == {"cpu_2proc", "ddp_bf16", "deepspeed_zero2", "deepspeed_zero3", "fsdp_bf16"}
    cpu = configs.pop("cpu_2proc")  # torchrun's launcher; the entry points use gloo without a GPU
    assert cpu.distributed_type == DistributedType.MULTI_GPU and cpu.num_processes == 2
    assert cpu.mixed_precision == "no" and cpu.num_machines == 1
    for name, config in configs.items():  # the GPU ones
        assert config.mixed_precision == "bf16", name
        assert config.num_machines == 1 and config.num_processes > 1 and not config.use_cpu, name
    assert configs["ddp_bf16"].distributed_type == DistributedType.MULTI_GPU
    for stage in (2, 3):
        config = configs[f"deepspeed_zero{stage}"]
        assert config.distributed_type == DistributedType.DEEPSPEED
        deepspeed = config.deepspeed_config
        assert deepspeed["zero_stage"] == stage
        assert deepspeed["gradient_accumulation_steps"] == "auto"  # taken from the recipe through the Trainer
        assert deepspeed["gradient_clipping"] == 1.0  # the Trainer's max_grad_norm
        assert deepspeed["offload_optimizer_device"] == deepspeed["offload_param_device"] == "none"
    assert configs["deepspeed_zero3"].deepspeed_config["zero3_init_flag"] is True
    assert configs["deepspeed_zero3"].deepspeed_config["zero3_save_16bit_model"] is True  # a loadable final model
    fsdp = configs["fsdp_bf16"]
    assert fsdp.distributed_type == DistributedType.FSDP
    settings = fsdp.fsdp_config
    assert settings["fsdp_version"] == 2 and settings["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert settings["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert isinstance(modeling_llama.LlamaDecoderLayer, type)  # the class LLaMA-2-7B's layers have
    assert settings["fsdp_offload_params"] is False and settings["fsdp_reshard_after_forward"] is True
    assert settings["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    # FSDP's own activation checkpointing stays off: the recipes turn on the Trainer's (it refuses both at once)
    assert settings["fsdp_activation_checkpointing"] is False
    for recipe in ("llama2_7b_generalist", "galactica_1.3b_specialist"):
        for module in (stage1, stage2):
            _, args, model = module.parse(["--config", f"{recipe}_{module.__name__.rsplit('.', 1)[-1]}"])
            assert args.bf16 and args.activation_checkpointing and model.dtype == "bfloat16", recipe
            assert not (args.activation_checkpointing_kwargs or {}).get("use_reentrant")  # transformers' default


# --- stage 1 ----------------------------------------------------------------------------------------------------


STAGE1_STEPS, STAGE1_WARMUP, STAGE1_PEAK, STAGE1_MIN = 30, 5, 1e-2, 1e-3


@pytest.fixture(scope="module")
def stage1_run(init_dir, workdir, toy_pairs) -> Path:
    config = stage_arguments(
        "stage1",
        common(
            workdir,
            toy_pairs,
            output_dir=str(workdir / "stage1"),
            model_name_or_path=str(init_dir),
            max_steps=STAGE1_STEPS,
            warmup_steps=STAGE1_WARMUP,
            logging_steps=1,
            **schedule(STAGE1_PEAK, STAGE1_MIN),
        ),
    )
    return stage1.main(*config, log=lambda *a: None)


def test_stage1_trains_graph_modules_only_and_loss_falls(stage1_run, init_dir):
    output = stage1_run
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
    # full-batch steps on a fixed set: with the LLM frozen the loss falls (checked every 5 steps: it may wobble
    # from one step to the next)
    history = _log_history(output)
    losses = [entry["loss"] for entry in history if "loss" in entry and (entry["step"] == 1 or entry["step"] % 5 == 0)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.01, losses
    assert state is None or state["global_step"] == 30


def paper_learning_rate(step: int, peak: float, start: float, minimum: float, warmup: int, total: int) -> float:
    """The paper's schedule in closed form: linear from `start` to `peak` over `warmup` steps, cosine to `minimum`."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    return minimum + (peak - minimum) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def scheduled_learning_rate(step: int, peak: float, start: float, minimum: float, warmup: int, total: int) -> float:
    """transformers' `cosine_warmup_with_min_lr` (`llamo.training.config.PAPER_SCHEDULE`): the paper's closed form
    with the warm-up reaching the peak one step earlier and the cosine decay one step ahead."""
    if step < warmup:
        return start + (peak - start) * step / (warmup - 1)
    return paper_learning_rate(step + 1, peak, start, minimum, warmup, total)


def test_logged_learning_rates_follow_warmup_then_cosine(stage1_run):
    logged = {entry["step"]: entry["learning_rate"] for entry in _log_history(stage1_run) if "learning_rate" in entry}
    assert sorted(logged) == list(range(1, STAGE1_STEPS + 1))
    for step, rate in logged.items():  # the rate logged at step N is the one step N used: schedule position N - 1
        expected = scheduled_learning_rate(step - 1, STAGE1_PEAK, 1e-6, STAGE1_MIN, STAGE1_WARMUP, STAGE1_STEPS)
        assert rate == pytest.approx(expected, rel=1e-6), step
        paper = paper_learning_rate(step - 1, STAGE1_PEAK, 1e-6, STAGE1_MIN, STAGE1_WARMUP, STAGE1_STEPS)
        assert abs(rate - paper) <= STAGE1_PEAK / (STAGE1_WARMUP - 1) * 1.0001, step  # the stated difference
    top = STAGE1_WARMUP  # the peak is reached at schedule position warmup - 1
    assert logged[1] == pytest.approx(1e-6) and logged[top] == pytest.approx(STAGE1_PEAK)
    assert all(logged[s] < logged[s + 1] for s in range(1, top))
    assert all(logged[s] > logged[s + 1] for s in range(top, STAGE1_STEPS))
    assert logged[STAGE1_STEPS] == pytest.approx(STAGE1_MIN)  # the last step trains at exactly the minimum


def test_paper_defaults():
    source = [{"type": "chebi20", "path": "x.tsv"}]
    first = stage_arguments("stage1", {"output_dir": "a", "sources": source})
    second = stage_arguments("stage2", {"output_dir": "b", "sources": source})
    for (_, args, _), (peak, minimum, epochs) in ((first, (1e-4, 1e-5, 1)), (second, (5e-5, 5e-6, 3))):
        assert args.learning_rate == peak and args.num_train_epochs == epochs
        assert args.lr_scheduler_type == "cosine_warmup_with_min_lr"
        assert args.lr_scheduler_kwargs == {"min_lr": minimum, "warmup_lr_rate": 0.01}  # warm-up from peak / 100
        assert args.warmup_steps == 1000 and args.weight_decay == 0.05 and args.max_length == 512
        # the optimiser the Trainer builds from them: AdamW with that weight decay
        assert args.optim == "adamw_torch" and not args.bf16 and not args.activation_checkpointing
    model = second.model
    assert model.use_peft and (model.lora_r, model.lora_alpha, model.lora_dropout) == (8, 32, 0.05)
    assert model.lora_target_modules == ["q_proj", "v_proj"] and model.lora_modules_to_save == ["graph_projector"]
    assert not first.model.use_peft


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: [1,\n", r"line 2, column 1: not valid YAML"),
        ("- a\n- b\n", r"must hold a YAML mapping of settings, not a list"),
        ("stage2: {}\n", r"a pipeline recipe needs work_dir, stage1$"),
        ("work_dir: w\nstage1:\nstage2: {}\n", r"stage1 must be a mapping of settings"),
        ("work_dir: w\nstage1: {}\nstage2: {}\nstgae2b: {}\n", r"unknown pipeline keys stgae2b \(known: work_dir,"),
    ],
)
def test_malformed_recipes_are_refused_naming_the_problem(tmp_path, text, message):
    from llamo.training.pipeline import load_pipeline

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_pipeline(str(recipe), {})
    if "pipeline" not in message and "stage1" not in message:
        with pytest.raises(ValueError, match=message):
            parse_stage_arguments("stage2", ["--config", str(recipe)])


def test_recipe_values_are_read_as_trl_reads_a_config_file(tmp_path):
    source = [{"type": "chebi20", "path": "x.tsv"}]
    recipe = yaml.safe_load("learning_rate: 1e-4\nmax_steps: '12'\nneighbour_share: '0.25'")
    assert recipe["learning_rate"] == "1e-4"  # YAML 1.1 reads an exponent without a dot as a string
    script, training, _ = stage_arguments("stage2", {"output_dir": "b", "sources": source, **recipe})
    assert (training.learning_rate, training.max_steps, script.neighbour_share) == (1e-4, 12, 0.25)
    with pytest.raises(ValueError, match=r"^Recipe key max_steps: invalid int value: 'ten'$"):
        stage_arguments("stage2", {"output_dir": "b", "sources": source, "max_steps": "ten"})
    with pytest.raises(ValueError, match=r"^Unknown recipe keys: leaning_rate, bogus$"):
        stage_arguments("stage2", {"output_dir": "b", "sources": source, "leaning_rate": 1e-4, "bogus": 1})
    # a dict option from the recipe as a mapping, from the command line as JSON (as TrainingArguments reads its dicts)
    twins = {"neighbour_near_twin": {"description": 0.85}}
    assert stage_arguments("stage2", {"output_dir": "b", "sources": source, **twins}).script.neighbour_near_twin == {
        "description": 0.85
    }
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({"output_dir": "b", "sources": source}))
    flag = ["--config", str(recipe_file), "--neighbour_near_twin"]
    assert parse_stage_arguments("stage2", [*flag, '{"description": 0.85}']).script.neighbour_near_twin == {
        "description": 0.85
    }
    assert parse_stage_arguments("stage2", flag[:2]).script.neighbour_near_twin == {}
    with pytest.raises(ValueError, match=r"neighbour_near_twin must map tasks to similarities in \[0, 1\], got 0.85"):
        parse_stage_arguments("stage2", [*flag, "0.85"])


def _log_history(output_dir: Path) -> list[dict]:
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"))
    if states:
        return json.loads(states[-1].read_text())["log_history"]
    return json.loads((output_dir / "training_summary.json").read_text()).get("log_history", [])


# --- stage 2 ----------------------------------------------------------------------------------------------------


def overfit_arguments(init_dir: Path, workdir: Path, toy_pairs: Path, output: Path):
    """220 steps of LoRA r 16 on every linear layer of the LM, the projector trained: enough to learn the pairs."""
    return stage_arguments(
        "stage2",
        common(
            workdir,
            toy_pairs,
            output_dir=str(output),
            model_name_or_path=str(init_dir),
            max_steps=220,
            warmup_steps=6,  # transformers' warm-up peaks at step 5 (of 0..5), as the closed form's 5 steps did
            save_steps=220,
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            lora_target_modules=["all-linear"],
            **schedule(1e-2, 1e-3),
        ),
    )


@pytest.fixture(scope="module")
def overfit_run(init_dir, workdir, toy_pairs) -> Path:
    return stage2.main(*overfit_arguments(init_dir, workdir, toy_pairs, workdir / "stage2"), log=lambda *a: None)


def test_stage2_overfits_from_the_graph_alone(overfit_run):
    merged = LlamoForConditionalGeneration.from_pretrained(overfit_run / "merged").eval()
    processor = LlamoProcessor.from_pretrained(overfit_run / "merged")
    inputs = molecule_inputs(processor, [smiles for smiles, _ in PAIRS])
    assert processor.prompt_smiles == "none" and "C" not in processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "x"}]}]
    ).split("<<SYS>>")[-1].replace("<graph>", "")
    with torch.no_grad():
        answers = processor.post_process_image_text_to_text(
            merged.generate(**inputs, max_new_tokens=16, do_sample=False)
        )
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


AUTO_CLASSES_WITHOUT_LLAMO = WITHOUT_LLAMO + textwrap.dedent(
    """
    import json, sys

    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    folder, smiles_list = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    question = {"type": "text", "text": "Describe this molecule."}
    conversations = [[{"role": "user", "content": [{"type": "molecule", "smiles": s}, question]}] for s in smiles_list]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    print(json.dumps({
        "model_module": type(model).__module__,
        "processor": type(processor).__name__,
        "tokens": output[:, inputs["input_ids"].shape[1]:].tolist(),
        "answers": processor.batch_decode(output, prompt_length=inputs["input_ids"].shape[1]),
    }))
    """
)


def test_merged_folder_loads_with_auto_classes_without_llamo(overfit_run, tmp_path):
    smiles_list = [smiles for smiles, _ in PAIRS]
    merged = LlamoForConditionalGeneration.from_pretrained(overfit_run / "merged").eval()
    processor = LlamoProcessor.from_pretrained(overfit_run / "merged")
    inputs = molecule_inputs(processor, smiles_list)
    with torch.no_grad():
        expected = merged.generate(**inputs, max_new_tokens=16, do_sample=False)[:, inputs["input_ids"].shape[1] :]

    env = subprocess_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    child = subprocess.run(
        [sys.executable, "-c", AUTO_CLASSES_WITHOUT_LLAMO, str(overfit_run / "merged"), json.dumps(smiles_list)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["model_module"].startswith("transformers_modules.")  # the folder's own code, not the package
    assert result["processor"] == "LlamoProcessor"
    assert result["tokens"] == expected.tolist()
    assert result["answers"] == [description for _, description in PAIRS]


def test_finished_run_is_not_trained_again(overfit_run, init_dir, workdir, toy_pairs):
    before = (overfit_run / "training_summary.json").read_text()
    config = overfit_arguments(init_dir, workdir, toy_pairs, overfit_run)
    assert stage2.main(*config, log=lambda *a: None) == overfit_run
    assert (overfit_run / "training_summary.json").read_text() == before


def test_second_round_continues_the_stage2_adapter(overfit_run, init_dir, workdir, toy_pairs):
    settings = common(workdir, toy_pairs, max_steps=3, warmup_steps=1, model_name_or_path=str(init_dir))
    settings.update(schedule(1e-3, 1e-4))
    with pytest.raises(FileNotFoundError, match="No stage-2 adapter to continue"):
        missing = {"output_dir": str(workdir / "stage2b-missing"), "adapter_path": str(workdir / "nowhere")}
        stage2.main(*stage_arguments("stage2", {**settings, **missing}), log=lambda *a: None)
    again = {"output_dir": str(workdir / "stage2b"), "adapter_path": str(overfit_run / "adapter")}
    output = stage2.main(*stage_arguments("stage2", {**settings, **again}), log=lambda *a: None)
    before = load_file(overfit_run / "adapter" / "adapter_model.safetensors")
    after = load_file(output / "adapter" / "adapter_model.safetensors")
    assert set(after) == set(before)  # the same LoRA (r=16, all-linear, not this config's defaults) and projector
    assert json.loads((output / "adapter" / "adapter_config.json").read_text())["r"] == 16
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert any("lora_" in name for name in moved) and any("graph_projector" in name for name in moved)
    for name in before:  # continued from the trained values: 3 small steps away, not a fresh initialisation
        assert torch.allclose(before[name], after[name], atol=0.05), name
    merged = LlamoForConditionalGeneration.from_pretrained(output / "merged").eval()
    processor = LlamoProcessor.from_pretrained(output / "merged")
    inputs = molecule_inputs(processor, [smiles for smiles, _ in PAIRS])
    with torch.no_grad():
        answers = processor.post_process_image_text_to_text(
            merged.generate(**inputs, max_new_tokens=16, do_sample=False)
        )
    assert sum(a == d for a, (_, d) in zip(answers, PAIRS, strict=True)) >= len(PAIRS) - 1


@pytest.fixture(scope="module")
def chained_bf16_run(stage1_run, workdir, toy_pairs):
    """Stage 2 started from the stage-1 output folder, with the 7B recipe's memory settings: the LLM in bfloat16,
    gradient checkpointing and bf16 autocast (on the CPU here). Returns the run folder and its trainer."""
    trainers = []

    class RecordingTrainer(training_common.LlamoSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    config = stage_arguments(
        "stage2",
        common(
            workdir,
            toy_pairs,
            output_dir=str(workdir / "stage2-from-stage1-bf16"),
            model_name_or_path=str(stage1_run),
            dtype="bfloat16",
            bf16=True,
            activation_checkpointing=True,
            max_steps=8,
            warmup_steps=2,
            logging_steps=1,
            lora_dropout=0.0,
            **schedule(1e-2, 1e-3),
        ),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_common, "LlamoSFTTrainer", RecordingTrainer)
        output = stage2.main(*config, log=lambda *a: None)
    return output, trainers[0]


def test_stage2_trains_with_the_7b_recipe_settings(chained_bf16_run, stage1_run):
    output, trainer = chained_bf16_run
    assert trainer.args.bf16 and trainer.args.activation_checkpointing
    base = trainer.model.get_base_model()
    assert base.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in base.model.language_model.layers)
    assert base.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert base.model.graph_projector.level_queries.dtype == torch.float32  # trained in float32 under autocast
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses), losses
    assert min(losses[-3:]) < losses[0], losses
    before = LlamoForConditionalGeneration.from_pretrained(stage1_run).state_dict()
    after = LlamoForConditionalGeneration.from_pretrained(output / "merged").state_dict()
    assert not torch.equal(after["model.graph_projector.level_queries"], before["model.graph_projector.level_queries"])
    adapter = adapter_weights(output)
    assert any(weights.abs().sum() > 0 for name, weights in adapter.items() if "lora_B" in name)


def test_stage2_starts_from_a_stage1_output_folder(chained_bf16_run, stage1_run, init_dir):
    output, _ = chained_bf16_run
    assert json.loads((output / "training_summary.json").read_text())["base_model"] == str(stage1_run)
    initial = LlamoForConditionalGeneration.from_pretrained(init_dir).state_dict()
    aligned = LlamoForConditionalGeneration.from_pretrained(stage1_run).state_dict()
    merged = LlamoForConditionalGeneration.from_pretrained(output / "merged").state_dict()
    encoder = [name for name in merged if name.startswith("model.graph_encoder.") and "num_batches" not in name]
    assert any(not torch.equal(aligned[name], initial[name]) for name in encoder)  # stage 1 trained the GIN
    for name in encoder:  # stage 2 kept the stage-1 GIN (frozen), not the initial one
        assert torch.equal(merged[name], aligned[name]), name
    embeddings = "model.language_model.embed_tokens.weight"
    assert torch.equal(merged[embeddings], aligned[embeddings].to(torch.bfloat16))
    assert (output / "adapter" / "adapter_config.json").is_file()
    adapter_config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(stage1_run)


def test_specialist_mode_keeps_one_task_of_a_mixture(workdir, toy_pairs, tmp_path):
    names = tmp_path / "iupac.csv"
    names.write_text("SMILES,iupac\nCCO,ethanol\nCC(=O)O,acetic acid\nCN,methanamine\n")
    settings = common(workdir, toy_pairs)
    settings["sources"] = [
        {"type": "conversations", "path": str(toy_pairs)},
        {"type": "iupac", "path": str(names), "weight": 2.0},
    ]
    quiet = {"log": lambda *a: None}
    settings["output_dir"] = "unused"
    mixture, _ = build_training_dataset(stage_arguments("stage2", settings), **quiet)
    assert Counter(mixture["task"]) == {"description": len(PAIRS), "iupac": 6}
    specialist = stage_arguments("stage2", {**settings, "mode": "specialist", "task": "iupac"})
    names_only, _ = build_training_dataset(specialist, **quiet)
    assert Counter(names_only["task"]) == {"iupac": 6}  # the source's weight still applies
    assert Counter(names_only["smiles"]) == {"CCO": 2, "CC(=O)O": 2, "CN": 2}
    describe = stage_arguments("stage2", {**settings, "mode": "specialist", "task": "description"})
    assert Counter(build_training_dataset(describe, **quiet)[0]["task"]) == {"description": len(PAIRS)}
    with pytest.raises(ValueError, match="needs `task`"):
        stage_arguments("stage2", {**settings, "mode": "specialist"})
    with pytest.raises(ValueError, match="specialist task 'property'"):
        build_training_dataset(stage_arguments("stage2", {**settings, "mode": "specialist", "task": "property"}))
    # without a conversations source, the sources' tasks are known before anything is read or featurized
    fixed = {**settings, "mode": "specialist", "task": "description", "sources": settings["sources"][1:]}
    with pytest.raises(ValueError, match=r"No source holds description rows \(they hold iupac\)"):
        stage_arguments("stage2", fixed)
    fixed["sources"] = [*fixed["sources"], {"type": "mol-instructions", "path": "unused", "task": "property"}]
    with pytest.raises(ValueError, match=r"\(they hold iupac, property\)"):
        stage_arguments("stage2", fixed)
    fixed["task"] = "iupac"
    assert stage_arguments("stage2", fixed).script.task == "iupac"


# --- resume and several processes -------------------------------------------------------------------------------


STAGE2_ONLY = ("lora_r", "lora_dropout", "lora_target_modules", "save_merged")


def write_recipe(
    path: Path, init_dir: Path, workdir: Path, toy_pairs: Path, stage: str = "stage2", **overrides
) -> Path:
    recipe = {
        "model_name_or_path": str(init_dir),
        "sources": [{"type": "conversations", "path": str(toy_pairs)}],
        "data_cache_dir": str(workdir / "cache"),
        **schedule(5e-3, 5e-4),
        "warmup_steps": 3,
        "logging_steps": 5,
        "lora_r": 8,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
        "disable_tqdm": True,
        "save_merged": False,
    }
    recipe.update(overrides)
    if stage == "stage1":
        recipe = {key: value for key, value in recipe.items() if key not in STAGE2_ONLY}
    path.write_text(yaml.safe_dump(recipe))
    return path


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def final_weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    """What a stage trains, as saved at its end: stage 1's whole model, stage 2's adapter (LoRA + projector)."""
    return load_file(run / "model.safetensors") if stage == "stage1" else adapter_weights(run)


def newest_complete_checkpoint(run: Path) -> Path:
    steps = {int(p.name.split("-")[1]): p for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit()}
    return steps[max(step for step, folder in steps.items() if checkpoint_is_complete(folder))]


@pytest.mark.parametrize(("stage", "max_steps", "kill_after"), [("stage1", 30, 10), ("stage2", 60, 15)])
def test_resume_after_sigkill_gives_the_uninterrupted_weights(
    stage, max_steps, kill_after, init_dir, workdir, toy_pairs
):
    recipe = write_recipe(
        workdir / f"resume-{stage}.yaml",
        init_dir,
        workdir,
        toy_pairs,
        stage,
        max_steps=max_steps,
        save_steps=5,
        per_device_train_batch_size=4,
    )
    llamo = shutil.which("llamo")
    env = subprocess_env()

    def command(output):
        return [llamo, "train", stage, "--config", str(recipe), "--output_dir", str(output)]

    straight, interrupted = workdir / f"straight-{stage}", workdir / f"interrupted-{stage}"
    done = subprocess.run(command(straight), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    process = subprocess.Popen(
        command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (interrupted / f"checkpoint-{kill_after}" / "trainer_state.json").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "training_summary.json").exists(), "the run finished before the kill"
    newest = newest_complete_checkpoint(interrupted)
    assert kill_after <= int(newest.name.split("-")[1]) < max_steps

    again = subprocess.run(command(interrupted), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((interrupted / "training_summary.json").read_text())
    # it continued from the newest checkpoint saved before the kill (no finished step lost), and ran to the end
    assert summary["resumed_from"] == newest.name and summary["global_step"] == max_steps
    assert f"resuming {interrupted} from {newest.name}" in again.stdout
    expected, got = final_weights(straight, stage), final_weights(interrupted, stage)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    if stage == "stage1":
        initial = load_file(init_dir / "model.safetensors")
        assert not torch.equal(
            got["model.graph_projector.level_queries"], initial["model.graph_projector.level_queries"]
        )


FULL_DISK_ERRORS = {  # a full disk as Python and as torch's zip writer word it
    "errno": OSError(errno.ENOSPC, "No space left on device"),
    "torch": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
}


def full_disk_recipe(name: str, init_dir: Path, workdir: Path, toy_pairs: Path) -> Path:
    return write_recipe(
        workdir / f"{name}.yaml",
        init_dir,
        workdir,
        toy_pairs,
        "stage1",
        max_steps=4,
        save_steps=2,
        per_device_train_batch_size=4,
    )


def train_stage1(recipe: Path, output: Path) -> int:
    from llamo.cli import main

    return main(["train", "stage1", "--config", str(recipe), "--output_dir", str(output)])


@pytest.mark.parametrize("wording", sorted(FULL_DISK_ERRORS))
def test_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_the_run_resumes(
    wording, init_dir, workdir, toy_pairs, monkeypatch, capsys
):
    from llamo.storage import EXIT_DISK_FULL

    recipe, output = full_disk_recipe(f"full-disk-{wording}", init_dir, workdir, toy_pairs), workdir / f"full-{wording}"
    real_save = torch.save

    def save_until_checkpoint_4(obj, path, *args, **kwargs):  # the optimizer of checkpoint-4 no longer fits
        if "checkpoint-4" in str(path):
            raise FULL_DISK_ERRORS[wording]
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_checkpoint_4)
    assert train_stage1(recipe, output) == EXIT_DISK_FULL
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if line.startswith("llamo train: error:"))
    assert f"no space left on the disk of {output} while writing checkpoint-4" in message
    assert "needs about" in message and "checkpoint-2, is kept" in message and "Traceback" not in err
    assert not (output / "checkpoint-4").exists() and checkpoint_is_complete(output / "checkpoint-2")
    assert last_complete_checkpoint(output).name == "checkpoint-2"

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert train_stage1(recipe, output) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4


def test_full_disk_wordings_are_recognised():
    from llamo.storage import is_disk_full

    for error in FULL_DISK_ERRORS.values():
        assert is_disk_full(error)
    assert is_disk_full(RuntimeError("basic_ios::clear: iostream error"))
    assert is_disk_full(
        RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )
    )
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("saving failed") from error
    except RuntimeError as chained:
        assert is_disk_full(chained)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("CUDA out of memory"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real tmpfs of 1 MiB (root and mount permission needed), grown later with `remount`; unmounted afterwards."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    yield folder, resize
    subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk_keeps_the_last_checkpoint_and_the_run_resumes_once_space_is_freed(
    small_tmpfs, init_dir, workdir, toy_pairs, capsys
):
    from llamo.storage import EXIT_DISK_FULL, folder_bytes

    folder, resize = small_tmpfs
    recipe, output = full_disk_recipe("real-full-disk", init_dir, workdir, toy_pairs), folder / "run"
    checkpoint = folder_bytes(init_dir) * 2  # model + AdamW moments of the trainable part, at most
    resize(f"{int(checkpoint * 1.5) // 1024}k")  # room for checkpoint-2, not for checkpoint-4 beside it
    assert train_stage1(recipe, output) == EXIT_DISK_FULL
    err = capsys.readouterr().err
    assert f"no space left on the disk of {output} while writing checkpoint-4" in err and "Traceback" not in err
    assert not (output / "checkpoint-4").exists() and checkpoint_is_complete(output / "checkpoint-2")
    resize(f"{checkpoint * 4 // 1024}k")
    assert train_stage1(recipe, output) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4


def test_interrupt_callback_saves_and_stops_at_the_end_of_the_step():
    from transformers import TrainerControl, TrainerState

    messages = []
    interrupt = GracefulInterrupt(log=messages.append)
    state, control = TrainerState(global_step=7, max_steps=20), TrainerControl()
    previous = signal.getsignal(signal.SIGINT)
    with interrupt:
        interrupt.on_step_end(None, state, control)
        assert not (control.should_save or control.should_training_stop)
        signal.raise_signal(signal.SIGINT)  # handled: no KeyboardInterrupt in the middle of a step
        assert "SIGINT received" in messages[0] and not control.should_save
        interrupt.on_step_end(None, state, control)
    assert control.should_save and control.should_training_stop and interrupt.stopped_at == 7
    assert signal.getsignal(signal.SIGINT) is previous
    with pytest.raises(SystemExit) as stopped:
        interrupt.exit_if_interrupted(state)
    assert stopped.value.code == 128 + signal.SIGINT and "checkpoint-7 saved" in messages[-1]
    GracefulInterrupt().exit_if_interrupted(state)  # no signal: nothing happens


def test_sigterm_saves_a_checkpoint_at_the_step_end_and_the_run_resumes(init_dir, workdir, toy_pairs):
    recipe = write_recipe(
        workdir / "sigterm.yaml",
        init_dir,
        workdir,
        toy_pairs,
        "stage1",
        max_steps=40,
        save_steps=1000,
        logging_steps=1,
        per_device_train_batch_size=4,
    )
    output = workdir / "sigterm-stage1"
    command = [shutil.which("llamo"), "train", "stage1", "--config", str(recipe), "--output_dir", str(output)]
    env = {**subprocess_env(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:  # the Trainer prints one log line per step
        lines.append(line)
        if "'loss'" in line:
            break
    assert process.poll() is None, "".join(lines)[-3000:]
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, "".join([*lines, rest])[-3000:]
    assert "SIGTERM received" in rest
    checkpoints = sorted(output.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_is_complete(checkpoints[0])  # save_steps=1000: only the one it made
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 1 <= stopped_at < 40 and f"stopped at step {stopped_at}" in rest
    assert not (output / "training_summary.json").exists() and not (output / "model.safetensors").exists()

    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["resumed_from"] == f"checkpoint-{stopped_at}" and summary["global_step"] == 40


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
            "--main_process_port",
            str(free_port()),
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

    settings = common(workdir, toy_pairs, output_dir=str(workdir / "unused"))
    config = stage_arguments("stage1", {**settings, "train_sampling_strategy": "group_by_length"})
    dataset, _ = build_training_dataset(config, log=lambda *a: None)
    lengths = dict(zip(dataset["smiles"], dataset["length"], strict=True))
    assert lengths["CN1C=NC2=C1C(=O)N(C(=O)N2C)C"] > lengths["CN"] > 0
    random_order = stage_arguments("stage1", settings)
    assert "length" not in build_training_dataset(random_order, log=lambda *a: None)[0].column_names


# --- the GPU benchmark ------------------------------------------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_benchmark_refuses_to_run_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_training_gpu.py"), "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert done.returncode == 1 and not done.stdout
    assert "needs CUDA, but torch.cuda.is_available() is False" in done.stderr


def test_gpu_benchmark_steps_at_a_tiny_shape_on_the_cpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_training_gpu as bench

    tiny = {**bench.LLAMA2_7B, "vocab_size": 400, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    tiny.update(num_attention_heads=4, num_key_value_heads=4)
    config = bench.GpuBenchConfig(batch_size=2, seq_len=64, steps=2, warmup_steps=1)
    result = bench.measure(config, torch.device("cpu"), tiny)
    assert result["step_time_s_median"] > 0 and result["tokens_per_s"] == pytest.approx(
        128 / result["step_time_s_median"], rel=0.01
    )
    # LoRA r 8 on q and v of 2 layers: 2 x 2 x (64 x 8 + 8 x 64) weights; the base (LM linears + head) is frozen
    assert result["lora_parameters"] == 2 * 2 * (64 * 8 + 8 * 64)
    base = 2 * (4 * 64 * 64 + 3 * 64 * 128) + 64 * 402
    assert result["frozen_matmul_parameters"] == base
    flops = 4 * (base + result["lora_parameters"]) + 2 * result["lora_parameters"] + 12 * 2 * 64 * 64
    assert result["model_flops_per_token"] == flops
    assert result["hardware_flops_per_token"] > flops  # gradient checkpointing runs the forward again


def test_gpu_training_script_keeps_the_bundles_new_files_and_the_run(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_default_model_gpu as script

    bundle, stage2 = tmp_path / "bundle", tmp_path / "stage2"
    bundle.mkdir()
    stage2.mkdir()
    (bundle / "adapter_model.safetensors").write_bytes(b"weights")
    (bundle / "bundle.json").write_text("{}")
    (bundle / "tokenizer.json").write_text("{}")  # unchanged by stage 2: not kept
    (stage2 / "training_summary.json").write_text('{"global_step": 3}')
    (stage2 / "llamo_run_config.json").write_text("{}")
    result = {"bundle": str(bundle), "stage2_dir": str(stage2), "global_step": 3}
    script.keep_results(result, tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == b"weights"
    with tarfile.open(tmp_path / "out" / "bundle_files.tar") as archive:
        names = sorted(archive.getnames())
    assert names == ["bundle.json", "stage2/llamo_run_config.json", "stage2/training_summary.json"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["global_step"] == 3


def test_gpu_training_script_takes_the_time_budget_callbacks_defaults(monkeypatch):
    from llamo.training.budget import TimeBudgetCallback

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_default_model_gpu as script

    seen = []

    def stop(config, callbacks):
        seen.append(callbacks[0])
        raise InterruptedError  # the training itself is not what is tested

    monkeypatch.setattr(script, "load_pipeline", lambda recipe, placeholders: None)
    monkeypatch.setattr(script, "run", stop)
    for probe, skip in ((None, None), (7, 3)):
        with pytest.raises(InterruptedError):
            script.train_within("recipe", {}, 60.0, probe, skip)
    default = TimeBudgetCallback(60.0)
    assert (seen[0].probe, seen[0].skip) == (default.probe, default.skip)
    assert (seen[1].probe, seen[1].skip) == (7, 3)


def test_pipeline_runs_every_round_and_bundles_the_last(tmp_path, monkeypatch):
    from llamo import default_model
    from llamo.training import pipeline

    calls = []
    monkeypatch.setattr(stage1, "main", lambda *args, log: calls.append(("stage1", args[1].output_dir)))
    monkeypatch.setattr(stage2, "main", lambda *args, log, callbacks: calls.append(("stage2", args[1].output_dir)))
    monkeypatch.setattr(default_model, "export_bundle", lambda *args, **kwargs: calls.append(("bundle", args[:3])))
    source = [{"type": "chebi20", "path": "data.tsv"}]
    config = pipeline.PipelineConfig(
        work_dir=str(tmp_path),
        stage1={"sources": source},
        stage2={"sources": source},
        stage2b={"sources": source, "learning_rate": 1e-5},
        bundle={"output": str(tmp_path / "bundle")},
    )
    pipeline.run(config, log=lambda *a: None)
    first, second, later = (str(tmp_path / name) for name in ("stage1", "stage2", "stage2b"))
    assert calls == [
        ("stage1", first),
        ("stage2", second),
        ("stage2", later),
        ("bundle", (first, later, config.bundle["output"])),
    ]


def test_gpu_round_carries_what_the_machine_lacks(tmp_path, monkeypatch):
    from importlib import metadata

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import prepare_gpu_round as prepare

    here = {name: metadata.version(name) for name in ("transformers", "huggingface-hub", "trl", "torch", "rdkit")}
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("transformers==5.17.0\nhuggingface-hub==1.33.0\ntorch==2.11.0\nTRL==" + here["trl"] + "\n")
    roots = ["transformers>=5.24", "trl", "rdkit"]  # as llamo requires them
    wanted = prepare.missing_wheels(roots, prepare.device_packages(freeze))
    # transformers is too old there and needs a newer huggingface_hub; TRL fits (any case of its name); torch never
    # travels (the machine's CUDA build); RDKit is missing and so are its own requirements
    assert wanted["transformers"] == here["transformers"] and wanted["huggingface-hub"] == here["huggingface-hub"]
    assert "trl" not in wanted and "torch" not in wanted
    assert wanted["rdkit"] == here["rdkit"] and "numpy" in wanted
    everything = "\n".join(f"{name}=={metadata.version(name)}" for name in (*wanted, "numpy", "trl", "torch"))
    freeze.write_text(everything)
    assert prepare.missing_wheels(roots, prepare.device_packages(freeze)) == {}


def test_gpu_round_pieces_join_to_the_files_with_their_times(tmp_path, monkeypatch):
    import random
    import shutil

    if shutil.which("xz") is None:
        pytest.skip("the GPU round packs with GNU tar and xz: apt-get install -y xz-utils")

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import prepare_gpu_round as prepare

    monkeypatch.chdir(tmp_path)
    data = prepare.ROUND / "data"
    data.mkdir(parents=True)
    content = random.Random(0).randbytes(20_000)  # incompressible: the payload is xz-compressed
    (data / "chebi20.txt").write_bytes(content)
    os.utime(data / "chebi20.txt", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    payload = prepare.ROUND / "payload.tar"
    prepare.archive([data / "chebi20.txt"], payload)
    pieces = -(-payload.stat().st_size // 4096)
    assert pieces > 1 and prepare.cut(payload, 4096) == pieces
    payload.unlink()
    shutil.rmtree(data)
    script = str(BENCHMARKS / "gpu_round_device.sh")
    done = subprocess.run(["bash", script, "unpack", f"{pieces:02d}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (data / "chebi20.txt").read_bytes() == content
    assert (data / "chebi20.txt").stat().st_mtime_ns == 1_700_000_000_123_456_789  # the mixture key reads it
    (prepare.ROUND / "call02" / "part").write_bytes(b"damaged")
    done = subprocess.run(["bash", script, "piece", "02"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr
