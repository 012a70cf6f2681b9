# Copyright 2026 The llamo contributors. Licensed under the Apache License, Version 2.0.
"""Configuration of LLaMo: a GIN graph encoder, a multi-level graph projector with motif tokens, and a causal LM."""

from typing import ClassVar, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils.type_validators import interval

GRAPH_INPUT_NAMES = (
    "atom_features",
    "atom_mask",
    "bond_index",
    "bond_features",
    "bond_mask",
    "motif_features",
    "motif_mask",
)
"""The batch-first graph tensors the processor produces and the model consumes (at prefill only)."""


@strict(accept_kwargs=True)
class LlamoGraphEncoderConfig(PretrainedConfig):
    r"""
    The GIN graph encoder: an atom encoder (sum of one embedding per OGB atom feature) followed by `num_layers`
    GIN layers with bond embeddings, each with an outer BatchNorm. The projector reads all `num_layers + 1` levels.

    Args:
        hidden_size (`int`, defaults to 300): width of node representations.
        num_layers (`int`, defaults to 5): number of GIN layers.
        mlp_ratio (`int`, defaults to 2): the GIN MLP's hidden width is `mlp_ratio * hidden_size`.
        dropout (`float`, defaults to 0.0): dropout on node representations after every layer.
        atom_vocab_sizes (`list[int]`): table size per OGB atom feature (ogb 1.3.5: 4 chirality rows).
        bond_vocab_sizes (`list[int]`): table size per OGB bond feature.
        batch_norm_eps (`float`, defaults to 1e-5), batch_norm_momentum (`float`, defaults to 0.1): BatchNorm settings.
    """

    model_type = "llamo_graph_encoder"
    base_config_key = "graph_config"

    hidden_size: int = interval(min=1)(default=300)
    num_layers: int = interval(min=1)(default=5)
    mlp_ratio: int = interval(min=1)(default=2)
    dropout: float | int = interval(min=0, max=1)(default=0.0)
    atom_vocab_sizes: list[int] | tuple[int, ...] = (119, 4, 12, 12, 10, 6, 6, 2, 2)
    bond_vocab_sizes: list[int] | tuple[int, ...] = (5, 6, 2)
    batch_norm_eps: float = interval(min=0, exclude_min=True)(default=1e-5)
    # not `None` (a cumulative average): that needs the step counter LLaMo's BatchNorms do not keep
    batch_norm_momentum: float | int = interval(min=0, max=1, exclude_min=True)(default=0.1)

    def __post_init__(self, **kwargs):
        self.atom_vocab_sizes = list(self.atom_vocab_sizes)
        self.bond_vocab_sizes = list(self.bond_vocab_sizes)
        super().__post_init__(**kwargs)

    @property
    def num_levels(self) -> int:
        """Node representations the projector reads: the atom embeddings plus one per GIN layer."""
        return self.num_layers + 1


@strict(accept_kwargs=True)
class LlamoProjectorConfig(PretrainedConfig):
    r"""
    The multi-level graph projector (MGProj): learnable queries cross-attend over every level's node representations,
    motif queries cross-attend over embedded functional groups, then LayerNorm and an MLP map the tokens to the LM.

    Args:
        queries_per_level (`int`, defaults to 4): query tokens per graph level.
        num_motif_queries (`int`, defaults to 4): motif query tokens.
        num_heads (`int`, defaults to 4): attention heads of every cross-attention.
        mlp_depth (`int`, defaults to 6): `Linear(graph -> lm)` then `mlp_depth - 1` x `[SiLU, Linear(lm -> lm)]`.
        share_level_attention (`bool`, defaults to `False`): one attention module for all levels (the released
            weights) instead of one per level (the paper).
        motif_tokens_position (`"first"` or `"last"`, defaults to `"first"`): where motif tokens go (the released code
            puts them first).
        use_motifs (`bool`, defaults to `True`): `False` is the paper's "w/o motif" ablation.
        motif_feature_size (`int`, defaults to 73): size of a functional-group count vector.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the LayerNorm before the MLP.
    """

    model_type = "llamo_projector"
    base_config_key = "projector_config"

    queries_per_level: int = interval(min=1)(default=4)
    num_motif_queries: int = interval(min=0)(default=4)
    num_heads: int = interval(min=1)(default=4)
    mlp_depth: int = interval(min=1)(default=6)
    share_level_attention: bool = False
    motif_tokens_position: Literal["first", "last"] = "first"
    use_motifs: bool = True
    motif_feature_size: int = 73
    layer_norm_eps: float = 1e-5

    def validate_architecture(self):
        """Part of `@strict`'s validation, after the per-field checks."""
        if self.use_motifs and self.num_motif_queries < 1:
            raise ValueError("use_motifs=True needs num_motif_queries >= 1.")


