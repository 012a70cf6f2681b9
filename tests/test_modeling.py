import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, OPTConfig, Qwen2Config

from llamo import (
    GRAPH_INPUT_NAMES,
    LlamoConfig,
    LlamoForConditionalGeneration,
    LlamoModel,
    collate_molecule_graphs,
    featurize_smiles,
)
from llamo.convert_llamo_original_to_hf import (
    convert_original_graph_state_dict,
    load_original_graph_weights,
    original_graph_configs,
)

from .conftest import GOLDEN, SMILES, TINY_GRAPH, TINY_PROJECTOR, molecule_messages

GRAPH_TOKEN_ID = 95


def text_config(kind: str = "llama", vocab_size: int = 96, hidden_size: int = 32, tie: bool = False):
    common = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_attention_heads": 4,
        "tie_word_embeddings": tie,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if kind == "llama":
        return LlamaConfig(intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, **common)
    if kind == "qwen2":
        return Qwen2Config(intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, **common)
    if kind == "opt":
        return OPTConfig(ffn_dim=64, num_hidden_layers=2, word_embed_proj_dim=hidden_size, **common)
    raise ValueError(kind)


def tiny_model(kind="llama", seed=0, tie=False, **projector) -> LlamoForConditionalGeneration:
    torch.manual_seed(seed)
    config = LlamoConfig(
        graph_config=TINY_GRAPH,
        projector_config={**TINY_PROJECTOR, **projector},
        text_config=text_config(kind, tie=tie),
        graph_token_id=GRAPH_TOKEN_ID,
    )
    return LlamoForConditionalGeneration(config).eval()


def graph_batch(*names):
    return collate_molecule_graphs([featurize_smiles(SMILES[name]) for name in names])


def prompt_ids(model, batch_size: int, prefix: int = 3, suffix: int = 4) -> torch.Tensor:
    num = model.config.num_graph_tokens
    row = [5 + i for i in range(prefix)] + [GRAPH_TOKEN_ID] * num + [20 + i for i in range(suffix)]
    return torch.tensor([row] * batch_size)


# --- fidelity ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_stack():
    state_dict = load_file(GOLDEN / "original_graph_stack.safetensors")
    with open(GOLDEN / "original_graph_stack_outputs.json", encoding="utf-8") as handle:
        outputs = json.load(handle)
    return state_dict, outputs


def golden_model(state_dict, share_level_attention: bool) -> LlamoModel:
    found = original_graph_configs(state_dict)
    projector = {**found["projector_config"], "share_level_attention": share_level_attention}
    config = LlamoConfig(
        graph_config=found["graph_config"],
        projector_config=projector,
        text_config=text_config(hidden_size=found["output_hidden_size"]),
        graph_token_id=GRAPH_TOKEN_ID,
    )
    model = LlamoModel(config).eval()
    load_original_graph_weights(model, state_dict)
    return model


@pytest.mark.parametrize("shared", [True, False])
def test_reproduces_original_graph_tokens(golden_stack, shared):
    state_dict, outputs = golden_stack
    model = golden_model(state_dict, shared)
    assert model.config.num_graph_tokens == 28
    batch = collate_molecule_graphs([featurize_smiles(s) for s in outputs["smiles"]])
    with torch.no_grad():
        tokens = model.get_graph_features(**batch)
    expected = torch.tensor(outputs["graph_tokens"])
    assert tokens.shape == expected.shape == (8, 28, 64)
    torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=0)


def test_reproduces_original_last_gin_layer(golden_stack):
    state_dict, outputs = golden_stack
    model = golden_model(state_dict, True)
    graph = featurize_smiles(outputs["smiles"][0])
    with torch.no_grad():
        levels = model.graph_encoder(
            torch.from_numpy(graph.atom_features),
            torch.from_numpy(graph.edge_index),
            torch.from_numpy(graph.edge_features),
        )
    torch.testing.assert_close(levels[5], torch.tensor(outputs["level_outputs_layer5_first_graph"]), atol=1e-4, rtol=0)


