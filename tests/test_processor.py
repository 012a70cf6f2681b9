import pytest
import torch
from rdkit import Chem
from tokenizers import AddedToken

from llamo import LlamoProcessor, processing_llamo
from llamo.feature_extraction_llamo import collate_sequence_molecules
from llamo.featurization_llamo import collate_molecule_graphs, featurize_smiles
from llamo.processing_llamo import LLAMA2_CHAT_TEMPLATE

from .conftest import CHATML_TEMPLATE, SMILES, make_tokenizer, molecule_messages

QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def processor(tiny_llamo):
    return tiny_llamo[1]


def graph_count(processor, input_ids) -> list[int]:
    return (torch.as_tensor(input_ids) == processor.graph_token_id).sum(-1).tolist()


def test_call_expands_graph_and_featurizes(processor):
    inputs = processor(text=["CCO<graph> Describe.", "C<graph> What is it?"], smiles=["CCO", "C"], padding_side="right")
    assert graph_count(processor, inputs["input_ids"]) == [16, 16]
    assert inputs["atom_features"].shape == (2, 1, 3, 9)  # (batch, molecules, atoms, features)
    assert inputs["atom_mask"].sum(-1).tolist() == [[3], [1]]
    assert inputs["motif_mask"].sum(-1).tolist() == [[2], [0]]  # {C-C}, {C-O}; methane has no group
    assert set(processor.model_input_names) >= {"input_ids", "atom_features", "motif_mask"}


def test_llama2_prompt_is_the_original(processor):
    prompt = processor.apply_chat_template(
        molecule_messages("C[C@H](N)C(=O)O", "What is it?"), add_generation_prompt=True
    )
    assert prompt == (
        "<s>[INST] <<SYS>>\nThe following is a conversation between a curious human and AI assistant.\n<</SYS>>\n\n"
        "CC(N)C(=O)O<graph> What is it? [/INST]"
    )
    conversation = [
        *molecule_messages(SMILES["aspirin"]),
        {"role": "assistant", "content": "An ester."},
        {"role": "user", "content": "Is it acidic?"},
        {"role": "assistant", "content": "Yes."},
    ]
    prompt = processor.apply_chat_template(conversation)
    assert prompt.endswith(" [/INST] An ester.</s><s>[INST] Is it acidic? [/INST] Yes.</s>")
    system = [{"role": "system", "content": "Be brief."}, *molecule_messages("O")]
    assert processor.apply_chat_template(system).startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nO<graph>")


