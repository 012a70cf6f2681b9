"""LlamoProcessor against transformers' processor conventions (what `ProcessorTesterMixin` checks): typed call
options, named chat templates, save/reload equality, assistant masks, message objects, the tokenizer's decoding."""

import inspect
from dataclasses import dataclass

import pytest
import torch

from llamo import LlamoProcessor
from llamo.processing_llamo import LLAMA2_CHAT_TEMPLATE, LlamoProcessorKwargs

from .conftest import CHATML_TEMPLATE, SMILES, make_tokenizer, molecule_messages


@pytest.fixture
def processor():
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    return LlamoProcessor(tokenizer, chat_template="llama2", num_graph_tokens=4)


def conversation(answer: str = "An ester.") -> list[dict]:
    return [
        *molecule_messages(SMILES["aspirin"]),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Is it acidic?"},
        {"role": "assistant", "content": "Yes."},
    ]


def test_call_options_are_typed_kwargs_with_the_processors_defaults(processor):
    parameters = inspect.signature(LlamoProcessor.__call__).parameters
    assert list(parameters) == ["self", "text", "smiles", "kwargs"]
    assert "padding_side" not in inspect.signature(LlamoProcessor.__init__).parameters
    assert "max_atoms" in LlamoProcessorKwargs.__annotations__
    texts = ["<graph> Describe it.", "<graph> A much longer question about this one molecule?"]
    batch = processor(text=texts, smiles=["CCO", "C"])  # defaults: padded, PyTorch tensors, left
    assert isinstance(batch["input_ids"], torch.Tensor)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()
    fixed = processor(text=texts, smiles=["CCO", "C"], text_kwargs={"padding": "max_length", "max_length": 60})
    assert fixed["input_ids"].shape[1] == 60
    lists = processor(text=texts, smiles=["CCO", "C"], padding=False, return_tensors=None)
    assert [len(row) for row in lists["input_ids"]] != [60, 60] and isinstance(lists["input_ids"][0], list)
    with pytest.raises(ValueError, match="Molecule at index 0 has 3 atoms, over the limit of 2"):
        processor(text="<graph> Name it.", smiles="CCO", max_atoms=2)
    assert processor(text="<graph>", smiles="C" * 600, max_atoms=None)["atom_mask"].sum() == 600
    for bad in ("default", 0, True):
        with pytest.raises(ValueError, match="max_atoms must be an int of at least 1, or None"):
            processor(text="<graph>", smiles="CCO", max_atoms=bad)
    types = processor(text=texts, smiles=["CCO", "C"], return_mm_token_type_ids=True)["mm_token_type_ids"]
    assert torch.equal(types, (batch["input_ids"] == processor.graph_token_id).long())
    assert types.sum(-1).tolist() == [4, 4]
    for name, bad in (("num_graph_tokens", 0), ("num_graph_tokens", "4"), ("max_smiles_length", -1)):
        with pytest.raises(ValueError, match=f"{name} must be an integer of at least"):
            LlamoProcessor(processor.tokenizer, **{name: bad})


def test_apply_chat_template_honours_processor_kwargs(processor):
    messages = molecule_messages(SMILES["aspirin"])
    padded = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, processor_kwargs={"padding": "max_length", "max_length": 120}
    )
    plain = processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert padded["input_ids"].shape[1] == 120 > plain["input_ids"].shape[1]
    assert torch.equal(padded["input_ids"][0, -plain["input_ids"].shape[1] :], plain["input_ids"][0])
    as_lists = processor.apply_chat_template(messages, tokenize=True, return_tensors=None)
    assert as_lists[0] == plain["input_ids"][0].tolist()
    with pytest.raises(ValueError, match="has 13 atoms, over the limit of 5"):
        processor.apply_chat_template(messages, tokenize=True, processor_kwargs={"max_atoms": 5})


def test_named_chat_templates_save_reload_and_select(processor, tmp_path):
    processor.chat_template = {"default": LLAMA2_CHAT_TEMPLATE, "chatml": CHATML_TEMPLATE}
    processor.save_pretrained(tmp_path)
    again = LlamoProcessor.from_pretrained(tmp_path)
    assert again.chat_template == processor.chat_template
    messages = molecule_messages("CCO")
    assert again.apply_chat_template(messages).startswith("<s>[INST] <<SYS>>")
    assert again.apply_chat_template(messages, chat_template="chatml").startswith("<|im_start|>user\nCCO<graph>")
    assert again.apply_chat_template(messages, chat_template="llama2") == again.apply_chat_template(messages)
    again.chat_template = {"chatml": CHATML_TEMPLATE}
    with pytest.raises(ValueError, match=r"named \['chatml'\], none of them 'default'"):
        again.apply_chat_template(messages)