def test_original_loader_reports_bad_weights(golden_stack):
    state_dict, _ = golden_stack
    wrong = dict(state_dict)
    wrong["mllm.abstractor.unexpected_thing"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected_thing"):
        convert_original_graph_state_dict(wrong)
    missing = {k: v for k, v in state_dict.items() if "motif_weight" not in k}
    model = golden_model(state_dict, True)
    with pytest.raises(ValueError, match=r"missing.*motif_embedding"):
        load_original_graph_weights(model, missing)
    distinct = dict(state_dict)
    distinct["mllm.abstractor.cross_attention.3.out_proj.bias"] = torch.ones(300)
    with pytest.raises(ValueError, match="differ"):
        convert_original_graph_state_dict(distinct, share_level_attention=True)
    too_small = tiny_model()
    with pytest.raises(ValueError, match=r"missing|shapes"):
        load_original_graph_weights(too_small, state_dict)


# --- configuration variants -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("projector", "tokens"),
    [({}, 16), ({"use_motifs": False}, 12), ({"queries_per_level": 2, "num_motif_queries": 3}, 9)],
)
def test_num_graph_tokens_is_derived(projector, tokens):
    model = tiny_model(**projector)
    assert model.config.num_graph_tokens == tokens  # (2 GIN layers + 1) levels x queries (+ motif queries)
    with torch.no_grad():
        graph = model.get_graph_features(**graph_batch("aspirin", "methane"))
    assert graph.shape == (2, tokens, 32)
    assert "num_graph_tokens" not in model.config.to_dict()
    with pytest.raises(AttributeError):
        model.config.num_graph_tokens = 3


def test_motif_position_first_or_last():
    first = tiny_model(motif_tokens_position="first")
    last = tiny_model(motif_tokens_position="last")
    last.load_state_dict(first.state_dict())
    batch = graph_batch("aspirin", "glucose")
    with torch.no_grad():
        a, b = first.get_graph_features(**batch), last.get_graph_features(**batch)
    torch.testing.assert_close(a[:, :4], b[:, -4:])
    torch.testing.assert_close(a[:, 4:], b[:, :-4])


def test_methane_keeps_raw_motif_queries_and_finite_gradients():
    model = tiny_model().train()
    projector = model.model.graph_projector
    batch = graph_batch("methane", "methane")
    tokens, _ = projector.motif_tokens(batch["motif_features"], batch["motif_mask"])
    torch.testing.assert_close(tokens, projector.motif_queries.expand(2, -1, -1))
    model.get_graph_features(**graph_batch("methane", "aspirin")).sum().backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("kind", ["llama", "qwen2", "opt"])
def test_any_causal_lm_family(kind):
    model = tiny_model(kind)
    batch = graph_batch("aspirin", "salt")
    input_ids = prompt_ids(model, 2)
    with torch.no_grad():
        out = model(input_ids=input_ids, **batch)
    assert out.logits.shape == (2, input_ids.shape[1], 96)
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **batch,
        max_new_tokens=3,
        min_new_tokens=3,  # random weights may pick the end-of-sequence token
        do_sample=False,
        pad_token_id=0,
    )
    assert generated.shape == (2, input_ids.shape[1] + 3)


# --- forward semantics ------------------------------------------------------------------------------------------


