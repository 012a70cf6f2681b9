"""Convert the original LLaMo release (mlvlab/LLaMo's Lightning checkpoint) into a Hugging Face folder of this package:
`python -m llamo.convert_llamo_original_to_hf CKPT OUT_DIR --llm BASE_LLM_FOLDER [--keep-adapter]` runs `llamo
convert-original`, like transformers' `convert_*_to_hf.py`.

The checkpoint holds, under `mllm.`: the GIN (`graph_model.molecule_node_model.*`), the projector (`abstractor.*`, six
`cross_attention.i` copies, identical when one module is shared by all levels), `ln_graph_model.*` (unused: skipped)
and LLaMA-2 (32000 tokens plus `<pad>`) wrapped by PEFT 0.9 LoRA on q_proj and v_proj. The base LLM folder gives the
LLM's configuration, tokenizer and generation settings; its weights are not read.

The result: motif tokens first, one shared level attention (or six per-level modules, with a warning, when the copies
differ), `<graph>` added to the vocabulary, chat template `llama2`, and LoRA merged or kept as a PEFT adapter in
`OUT_DIR/adapter`. Released LoRA settings: r 8 (read from the weights), alpha 32 and dropout 0.05 (the alpha is not in
the checkpoint). Only the standard library is imported at the top (`--help` uses `add_conversion_arguments`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chat_template_llamo import GRAPH_TOKEN
from .cli_common import DTYPE_CHOICES

if TYPE_CHECKING:
    import torch

    from llamo.hub_cards.cards import ModelCardOptions
    from llamo.hub_cards.export import ExportResult

    from .modeling_llamo import LlamoForConditionalGeneration, LlamoModel

ENCODER_PREFIX = "mllm.graph_model.molecule_node_model."
PROJECTOR_PREFIX = "mllm.abstractor."
UNUSED_PREFIXES = ("mllm.ln_graph_model.",)
LLM_PREFIX = "mllm.language_model.base_model.model."
RELEASE_LORA_ALPHA = 32.0
RELEASE_LORA_DROPOUT = 0.05
RELEASE_NUM_HEADS = 4
PAD_TOKEN = "<pad>"
EMBEDDING_KEY = "model.language_model.embed_tokens.weight"

_LEVEL_ATTENTION = re.compile(r"cross_attention\.(\d+)\.(.+)")
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])\.default\.weight")
_BASE_LAYER_KEY = re.compile(r"(?P<module>.+)\.base_layer\.(?P<param>weight|bias)")
_NON_PERSISTENT = re.compile(r".+\.rotary_emb\.inv_freq")
_PEFT_ONLY = ("lora_", "modules_to_save", "original_module", "lora_magnitude_vector")

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """An original checkpoint that cannot be converted: unreadable, or with missing or unexpected keys (named)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that only a full unpickle can read, refused without `unsafe_unpickle`."""


def _names(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_checkpoint_state_dict(path: str | Path, unsafe_unpickle: bool = False) -> dict[str, Any]:
    """The `state_dict` of an original checkpoint: a Lightning `.ckpt` (tensors under `state_dict`), a pickled state
    dict, or a `.safetensors` file in the original key layout. Pickles are read with `torch.load(weights_only=True)`;
    one that also stores Python objects (Lightning saves hyper-parameters) is refused, naming what it would call,
    unless `unsafe_unpickle=True`: a full unpickle runs code from the file."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder: give the checkpoint file. A DeepSpeed checkpoint folder must first be consolidated "
            "into one file (DeepSpeed's zero_to_fp32.py)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    damaged = f"{path} is not a PyTorch checkpoint, or it is damaged"
    mmap = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if (refused := _refused_globals(path, error)) is None:
            raise CheckpointError(f"{damaged} ({_reason(error)}).") from None
        if not unsafe_unpickle:
            raise UnsafeCheckpointError(_refusal_message(path, error, refused)) from None
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as full_error:
            raise CheckpointError(f"{path} could not be unpickled: {_reason(full_error)}") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{damaged} ({_reason(error)}).") from None
    return _state_dict_of(loaded, path)


