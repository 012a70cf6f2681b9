"""The behaviours transformers' common tests (ModelTesterMixin, GenerationTesterMixin, ConfigTester) check, written for
LLaMo: a tiny model built from a config, graph inputs in the batch-first `(B, M, ...)` layout, no network."""

from __future__ import annotations

import copy
import random
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LogitsProcessor, LogitsProcessorList, OPTConfig

from llamo import (
    GRAPH_INPUT_NAMES,
    LlamoConfig,
    LlamoForConditionalGeneration,
    LlamoModel,
    collate_sequence_molecules,
    featurize_smiles,
)

from .conftest import SMILES, TINY_GRAPH, TINY_PROJECTOR

VOCAB_SIZE = 96
GRAPH_TOKEN_ID = 95
PAD_TOKEN_ID = 0


class LlamoModelTester:
    """Tiny configs, models and inputs (the part transformers' `*ModelTester` classes play)."""

    hidden_size = 32
    num_hidden_layers = 2

    def get_config(self, text: str = "llama", tie: bool = False) -> LlamoConfig:
        common = {
            "vocab_size": VOCAB_SIZE,
            "hidden_size": self.hidden_size,
            "num_attention_heads": 4,
            "num_hidden_layers": self.num_hidden_layers,
            "tie_word_embeddings": tie,
            "pad_token_id": PAD_TOKEN_ID,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        if text == "llama":
            text_config = LlamaConfig(
                intermediate_size=64, num_key_value_heads=2, max_position_embeddings=256, **common
            )
        else:
            text_config = OPTConfig(ffn_dim=64, word_embed_proj_dim=self.hidden_size, **common)
        return LlamoConfig(
            graph_config=TINY_GRAPH,
            projector_config=TINY_PROJECTOR,
            text_config=text_config,
            graph_token_id=GRAPH_TOKEN_ID,
        )

    def create_model(self, seed: int = 0, **config) -> LlamoForConditionalGeneration:
        torch.manual_seed(seed)
        return LlamoForConditionalGeneration(self.get_config(**config)).eval()

    def prepare_inputs(
        self, model, names: tuple[str, ...] = ("aspirin", "caffeine"), prefixes: tuple[int, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """
        One molecule per row: `prefix` text tokens, the molecule's `<graph>` run, 4 text tokens; rows of different
        prefix lengths are left-padded. Returns `input_ids` and `attention_mask` `(B, L)` and the graph inputs
        `(B, 1, ...)`.
        """
        prefixes = prefixes or (3,) * len(names)
        num_tokens = model.config.num_graph_tokens
        rows = [[5 + i for i in range(p)] + [GRAPH_TOKEN_ID] * num_tokens + [20, 21, 22, 23] for p in prefixes]
        length = max(len(row) for row in rows)
        input_ids = torch.tensor([[PAD_TOKEN_ID] * (length - len(row)) + row for row in rows])
        attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
        graphs = collate_sequence_molecules([[featurize_smiles(SMILES[name])] for name in names])
        return {"input_ids": input_ids, "attention_mask": attention_mask, **graphs}


tester = LlamoModelTester()


def graph_inputs(inputs: dict) -> dict[str, torch.Tensor]:
    return {name: value for name, value in inputs.items() if name in GRAPH_INPUT_NAMES}


def comparable(config) -> dict:
    """The config as a dict without the entries loading fills in (`_name_or_path`, the loaded `dtype`)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("_name_or_path", "dtype")}
        return value

    return strip(config.to_dict())


def greedy(model, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=PAD_TOKEN_ID)


@contextmanager
def counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Within the block, the list gets the first input's first dimension (atoms) of every call of `module`."""
    calls: list[int] = []
    handle = module.register_forward_hook(lambda _module, args, _output: calls.append(args[0].shape[0]))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def model() -> LlamoForConditionalGeneration:
    return tester.create_model()


@pytest.fixture(scope="module")
def inputs(model) -> dict[str, torch.Tensor]:
    return tester.prepare_inputs(model)


@pytest.fixture
def single(model) -> dict[str, torch.Tensor]:
    return tester.prepare_inputs(model, names=("aspirin",))


# --- 1. assisted decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("same_draft", [True, False], ids=["self-draft", "other-draft"])
def test_assisted_greedy_equals_greedy(model, single, same_draft):
    assistant = tester.create_model() if same_draft else tester.create_model(seed=1)
    plain = greedy(model, **single)
    with (
        counting_calls(model.model.graph_encoder) as target_calls,
        counting_calls(assistant.model.graph_encoder) as draft_calls,
    ):
        assisted = greedy(model, **single, assistant_model=assistant)
    assert assisted.tolist() == plain.tolist()
    # each model reads the molecule once, at its own prefill (the draft's is not `is_first_iteration`)
    assert len(target_calls) == 1 and len(draft_calls) == 1


def test_assisted_sampling_reads_the_molecule_at_the_draft_prefill(model, single):
    assistant = tester.create_model(seed=1)
    torch.manual_seed(0)
    with torch.no_grad(), counting_calls(assistant.model.graph_encoder) as draft_calls:
        output = model.generate(
            **single, assistant_model=assistant, do_sample=True, max_new_tokens=6, min_new_tokens=6, top_k=10
        )
    assert output.shape == (1, single["input_ids"].shape[1] + 6)
    assert output[:, : single["input_ids"].shape[1]].tolist() == single["input_ids"].tolist()
    assert len(draft_calls) == 1


# --- 2. caches passed in ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_continues_from_a_cache(model, single, name):
    prompt_length = single["input_ids"].shape[1]
    full = torch.cat([single["input_ids"], torch.tensor([[30, 31, 32]])], dim=1)
    with torch.no_grad():
        expected = model(input_ids=full, **graph_inputs(single)).logits[:, prompt_length:]
        prefill = model(**single, use_cache=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = model(input_ids=full[:, prompt_length:], **{name: prefill.cache}, use_cache=True)
    assert prefill.cache.get_seq_length() == full.shape[1]  # the cache passed in was used and extended
    torch.testing.assert_close(step.logits, expected, atol=1e-5, rtol=1e-4)
    renamed = [w for w in caught if "past_key_values" in str(w.message)]
    assert len(renamed) == (name == "past_key_values")  # the deprecated name is accepted, with a FutureWarning


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_generation_continues_from_a_returned_cache(model, inputs, name):
    settings = {"do_sample": False, "pad_token_id": PAD_TOKEN_ID}
    with torch.no_grad():
        long = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, **settings)
        first = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True, **settings)
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)], dim=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            continued = model.generate(
                input_ids=first.sequences,
                attention_mask=mask,
                **graph_inputs(inputs),
                **{name: copy.deepcopy(first.cache)},
                max_new_tokens=4,
                min_new_tokens=4,
                **settings,
            )
    assert continued.tolist() == long.tolist()
    assert any("past_key_values" in str(w.message) for w in caught) == (name == "past_key_values")


