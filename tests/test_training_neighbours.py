"""Training with in-context neighbours: each chosen row gets similar other training molecules, never itself, and only
its own answer is a target."""

import json
import time
from pathlib import Path

import pytest
import torch

from llamo.builder import build_llamo, save_llamo
from llamo.processing.collators import IGNORE_INDEX, LlamoDataCollator
from llamo.processing.schema import make_record
from llamo.training import stage2
from llamo.training.config import StageArguments, stage_arguments
from llamo.training.data import build_training_dataset

PAIRS = [
    ("CCO", "a primary alcohol"),
    ("CCCO", "a longer primary alcohol"),
    ("CCCCO", "an even longer primary alcohol"),
    ("CC(=O)O", "a carboxylic acid"),
    ("CCC(=O)O", "a longer carboxylic acid"),
    ("c1ccccc1", "an aromatic hydrocarbon"),
    ("Cc1ccccc1", "a methylated aromatic hydrocarbon"),
    ("CN", "a primary amine"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("neighbours")


@pytest.fixture(scope="module")
def config(tiny_llm_dir, workdir) -> StageArguments:
    pairs = workdir / "pairs.jsonl"
    with open(pairs, "w", encoding="utf-8") as handle:
        for index, (smiles, description) in enumerate(PAIRS):
            messages = [
                {"role": "user", "content": "Describe this molecule."},
                {"role": "assistant", "content": description},
            ]
            handle.write(json.dumps(make_record(f"n:{index}", smiles, messages, "description", "toy")) + "\n")
    torch.manual_seed(0)
    model, processor = build_llamo(
        str(tiny_llm_dir),
        graph_config={"hidden_size": 16, "num_layers": 2},
        projector_config={"num_heads": 2, "mlp_depth": 2},
        chat_template="llama2",
    )
    init = save_llamo(model, processor, workdir / "init")
    return stage_arguments(
        "stage2",
        {
            "output_dir": str(workdir / "stage2"),
            "model_name_or_path": str(init),
            "sources": [{"type": "conversations", "path": str(pairs)}],
            "data_cache_dir": str(workdir / "cache"),
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "warmup_steps": 1,
            "save_steps": 1000,
            "disable_tqdm": True,
            "neighbours": 2,
            "neighbour_share": 1.0,
        },
    )


def test_every_row_gets_other_molecules_as_neighbours(config):
    dataset, _ = build_training_dataset(config, log=lambda *a: None)
    descriptions = dict(PAIRS)
    for row in dataset:
        neighbours = json.loads(row["neighbours"])
        assert len(neighbours) == 2
        own = row["messages"][1]["content"]
        assert own not in [n["answer"] for n in neighbours]
        assert all(descriptions.get(n["smiles"]) == n["answer"] for n in neighbours)


def test_a_near_twin_is_given_alone_as_at_inference(config):
    import dataclasses

    from llamo.processing.index import MoleculeIndex

    plain, _ = build_training_dataset(config, log=lambda *a: None)
    index = MoleculeIndex.from_records(list(plain), "description", max_atoms=None, progress=False)[0]
    nearest = {row["id"]: index.neighbours(row["smiles"], k=1, exclude=[row["inchikey"]])[0] for row in plain}
    threshold = sorted(n.similarity for n in nearest.values())[len(nearest) // 2]
    script = dataclasses.replace(config.script, neighbour_near_twin={"description": threshold})
    ruled, _ = build_training_dataset(StageArguments(script, config.training, config.model), log=lambda *a: None)
    alone = 0
    for before, after in zip(plain, ruled, strict=True):
        was, now = json.loads(before["neighbours"]), json.loads(after["neighbours"])
        twin = nearest[before["id"]].similarity >= threshold
        assert now == (was[:1] if twin else was) and was[0]["smiles"] == nearest[before["id"]].smiles
        alone += twin
    assert 0 < alone < len(plain)
    with pytest.raises(ValueError, match="neighbour_near_twin must map tasks to similarities"):
        dataclasses.replace(config.script, neighbour_near_twin={"description": 1.5})


def test_only_the_rows_own_answer_is_a_target(config, tiny_llamo):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(config.model.model_name_or_path)
    dataset, _ = build_training_dataset(config, log=lambda *a: None)
    rows = list(dataset)[:3]
    batch = LlamoDataCollator(processor)(rows)
    assert batch["atom_mask"].any(-1).sum(-1).tolist() == [3, 3, 3]  # two neighbours and the query
    assert ((batch["input_ids"] == processor.graph_token_id).sum(-1) == 3 * processor.num_graph_tokens).all()
    for ids, labels, row in zip(batch["input_ids"], batch["labels"], rows, strict=True):
        kept = labels != IGNORE_INDEX
        target = processor.tokenizer.decode(ids[kept])
        assert target.strip() == row["messages"][1]["content"] + processor.tokenizer.eos_token
        prompt = processor.tokenizer.decode(ids[~kept])
        for neighbour in json.loads(row["neighbours"]):
            assert neighbour["answer"] in prompt


def test_a_stage2_run_with_neighbours_trains_and_saves(config):
    output = stage2.main(*config, log=lambda *a: None)
    assert (output / "merged" / "config.json").is_file()


def test_a_row_too_long_for_its_neighbours_drops_them(config):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(config.model.model_name_or_path)
    dataset, _ = build_training_dataset(config, log=lambda *a: None)
    row = dict(next(iter(dataset)))
    full = LlamoDataCollator(processor, max_length=None)([row])
    length = int(full["attention_mask"].sum())
    cut = LlamoDataCollator(processor, max_length=length - 1)([row])
    assert cut["atom_mask"].any(-1).sum().item() == 2  # one neighbour left, and the query
    bare = LlamoDataCollator(processor, max_length=None)([{**row, "neighbours": "[]"}])
    alone = LlamoDataCollator(processor, max_length=int(bare["attention_mask"].sum()) + 2)([row])
    assert alone["atom_mask"].any(-1).sum().item() == 1
    kept = alone["labels"][0] != IGNORE_INDEX
    assert processor.tokenizer.decode(alone["input_ids"][0][kept]).strip().startswith(row["messages"][1]["content"])


def test_the_mixture_is_cached_by_its_settings(config, monkeypatch):
    import dataclasses

    from llamo.processing import index
    from llamo.training import data

    first, _ = build_training_dataset(config, log=lambda *a: None)

    def no_search(*args, **kwargs):
        raise AssertionError("the neighbour search ran again")

    monkeypatch.setattr(index, "attach_neighbours", no_search)
    again, _ = build_training_dataset(config, log=lambda *a: None)
    assert again["id"] == first["id"] and again["neighbours"] == first["neighbours"]
    other = StageArguments(dataclasses.replace(config.script, neighbour_share=0.5), config.training, config.model)
    with pytest.raises(AssertionError, match="neighbour search ran again"):
        build_training_dataset(other, log=lambda *a: None)
    monkeypatch.setattr(data, "MIXTURE_VERSION", data.MIXTURE_VERSION + "-next")
    with pytest.raises(AssertionError, match="neighbour search ran again"):
        build_training_dataset(config, log=lambda *a: None)


def test_a_time_budget_fits_max_steps_and_the_schedule(config, tmp_path):
    import dataclasses

    from llamo.training.budget import TimeBudgetCallback

    training = dataclasses.replace(
        config.training, output_dir=str(tmp_path / "budget"), max_steps=6, warmup_steps=3, logging_steps=1
    )
    budget = TimeBudgetCallback(seconds=1e-3, probe=1, skip=1)
    output = stage2.main(config.script, training, config.model, log=lambda *a: None, callbacks=[budget])
    summary = json.loads((output / "training_summary.json").read_text())
    assert budget.fitted_steps == 3 and budget.step_seconds > 0  # no time left after the probe: one more step
    assert summary["global_step"] == 3
    assert [entry["step"] for entry in summary["log_history"] if "loss" in entry] == [1, 2, 3]  # logging_steps 1


def test_a_time_budget_without_skipped_steps_times_from_the_start():
    from transformers import TrainerState

    from llamo.training.budget import TimeBudgetCallback

    budget, state = TimeBudgetCallback(seconds=1e-3, probe=1, skip=0), TrainerState(global_step=0, max_steps=6)
    budget.on_train_begin(None, state, None)
    time.sleep(0.01)  # the first step, longer than the whole budget
    state.global_step = 1
    budget.on_step_end(None, state, None)
    assert budget.fitted_steps == state.max_steps == 2 and budget.step_seconds >= 0.01  # no time left: one more step


def test_set_total_steps_gives_a_schedule_a_new_total():
    from transformers import get_scheduler

    from llamo.training.budget import set_total_steps

    def schedule(total):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        kwargs = {"min_lr": 0.1, "warmup_lr_rate": 0.01}
        return get_scheduler("cosine_warmup_with_min_lr", optimizer, 5, total, scheduler_specific_kwargs=kwargs)

    fitted, reference = schedule(100), schedule(40)
    assert set_total_steps(fitted, 40)
    assert [fitted.lr_lambdas[0](step) for step in range(45)] == [reference.lr_lambdas[0](step) for step in range(45)]
    constant = get_scheduler("constant", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    assert not set_total_steps(constant, 40)