def _refused_globals(path: Path, error: pickle.UnpicklingError) -> list[str] | None:
    """The globals of `path` that `torch.load(weights_only=True)` refuses; None when it holds no readable pickle."""
    import torch

    with contextlib.suppress(Exception):  # torch >= 2.5, for torch.save's zip format
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    named = [name if "." in name else f"builtins.{name}" for name in re.findall(r"GLOBAL ([\w.]+)", str(error))]
    return named or _pickled_globals(path)


class _StandIn:
    """What `_GlobalNames` gives for every global: takes any arguments and state, does nothing."""

    def __init__(self, *args, **kwargs): ...

    __setstate__ = __init__


class _GlobalNames(pickle.Unpickler):
    """Adds the globals a pickle names to `names`, giving `_StandIn` for each (the pickle documentation's way of
    restricting globals): nothing the file names is imported or called."""

    def __init__(self, file, names: list[str]):
        super().__init__(file)
        self.names = names

    def find_class(self, module: str, name: str) -> type:
        self.names.append(f"{module}.{name}")
        return _StandIn

    def persistent_load(self, pid: Any) -> None:
        return None


def _pickled_globals(path: Path, max_pickles: int = 5) -> list[str] | None:
    """For a pickle torch's weights-only unpickler cannot parse (e.g. protocol 4): the globals it names that torch
    does not allow; None when it is no readable pickle."""
    import torch

    names: list[str] = []
    read = 0
    with contextlib.suppress(Exception), _pickle_file(path) as file:
        while read < max_pickles:  # the legacy torch format: several pickles, then the raw tensor bytes
            _GlobalNames(file, names).load()
            read += 1
    if not read and not names:
        return None
    allowed = getattr(torch._weights_only_unpickler, "_get_allowed_globals", dict)()
    return [name for name in dict.fromkeys(names) if name not in allowed]


def _pickle_file(path: Path):
    """The pickle of a checkpoint: the `data.pkl` of torch's zip format, else the file."""
    if not zipfile.is_zipfile(path):
        return open(path, "rb")
    archive = zipfile.ZipFile(path)
    return archive.open(next(name for name in archive.namelist() if name.endswith("data.pkl")))


def _refusal_message(path: Path, error: pickle.UnpicklingError, refused: list[str]) -> str:
    if not refused:
        return (
            f"{path} is a pickle that torch.load(weights_only=True) refuses ({_reason(error)}). Reading it fully runs "
            "code stored in the file: if you trust its source, pass --unsafe-unpickle (unsafe_unpickle=True)."
        )
    return (
        f"{path} holds Python objects besides tensors: unpickling it calls {_names(refused, 5)}, which "
        "torch.load(weights_only=True) refuses to run. --unsafe-unpickle (unsafe_unpickle=True) would run "
        f"{'them' if len(refused) > 1 else 'it'}: pass it only if you trust the file's source and what it calls."
    )


def _reason(error: Exception) -> str:
    """The informative part of a `torch.load` error (its weights-only message is mostly advice)."""
    text = str(error).strip()
    found = re.search(r"(?:WeightsUnpickler error:|\n\n)\s*(.+?)\s*(?:\n\n|$)", text, flags=re.S)
    return found.group(1) if found else (text.splitlines() or [type(error).__name__])[0]