def test_without_cache_every_step_reads_the_molecule(model, inputs):
    with torch.no_grad(), counting_calls(model.model.graph_encoder) as calls:
        uncached = model.generate(
            **inputs, do_sample=False, max_new_tokens=3, min_new_tokens=3, use_cache=False, pad_token_id=PAD_TOKEN_ID
        )
    assert len(calls) == 3
    assert uncached.tolist() == greedy(model, **inputs)[:, :-3].tolist()


class _PreferGraphToken(LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores[:, GRAPH_TOKEN_ID] += 1e4
        return scores


@pytest.mark.parametrize("use_cache", [False, True])
def test_generation_never_emits_the_graph_placeholder(model, inputs, use_cache):
    """A model whose generation config suppresses nothing (built from a config) still never generates `<graph>`: without
    a cache, a generated placeholder would be read as a molecule's slot at the next step."""
    assert not model.generation_config.suppress_tokens
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        generated = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=3,
            min_new_tokens=3,
            use_cache=use_cache,
            pad_token_id=PAD_TOKEN_ID,
            logits_processor=LogitsProcessorList([_PreferGraphToken()]),
            suppress_tokens=[3],
        )
    assert generated.shape[1] == prompt_length + 3
    assert not torch.isin(generated[:, prompt_length:], torch.tensor([GRAPH_TOKEN_ID, 3])).any()


def test_a_model_without_a_graph_token_generates_text():
    text_only = tester.create_model()
    text_only.config.graph_token_id = None
    prompt = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        generated = text_only.generate(input_ids=prompt, do_sample=False, max_new_tokens=2, pad_token_id=PAD_TOKEN_ID)
    assert generated.shape == (1, 5)


# --- 3. return_dict=False -----------------------------------------------------------------------------------------


def test_return_dict_false_gives_tuples(model, inputs):
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == GRAPH_TOKEN_ID, -100)
    with torch.no_grad():
        output = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
        base = model.model(**inputs)
        base_tuple = model.model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    assert len(as_tuple) == len(output.to_tuple()) and len(base_tuple) == len(base.to_tuple())
    torch.testing.assert_close(as_tuple[0], output.loss)
    torch.testing.assert_close(as_tuple[1], output.logits)
    torch.testing.assert_close(base_tuple[0], base.last_hidden_state)
    torch.testing.assert_close(base_tuple[-1], base.graph_embeds)
    model.config.return_dict = False
    try:
        with torch.no_grad():
            assert isinstance(model(**inputs), tuple)
            assert not isinstance(model(**inputs, return_dict=True), tuple)
    finally:
        model.config.return_dict = True


# --- 4. generation from inputs_embeds ---------------------------------------------------------------------------


def test_generate_from_inputs_embeds_without_molecule(model):
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.no_grad():
        from_ids = greedy(model, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        embeds = model.get_input_embeddings()(input_ids)
        from_embeds = greedy(model, inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids))
    assert from_embeds.tolist() == from_ids[:, input_ids.shape[1] :].tolist()  # only the new tokens come back


def test_generate_from_inputs_embeds_with_a_molecule(model, inputs):
    from_ids = greedy(model, **inputs)
    new_tokens = from_ids[:, inputs["input_ids"].shape[1] :].tolist()
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach()
    rest = {name: value for name, value in inputs.items() if name != "input_ids"}
    with torch.no_grad():
        graph = model.get_graph_features(**graph_inputs(inputs))
    scattered = embeds.masked_scatter((inputs["input_ids"] == GRAPH_TOKEN_ID).unsqueeze(-1), graph)
    # the placeholders found in the embeddings and filled with the graph inputs or with precomputed graph tokens,
    # or embeddings that already hold the graph tokens
    assert greedy(model, inputs_embeds=embeds, **rest).tolist() == new_tokens
    assert (
        greedy(model, inputs_embeds=embeds, attention_mask=inputs["attention_mask"], graph_embeds=graph).tolist()
        == new_tokens
    )
    assert greedy(model, inputs_embeds=scattered, attention_mask=inputs["attention_mask"]).tolist() == new_tokens