def test_a_reloaded_processor_equals_the_saved_one(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert "auto_map" in (tmp_path / "processor_config.json").read_text()  # the file still says how to load it
    assert LlamoProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


def test_assistant_masks_cover_the_answers_and_their_end_of_turn(processor):
    batch = processor.apply_chat_template(
        [conversation(), conversation("A much longer answer about an ester.")],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert batch["assistant_masks"].shape == batch["input_ids"].shape
    for row, answer in zip(range(2), ["An ester.", "A much longer answer about an ester."], strict=True):
        kept = batch["input_ids"][row][batch["assistant_masks"][row].bool()]
        text = processor.tokenizer.decode(kept)
        assert text.replace(" ", "") == f"{answer}</s>Yes.</s>".replace(" ", "")
        assert not (batch["assistant_masks"][row].bool() & (batch["input_ids"][row] == processor.graph_token_id)).any()
    options = {"tokenize": True, "return_dict": True, "return_assistant_tokens_mask": True}
    chatml = processor.apply_chat_template(conversation(), chat_template=CHATML_TEMPLATE, **options)
    kept = chatml["input_ids"][0][chatml["assistant_masks"][0].bool()]
    assert processor.tokenizer.decode(kept) == "An ester.<|im_end|>\nYes.<|im_end|>\n"  # no generation block needed
    with pytest.raises(ValueError, match="needs tokenize=True and return_dict=True"):
        processor.apply_chat_template(conversation(), tokenize=True, return_assistant_tokens_mask=True)


@dataclass
class Message:
    role: str
    content: str | list | None = None
    name: str | None = None


def test_message_objects_render_as_dicts(processor):
    objects = [Message("user", [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "Name it."}])]
    dicts = [{"role": "user", "content": objects[0].content}]
    assert processor.apply_chat_template(objects) == processor.apply_chat_template(dicts)
    assert processor.apply_chat_template([objects, objects]) == [processor.apply_chat_template(dicts)] * 2


BLOCKS_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- for block in message['content'] -%}{{- block['text'] -}}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def test_templates_that_read_content_blocks_get_blocks(processor):
    """A template written for transformers' multimodal processors loops over content blocks; one written for a text
    LM prints content as a string. Both render the same molecule prompt."""
    messages = molecule_messages("OCC", "Name it.")
    expected = "<|im_start|>user\nCCO<graph> Name it.<|im_end|>\n<|im_start|>assistant\n"
    assert (
        processor.apply_chat_template(messages, chat_template=BLOCKS_TEMPLATE, add_generation_prompt=True) == expected
    )
    assert (
        processor.apply_chat_template(messages, chat_template=CHATML_TEMPLATE) == expected.rsplit("<|im_start|>", 1)[0]
    )
    batch = processor.apply_chat_template(
        conversation(),
        chat_template=BLOCKS_TEMPLATE,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    kept = batch["input_ids"][0][batch["assistant_masks"][0].bool()]
    assert processor.tokenizer.decode(kept) == "An ester.<|im_end|>\nYes.<|im_end|>\n"
    assert processor.answer_marker(BLOCKS_TEMPLATE) == "<|im_end|>\n<|im_start|>assistant"


def test_template_errors_are_short_and_name_the_culprit(processor):
    messages = [*molecule_messages("CCO"), {"role": "assistant", "content": "An alcohol, " + "very " * 5000}]
    with pytest.raises(TypeError, match="chat_template is a Jinja string or a template name, not a int"):
        processor.apply_chat_template(messages, chat_template=5)
    drops_answers = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match="Conversation 0: continue_final_message=True") as error:
        processor.apply_chat_template(messages, chat_template=drops_answers, continue_final_message=True)
    assert len(str(error.value)) < 200


def test_a_prompt_over_the_tokenizers_length_limit_gets_its_warning_from_the_fast_path_too(processor):
    from transformers import logging
    from transformers.testing_utils import CaptureLogger

    conversation = [
        {"role": "user", "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "Hi"}]}
    ]
    options = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}
    expected = processor.apply_chat_template(conversation, **options)["input_ids"]
    saved = processor.tokenizer.model_max_length
    try:
        processor.tokenizer.model_max_length = 5
        processor.tokenizer.deprecation_warnings.clear()  # the tokenizer warns once
        with CaptureLogger(logging.get_logger("transformers.tokenization_utils_base")) as captured:
            ids = processor.apply_chat_template(conversation, **options)["input_ids"]
        assert ids.tolist() == expected.tolist() and "longer than the specified maximum" in captured.out
        processor.tokenizer.model_max_length = 0  # transformers' "no limit": the same ids, no warning
        with CaptureLogger(logging.get_logger("transformers.tokenization_utils_base")) as captured:
            ids = processor.apply_chat_template(conversation, **options)["input_ids"]
        assert ids.tolist() == expected.tolist() and not captured.out
    finally:
        processor.tokenizer.model_max_length = saved