def _state_dict_of(loaded: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        state_dict = dict(loaded["state_dict"])
    elif isinstance(loaded, Mapping) and any(str(key).startswith("mllm.") for key in loaded):
        state_dict = dict(loaded)
    else:
        top = _names(map(str, loaded)) if isinstance(loaded, Mapping) else type(loaded).__name__
        raise CheckpointError(f"{path} has no `state_dict` with mllm.* weights (found: {top}).")
    if not_tensors := [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]:
        raise CheckpointError(f"{path}: these state_dict entries are not tensors: {_names(not_tensors)}")
    return state_dict


_ENCODER_RULES = (
    (r".+\.num_batches_tracked", ""),  # BatchNorm step counters: `LlamoBatchNorm` keeps none
    (r"atom_encoder\.atom_embedding_list\.(\d+)\.weight", r"graph_encoder.atom_encoder.embeddings.\1.weight"),
    (r"gnns\.(\d+)\.eps", r"graph_encoder.layers.\1.conv.eps"),
    (r"gnns\.(\d+)\.mlp\.(\d+)\.(\w+)", r"graph_encoder.layers.\1.conv.nn.\2.\3"),
    (
        r"gnns\.(\d+)\.bond_encoder\.bond_embedding_list\.(\d+)\.weight",
        r"graph_encoder.layers.\1.bond_encoder.embeddings.\2.weight",
    ),
    (r"batch_norms\.(\d+)\.(\w+)", r"graph_encoder.layers.\1.norm.\2"),
)
_PROJECTOR_RULES = (
    (r"query_tokens", r"graph_projector.level_queries"),
    (r"motif_weight\.weight", r"graph_projector.motif_embedding.weight"),
    (r"motif_query_tokens", r"graph_projector.motif_queries"),
    (r"motif_cross_attention\.(.+)", r"graph_projector.motif_attention.\1"),
    (r"layer_norm\.(\w+)", r"graph_projector.layer_norm.\1"),
    (r"net\.(\d+)\.(\w+)", r"graph_projector.mlp.\1.\2"),
)


def _rename(name: str, rules) -> str | None:
    for pattern, replacement in rules:
        if match := re.fullmatch(pattern, name):
            return match.expand(replacement)
    return None


def _numbered(weights: Mapping[str, Any], pattern: str) -> dict[int, Any]:
    """The weights whose key matches `pattern` (one group: an index), by index in order."""
    return dict(
        sorted((int(match.group(1)), value) for key, value in weights.items() if (match := re.fullmatch(pattern, key)))
    )


def level_attention_differences(graph: Mapping[str, Any]) -> tuple[int, dict[int, float]]:
    """The number of `cross_attention` copies in the original graph weights, and for each copy that differs from
    copy 0, the largest absolute difference over its parameters (infinite where shapes or names differ)."""
    import torch

    copies: dict[int, dict[str, Any]] = {}
    for key, value in graph.items():
        if key.startswith(PROJECTOR_PREFIX) and (match := _LEVEL_ATTENTION.fullmatch(key[len(PROJECTOR_PREFIX) :])):
            copies.setdefault(int(match.group(1)), {})[match.group(2)] = value
    first = copies.get(0, {})
    differing = {}
    for level, params in sorted(copies.items()):
        if level and (params.keys() != first.keys() or any(v.shape != first[k].shape for k, v in params.items())):
            differing[level] = float("inf")
        elif level and not all(torch.equal(value, first[name]) for name, value in params.items()):
            differing[level] = max(float((v.float() - first[k].float()).abs().max()) for k, v in params.items())
    return len(copies), differing


def is_level_attention_shared(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when all `cross_attention.i` copies of an original checkpoint are identical (the released weights)."""
    count, differing = level_attention_differences(state_dict)
    if not count:
        raise ValueError(f"No {PROJECTOR_PREFIX}cross_attention.* weights found: is this an original LLaMo checkpoint?")
    return not differing


def convert_original_graph_state_dict(
    state_dict: Mapping[str, torch.Tensor], share_level_attention: bool | None = None
) -> dict[str, torch.Tensor]:
    """Rename the graph part of an original checkpoint (other keys are ignored) to `LlamoModel` keys (`graph_encoder.*`,
    `graph_projector.*`), with the per-level attentions as one shared module (they must then be identical) or one
    module per level (`None`: decided from the weights). A ValueError names the graph keys it does not know."""
    if share_level_attention is None:
        share_level_attention = is_level_attention_shared(state_dict)
    elif share_level_attention and not is_level_attention_shared(state_dict):
        raise ValueError(
            "share_level_attention=True, but the checkpoint's cross_attention.0-5 differ: convert it with "
            "share_level_attention=False."
        )
    if share_level_attention:  # copy 0 becomes the shared module, the identical others are dropped
        levels = (
            (r"cross_attention\.0\.(.+)", r"graph_projector.level_attention.\1"),
            (r"cross_attention\.\d+\..+", ""),
        )
    else:
        levels = ((r"cross_attention\.(\d+)\.(.+)", r"graph_projector.level_attentions.\1.\2"),)
    converted, unknown = {}, []
    for key, value in state_dict.items():
        if key.startswith(ENCODER_PREFIX):
            name = _rename(key[len(ENCODER_PREFIX) :], _ENCODER_RULES)
        elif key.startswith(PROJECTOR_PREFIX):
            name = _rename(key[len(PROJECTOR_PREFIX) :], (*_PROJECTOR_RULES, *levels))
        else:
            continue
        if name is None:
            unknown.append(key)
        elif name:
            converted[name] = value
    if unknown:
        raise ValueError(f"Unknown keys in the graph part of the original checkpoint: {unknown}")
    return converted


def original_graph_configs(
    state_dict: Mapping[str, torch.Tensor], num_heads: int = RELEASE_NUM_HEADS
) -> dict[str, dict]:
    """`{"graph_config": {...}, "projector_config": {...}, "output_hidden_size": int}` read from the shapes of an
    original checkpoint (attention heads are not recorded in weights: `num_heads` is taken as given)."""
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    projector = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PROJECTOR_PREFIX)}
    if not encoder or not projector:
        raise ValueError(
            f"The state dict has no {ENCODER_PREFIX}* or {PROJECTOR_PREFIX}* keys: not an original LLaMo checkpoint."
        )
    atom_tables = _numbered(encoder, r"atom_encoder\.atom_embedding_list\.(\d+)\.weight").values()
    bond_tables = _numbered(encoder, r"gnns\.0\.bond_encoder\.bond_embedding_list\.(\d+)\.weight").values()
    num_layers = 1 + max(_numbered(encoder, r"gnns\.(\d+)\.eps"))
    hidden = encoder["atom_encoder.atom_embedding_list.0.weight"].shape[1]
    net = list(_numbered(projector, r"net\.(\d+)\.weight").values())
    level_queries = projector["query_tokens"]
    has_motifs = "motif_query_tokens" in projector
    if level_queries.shape[0] != num_layers + 1:
        raise ValueError(
            f"The checkpoint has {level_queries.shape[0]} level query groups for a {num_layers}-layer GIN "
            f"({num_layers + 1} levels)."
        )
    return {
        "graph_config": {
            "hidden_size": hidden,
            "num_layers": num_layers,
            "mlp_ratio": encoder["gnns.0.mlp.0.weight"].shape[0] // hidden,
            "atom_vocab_sizes": [table.shape[0] for table in atom_tables],
            "bond_vocab_sizes": [table.shape[0] for table in bond_tables],
        },
        "projector_config": {
            "queries_per_level": level_queries.shape[1],
            "num_motif_queries": projector["motif_query_tokens"].shape[0] if has_motifs else 4,
            "num_heads": num_heads,
            "mlp_depth": len(net),
            "share_level_attention": is_level_attention_shared(state_dict),
            "motif_tokens_position": "first",
            "use_motifs": has_motifs,
            "motif_feature_size": projector["motif_weight.weight"].shape[1] if has_motifs else 73,
        },
        "output_hidden_size": net[-1].shape[0],
    }


def load_original_graph_weights(
    model: LlamoModel | LlamoForConditionalGeneration, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Load the graph encoder and projector of an original checkpoint into `model` (in place); a ValueError names
    missing or unexpected graph weights, or shapes that do not match the model's config."""
    from .modeling_llamo import LlamoForConditionalGeneration

    base = model.model if isinstance(model, LlamoForConditionalGeneration) else model
    converted = convert_original_graph_state_dict(
        state_dict, share_level_attention=base.config.projector_config.share_level_attention
    )
    own = {key for key in base.state_dict() if key.startswith(("graph_encoder.", "graph_projector."))}
    what = "Original graph weights do not fit this model (build it with `original_graph_configs(state_dict)`)"
    _load_checked(base, converted, own, what)


def _load_checked(model, weights: dict[str, Any], expected: set[str], what: str, **load_options) -> None:
    """`model.load_state_dict(weights)`, after a `CheckpointError` (a ValueError) naming the keys missing from
    `weights` or not in `expected`; torch's error names the shapes that differ."""
    missing, unexpected = expected - weights.keys(), weights.keys() - expected
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing {_names(missing) or 'none'}; unexpected {_names(unexpected) or 'none'}")
    try:
        model.load_state_dict(weights, strict=False, **load_options)
    except RuntimeError as error:
        raise CheckpointError(f"{what}: shapes differ. {error}") from None


@dataclass
class OriginalParts:
    """An original state dict split up: graph weights (original names), LM weights and LoRA pairs (our names)."""

    graph: dict[str, Any]
    language_model: dict[str, Any]
    lora: dict[str, dict[str, Any]]

    @property
    def lora_rank(self) -> int | None:
        ranks = {pair["A"].shape[0] for pair in self.lora.values()}
        if len(ranks) > 1:
            raise CheckpointError(f"The LoRA layers have different ranks {sorted(ranks)}; one rank is supported.")
        return ranks.pop() if ranks else None


def split_original_state_dict(state_dict: Mapping[str, Any]) -> OriginalParts:
    """Sort an original state dict into its graph part, its LM weights (PEFT wrapper names removed) and its LoRA pairs.
    A CheckpointError names the keys outside the known layout (another adapter name than PEFT's `default` included)
    and the LoRA layers without their A, B or base weight."""
    graph, language_model, lora = {}, {}, {}
    wrapped, unexpected = set(), []
    for key, value in state_dict.items():
        rest = key.removeprefix(LLM_PREFIX)
        name = re.sub(r"^model\.", "model.language_model.", rest)
        if key.startswith((ENCODER_PREFIX, PROJECTOR_PREFIX, *UNUSED_PREFIXES)):
            graph[key] = value
        elif rest == key or not rest.startswith(("model.", "lm_head.")):
            unexpected.append(key)
        elif lora_match := _LORA_KEY.fullmatch(name):
            lora.setdefault(lora_match["module"], {})[lora_match["part"]] = value
        elif base_match := _BASE_LAYER_KEY.fullmatch(name):
            wrapped.add(base_match["module"])
            language_model[f"{base_match['module']}.{base_match['param']}"] = value
        elif _NON_PERSISTENT.fullmatch(rest):
            continue  # recomputed from the config at load time
        elif any(marker in rest for marker in _PEFT_ONLY):
            unexpected.append(key)
        else:
            language_model[name] = value
    if unexpected:
        raise CheckpointError(f"Unexpected keys in the original checkpoint: {_names(unexpected)}")
    broken = sorted(
        module for module in set(lora) | wrapped if module not in wrapped or set(lora.get(module, {})) != {"A", "B"}
    )
    if broken:
        raise CheckpointError(f"LoRA layers without their lora_A, lora_B or base_layer weights: {_names(broken)}")
    if not language_model:
        raise CheckpointError(f"The checkpoint has no language model weights (no {LLM_PREFIX}* keys).")
    return OriginalParts(graph, language_model, lora)


def align_tokenizer(tokenizer, checkpoint_vocab: int, llm: str) -> int:
    """Give the base tokenizer the checkpoint's vocabulary (LLaMA-2 + `<pad>`) and add `<graph>`; returns its id."""
    if len(tokenizer) == checkpoint_vocab - 1:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})  # the original's one extra token
    if len(tokenizer) != checkpoint_vocab:
        raise CheckpointError(
            f"The tokenizer in {llm} has {len(tokenizer)} tokens but the checkpoint's embeddings have "
            f"{checkpoint_vocab} rows: give the base LLM the checkpoint was trained from (LLaMA-2-7B-chat)."
        )
    if GRAPH_TOKEN in tokenizer.get_vocab():
        raise CheckpointError(f"The tokenizer in {llm} already has {GRAPH_TOKEN}: give the original base LLM folder.")
    tokenizer.add_tokens([GRAPH_TOKEN], special_tokens=True)
    tokenizer.padding_side = "left"
    return tokenizer.convert_tokens_to_ids(GRAPH_TOKEN)