# --- 5. parallel plans and typed kwargs ---------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_tensor_parallel_plan_shards_the_head_like_the_embeddings(tie):
    model = tester.create_model(tie=tie)
    plan = model.tp_plan
    assert plan["lm_head"] == "colwise_gather_output"  # weight (vocab, hidden): split on the vocabulary
    assert plan["model.language_model.embed_tokens"] == "embedding_rowwise"  # (vocab, hidden): the same split
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie
    assert model.supports_tp_plan
    assert not any(name.startswith(("model.graph_encoder", "model.graph_projector")) for name in plan)
    # an LM without a plan keeps its head whole too
    assert "lm_head" not in tester.create_model(text="opt").tp_plan


def test_output_attentions_and_hidden_states(model, inputs):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = model(**inputs, output_attentions=True, output_hidden_states=True)
            base = model.model(**inputs)
    finally:
        model.set_attn_implementation("sdpa")
    batch, length = inputs["input_ids"].shape
    assert len(output.attentions) == tester.num_hidden_layers
    assert all(a.shape == (batch, 4, length, length) for a in output.attentions)
    assert len(output.hidden_states) == tester.num_hidden_layers + 1
    # the first hidden state is the LM's input: the graph tokens sit at the placeholders
    placeholders = inputs["input_ids"] == GRAPH_TOKEN_ID
    torch.testing.assert_close(output.hidden_states[0][placeholders], output.graph_embeds.flatten(0, 1))
    torch.testing.assert_close(output.hidden_states[-1], base.last_hidden_state)
    with torch.no_grad():
        plain = model(**inputs)
    assert plain.attentions is None and plain.hidden_states is None


# --- 6. graph modules in float32 under a bf16 LM ----------------------------------------------------------------


def test_set_attn_implementation_switches_the_lm_without_warnings():
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    model = tester.create_model()
    inputs = tester.prepare_inputs(model)
    with torch.no_grad():
        sdpa = model(**inputs).logits
    with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
        model.set_attn_implementation("eager")
    assert captured.out == ""
    assert model.config.text_config._attn_implementation == "eager"
    assert model.model.language_model.config._attn_implementation == "eager"
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True)
    assert len(eager.attentions) == tester.num_hidden_layers  # eager attention returns its weights
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(eager.logits[mask], sdpa[mask], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        model.set_attn_implementation("no_such_attention")
    assert model.config.graph_config._attn_implementation == "eager"  # left as it was by the refused request


def test_keep_in_fp32_patterns_match_the_graph_tensors(model):
    entries = model._keep_in_fp32_modules_strict
    loader = re.compile("|".join(entries))  # how transformers' loader reads them: anywhere in the name
    whole_module = [re.compile(rf"(?:^|\.){entry}(?:\.|$)") for entry in entries]  # as names of whole modules
    for name, tensor in model.state_dict().items():
        graph = name.startswith(("model.graph_encoder.", "model.graph_projector."))
        assert tensor.is_floating_point(), name  # no int64 BatchNorm counters (`LlamoBatchNorm`)
        assert bool(loader.search(name)) == graph, name
        assert any(pattern.search(name) for pattern in whole_module) == graph, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loading_casts_all_but_the_graph_stack(tmp_path, dtype):
    """What transformers' `test_keep_in_fp32_modules` checks: reloaded in a half dtype, every tensor of the strict
    fp32 modules is float32 and every other one has that dtype (no tensor keeps another dtype)."""
    tester.create_model().save_pretrained(tmp_path)
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype)
    for name, tensor in loaded.state_dict().items():
        kept = any(re.search(rf"(?:^|\.){m}(?:\.|$)", name) for m in loaded._keep_in_fp32_modules_strict)
        assert tensor.dtype == (torch.float32 if kept else dtype), name


def test_batch_norm_step_counters_of_older_weights_are_dropped(tmp_path, inputs):
    """Weights saved with BatchNorm step counters (the original's, earlier llamo versions') load without complaint:
    through `load_state_dict` from a plain dict (strict) and through `from_pretrained`."""
    model = tester.create_model()
    weights = model.state_dict()
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm1d)]
    old = {**weights, **{f"{name}.num_batches_tracked": torch.tensor(7) for name in norms}}
    fresh = tester.create_model(seed=1)
    assert fresh.load_state_dict(dict(old), strict=True)  # no missing or unexpected keys
    save_file({k: v.contiguous() for k, v in old.items()}, tmp_path / "model.safetensors")
    model.config.save_pretrained(tmp_path)
    loaded, info = LlamoForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_stack_is_built_in_float32_under_another_dtype(single, dtype):
    """`from_config(dtype=...)` and a changed default dtype build the LM in that dtype and the graph stack in float32
    (what loading does for `_keep_in_fp32_modules_strict`), so a model made from a config computes like a loaded one."""
    config = tester.get_config()
    built = [LlamoForConditionalGeneration._from_config(config, dtype=dtype)]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        built.append(LlamoForConditionalGeneration(config))
    finally:
        torch.set_default_dtype(default)
    for model in built:
        for name, tensor in model.state_dict().items():
            if name.startswith(("model.graph_encoder.", "model.graph_projector.")):
                assert tensor.dtype == torch.float32, name
            elif tensor.is_floating_point() and "rotary_emb" not in name:
                assert tensor.dtype == dtype, name
        with torch.no_grad():
            output = model.eval()(**single)
        assert output.graph_embeds.dtype == dtype and torch.isfinite(output.logits.float()).all()