def test_tokenizers_own_chat_template_works(processor):
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    chatml = LlamoProcessor(tokenizer, num_graph_tokens=16)
    prompt = chatml.apply_chat_template(molecule_messages("CCO"), add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nCCO<graph> Describe this molecule.<|im_end|>\n<|im_start|>assistant\n"
    inputs = chatml.apply_chat_template(
        molecule_messages("CCO"), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert graph_count(chatml, inputs["input_ids"]) == [16]
    assert chatml.answer_marker() == "<|im_end|>\n<|im_start|>assistant"
    # a named built-in template overrides the tokenizer's
    assert chatml.apply_chat_template(molecule_messages("CCO"), chat_template="llama2").startswith("<s>[INST]")


def test_prompt_smiles_modes():
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    for mode, expected in [
        ("canonical", "CC(N)C(=O)O<graph>"),
        ("input", "N[C@@H](C)C(=O)O<graph>"),
        ("none", "<graph>"),
    ]:
        proc = LlamoProcessor(tokenizer, chat_template="llama2", prompt_smiles=mode)
        assert expected + " Describe" in proc.apply_chat_template(molecule_messages("N[C@@H](C)C(=O)O"))
    with pytest.raises(ValueError, match="prompt_smiles"):
        LlamoProcessor(tokenizer, prompt_smiles="selfies")


def test_batch_first_tensors_for_a_batch_of_conversations(processor):
    names = ["aspirin", "methane", "salt"]
    inputs = processor.apply_chat_template(
        [molecule_messages(SMILES[name]) for name in names],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    assert all(value.shape[0] == 3 for value in inputs.values())
    assert graph_count(processor, inputs["input_ids"]) == [16, 16, 16]
    assert processor.tokenizer.padding_side == "left"
    assert (inputs["attention_mask"][:, -1] == 1).all()
    only_ids = processor.apply_chat_template(molecule_messages("CCO"), tokenize=True)
    assert only_ids.shape[0] == 1


def test_text_only_conversation(processor):
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert "atom_features" not in inputs
    assert graph_count(processor, inputs["input_ids"]) == [0]


def test_rdkit_molecules_are_accepted(processor):
    mol = Chem.MolFromSmiles(SMILES["caffeine"])
    from_mol = processor(text="<graph> x", smiles=mol)
    from_smiles = processor(text="<graph> x", smiles=SMILES["caffeine"])
    for name in ("atom_features", "bond_index", "motif_features"):
        assert torch.equal(from_mol[name], from_smiles[name])


@pytest.mark.parametrize(
    ("smiles", "pattern"),
    [
        ("C1CC", r"Unparsable SMILES at index 1: 'C1CC'"),
        ("", "Empty SMILES at index 1"),
        ("not a molecule", "index 1: 'not a molecule'"),
    ],
)
def test_bad_smiles_name_the_smiles_and_index(processor, smiles, pattern):
    with pytest.raises(ValueError, match=pattern):
        processor(text=["<graph> a", "<graph> b"], smiles=["CCO", smiles])
    with pytest.raises(ValueError, match=pattern.replace("index 1", "index 1")):
        processor.apply_chat_template(
            [molecule_messages("CCO"), molecule_messages(smiles)], tokenize=True, add_generation_prompt=True
        )


def test_atom_limit_is_configurable(processor):
    big = "C" * 600
    with pytest.raises(ValueError, match="600 atoms, over the limit of 512"):
        processor(text="<graph> x", smiles=big)
    assert processor(text="<graph> x", smiles=big, max_atoms=None)["atom_mask"].sum() == 600
    with pytest.raises(ValueError, match="over the limit of 512"):
        processor.apply_chat_template(molecule_messages(big), tokenize=True)


def test_placeholder_mismatches(processor):
    with pytest.raises(ValueError, match="2 texts and molecules for 1"):
        processor(text=["<graph> a", "<graph> b"], smiles=["C"])
    with pytest.raises(ValueError, match="Text at index 0 holds 2 <graph> placeholders but 1 molecules"):
        processor(text=["<graph><graph> a"], smiles=["C"])
    with pytest.raises(ValueError, match="Text at index 0 holds 1 <graph> placeholders but 0 molecules"):
        processor(text="<graph> a")
    with pytest.raises(ValueError, match="Text at index 1 holds 0 <graph> placeholders but 1 molecules"):
        processor(text=["<graph> a", "b"], smiles=[["C"], ["O"]])
    with pytest.raises(ValueError, match="unsupported content block"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image", "url": "x.png"}]}])
    with pytest.raises(ValueError, match="truncated"):
        processor(text="<graph> hello", smiles="C", truncation=True, max_length=8)
    typed = molecule_messages("C", "Describe <graph> this.")
    tokens = processor.num_graph_tokens
    expected = rf"holds {2 * tokens} graph placeholders, but its 1 molecules make {tokens}: its text writes <graph>"
    with pytest.raises(ValueError, match=expected):
        processor.apply_chat_template(typed, tokenize=True)


@pytest.mark.parametrize(
    "conversation, message",
    [
        ([None], "Conversation 0, message 0 is a NoneType"),
        ({"role": "user", "content": "x"}, "A conversation is a list of messages .*; got a dict"),
        (None, "A conversation is a list of messages .*; got a NoneType"),
        (5, "got a int"),
        ([{"role": None, "content": "x"}], "Conversation 0, message 0 is a dict without 'role'"),
        ([{"role": "user", "content": "x"}, ["y"]], "Conversation 0, message 1 is a list"),
        ([{"content": "x"}], "Conversation 0, message 0 is a dict without 'role'"),
        ([{"role": "user", "content": 3}], "Conversation 0, message 0: content of type int"),
        ([{"role": "user", "content": [{"type": "text", "text": ["x"]}]}], "unsupported content block"),
        (molecule_messages("C", "Describe \ud800 this."), "Text at index 0 is not valid Unicode: surrogates not"),
    ],
)
def test_malformed_conversations_name_the_culprit(processor, conversation, message):
    with pytest.raises((TypeError, ValueError), match=message):
        processor.apply_chat_template(conversation, tokenize=True)


def test_tokenizer_without_graph_token():
    with pytest.raises(ValueError, match="no single token for '<graph>'"):
        LlamoProcessor(make_tokenizer())


def test_decoding_is_the_tokenizers_and_answers_come_from_the_prompt_length_or_the_marker(processor):
    tokenizer = processor.tokenizer
    inputs = processor.apply_chat_template(
        [molecule_messages(SMILES["aspirin"]), molecule_messages("C")],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    answer = tokenizer(["It is an acid.", "A gas."], add_special_tokens=False, padding=True, padding_side="right")
    answer_ids = torch.tensor(answer["input_ids"])
    answer_ids[answer_ids == tokenizer.pad_token_id] = tokenizer.eos_token_id
    generated = torch.cat([inputs["input_ids"], answer_ids], dim=1)
    # transformers' contract: the processor decodes as its tokenizer does
    assert processor.batch_decode(generated) == tokenizer.batch_decode(generated)
    assert processor.decode(generated[1], skip_special_tokens=True) == tokenizer.decode(generated[1], True)
    assert processor.batch_decode(generated, prompt_length=inputs["input_ids"]) == ["It is an acid.", "A gas."]
    assert processor.decode(generated[0], prompt_length=inputs["input_ids"].shape[1]) == "It is an acid."
    length = torch.tensor(inputs["input_ids"].shape[1])  # a 0-dim tensor, and one prompt's (1, L) output
    assert processor.decode(generated[:1], prompt_length=length) == "It is an acid."
    with pytest.raises(ValueError, match=r"decode takes one sequence, got \(2, "):  # it decoded nothing before
        processor.decode(generated, prompt_length=inputs["input_ids"])
    for wrong in (-1, 2.0, [1], True):
        with pytest.raises(ValueError, match="prompt_length must be a token count >= 0 or the prompt's input_ids"):
            processor.batch_decode(generated, prompt_length=wrong)
    # without the prompt length: cut at the chat template's answer marker (repeated rows too, as beams give)
    assert processor.post_process_image_text_to_text(generated) == ["It is an acid.", "A gas."]
    assert processor.post_process_image_text_to_text(generated.repeat_interleave(2, dim=0))[1] == "It is an acid."
    assert processor.post_process_image_text_to_text(generated[1]) == ["A gas."]


def test_save_and_reload_keeps_options(processor, tmp_path):
    processor.max_atoms = 100
    try:
        processor.save_pretrained(tmp_path)
        again = LlamoProcessor.from_pretrained(tmp_path)
    finally:
        processor.max_atoms = 512
    assert again.max_atoms == 100
    assert again.num_graph_tokens == 16
    assert again.chat_template == LLAMA2_CHAT_TEMPLATE
    assert again.graph_token_id == processor.graph_token_id
    messages = molecule_messages(SMILES["glucose"])
    assert again.apply_chat_template(messages) == processor.apply_chat_template(messages)
    assert again.tokenizer.padding_side == "left"


def test_chatml_fixture_template_is_what_the_tokenizer_carries():
    assert make_tokenizer().chat_template == CHATML_TEMPLATE


def test_precomputed_graphs_skip_rdkit(processor, monkeypatch):
    from llamo import feature_extraction_llamo, featurization_llamo
    from llamo.feature_extraction_llamo import PreparedMolecule
    from llamo.featurization_llamo import featurize_smiles, prompt_smiles

    smiles = SMILES["caffeine"]
    graph = featurize_smiles(smiles)
    canonical = prompt_smiles(Chem.MolFromSmiles(smiles), None)
    conversation = [*molecule_messages(smiles), {"role": "assistant", "content": "A stimulant."}]
    expected = processor.render_conversation(conversation)

    def no_rdkit(*args, **kwargs):
        raise AssertionError("RDKit was called")

    monkeypatch.setattr(feature_extraction_llamo, "parse_smiles", no_rdkit)
    monkeypatch.setattr(feature_extraction_llamo, "featurize_molecule", no_rdkit)
    monkeypatch.setattr(featurization_llamo, "parse_smiles", no_rdkit)
    got = processor.render_conversation(conversation, molecules=[PreparedMolecule(graph, canonical)])
    assert (got.text, got.assistant_spans) == (expected.text, expected.assistant_spans)
    with pytest.raises(ValueError, match="1 molecule blocks but 2 molecules"):
        processor.render_conversation(conversation, molecules=[PreparedMolecule(graph, canonical)] * 2)
    direct = processor(text="<graph> hi", smiles=[graph])
    assert torch.equal(direct["atom_features"][0, 0], torch.from_numpy(graph.atom_features))
    with pytest.raises(ValueError, match="over the limit of 5"):
        processor(text="<graph> hi", smiles=[graph], max_atoms=5)


def test_no_graph_ablation_keeps_the_smiles_text(processor, tiny_llamo):
    model = tiny_llamo[0]
    messages = molecule_messages(SMILES["aspirin"])
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, include_graph=False)
    assert "<graph>" not in prompt and "CC(=O)Oc1ccccc1C(=O)O Describe this molecule." in prompt
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, include_graph=False
    )
    assert "atom_features" not in inputs and graph_count(processor, inputs["input_ids"]) == [0]
    with torch.no_grad():
        assert model.generate(**inputs, max_new_tokens=3).shape[1] == inputs["input_ids"].shape[1] + 3


QWEN2_STYLE_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + QWEN_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' or message.role == 'assistant' or (message.role == 'system' and not loop.first) -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen2's ChatML template (tools left out): a default system prompt unless the conversation brings its own."""


def test_qwen2_style_template_with_a_default_system_prompt():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = QWEN2_STYLE_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token  # Qwen2 pads with an existing special token
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    qwen = LlamoProcessor(tokenizer, num_graph_tokens=16)
    system = f"<|im_start|>system\n{QWEN_SYSTEM_PROMPT}<|im_end|>\n"
    prompt = qwen.apply_chat_template(molecule_messages("OCC", "Name it."), add_generation_prompt=True)
    assert prompt == f"{system}<|im_start|>user\nCCO<graph> Name it.<|im_end|>\n<|im_start|>assistant\n"
    own_system = qwen.apply_chat_template([{"role": "system", "content": "Be brief."}, *molecule_messages("O")])
    assert (
        own_system
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nO<graph> Describe this molecule.<|im_end|>\n"
    )

    inputs = qwen.apply_chat_template(
        [molecule_messages(SMILES["aspirin"]), molecule_messages("C")],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    assert graph_count(qwen, inputs["input_ids"]) == [16, 16]
    assert inputs["atom_mask"].sum(-1).tolist() == [[13], [1]]
    assert qwen.answer_marker() == "<|im_end|>\n<|im_start|>assistant"

    # training: the loss spans are exactly the assistant answers plus their end-of-turn text
    conversation = [
        *molecule_messages(SMILES["aspirin"]),
        {"role": "assistant", "content": "An ester."},
        {"role": "user", "content": "Is it acidic?"},
        {"role": "assistant", "content": "Yes."},
    ]
    rendered = qwen.render_conversation(conversation)
    assert rendered.text.startswith(system)
    assert [rendered.text[start:end] for start, end in rendered.assistant_spans] == [
        "An ester.<|im_end|>\n",
        "Yes.<|im_end|>\n",
    ]

    # decoding without the prompt at hand falls back to the template's answer marker
    answer = tokenizer("It is an acid.", add_special_tokens=False)["input_ids"]
    qwen.apply_chat_template(molecule_messages("O"), add_generation_prompt=True, tokenize=True)  # another prompt
    generated = torch.cat([inputs["input_ids"][:1], torch.tensor([answer])], dim=1)
    assert qwen.post_process_image_text_to_text(generated) == ["It is an acid."]


# --- processor and model agree ----------------------------------------------------------------------------------


def test_processor_and_model_mismatch_is_reported_with_both_numbers(tiny_llamo, tiny_llamo_dir, tmp_path):
    import shutil

    from transformers import pipeline

    model, processor = tiny_llamo
    assert model.config.num_graph_tokens == processor.num_graph_tokens == 16
    processor.check_model_config(model.config)  # the matching pair passes
    wrong = LlamoProcessor(processor.tokenizer, chat_template="llama2", num_graph_tokens=28)
    both = r"28 placeholders \(processor.num_graph_tokens\), the model makes 16 \(config.num_graph_tokens\)"
    with pytest.raises(ValueError, match=both):
        wrong.check_model_config(model.config)

    # used anyway, the model's forward names both numbers
    inputs = wrong.apply_chat_template(
        [molecule_messages("CCO"), molecule_messages("C")], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    forward_both = r"num_graph_tokens \(28\) and the model's config.num_graph_tokens \(16\) disagree"
    with pytest.raises(ValueError, match=forward_both), torch.no_grad():
        model(**inputs)

    # a folder holding a model and a processor that disagree fails when the processor loads
    folder = tmp_path / "mismatched"
    shutil.copytree(tiny_llamo_dir, folder)
    assert LlamoProcessor.from_pretrained(folder).num_graph_tokens == 16
    wrong.save_pretrained(folder)
    with pytest.raises(ValueError, match=both):
        LlamoProcessor.from_pretrained(folder)
    # a processor saved on its own (no model config beside it) loads as saved
    wrong.save_pretrained(tmp_path / "processor-only")
    assert LlamoProcessor.from_pretrained(tmp_path / "processor-only").num_graph_tokens == 28

    with pytest.raises(ValueError, match=both):
        pipeline("molecule-text-generation", model=model, processor=wrong, device="cpu")

    other_id = LlamoProcessor(processor.tokenizer, chat_template="llama2", num_graph_tokens=16)
    other_id.graph_token_id = processor.graph_token_id - 1
    with pytest.raises(
        ValueError, match=rf"id {processor.graph_token_id - 1}.*graph_token_id is {processor.graph_token_id}"
    ):
        other_id.check_model_config(model.config)


def test_chat_template_choice_accepts_names_files_and_long_template_strings(tmp_path):
    from llamo.builder import resolve_chat_template

    tokenizer = make_tokenizer()
    long_template = CHATML_TEMPLATE + "{# " + "x" * 400 + " #}"
    assert resolve_chat_template(long_template, tokenizer) == long_template
    assert resolve_chat_template("llama2", tokenizer) == LLAMA2_CHAT_TEMPLATE
    file = tmp_path / "template.jinja"
    file.write_text(CHATML_TEMPLATE, encoding="utf-8")
    assert resolve_chat_template(str(file), tokenizer) == CHATML_TEMPLATE
    with pytest.raises(FileNotFoundError, match=r"missing\.jinja"):
        resolve_chat_template(str(tmp_path / "missing.jinja"), tokenizer)


def _outcome(call, processor) -> object:
    try:
        return call(processor)
    except ValueError as error:
        return str(error)


def _graph_tokenizer(token: AddedToken | str) -> object:
    tokenizer = make_tokenizer()
    tokenizer.add_tokens([token], special_tokens=isinstance(token, str))
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


@pytest.mark.parametrize(
    ("graph_token", "splits"),
    [
        ("<graph>", True),  # special added token, as `llamo init` adds it
        (AddedToken("<graph>", special=False, normalized=False), False),
        (AddedToken("<graph>", special=True, single_word=True), False),
    ],
)
def test_one_prompt_shortcut_gives_the_general_paths_output(graph_token, splits, monkeypatch):
    """One prompt is encoded by the tokenizer's backend directly (where the graph token splits the text, with one
    placeholder per molecule, expanded afterwards): the same input_ids, attention_mask and graph tensors as the
    general path through the tokenizer's `__call__`."""
    for chat_template in ("llama2", None):
        proc = LlamoProcessor(_graph_tokenizer(graph_token), chat_template=chat_template, num_graph_tokens=5)
        assert processing_llamo._graph_token_splits(proc.tokenizer, proc.graph_token_id) is splits
        conversations = [
            molecule_messages(SMILES["aspirin"]),
            molecule_messages("C"),
            [{"role": "user", "content": [{"type": "text", "text": "No molecule, <b>hi</b>."}]}],
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "molecule", "smiles": "CCO"},
                        {"type": "molecule", "smiles": "[Na+].[Cl-]"},
                        {"type": "text", "text": "Compare\n them."},
                    ],
                }
            ],
        ]
        calls = [
            lambda p, c=c: p.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)
            for c in conversations
        ]
        calls.append(lambda p: p(text="CCO<graph>  and<graph>", smiles=["CCO", "N"]))
        calls.append(lambda p: p(text="<graph>", smiles="CC", padding=False, add_special_tokens=False))
        direct = [_outcome(call, proc) for call in calls]
        with monkeypatch.context() as patch:
            patch.setattr(processing_llamo, "_direct_backend", lambda tokenizer: None)
            general = [_outcome(call, proc) for call in calls]
        for fast, slow in zip(direct, general, strict=True):
            if isinstance(slow, str):  # a single_word graph token is not matched after a SMILES: both paths say so
                assert fast == slow
                continue
            assert list(fast) == list(slow)
            for name in slow:
                assert fast[name].dtype == slow[name].dtype and torch.equal(fast[name], slow[name]), name