def test_graph_tokens_land_at_the_placeholders():
    model = tiny_model()
    batch = graph_batch("aspirin", "caffeine")
    input_ids = prompt_ids(model, 2)
    captured = {}

    def capture(module, args, kwargs, output):
        captured["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=input_ids, **batch)
        graph = model.get_graph_features(**batch)
    hook.remove()
    positions = input_ids == GRAPH_TOKEN_ID
    torch.testing.assert_close(captured["embeds"][positions].view(2, -1, 32), graph)
    text = model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(captured["embeds"][~positions], text[~positions])


def test_placeholder_count_mismatch_is_a_clear_error():
    model = tiny_model()
    batch = graph_batch("aspirin", "caffeine")
    input_ids = prompt_ids(model, 2)
    input_ids[1, 4] = 7  # one placeholder fewer in the second row
    with pytest.raises(ValueError, match=r"\[16, 15\] <graph> positions.*\[1, 1\] per sequence.*16 graph tokens"):
        model(input_ids=input_ids, **batch)
    with pytest.raises(ValueError, match=r"\[1\] per sequence"):
        model(input_ids=prompt_ids(model, 2), **graph_batch("aspirin"))


def test_placeholders_without_graph_inputs_are_text_with_a_warning():
    """As LLaVA reads its image token without pixel values (transformers' common tests call models so)."""
    import logging

    from transformers.testing_utils import CaptureLogger

    from llamo import modeling_llamo

    model = tiny_model()
    input_ids = prompt_ids(model, 2)
    logging.Logger.warning_once.cache_clear()
    with CaptureLogger(modeling_llamo.logger) as captured, torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert "<graph> placeholders but no graph inputs were given" in captured.out
    with torch.no_grad():
        text_only = model.lm_head(model.model.language_model(input_ids=input_ids).last_hidden_state)
    torch.testing.assert_close(logits, text_only)


def test_mixed_sizes_batch_equals_each_molecule_alone(tiny_llamo):
    model, processor = tiny_llamo
    names = ["aspirin", "methane", "salt", "glucose"]
    conversations = [molecule_messages(SMILES[name]) for name in names]
    batch = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert (batch["attention_mask"] == 0).any()  # left padding happened
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched_logits = model(**batch, position_ids=position_ids).logits[:, -1]
        batched_generation = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, conversation in enumerate(conversations):
        single = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        with torch.no_grad():
            logits = model(**single).logits[:, -1]
            generation = model.generate(**single, max_new_tokens=6, do_sample=False)
        torch.testing.assert_close(batched_logits[row], logits[0], atol=1e-4, rtol=1e-4)
        assert batched_generation[row, -6:].tolist() == generation[0, -6:].tolist()


def test_gradient_reaches_graph_modules_through_frozen_lm():
    model = tiny_model().train()
    for param in model.model.language_model.parameters():
        param.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    input_ids = prompt_ids(model, 2)
    labels = input_ids.clone()
    labels[input_ids == GRAPH_TOKEN_ID] = -100
    out = model(input_ids=input_ids, labels=labels, **graph_batch("aspirin", "caffeine"))
    out.loss.backward()
    graph_encoder, projector = model.model.graph_encoder, model.model.graph_projector
    assert graph_encoder.atom_encoder.embeddings[0].weight.grad.abs().sum() > 0
    assert graph_encoder.layers[0].conv.eps.grad is not None
    assert projector.level_queries.grad.abs().sum() > 0
    assert projector.motif_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.language_model.parameters())


def test_labels_give_a_causal_lm_loss():
    model = tiny_model()
    input_ids = prompt_ids(model, 2)
    labels = input_ids.clone()
    labels[:, :-2] = -100
    out = model(input_ids=input_ids, labels=labels, **graph_batch("aspirin", "caffeine"))
    logits = out.logits[:, -3:-1].reshape(-1, 96)
    expected = torch.nn.functional.cross_entropy(logits, input_ids[:, -2:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


# --- generation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"do_sample": False},
        {"do_sample": True, "top_k": 20, "temperature": 0.9},
        {"num_beams": 3},
        {"num_beams": 2, "num_return_sequences": 2},
        {"do_sample": True, "num_return_sequences": 3},
    ],
    ids=["greedy", "sampling", "beam", "beam-return-2", "sampling-return-3"],
)
def test_generation_modes_run_the_graph_once(tiny_llamo, settings):
    model, processor = tiny_llamo
    conversations = [molecule_messages(SMILES[name]) for name in ("aspirin", "salt", "caffeine")]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    calls = []
    hook = model.model.graph_encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, **settings)
    finally:
        hook.remove()
    copies = settings.get("num_return_sequences", 1)
    assert output.shape == (3 * copies, inputs["input_ids"].shape[1] + 5)
    assert len(calls) == 1  # graph inputs consumed at prefill only
    expansion = max(settings.get("num_beams", 1), copies)
    assert calls[0] == inputs["atom_mask"].sum().item() * expansion
    assert all(isinstance(text, str) for text in processor.batch_decode(output))