def test_forward_kwargs_annotation_is_readable_at_run_time():
    """The typed `**kwargs` of both forwards resolve to transformers' kwargs at run time (no postponed string
    annotations), so code that inspects them finds e.g. `output_attentions`."""
    import inspect
    import typing

    for model_class in (LlamoModel, LlamoForConditionalGeneration):
        annotation = inspect.signature(model_class.forward).parameters["kwargs"].annotation
        assert not isinstance(annotation, str), model_class
        (kwargs_type,) = typing.get_args(annotation)
        assert "output_attentions" in kwargs_type.__annotations__


def test_torch_export_with_graph_inputs(model, inputs):
    """`torch.export` traces the whole forward, GIN included (the number of real atoms is data-dependent), and the
    exported program gives the eager logits, also for other molecules of the same padded shapes."""
    exported = torch.export.export(model, args=(), kwargs={**inputs, "use_cache": False}, strict=False)
    swapped = {name: value.flip(0) for name, value in inputs.items()}  # each row now holds the other molecule
    with torch.no_grad():
        for batch in (inputs, swapped):
            expected = model(**batch).logits
            torch.testing.assert_close(exported.module()(**batch, use_cache=False).logits, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading_keeps_the_graph_stack_in_float32(model, single, tmp_path, dtype):
    model.save_pretrained(tmp_path)
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype).eval()
    saved = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        if name.startswith(("model.graph_encoder.", "model.graph_projector.")):
            assert tensor.dtype == saved[name].dtype, name  # float32, and the step counters int64
            assert torch.equal(tensor, saved[name]), name  # the saved values, not rounded through `dtype`
        elif tensor.is_floating_point() and "rotary_emb" not in name:
            assert tensor.dtype == dtype, name
    with torch.no_grad():
        output = loaded(**single)
        generated = greedy(loaded, **single)
    assert output.logits.dtype == dtype and output.graph_embeds.dtype == dtype  # cast where they enter the LM
    assert torch.isfinite(output.logits.float()).all()
    assert generated.shape == (1, single["input_ids"].shape[1] + 6)


# --- common model behaviours -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_round_trip(inputs, tmp_path, tie):
    model = tester.create_model(tie=tie)
    model.save_pretrained(tmp_path)
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    assert (loaded.lm_head.weight is loaded.get_input_embeddings().weight) == tie
    assert comparable(loaded.config) == comparable(model.config)
    base = LlamoModel.from_pretrained(tmp_path).eval()  # the base model from the full model's folder
    with torch.no_grad():
        torch.testing.assert_close(base(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)


def test_new_graph_embedding_tables_are_xavier_uniform():
    """The atom and bond tables start as OGB's encoders make them (`xavier_uniform_`), not as PyTorch's N(0, 1)."""
    model = tester.create_model()
    tables = [m for m in model.model.graph_encoder.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(tables) == 9 + 3 * tester.get_config().graph_config.num_layers
    for table in tables:
        rows, width = table.weight.shape
        bound = (6 / (rows + width)) ** 0.5
        assert table.weight.abs().max() <= bound and table.weight.std() > bound / 4


def test_weights_missing_from_a_checkpoint_are_initialised_like_a_new_model(tmp_path):
    """Loading a checkpoint without the graph modules' weights initialises them as a new model does (transformers
    skips modules without parameters of their own, such as the tables' container, when it fills missing weights)."""
    model = tester.create_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = [name for name in weights if name.startswith(("model.graph_encoder.", "model.graph_projector."))]
    save_file({k: v for k, v in weights.items() if k not in dropped}, tmp_path / "model.safetensors")
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path).state_dict()
    fresh = model.state_dict()
    for name in dropped:
        value, reference = loaded[name].double(), fresh[name].double()
        assert torch.isfinite(value).all(), name
        if reference.numel() < 8 or reference.std() == 0:  # constants: BatchNorm statistics and scales, zero biases
            torch.testing.assert_close(value, reference, msg=name)
        else:
            assert 0.5 < float(value.std() / reference.std()) < 2, name


def test_config_round_trip(tmp_path):
    config = tester.get_config(tie=True)
    config.save_pretrained(tmp_path)
    for again in (
        LlamoConfig.from_pretrained(tmp_path),
        LlamoConfig.from_dict(config.to_dict()),
        LlamoConfig.from_json_file(tmp_path / "config.json"),
    ):
        assert again.to_dict() == config.to_dict()
        assert again.num_graph_tokens == config.num_graph_tokens
        assert again.text_config.model_type == "llama" and again.tie_word_embeddings
    assert config.get_text_config(decoder=True) is config.text_config


def test_input_and_output_embeddings():
    model = tester.create_model()
    assert model.get_input_embeddings() is model.model.language_model.embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    replacement = torch.nn.Embedding(VOCAB_SIZE, tester.hidden_size)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement and model.model.get_input_embeddings() is replacement
    head = torch.nn.Linear(tester.hidden_size, VOCAB_SIZE, bias=False)
    model.set_output_embeddings(head)
    assert model.get_output_embeddings() is head


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("size", [VOCAB_SIZE + 8, VOCAB_SIZE - 40])
def test_resize_token_embeddings(single, tie, size):
    model = tester.create_model(tie=tie)
    model.resize_token_embeddings(size)
    assert model.get_input_embeddings().weight.shape == (size, tester.hidden_size)
    assert model.get_output_embeddings().weight.shape == (size, tester.hidden_size)
    assert model.config.text_config.vocab_size == size
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie
    if size > GRAPH_TOKEN_ID:
        with torch.no_grad():
            assert model(**single).logits.shape[-1] == size


def test_batch_equals_each_row_alone(model):
    names, prefixes = ("caffeine", "methane"), (2, 6)
    batch = tester.prepare_inputs(model, names, prefixes)
    assert (batch["attention_mask"] == 0).any()  # left padding
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(**batch, position_ids=position_ids).logits
    batched = greedy(model, **batch)
    for row, (name, prefix) in enumerate(zip(names, prefixes, strict=True)):
        alone = tester.prepare_inputs(model, (name,), (prefix,))
        real = batch["attention_mask"][row].bool()
        with torch.no_grad():
            torch.testing.assert_close(logits[row, real], model(**alone).logits[0], atol=1e-5, rtol=1e-4)
        assert batched[row, -6:].tolist() == greedy(model, **alone)[0, -6:].tolist()


def test_attention_mask_hides_padded_positions(model):
    batch = tester.prepare_inputs(model, ("caffeine", "methane"), (2, 6))
    changed = batch["input_ids"].clone()
    changed[batch["attention_mask"] == 0] = 17  # other tokens under the padding
    with torch.no_grad():
        a = model(**batch).logits
        b = model(**{**batch, "input_ids": changed}).logits
        unmasked = model(**{**batch, "input_ids": changed, "attention_mask": torch.ones_like(changed)}).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real])
    assert not torch.allclose(a[0, -1], unmasked[0, -1])