@strict(accept_kwargs=True)
class LlamoConfig(PretrainedConfig):
    r"""
    Configuration of [`LlamoForConditionalGeneration`]: graph encoder, graph projector and any decoder-only LM that
    `AutoModelForCausalLM` knows (Llama, Qwen2, OPT/Galactica, ...).

    Args:
        graph_config (`LlamoGraphEncoderConfig` or `dict`): the GIN encoder.
        projector_config (`LlamoProjectorConfig` or `dict`): the multi-level projector.
        text_config (`PretrainedConfig` or `dict`): the language model (a `model_type` key picks the class).
        graph_token_id (`int`): id of the `<graph>` placeholder token in the LM's vocabulary.
        tie_word_embeddings (`bool`): taken from `text_config` when that ties its embeddings.

    The number of graph tokens per molecule is derived (see `num_graph_tokens`), never set.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from llamo import LlamoConfig
    >>> config = LlamoConfig(text_config=LlamaConfig(hidden_size=64), graph_token_id=32000)
    >>> config.num_graph_tokens
    28
    ```
    """

    model_type = "llamo"
    sub_configs_defaults: ClassVar[dict] = {
        "graph_config": LlamoGraphEncoderConfig,
        "projector_config": LlamoProjectorConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    graph_config: dict | PretrainedConfig | None = None
    projector_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    graph_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        kwargs.pop("num_graph_tokens", None)  # derived; tolerated in old config files, never stored
        if self.graph_token_id is not None and self.graph_token_id < 0:
            raise ValueError(
                f"graph_token_id must be a token id (an integer of at least 0), got {self.graph_token_id!r}."
            )
        auto_map = {
            "AutoConfig": "configuration_llamo.LlamoConfig",
            "AutoModel": "modeling_llamo.LlamoModel",
            "AutoModelForCausalLM": "modeling_llamo.LlamoForConditionalGeneration",
        }
        kwargs["auto_map"] = {**auto_map, **(kwargs.get("auto_map") or {})}
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = self.tie_word_embeddings or bool(getattr(self.text_config, "tie_word_embeddings", 0))

    def validate_architecture(self):
        """Part of `@strict`'s validation, after the per-field checks."""
        if self.graph_config.hidden_size % self.projector_config.num_heads:
            raise ValueError(
                f"graph_config.hidden_size ({self.graph_config.hidden_size}) must be divisible by "
                f"projector_config.num_heads ({self.projector_config.num_heads})."
            )
        context = getattr(self.text_config, "max_position_embeddings", None)
        if context is not None and self.num_graph_tokens > context:
            raise ValueError(
                f"{self.num_graph_tokens} graph tokens per molecule do not fit in the language model's context of "
                f"{context} tokens: use fewer queries per level or motif queries."
            )

    @property
    def num_graph_tokens(self) -> int:
        """Graph tokens per molecule: `queries_per_level` for each level, plus the motif tokens when used."""
        projector = self.projector_config
        motif_tokens = projector.num_motif_queries if projector.use_motifs else 0
        return self.graph_config.num_levels * projector.queries_per_level + motif_tokens


__all__ = ["GRAPH_INPUT_NAMES", "LlamoConfig", "LlamoGraphEncoderConfig", "LlamoProjectorConfig"]