def test_one_prompt_shortcut_is_taken_only_where_it_is_exact(processor, monkeypatch):
    tokenizer = processor.tokenizer
    calls = []
    real = type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    processor.apply_chat_template(molecule_messages("CCO"), add_generation_prompt=True, tokenize=True)
    processor(text="CCO<graph> hi", smiles="CCO")
    assert calls == []  # one prompt, nothing to truncate: the backend directly
    processor(text="CCO<graph> hi", smiles="CCO", return_tensors="np")
    processor(text="CCO<graph> hi", smiles="CCO", truncation=True, max_length=64)
    processor(text=["CCO<graph> hi", "C<graph>"], smiles=["CCO", "C"])
    assert len(calls) == 3
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(8)
    try:
        assert processing_llamo._direct_backend(tokenizer) is None  # the tokenizer's __call__ would clear it
    finally:
        backend.no_truncation()
    backend.enable_padding(length=300)
    try:
        assert processing_llamo._direct_backend(tokenizer) is None
    finally:
        backend.no_padding()
    # a placeholder lost in the text is reported by the general path, as before
    with pytest.raises(ValueError, match="holds 2 <graph> placeholders but 1 molecules"):
        processor(text="CCO<graph><graph>", smiles="CCO")


def test_sequence_collation_pads_each_molecule_in_its_slot():
    graphs = [featurize_smiles(SMILES[name]) for name in ("aspirin", "methane", "salt", "caffeine")]
    batch = collate_sequence_molecules([[graphs[0], graphs[1]], [], [graphs[2]], [graphs[3], graphs[2]]])
    flat = collate_molecule_graphs([*graphs, graphs[2]])
    slots = [(0, 0), (0, 1), (2, 0), (3, 0), (3, 1)]
    for name, value in batch.items():
        assert value.shape[:2] == (4, 2) and value.shape[2:] == flat[name].shape[1:] and value.is_contiguous()
        assert value.dtype == flat[name].dtype
        for index, (row, slot) in enumerate(slots):
            assert torch.equal(value[row, slot], flat[name][index]), name
        assert not value[1].any() and not value[2, 1].any()