def test_prefill_only_when_inputs_carry_graph_tensors(tiny_llamo):
    model, processor = tiny_llamo
    inputs = processor.apply_chat_template(
        molecule_messages(SMILES["aspirin"]), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
    next_token = prefill.logits[:, -1:].argmax(-1)
    step_inputs = model.prepare_inputs_for_generation(
        next_token,
        cache=prefill.cache,
        attention_mask=torch.ones(1, inputs["input_ids"].shape[1] + 1),
        use_cache=True,
        is_first_iteration=False,
        **{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")},
    )
    assert "atom_features" not in step_inputs and "motif_mask" not in step_inputs
    first_inputs = model.prepare_inputs_for_generation(
        inputs["input_ids"], is_first_iteration=True, **{k: v for k, v in inputs.items() if k != "input_ids"}
    )
    assert "atom_features" in first_inputs


# --- transformers features --------------------------------------------------------------------------------------


def test_sdpa_and_eager_agree():
    model = tiny_model()
    eager = tiny_model()
    eager.load_state_dict(model.state_dict())
    model.set_attn_implementation("sdpa")
    eager.set_attn_implementation("eager")
    inputs = {"input_ids": prompt_ids(model, 2), **graph_batch("aspirin", "caffeine")}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, eager(**inputs).logits, atol=1e-5, rtol=1e-4)
    assert model.model.language_model.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_matches_plain_backward():
    plain = tiny_model().train()
    checkpointed = tiny_model().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert checkpointed.is_activation_checkpointing
    inputs = {"input_ids": prompt_ids(plain, 2), **graph_batch("aspirin", "caffeine")}
    inputs["labels"] = inputs["input_ids"].clone()
    plain(**inputs).loss.backward()
    checkpointed(**inputs).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=False):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("tie", [False, True])
def test_resize_token_embeddings(tie):
    model = tiny_model(tie=tie)
    model.resize_token_embeddings(100)
    assert model.get_input_embeddings().weight.shape[0] == 100
    assert model.lm_head.weight.shape[0] == 100
    assert model.config.text_config.vocab_size == 100
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie
    with torch.no_grad():
        assert model(input_ids=prompt_ids(model, 1), **graph_batch("aspirin")).logits.shape[-1] == 100


def test_bfloat16():
    model = tiny_model().to(torch.bfloat16)
    inputs = {"input_ids": prompt_ids(model, 2), **graph_batch("aspirin", "methane")}
    with torch.no_grad():
        out = model(**inputs)
        generated = model.generate(
            **inputs,
            attention_mask=torch.ones_like(inputs["input_ids"]),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    assert out.graph_embeds.dtype == torch.bfloat16
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_precomputed_graph_embeds_equal_graph_inputs():
    model = tiny_model()
    batch = graph_batch("aspirin", "caffeine")
    input_ids = prompt_ids(model, 2)
    with torch.no_grad():
        graph = model.get_graph_features(**batch)
        torch.testing.assert_close(
            model(input_ids=input_ids, graph_embeds=graph).logits, model(input_ids=input_ids, **batch).logits
        )
        with pytest.raises(ValueError, match="not both"):  # the graph inputs would be ignored
            model(input_ids=input_ids, graph_embeds=graph, **batch)
        for wrong in (graph[..., :8], torch.cat([graph, graph], -1), graph[0]):  # a wider one was cut silently
            with pytest.raises(ValueError, match=r"graph_embeds must be \(num_molecules, num_graph_tokens, "):
                model(input_ids=input_ids, graph_embeds=wrong)


def test_frozen_encoder_keeps_batchnorm_statistics_in_train_mode():
    model = tiny_model()
    model.freeze_graph_encoder()
    model.train()
    encoder = model.model.graph_encoder
    assert not encoder.training and not encoder.layers[0].norm.training
    assert model.model.graph_projector.training
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    inputs = {"input_ids": prompt_ids(model, 2), **graph_batch("aspirin", "caffeine")}
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in encoder.parameters())
    assert model.model.graph_projector.level_queries.grad is not None
    model.freeze_graph_encoder(False)
    model.train()
    assert encoder.training and encoder.atom_encoder.embeddings[0].weight.requires_grad


# --- batch alignment under beam search and num_return_sequences ------------------------------------------------


