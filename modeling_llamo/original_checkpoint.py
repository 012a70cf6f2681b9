"""Read the graph part of an original LLaMo checkpoint (mlvlab/LLaMo's Lightning layout) into this package's modules.

The original stores the GIN under `mllm.graph_model.molecule_node_model.*` and the projector under
`mllm.abstractor.*` (with six identical `cross_attention.i` copies when one attention module is shared by all levels).
`mllm.ln_graph_model.*` is saved but never used at run time, so it is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .modeling_llamo import LlamoForConditionalGeneration, LlamoModel

ENCODER_PREFIX = "mllm.graph_model.molecule_node_model."
PROJECTOR_PREFIX = "mllm.abstractor."
UNUSED_PREFIXES = ("mllm.ln_graph_model.",)

_ENCODER_RULES = (
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
_LEVEL_ATTENTION = re.compile(r"cross_attention\.(\d+)\.(.+)")


def _rename(name: str, rules) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(f"^{pattern}$", replacement, name)
    return None


def is_level_attention_shared(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when all `cross_attention.i` copies of an original checkpoint are identical (the released weights)."""
    copies: dict[str, list[torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith(PROJECTOR_PREFIX) and (match := _LEVEL_ATTENTION.fullmatch(key[len(PROJECTOR_PREFIX) :])):
            copies.setdefault(match.group(2), []).append(value)
    if not copies:
        raise ValueError(f"No {PROJECTOR_PREFIX}cross_attention.* weights found: is this an original LLaMo checkpoint?")
    return all(all(torch.equal(tensors[0], other) for other in tensors[1:]) for tensors in copies.values())


def convert_original_graph_state_dict(
    state_dict: Mapping[str, torch.Tensor], share_level_attention: bool | None = None
) -> dict[str, torch.Tensor]:
    """
    Rename the graph part of an original checkpoint to `LlamoModel` keys (`graph_encoder.*`, `graph_projector.*`).

    Args:
        state_dict: the checkpoint's `state_dict` (other keys, e.g. `mllm.language_model.*`, are ignored).
        share_level_attention: convert the per-level attentions into one shared module (they must then be identical)
            or into one module per level; `None` decides from the weights.

    Raises:
        ValueError: a graph key this converter does not know, or distinct per-level attentions asked to be shared.
    """
    if share_level_attention is None:
        share_level_attention = is_level_attention_shared(state_dict)
    elif share_level_attention and not is_level_attention_shared(state_dict):
        raise ValueError(
            "share_level_attention=True, but the checkpoint's cross_attention.0-5 differ: convert it with "
            "share_level_attention=False."
        )
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(UNUSED_PREFIXES):
            continue
        if key.startswith(ENCODER_PREFIX):
            name = _rename(key[len(ENCODER_PREFIX) :], _ENCODER_RULES)
        elif key.startswith(PROJECTOR_PREFIX):
            short = key[len(PROJECTOR_PREFIX) :]
            if match := _LEVEL_ATTENTION.fullmatch(short):
                level, param = match.groups()
                if share_level_attention:
                    name = f"graph_projector.level_attention.{param}" if level == "0" else ""
                else:
                    name = f"graph_projector.level_attentions.{level}.{param}"
            else:
                name = _rename(short, _PROJECTOR_RULES)
        else:
            continue
        if name is None:
            unknown.append(key)
        elif name:
            converted[name] = value
    if unknown:
        raise ValueError(f"Unknown keys in the graph part of the original checkpoint: {unknown}")
    return converted


def original_graph_configs(state_dict: Mapping[str, torch.Tensor], num_heads: int = 4) -> dict[str, dict]:
    """
    Read the graph encoder and projector shapes from an original checkpoint.

    Returns `{"graph_config": {...}, "projector_config": {...}, "output_hidden_size": int}` (attention heads are not
    recorded in weights: `num_heads` is taken as given, 4 in the release).
    """
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    projector = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PROJECTOR_PREFIX)}
    if not encoder or not projector:
        raise ValueError(
            f"The state dict has no {ENCODER_PREFIX}* or {PROJECTOR_PREFIX}* keys: not an original LLaMo checkpoint."
        )
    atom_tables = sorted(
        (int(m.group(1)), v.shape[0])
        for k, v in encoder.items()
        if (m := re.fullmatch(r"atom_encoder\.atom_embedding_list\.(\d+)\.weight", k))
    )
    bond_tables = sorted(
        (int(m.group(1)), v.shape[0])
        for k, v in encoder.items()
        if (m := re.fullmatch(r"gnns\.0\.bond_encoder\.bond_embedding_list\.(\d+)\.weight", k))
    )
    num_layers = 1 + max(int(m.group(1)) for k in encoder if (m := re.fullmatch(r"gnns\.(\d+)\.eps", k)))
    hidden = encoder["atom_encoder.atom_embedding_list.0.weight"].shape[1]
    inner = encoder["gnns.0.mlp.0.weight"].shape[0]
    net_layers = sorted(int(m.group(1)) for k in projector if (m := re.fullmatch(r"net\.(\d+)\.weight", k)))
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
            "mlp_ratio": inner // hidden,
            "atom_vocab_sizes": [size for _, size in atom_tables],
            "bond_vocab_sizes": [size for _, size in bond_tables],
        },
        "projector_config": {
            "queries_per_level": level_queries.shape[1],
            "num_motif_queries": projector["motif_query_tokens"].shape[0] if has_motifs else 4,
            "num_heads": num_heads,
            "mlp_depth": len(net_layers),
            "share_level_attention": is_level_attention_shared(state_dict),
            "motif_tokens_position": "first",
            "use_motifs": has_motifs,
            "motif_feature_size": projector["motif_weight.weight"].shape[1] if has_motifs else 73,
        },
        "output_hidden_size": projector[f"net.{net_layers[-1]}.weight"].shape[0],
    }


def load_original_graph_weights(
    model: LlamoModel | LlamoForConditionalGeneration, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """
    Load the graph encoder and projector of an original checkpoint into `model` (in place).

    Raises:
        ValueError: missing or unexpected graph weights, or shapes that do not match the model's config.
    """
    base = model.model if isinstance(model, LlamoForConditionalGeneration) else model
    converted = convert_original_graph_state_dict(
        state_dict, share_level_attention=base.config.projector_config.share_level_attention
    )
    own = {k: v for k, v in base.state_dict().items() if k.startswith(("graph_encoder.", "graph_projector."))}
    missing = sorted(own.keys() - converted.keys())
    unexpected = sorted(converted.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(
            f"Original graph weights do not fit this model: missing {missing}, unexpected {unexpected}. Build the "
            "model with `original_graph_configs(state_dict)`."
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items()
        if v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(f"Original graph weights have other shapes than the model: {mismatched}")
    base.load_state_dict(converted, strict=False)


__all__ = [
    "convert_original_graph_state_dict",
    "is_level_attention_shared",
    "load_original_graph_weights",
    "original_graph_configs",
]