def test_a_chat_template_that_drops_molecule_blocks_is_named(processor):
    roles_only = "{% for message in messages %}{{ message['role'] }}: ...\n{% endfor %}"
    options = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    assert processor.apply_chat_template(molecule_messages("CCO"), **options)["input_ids"].shape[0] == 1
    with pytest.raises(ValueError, match=r"holds 0 <graph> for its 1 molecules: the chat template left molecule"):
        processor.apply_chat_template(molecule_messages("CCO"), chat_template=roles_only, **options)


def test_a_batch_holding_one_molecule_in_all_is_padded_to_the_whole_batch(tiny_llamo):
    from llamo.configuration_llamo import GRAPH_INPUT_NAMES

    model, processor = tiny_llamo
    graph = processor.graph_token
    batch = processor(text=["hello", f"{graph} Describe it."], smiles=[[], ["CCO"]])  # CCO: bonds and a group
    assert batch["atom_features"].shape[:2] == (2, 1) and batch["atom_mask"].any(-1).tolist() == [[False], [True]]
    alone = processor(text=[f"{graph} Describe it."], smiles=[["CCO"]])
    for name in GRAPH_INPUT_NAMES:
        assert torch.equal(batch[name][1:], alone[name]) and not batch[name][0].any(), name
    with torch.no_grad():
        logits = model(**batch).logits[1, -1]
        torch.testing.assert_close(logits, model(**alone).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_a_misspelled_chat_template_name_is_refused_not_rendered_as_text(tiny_llamo):
    _, processor = tiny_llamo
    messages = [molecule_messages(SMILES["aspirin"])]
    with pytest.raises(ValueError, match=r"Unknown chat template 'llama-2': a name of \['llama2'\], or a Jinja"):
        processor.apply_chat_template(messages, chat_template="llama-2", add_generation_prompt=True)
    assert "[INST]" in processor.apply_chat_template(messages, chat_template="llama2", add_generation_prompt=True)[0]


def test_a_saved_chat_template_of_plain_text_loads_as_transformers_reads_it(tiny_llamo, tmp_path):
    # transformers' own processor tests save and reload such a template; only a name given at call time is checked
    _, processor = tiny_llamo
    plain = LlamoProcessor(processor.tokenizer, chat_template="test template")
    assert LlamoProcessor(processor.tokenizer, chat_template="llama2").chat_template == LLAMA2_CHAT_TEMPLATE
    plain.save_pretrained(tmp_path)
    assert LlamoProcessor.from_pretrained(tmp_path).chat_template == "test template"


def test_rdkit_molecules_without_atoms_or_not_sanitized_are_refused(processor):
    prompt = f"{processor.graph_token} Describe it."
    with pytest.raises(ValueError, match="The RDKit molecule at index 0 has no atoms"):  # accepted with 0 atoms before
        processor(text=prompt, smiles=Chem.Mol())
    for mol in (Chem.MolFromSmiles("c1ccccc1", sanitize=False), Chem.MolFromSmarts("[#6][#8]")):
        with pytest.raises(ValueError, match=r"is not sanitized \(Chem.SanitizeMol it first\)"):  # RDKit's dump before
            processor(text=prompt, smiles=mol)
    assert processor(text=prompt, smiles=Chem.MolFromSmiles("c1ccccc1"))["atom_mask"].sum() == 6


def test_text_and_smiles_of_the_wrong_type_are_named(processor):
    prompt = f"{processor.graph_token} Describe it."
    for text in (5, [5], []):  # 'int' object is not iterable, 'int' has no attribute 'count', an IndexError
        with pytest.raises(TypeError, match="text must be a string or a non-empty list of strings, got"):
            processor(text=text)
    for smiles, kind in ((5, "int"), (b"CCO", "bytes")):  # bytes were read as three molecules
        with pytest.raises(TypeError, match=f"smiles must be SMILES strings or molecules \\(or lists\\), got {kind}"):
            processor(text=prompt, smiles=smiles)