@pytest.mark.parametrize(
    "settings",
    [{"num_beams": 2, "num_return_sequences": 2}, {"do_sample": True, "num_return_sequences": 3}],
    ids=["beam", "sample"],
)
def test_num_return_sequences(model, inputs, settings):
    with torch.no_grad(), counting_calls(model.model.graph_encoder) as calls:
        output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, **settings)
    copies = settings["num_return_sequences"]
    assert output.shape == (2 * copies, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(output[:, : inputs["input_ids"].shape[1]], inputs["input_ids"].repeat_interleave(copies, 0))
    assert len(calls) == 1


@pytest.mark.parametrize("enable", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_gradient_checkpointing_backward(inputs, enable):
    model = tester.create_model().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `gradient_checkpointing_enable` is the deprecated name
        getattr(model, enable)()
    assert model.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.language_model.layers)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == GRAPH_TOKEN_ID, -100)
    model(**inputs, labels=labels).loss.backward()
    assert model.model.graph_projector.level_queries.grad.abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_training_forward_with_labels(inputs):
    model = tester.create_model().train()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels[labels == GRAPH_TOKEN_ID] = -100
    output = model(**inputs, labels=labels)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    projector, encoder = model.model.graph_projector, model.model.graph_encoder
    assert projector.mlp[0].weight.grad.abs().sum() > 0
    assert encoder.atom_encoder.embeddings[0].weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- 7. compilation of the LM part -------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_static_cache_decoding_compiles_as_one_graph(model, single, fresh_dynamo):
    """`cache_implementation="static"` with a compile config: the prefill (graph stack) runs eagerly, every decoding
    step through the LM runs in one compiled graph (`fullgraph=True`: no graph break)."""
    from transformers import CompileConfig

    expected = greedy(model, **single)
    assert greedy(model, **single, cache_implementation="static").tolist() == expected.tolist()
    compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    compile_config._compile_all_devices = True  # compile on the CPU too
    try:
        compiled = greedy(model, **single, cache_implementation="static", compile_config=compile_config)
        assert hasattr(model, "_compiled_call")
    finally:
        model.__dict__.pop("_compiled_call", None)
    assert compiled.tolist() == expected.tolist()


@pytest.mark.slow
def test_forward_compiles(model, inputs, fresh_dynamo):
    """With precomputed graph tokens the forward is one graph; with raw graph inputs the GIN's data-dependent shapes
    (atoms and bonds selected by masks) break the graph, and the compiled forward still gives the same logits."""
    with torch.no_grad():
        expected = model(**inputs).logits
        graph = model.get_graph_features(**graph_inputs(inputs))
        text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        one_graph = torch.compile(model.forward, backend="eager", fullgraph=True)
        torch.testing.assert_close(one_graph(**text, graph_embeds=graph).logits, expected, atol=1e-5, rtol=1e-4)
        with_breaks = torch.compile(model.forward, backend="eager")
        torch.testing.assert_close(with_breaks(**inputs).logits, expected, atol=1e-5, rtol=1e-4)


