"""Several molecules per sequence (and none): processor layout, scatter into each molecule's own run, generation."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

import llamo

from .conftest import SMILES, molecule_messages

OLD_FOLDER = Path(__file__).parent / "fixtures" / "one_molecule_folder_v0"


@pytest.fixture(scope="module")
def model(tiny_llamo):
    return tiny_llamo[0]


@pytest.fixture(scope="module")
def processor(tiny_llamo):
    return tiny_llamo[1]


def user_turn(*blocks) -> list[dict]:
    content = [
        {"type": "molecule", "smiles": b} if b in SMILES.values() else {"type": "text", "text": b} for b in blocks
    ]
    return [{"role": "user", "content": content}]


def test_processor_pads_molecules_per_sequence(processor):
    inputs = processor(
        text=["<graph> and <graph> and <graph>: compare.", "<graph> alone", "no molecule"],
        smiles=[[SMILES["aspirin"], SMILES["methane"], SMILES["caffeine"]], [SMILES["salt"]], []],
    )
    assert inputs["atom_features"].shape[:3] == (3, 3, 14)  # (batch, most molecules, most atoms)
    assert inputs["atom_mask"].any(-1).tolist() == [[True, True, True], [True, False, False], [False] * 3]
    assert inputs["atom_mask"].sum(-1).tolist() == [[13, 1, 14], [2, 0, 0], [0, 0, 0]]
    counts = (inputs["input_ids"] == processor.graph_token_id).sum(-1).tolist()
    assert counts == [3 * 16, 16, 0]
    # one text with a flat list: all its molecules, in order
    single = processor(text="<graph> vs <graph>", smiles=[SMILES["aspirin"], SMILES["methane"]])
    assert single["atom_mask"].sum(-1).tolist() == [[13, 1]]


def test_zero_molecule_prompts_have_no_graph_inputs(processor, model):
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": "Hello, what can you do?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    assert set(inputs) == {"input_ids", "attention_mask"}
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_chat_template_renders_molecules_in_any_turn(processor):
    conversation = [
        *user_turn(SMILES["aspirin"], "and", SMILES["caffeine"], "Which one is the acid?"),
        {"role": "assistant", "content": "The first."},
        *user_turn("And this one?", SMILES["methane"]),
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.count("<graph>") == 3
    assert prompt.index("CC(=O)Oc1ccccc1C(=O)O<graph> and Cn1c") < prompt.index("And this one? C<graph>")
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["atom_mask"].sum(-1).tolist() == [[13, 14, 1]]


def test_each_molecule_fills_its_own_placeholder_run(model, processor):
    inputs = processor(
        text=["<graph> then <graph>", "<graph> only"],
        smiles=[[SMILES["caffeine"], SMILES["aspirin"]], [SMILES["glucose"]]],
        padding_side="right",
    )
    captured = {}

    def capture(module, args, kwargs):
        captured.setdefault("embeds", kwargs["inputs_embeds"])

    hook = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
        alone = [
            model.get_graph_features(
                **{k: v for k, v in processor(text="<graph>", smiles=[s]).items() if k in llamo.GRAPH_INPUT_NAMES}
            )
            for s in (SMILES["caffeine"], SMILES["aspirin"], SMILES["glucose"])
        ]
    hook.remove()
    positions = inputs["input_ids"] == processor.graph_token_id
    runs = captured["embeds"][positions].view(3, 16, -1)  # molecules in placeholder order
    for run, expected in zip(runs, alone, strict=True):
        torch.testing.assert_close(run, expected[0])


def generate_alone(model, processor, conversation, **kwargs):
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    output = model.generate(**inputs, do_sample=False, **kwargs)
    return processor.batch_decode(output, prompt_length=inputs["input_ids"])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_batch_of_mixed_molecule_counts_equals_each_alone(model, processor, num_beams):
    conversations = [
        user_turn("Hello there."),
        user_turn(SMILES["aspirin"], "Describe it."),
        user_turn(SMILES["caffeine"], "versus", SMILES["methane"], "Compare them."),
        user_turn(SMILES["glucose"], SMILES["salt"], SMILES["aspirin"], "Which is the salt?"),
    ]
    kwargs = {"max_new_tokens": 6, "num_beams": num_beams, "num_return_sequences": min(num_beams, 2)}
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["attention_mask"][:, 0].tolist() != [1, 1, 1, 1]  # left padding happened
    batched = processor.batch_decode(
        model.generate(**inputs, do_sample=False, **kwargs), prompt_length=inputs["input_ids"]
    )
    alone = [
        text for conversation in conversations for text in generate_alone(model, processor, conversation, **kwargs)
    ]
    assert batched == alone


def test_counts_that_disagree_are_a_clear_error(model, processor):
    inputs = processor(
        text=["<graph> a <graph>", "<graph> b"], smiles=[[SMILES["aspirin"], SMILES["methane"]], [SMILES["salt"]]]
    )
    moved = dict(inputs)
    moved["atom_mask"] = inputs["atom_mask"].clone()
    moved["atom_mask"][0, 1] = False  # drop the second molecule of the first row
    with pytest.raises(ValueError, match=r"\[32, 16\] <graph> positions.*\[1, 1\] per sequence"):
        model(**moved)


def test_folder_written_by_the_one_molecule_code_generates_the_same_tokens():
    expected = json.loads((OLD_FOLDER / "expected_generation.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(OLD_FOLDER).eval()
    processor = AutoProcessor.from_pretrained(OLD_FOLDER)
    assert type(model).__module__.startswith("llamo.")  # today's classes, not the folder's copies
    conversations = [molecule_messages(smiles) for smiles in expected["smiles"]]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["input_ids"].shape[1] == expected["prompt_length"]
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        beams = model.generate(**inputs, max_new_tokens=8, do_sample=False, num_beams=3, num_return_sequences=2)
    assert greedy.tolist() == expected["greedy"]
    assert beams.tolist() == expected["beams"]
    # the old tensor layout (one molecule per row, no molecule axis) is still read
    flat = {name: value[:, 0] if name in llamo.GRAPH_INPUT_NAMES else value for name, value in inputs.items()}
    assert model.generate(**flat, max_new_tokens=12, do_sample=False).tolist() == expected["greedy"]


def test_a_dict_that_is_not_a_graph_is_a_clear_error(processor):
    with pytest.raises(ValueError, match="Molecule at index 0 is a dict but not a featurized graph"):
        processor(text="<graph> hi", smiles=[{"smiles": "C"}])