def molecule_inputs(processor, names):
    conversations = [molecule_messages(SMILES[name]) for name in names]
    return processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_beam_search_rows_equal_each_molecule_alone(tiny_llamo):
    model, processor = tiny_llamo
    names = ("aspirin", "salt")  # 13 vs 2 atoms, prompts of different lengths
    batch = molecule_inputs(processor, names)
    assert (batch["attention_mask"] == 0).any()  # left padding happened
    settings = {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    with torch.no_grad():
        batched = model.generate(**batch, **settings)
        batched_pairs = model.generate(**batch, **settings, num_return_sequences=2)
    for row, name in enumerate(names):
        single = molecule_inputs(processor, [name])
        with torch.no_grad():
            alone = model.generate(**single, **settings)
            alone_pairs = model.generate(**single, **settings, num_return_sequences=2)
        assert batched[row, -6:].tolist() == alone[0, -6:].tolist(), name
        assert batched_pairs[2 * row : 2 * row + 2, -6:].tolist() == alone_pairs[:, -6:].tolist(), name


def test_sampled_copies_get_their_own_molecule(tiny_llamo):
    """`num_return_sequences=2` sampling on a left-padded batch of two molecules: the expanded rows 0, 1 carry the first
    molecule's graph tokens and 2, 3 the second's, and their first-step logits are the molecule's own, alone."""
    model, processor = tiny_llamo
    names = ("caffeine", "methane")
    batch = molecule_inputs(processor, names)
    captured = []
    hook = model.model.graph_projector.register_forward_hook(lambda module, args, output: captured.append(output))
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            output = model.generate(
                **batch,
                do_sample=True,
                num_return_sequences=2,
                max_new_tokens=4,
                min_new_tokens=4,
                return_dict_in_generate=True,
                output_logits=True,
            )
    finally:
        hook.remove()
    assert len(captured) == 1 and captured[0].shape == (4, model.config.num_graph_tokens, 32)
    assert output.sequences.shape[0] == 4
    for row, name in enumerate(names):
        single = molecule_inputs(processor, [name])
        with torch.no_grad():
            graph = model.get_graph_features(**{k: v for k, v in single.items() if k in GRAPH_INPUT_NAMES})
            alone = model(**single).logits[0, -1]
        for copy in (2 * row, 2 * row + 1):
            torch.testing.assert_close(captured[0][copy], graph[0], msg=f"{name}, row {copy}")
            torch.testing.assert_close(output.logits[0][copy], alone, atol=1e-4, rtol=1e-4, msg=f"{name}, row {copy}")
    # each returned row still starts with its own molecule's prompt
    prompt = batch["input_ids"].repeat_interleave(2, dim=0)
    assert torch.equal(output.sequences[:, : prompt.shape[1]], prompt)


# --- mixed precision (training with dtype=bfloat16) ---------------------------------------------------------


def test_fp32_graph_modules_with_a_bfloat16_lm():
    """As stage 1/2 load a model with `dtype: bfloat16`: the LM in bf16, the trained graph stack in fp32."""
    model = tiny_model().to(torch.bfloat16)
    model.model.graph_encoder.float()
    model.model.graph_projector.float()
    assert model.model.graph_projector.level_queries.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16
    batch = graph_batch("aspirin", "methane")
    inputs = {"input_ids": prompt_ids(model, 2), **batch}
    with torch.no_grad():
        out = model(**inputs)
        graph = model.get_graph_features(**batch)
        generated = model.generate(
            **inputs,
            attention_mask=torch.ones_like(inputs["input_ids"]),
            max_new_tokens=3,
            min_new_tokens=3,
            num_beams=2,
            pad_token_id=0,
        )
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert out.graph_embeds.dtype == torch.bfloat16  # cast to the LM's dtype at the scatter
    # the graph stack computes in fp32; its tokens are rounded to bf16 once, where they enter the LM
    assert graph.dtype == torch.float32
    torch.testing.assert_close(out.graph_embeds, graph.to(torch.bfloat16), atol=0, rtol=0)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 3)

    # training step: the loss backpropagates through the bf16 LM into fp32 gradients of the graph stack
    model.train()
    for param in model.model.language_model.parameters():
        param.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    labels = inputs["input_ids"].clone()
    labels[labels == GRAPH_TOKEN_ID] = -100
    model(**inputs, labels=labels).loss.backward()
    grad = model.model.graph_projector.level_queries.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model.model.graph_encoder.atom_encoder.embeddings[0].weight.grad.dtype == torch.float32