@dataclass
class ConversionResult:
    """The written export, and facts about the conversion (also shown in the model card)."""

    export: ExportResult
    facts: list[tuple[str, str]]


def convert_graph_part(
    parts: OriginalParts, num_heads: int = RELEASE_NUM_HEADS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The graph configs read from the checkpoint (`original_graph_configs`) and the graph weights under our
    `LlamoForConditionalGeneration` names."""
    try:
        found = original_graph_configs(parts.graph, num_heads=num_heads)
        share = found["projector_config"]["share_level_attention"]
        converted = convert_original_graph_state_dict(parts.graph, share_level_attention=share)
    except KeyError as error:
        short = str(error.args[0])
        prefix = ENCODER_PREFIX if short.startswith(("atom_encoder", "gnns", "batch_norms")) else PROJECTOR_PREFIX
        raise CheckpointError(f"Missing key in the graph part of the checkpoint: {prefix}{short}") from None
    except ValueError as error:
        raise CheckpointError(f"Graph part of the checkpoint: {error}") from None
    return found, {f"model.{key}": value for key, value in converted.items()}


def describe_level_attention(graph: Mapping[str, Any], share: bool) -> str:
    """How the checkpoint's per-level attention copies were converted, for the card, the log and the command."""
    count, differing = level_attention_differences(graph)
    if share:
        return (
            f"the {count} identical `cross_attention` copies became one shared module (share_level_attention=True, "
            "as in the released weights)"
        )
    levels = ", ".join(str(level) for level in differing)
    return (
        f"the checkpoint's {count} `cross_attention` copies DIFFER (copies {levels} differ from copy 0 by up to "
        f"{max(differing.values(), default=0.0):.3g}), so they were kept as {count} separate per-level modules "
        "(share_level_attention=False, as in the paper), not merged into the release's one shared module"
    )


def converted_config(found: dict[str, Any], llm: Path, tokenizer, graph_token_id: int):
    """The `LlamoConfig`: graph configs from the checkpoint, the LM's from `llm` with the grown vocabulary."""
    from transformers import AutoConfig

    from .configuration_llamo import LlamoConfig

    text_config = AutoConfig.from_pretrained(llm)
    if getattr(text_config, "is_encoder_decoder", False):
        raise CheckpointError(f"{llm} holds an encoder-decoder model; LLaMo's LLM is decoder-only.")
    if text_config.hidden_size != found["output_hidden_size"]:
        raise CheckpointError(
            f"The projector outputs {found['output_hidden_size']} features but {llm} has hidden size "
            f"{text_config.hidden_size}: give the base LLM the checkpoint was trained with."
        )
    text = {**text_config.to_dict(), "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    return LlamoConfig(
        graph_config=found["graph_config"],
        projector_config=found["projector_config"],
        text_config=text,
        graph_token_id=graph_token_id,
    )


def language_model_weights(parts: OriginalParts, vocab_size: int, merge: bool, lora_alpha: float) -> dict[str, Any]:
    """The LM weights under our names, embeddings and LM head grown to `vocab_size` rows, and with `merge` each LoRA
    layer's `W + (alpha / r) * B @ A`, computed in float32 and stored in W's dtype (rounded once, where PEFT's
    `merge_and_unload` rounds the update to a half-precision W's dtype before adding it).

    The new rows (`<graph>`) are the mean of the others: the row is never used as an embedding, and generation
    suppresses the token (`resize_token_embeddings` would draw them at random)."""
    import torch

    weights = dict(parts.language_model)
    for module, pair in parts.lora.items() if merge else ():
        base = weights[f"{module}.weight"]
        delta = (pair["B"].float() @ pair["A"].float()) * (lora_alpha / pair["A"].shape[0])
        if delta.shape != base.shape:
            raise CheckpointError(f"LoRA of {module}: a {tuple(delta.shape)} update for a {tuple(base.shape)} weight.")
        weights[f"{module}.weight"] = (base.float() + delta).to(base.dtype)
    for key in (EMBEDDING_KEY, "lm_head.weight"):
        if key in weights:
            mean = weights[key].float().mean(dim=0, keepdim=True).to(weights[key].dtype)
            weights[key] = torch.cat([weights[key], mean.expand(vocab_size - weights[key].shape[0], -1)])
    return weights


def convert_original_checkpoint(
    checkpoint: str | Path,
    llm: str | Path,
    output_dir: str | Path,
    keep_adapter: bool = False,
    lora_alpha: float = RELEASE_LORA_ALPHA,
    lora_dropout: float = RELEASE_LORA_DROPOUT,
    unsafe_unpickle: bool = False,
    dtype: str = "auto",
    num_heads: int = RELEASE_NUM_HEADS,
    overwrite: bool = False,
    card_options: ModelCardOptions | None = None,
) -> ConversionResult:
    """Convert an original LLaMo checkpoint (see `load_checkpoint_state_dict`) and its base LLM folder (LLaMA-2-7B-chat
    in Hugging Face format) into the export folder `output_dir` (new or empty unless `overwrite`).

    `keep_adapter` keeps LoRA as a PEFT adapter in `output_dir/adapter` instead of merging it; `unsafe_unpickle` allows
    a full unpickle, which runs code stored in the checkpoint; `dtype` `auto` keeps the checkpoint's LM dtype;
    `card_options` say what the model card says (the license defaults to LLaMA-2's)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig

    from llamo.hub_cards.cards import ModelCardOptions, build_model_card
    from llamo.hub_cards.export import check_destination, write_export

    from .builder import llamo_generation_config
    from .modeling_llamo import LlamoForConditionalGeneration
    from .processing_llamo import LlamoProcessor

    checkpoint, llm, output_dir = Path(checkpoint), Path(llm), Path(output_dir)
    check_destination(output_dir, overwrite, checkpoint=checkpoint, base_LLM_folder=llm)
    if not (llm / "config.json").is_file():
        raise FileNotFoundError(f"Base LLM folder not found or without config.json: {llm}")
    if dtype not in DTYPE_CHOICES:
        raise CheckpointError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}.")
    if not (0 < lora_alpha < math.inf and 0 <= lora_dropout < 1):  # NaN fails both
        raise CheckpointError(
            f"LoRA needs a finite alpha > 0 and a dropout in [0, 1), got {lora_alpha} and {lora_dropout}."
        )
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise CheckpointError(f"num_heads must be a whole number of at least 1, got {num_heads!r}.")

    parts = split_original_state_dict(load_checkpoint_state_dict(checkpoint, unsafe_unpickle))
    found, graph_weights = convert_graph_part(parts, num_heads)
    if EMBEDDING_KEY not in parts.language_model:
        raise CheckpointError(f"Missing key: {LLM_PREFIX}model.embed_tokens.weight (the token embeddings).")
    tokenizer = AutoTokenizer.from_pretrained(llm)
    graph_token_id = align_tokenizer(tokenizer, parts.language_model[EMBEDDING_KEY].shape[0], str(llm))
    config = converted_config(found, llm, tokenizer, graph_token_id)

    llm_weights = language_model_weights(parts, len(tokenizer), merge=not keep_adapter, lora_alpha=lora_alpha)
    target = parts.language_model[EMBEDDING_KEY].dtype if dtype == "auto" else getattr(torch, dtype)
    weights = {k: v.to(target) if v.is_floating_point() else v for k, v in {**graph_weights, **llm_weights}.items()}
    with torch.device("meta"):
        model = LlamoForConditionalGeneration(config)
    what = "The converted checkpoint does not fit the model built from it"
    _load_checked(model, weights, set(model.state_dict()), what, assign=True)
    model.eval()
    if (llm / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(llm)
    else:
        generation = GenerationConfig.from_model_config(config.text_config)
    model.generation_config = llamo_generation_config(generation, tokenizer, graph_token_id)
    processor = LlamoProcessor(tokenizer, chat_template="llama2", num_graph_tokens=config.num_graph_tokens)

    share = found["projector_config"]["share_level_attention"]
    level_attention = describe_level_attention(parts.graph, share)
    if not share:
        logger.warning("Converting %s: %s.", checkpoint.name, level_attention)
    rank = parts.lora_rank
    lora_settings = f"r {rank}, alpha {lora_alpha:g}, dropout {lora_dropout:g}" if rank else None
    facts = _conversion_facts(checkpoint, llm, parts, level_attention, graph_token_id, keep_adapter, lora_settings)
    options = replace(card_options or ModelCardOptions(license="llama2"), conversion=facts)
    card = build_model_card(model, processor, options)
    adapter_base = options.repo_id or str(output_dir.resolve())

    def write_adapter(folder: Path) -> None:
        if keep_adapter and parts.lora:
            adapter = {"r": rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "bias": "none"}
            adapter |= {"task_type": "CAUSAL_LM", "base_model_name_or_path": adapter_base, "inference_mode": True}
            LoraConfig(**adapter, target_modules=sorted(parts.lora)).save_pretrained(folder / "adapter")
            pairs = {  # the names PEFT saves for a LlamoForConditionalGeneration, adapter name dropped
                f"base_model.model.{module}.lora_{part}.weight": pair[part].contiguous()
                for module, pair in sorted(parts.lora.items())
                for part in ("A", "B")
            }
            save_file(pairs, folder / "adapter" / "adapter_model.safetensors", metadata={"format": "pt"})

    export = write_export(model, processor, output_dir, card, overwrite=overwrite, extra=write_adapter)
    return ConversionResult(export, facts)


def _conversion_facts(
    checkpoint: Path, llm: Path, parts: OriginalParts, attention: str, graph_id: int, keep: bool, settings: str | None
) -> list[tuple[str, str]]:
    """(label, value) rows describing a conversion, for the card and the command's report."""
    leaves = sorted({module.rsplit(".", 1)[-1] for module in parts.lora})
    vocab = parts.language_model[EMBEDDING_KEY].shape[0]
    if not parts.lora:
        lora = "none in the checkpoint"
    elif keep:
        lora = (
            f"kept as a PEFT adapter in `adapter/` ({len(parts.lora)} layers: {', '.join(leaves)}); the main "
            "weights are the base weights: load the adapter with `PeftModel.from_pretrained(model, <this repo>, "
            'subfolder="adapter")`'
        )
    else:
        lora = f"merged into the {', '.join(leaves)} weights of {len(parts.lora)} layers"
    facts = [
        ("Source checkpoint", f"`{checkpoint.name}` ({checkpoint.stat().st_size / 2**30:.2f} GiB)"),
        ("Base LLM folder", f"`{llm.name}` (configuration, tokenizer and generation settings)"),
        ("LoRA", lora),
        *([("LoRA settings", settings)] if settings else []),
        ("Level attention", attention),
        ("Token order", "motif tokens first, then the level tokens (as the released code)"),
        ("Vocabulary", f"the checkpoint's {vocab} rows, plus `{GRAPH_TOKEN}` (id {graph_id})"),
        ("Prompt", "the original LLaMA-2 chat prompt (chat template `llama2`)"),
    ]
    if any(key.startswith("mllm.ln_graph_model.") for key in parts.graph):
        facts.append(("Not converted", "`mllm.ln_graph_model.*`, saved by the original but unused at run time"))
    return facts


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `llamo convert-original`."""
    parser.add_argument("checkpoint", metavar="CKPT", help="the original checkpoint (.ckpt, or .safetensors)")
    parser.add_argument("output_dir", metavar="OUT_DIR", help="folder to write (must be new or empty)")
    parser.add_argument("--llm", required=True, metavar="BASE_LLM_FOLDER", help="the base LLM the checkpoint used")
    lora = parser.add_mutually_exclusive_group()
    lora.add_argument("--merge-lora", action="store_true", help="merge LoRA into the weights (the default)")
    lora.add_argument("--keep-adapter", action="store_true", help="keep LoRA as a PEFT adapter in OUT_DIR/adapter")
    parser.add_argument("--lora-alpha", type=float, default=RELEASE_LORA_ALPHA, help="LoRA alpha of the training")
    parser.add_argument(
        "--lora-dropout", type=float, default=RELEASE_LORA_DROPOUT, help="LoRA dropout (adapter config)"
    )
    parser.add_argument("--num-heads", type=int, default=RELEASE_NUM_HEADS, help="projector attention heads")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="weights dtype (auto: the checkpoint's)")
    parser.add_argument(
        "--unsafe-unpickle",
        action="store_true",
        help="if torch.load(weights_only=True) refuses the file, unpickle it fully: this EXECUTES CODE stored in the "
        "checkpoint, so use it only for a file from a source you trust",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")


def main(argv: list[str] | None = None) -> int:
    """`llamo convert-original` (the exit status is 2 for a checkpoint or folder that cannot be converted)."""
    from .cli import main as llamo_main

    return llamo_main(["convert-original", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