def test_answer_loop_stop_finds_blocks_repeated_in_a_row():
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=2, min_tokens=6)
    block = [7, 8, 9]
    rows = torch.tensor(
        [
            [5, *block, *block, *block],  # one block three times: a loop
            [5, *block, *block, 4, 7, 8],  # twice, then something else
            [1, 2, 3, 4, 7, 8, 9, 7, 8, 4],  # a phrase repeated with a change
        ]
    )
    assert guard.looping(rows).tolist() == [True, False, False]
    # blocks shorter than min_tokens need more copies: (7,) four times is 4 < 6 tokens
    assert not guard.looping(torch.tensor([[5, 7, 7, 7, 7]])).item()
    assert guard.looping(torch.tensor([[5, 7, 7, 7, 7, 7, 7]])).item()
    guard(torch.tensor([[1, 1]]), torch.zeros(1, 10))  # the first call marks the prompt
    scores = guard(torch.tensor([[1, 1, *block, *block, *block]]), torch.zeros(1, 10))
    assert scores[0].argmax().item() == 2 and torch.isinf(scores[0, torch.arange(10) != 2]).all()
    with pytest.raises(ValueError, match="answer_loop_repeats"):
        AnswerLoopStopLogitsProcessor(1, eos_token_id=2)


def test_answer_loop_stop_finds_counters_and_long_blocks_repeated_twice():
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=2)
    stem = [10, 11, 12, 13, 14]  # a 6-token block whose last token counts up: "-1,16-dihydroxy", "-1,17-..."
    counter = [1, *(token for number in (40, 41, 42) for token in (*stem, number))]
    assert guard.looping(torch.tensor([counter])).item()
    assert not guard.looping(torch.tensor([counter[:13]])).item()  # two copies are not yet a loop
    # two tokens change from copy to copy: a list, not a counter
    varied = [1, *(token for pair in ((40, 50), (41, 51), (42, 52)) for token in (*stem[:4], *pair))]
    assert not guard.looping(torch.tensor([varied])).item()
    # short blocks (under 6 tokens) may vary only as whole-block repeats: "a, b, c" lists stay
    assert not guard.looping(torch.tensor([[1, 10, 11, 40, 10, 11, 41, 10, 11, 42, 10, 11, 43, 10, 11, 44]])).item()
    long_block = list(range(100, 130))  # 30 tokens: twice is a loop
    assert guard.looping(torch.tensor([[1, *long_block, *long_block]])).item()
    short_block = list(range(100, 120))  # 20 tokens twice is not (fewer than 24)
    assert not guard.looping(torch.tensor([[1, *short_block, *short_block]])).item()
    exact_only = AnswerLoopStopLogitsProcessor(3, eos_token_id=2, near_min_period=99, long_periods=(99, 0))
    assert not exact_only.looping(torch.tensor([counter])).item()


@pytest.mark.parametrize("rule", [0, 1])
def test_answer_loop_stop_ends_a_block_said_too_often(rule):
    """(16, 4): a long name said the fourth time; (6, 8): a made-up name's fragment the eighth time, copies apart."""
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=2)
    assert guard.long_blocks == ((16, 4), (6, 8))
    size, count = guard.long_blocks[rule]
    name = list(range(100, 100 + size))  # "3-hydroxy-3-hydroxy-2-oxo-...-butan-2-ol", or its "3-hydroxy-2-oxo"
    fillers = iter(range(300, 1000))
    text = [1]
    for _ in range(count):
        text += [*(next(fillers) for _ in range(7)), *name]  # "It is a member of X", "and a X", ...
    assert guard.looping(torch.tensor([text])).item()
    assert not guard.looping(torch.tensor([text[:-1]])).item()  # the last copy unfinished
    assert not guard.looping(torch.tensor([[*text, 5]])).item()  # fires as the copy ends, not at every later token
    fewer = text[: len(text) - size]  # one copy fewer: a name a description may well repeat
    assert not guard.looping(torch.tensor([fewer])).item()
    others = tuple(block for i, block in enumerate(guard.long_blocks) if i != rule)
    off = AnswerLoopStopLogitsProcessor(3, eos_token_id=2, long_blocks=others)
    assert not off.looping(torch.tensor([text])).item()


def _blocks_repeat(tail: list[int], period: int, copies: int, most_changes: int, least_changes: int = 0) -> bool:
    """Whether the last `copies` blocks of `period` tokens of `tail` each differ from the block before them in
    `least_changes` to `most_changes` tokens: the block rules of the loop guard, spelled out one by one."""
    if copies * period > len(tail):
        return False
    blocks = [tail[len(tail) - (c + 1) * period : len(tail) - c * period] for c in range(copies)]
    changes = [sum(a != b for a, b in zip(blocks[c], blocks[c + 1], strict=True)) for c in range(copies - 1)]
    return all(least_changes <= n <= most_changes for n in changes)


def test_answer_loop_stop_block_rules_agree_with_their_definition():
    """The batched block rules fire exactly where the rules of the docstring, checked block by block, do, over
    random answers made of varied repeats (the other rules off)."""
    import random

    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    rng = random.Random(0)
    off = {"frequent_block": (1, 10**6, 1), "few_tokens": (0, 10**6), "long_blocks": ()}
    fired = 0
    for repeats, settings in ((3, {}), (2, {"min_tokens": 6}), (4, {"max_period": 10, "long_periods": (8, 20)})):
        guard = AnswerLoopStopLogitsProcessor(repeats, eos_token_id=2, **off, **settings)
        for _ in range(60):
            rows = []
            for _ in range(3):
                vocab, text = rng.choice([3, 50]), []
                while len(text) < 100:
                    block = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
                    if rng.random() < 0.3:  # a count: one place changes from copy to copy (",21,22,23")
                        block, place = block[: rng.randint(2, 6)], rng.randrange(2)
                        for number in range(100, 100 + rng.randint(2, 16)):
                            text += [*block[:place], number, *block[place + 1 :]]
                    for _ in range(rng.randint(1, 5)):
                        copy = list(block)
                        if rng.random() < 0.5:
                            copy[rng.randrange(len(copy))] = rng.randrange(vocab)
                        text += copy
                rows.append(text[: rng.randint(0, 100)])
            length = min(len(row) for row in rows)
            answer = torch.tensor([row[:length] for row in rows], dtype=torch.long).reshape(3, length)
            expected = []
            for row in answer.tolist():
                exact = any(
                    _blocks_repeat(row, p, max(repeats, -(-guard.min_tokens // p)), 0)
                    for p in range(1, guard.max_period + 1)
                )
                near = any(_blocks_repeat(row, p, repeats, 1) for p in range(6, guard.max_period + 1))
                count = any(_blocks_repeat(row, p, -(-30 // p), 1, 1) for p in range(2, 6))
                long = any(
                    _blocks_repeat(row, p, 2, 0) for p in range(guard.long_periods[0], guard.long_periods[1] + 1)
                )
                expected.append(exact or near or count or long)
            assert guard.looping(answer).tolist() == expected
            fired += sum(expected)
    assert fired >= 30  # the answers do loop, often


def test_answer_loop_stop_ends_a_sentence_that_starts_as_an_earlier_one():
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor, drop_repeated_sentence_start

    period, eos, n = 30, 2, 10
    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=eos, sentence_end_token_ids=[period])
    base = list(range(100, 114))  # "It is a conjugate base of a 3-methyl-..."
    acid = [*base[:6], *range(200, 208)]  # "It is a conjugate acid of a ...": the same first 6 tokens
    text = [*base, period, *acid, period]
    assert guard.looping(torch.tensor([[*text, *base[:n]]])).item()
    assert not guard.looping(torch.tensor([[*text, *base[: n - 1]]])).item()  # not yet n tokens
    salt = [*base[:6], *range(300, 308)]  # 6 tokens in common with both, then other words
    assert not guard.looping(torch.tensor([[*text, *salt]])).item()
    assert not guard.looping(torch.tensor([[*text, 7, *base[:n]]])).item()  # inside a sentence, not its start
    assert not guard.looping(torch.tensor([[*text[:-1], *base[:n]]])).item()  # no sentence end before it
    assert not AnswerLoopStopLogitsProcessor(3, eos_token_id=eos).looping(torch.tensor([[*text, *base[:n]]])).item()
    # the pipeline drops the repeated start that made the guard end the answer, not an answer cut by the limit
    ended = [*text, *base[:n], eos, eos]
    assert drop_repeated_sentence_start(ended, [eos], [period]) == [*text, eos, eos]
    assert drop_repeated_sentence_start(ended[:-2], eos, [period]) == ended[:-2]
    assert drop_repeated_sentence_start([*text, eos], eos, [period]) == [*text, eos]


def test_answer_loop_stop_finds_a_block_frequent_in_a_varied_list():
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=2)
    size, count, window = guard.frequent_block
    block = list(range(10, 10 + size))  # "2,4-dihydroxy"
    fillers = [[40], [41, 42], [43, 44, 45], [40], [46, 47], [41, 42]][:count]  # "-2-oxo-", "-2-oxidanylidene-", ...
    varied = [1] + [token for filler in fillers for token in (*block, *filler)]
    starts = [i for i in range(len(varied)) if varied[i : i + size] == block]
    assert len(starts) == count and len(varied) <= window

    def first_stop(guard, text):  # generation asks at every step: the shortest prefix it ends
        return next((end for end in range(1, len(text) + 1) if guard.looping(torch.tensor([text[:end]])).item()), None)

    assert first_stop(guard, varied) == starts[-1] + size  # as the last copy is complete
    # the same copies spread over more than the window: a phrase the text comes back to, not a loop
    unique = iter(range(100, 1000))
    spread = [1] + [t for filler in fillers for t in (*block, *filler, *(next(unique) for _ in range(window // count)))]
    assert first_stop(guard, spread) is None
    # the other rules alone do not see this list
    off = AnswerLoopStopLogitsProcessor(3, eos_token_id=2, frequent_block=(size, 10**6, window))
    assert first_stop(off, varied) is None


def test_answer_loop_stop_finds_counting_lists():
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=2)
    comma = 5

    def locants(numbers, suffix=()):  # one token per digit, as the default model's tokenizer writes numbers
        return [t for n in numbers for t in (*(10 + int(d) for d in str(n)), *suffix, comma)]

    counting = [1, *locants(range(20, 30))]  # ",20,21,...,29": 10 copies of 3 tokens, one changing each time
    assert len(counting) - 1 == guard.counter_tokens
    assert guard.looping(torch.tensor([counting])).item()
    assert not guard.looping(torch.tensor([counting[:-3]])).item()  # 9 copies: 27 tokens
    assert guard.looping(torch.tensor([[1, *locants(range(20, 28), suffix=(30,))]])).item()  # "20Z,21Z,...,27Z"
    # real locant lists: pairs ("2,2,3,3,...": copies alternate between equal and changed), and short counts
    fluorinated = [1, *locants(n for n in range(2, 10) for _ in range(2))]
    assert not guard.looping(torch.tensor([fluorinated])).item()
    assert not guard.looping(torch.tensor([[1, *locants(range(1, 10))]])).item()  # "1,2,...,9": 18 tokens
    off = AnswerLoopStopLogitsProcessor(3, eos_token_id=2, counter_tokens=10**6)
    assert not off.looping(torch.tensor([counting])).item()


def test_answer_loop_stop_ends_answers_of_few_distinct_tokens():
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=2)
    most, window = guard.few_tokens
    # "3-hydroxy-2-oxo-3-hydroxy-3-hydroxy-2-oxo-2-hydroxy-(2-oxo-...": no block repeats in a row or often enough for
    # the other rules, yet the tail is made of few tokens
    parts = [[3, 5, 6, 7], [2, 5, 8, 9], [3, 5, 6, 7, 10], [2, 5, 8, 9, 11], [3, 5, 8, 7], [2, 5, 6, 9, 12]]
    choose, wandering = random.Random(0), [1]
    while len(wandering) < window + 1:
        wandering += choose.choice(parts)
    wandering = wandering[: window + 1]
    assert len(set(wandering[-window:])) <= most
    rules_off = dict(frequent_block=(1, 10**6, 1), counter_tokens=10**6, near_min_period=10**6, long_periods=(99, 0))
    assert (
        not AnswerLoopStopLogitsProcessor(3, eos_token_id=2, **rules_off, few_tokens=(0, window))
        .looping(torch.tensor([wandering]))
        .item()
    )
    few_only = AnswerLoopStopLogitsProcessor(3, eos_token_id=2, **rules_off)
    assert few_only.looping(torch.tensor([wandering])).item()
    assert not few_only.looping(torch.tensor([wandering[: window - 1]])).item()  # shorter than the window
    varied_text = list(range(100, 100 + window))  # ordinary text: many distinct tokens
    assert not guard.looping(torch.tensor([varied_text])).item()


def test_generate_ends_a_looping_answer(model, single):
    from llamo.generation_llamo import AnswerLoopStopLogitsProcessor

    length = single["input_ids"].shape[1]
    settings = {"do_sample": False, "max_new_tokens": 60, "eos_token_id": 2, "pad_token_id": PAD_TOKEN_ID}
    plain = model.generate(**single, **settings)[0, length:]
    detector = AnswerLoopStopLogitsProcessor(3, eos_token_id=2)
    assert detector.looping(plain[None]).item() or any(
        detector.looping(plain[None, :end]).item() for end in range(12, len(plain))
    ), "the tiny model should loop"
    stopped = model.generate(**single, **settings, answer_loop_repeats=3)[0, length:]
    assert len(stopped) < len(plain) and stopped[-1].item() == 2
    assert stopped[:-1].tolist() == plain[: len(stopped) - 1].tolist()
    assert detector.looping(stopped[None, :-1]).item()


def test_loop_guard_settings_set_on_a_model_survive_save_and_load(tmp_path):
    model = tester.create_model()
    model.generation_config.answer_loop_repeats = 3
    model.save_pretrained(tmp_path)
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.generation_config.answer_loop_repeats == 3
    sentences = tester.create_model()
    sentences.generation_config.answer_sentence_end_token_ids = [30]
    sentences.save_pretrained(tmp_path / "sentences")
    loaded = LlamoForConditionalGeneration.from_pretrained(tmp_path / "sentences")
    assert loaded.generation_config.answer_sentence_end_token_ids == [30]
    fresh = tester.create_model()
    fresh.save_pretrained(tmp_path / "plain")
    assert LlamoForConditionalGeneration.from_pretrained(tmp_path / "plain").generation_config._from_model_config


def test_generate_reads_answer_loop_repeats_from_kwarg_and_config(model, single):
    """The keyword wins over the generation config's attribute; 0 turns the guard off."""
    length = single["input_ids"].shape[1]
    settings = {"do_sample": False, "max_new_tokens": 60, "eos_token_id": 2, "pad_token_id": PAD_TOKEN_ID}
    plain = model.generate(**single, **settings)[0, length:].tolist()
    stopped = model.generate(**single, **settings, answer_loop_repeats=3)[0, length:].tolist()
    assert len(stopped) < len(plain), "the tiny model should loop"
    assert model.generate(**single, **settings, answer_loop_repeats=0)[0, length:].tolist() == plain
    model.generation_config.answer_loop_repeats = 3
    try:
        assert model.generate(**single, **settings)[0, length:].tolist() == stopped
        assert model.generate(**single, **settings, answer_loop_repeats=0)[0, length:].tolist() == plain
    finally:
        del model.generation_config.answer_loop_repeats


def test_generate_gives_the_guard_the_sentence_ends_from_kwarg_and_config(model, single, monkeypatch):
    import llamo.modeling_llamo as modeling

    built = []

    class Recording(modeling.AnswerLoopStopLogitsProcessor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.sentence_ends.tolist())

    monkeypatch.setattr(modeling, "AnswerLoopStopLogitsProcessor", Recording)
    settings = {"do_sample": False, "max_new_tokens": 2, "eos_token_id": 2, "pad_token_id": PAD_TOKEN_ID}
    model.generate(**single, **settings, answer_loop_repeats=3, answer_sentence_end_token_ids=[30, 31])
    model.generation_config.answer_sentence_end_token_ids = [30]
    try:
        model.generate(**single, **settings, answer_loop_repeats=3)
        model.generate(**single, **settings, answer_loop_repeats=3, answer_sentence_end_token_ids=None)
        model.generate(**single, **settings, answer_loop_repeats=0)  # no guard at all
    finally:
        del model.generation_config.answer_sentence_end_token_ids
    assert built == [[30, 31], [30], []]
