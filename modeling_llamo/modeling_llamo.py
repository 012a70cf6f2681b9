# Copyright 2026 The llamo contributors. Licensed under the Apache License, Version 2.0.
"""PyTorch LLaMo: a GIN molecular graph encoder, a multi-level graph projector with motif tokens, and a causal LM.

Layout follows transformers' LLaVA: `LlamoModel` holds `graph_encoder`, `graph_projector` and `language_model`;
`LlamoForConditionalGeneration` adds `lm_head` and generation. Graph tokens replace the embeddings of the `<graph>`
placeholder positions in one batched scatter; graph inputs are consumed at prefill only."""

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import nn
from torch_geometric.nn import GINEConv
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_llamo import GRAPH_INPUT_NAMES, LlamoConfig, LlamoGraphEncoderConfig
from .generation_llamo import LOOP_GUARD_KEYS, AnswerLoopStopLogitsProcessor

logger = logging.get_logger(__name__)


@dataclass
class LlamoModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    graph_embeds (`torch.FloatTensor` of shape `(num_molecules, num_graph_tokens, hidden_size)`, *optional*):
        The projected graph tokens that were scattered into the input embeddings (prefill only), one row per molecule
        in placeholder order.
    """

    graph_embeds: torch.FloatTensor | None = None


@dataclass
class LlamoCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `graph_embeds`, as in [`LlamoModelOutputWithPast`]."""

    graph_embeds: torch.FloatTensor | None = None


def _mark_graph_modules(root: nn.Module) -> None:
    """Graph-side Linear layers keep PyTorch's default init (as the original), not the LM's normal(0.02)."""
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module._llamo_graph_module = True


class LlamoCategoricalEmbedding(nn.Module):
    """Sum of one embedding table per categorical feature: `(num_items, num_features)` long -> `(num_items, hidden)`."""

    def __init__(self, vocab_sizes: list[int], hidden_size: int):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, hidden_size) for size in vocab_sizes)

    def forward(self, features: torch.LongTensor) -> torch.Tensor:
        return sum(embedding(features[:, column]) for column, embedding in enumerate(self.embeddings))


class LlamoBatchNorm(nn.BatchNorm1d):
    """`BatchNorm1d` without its int64 step counter, which only a cumulative average (`momentum=None`) reads: the
    graph state is then all float. Counters in a loaded state dict (the original's, earlier llamo versions') are
    dropped."""

    def __init__(self, num_features: int, eps: float, momentum: float):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        state_dict.pop(f"{prefix}num_batches_tracked", None)
        metadata = {**local_metadata, "version": self._version}  # a state dict without metadata gets no counter back
        super()._load_from_state_dict(state_dict, prefix, metadata, *args, **kwargs)


class LlamoGINLayer(nn.Module):
    """One GIN layer with bond features: `h' = BN(MLP((1 + eps) * h + sum_j ReLU(h_j + bond_ij)))` (PyG `GINEConv`)."""

    def __init__(self, config: LlamoGraphEncoderConfig):
        super().__init__()
        hidden = config.hidden_size
        inner = config.mlp_ratio * hidden
        self.bond_encoder = LlamoCategoricalEmbedding(config.bond_vocab_sizes, hidden)
        mlp = nn.Sequential(
            nn.Linear(hidden, inner),
            LlamoBatchNorm(inner, config.batch_norm_eps, config.batch_norm_momentum),
            nn.ReLU(),
            nn.Linear(inner, hidden),
        )
        self.conv = GINEConv(mlp, train_eps=True)
        self.norm = LlamoBatchNorm(hidden, config.batch_norm_eps, config.batch_norm_momentum)

    def forward(self, hidden: torch.Tensor, edge_index: torch.LongTensor, bond_features: torch.LongTensor):
        """`(num_atoms, hidden)`, `(2, num_edges)`, `(num_edges, 3)` -> `(num_atoms, hidden)`."""
        return self.norm(self.conv(hidden, edge_index, self.bond_encoder(bond_features)))


class LlamoGraphEncoder(nn.Module):
    """Atom encoder + GIN layers over a flat (PyG-style) batch of molecules, returning every level."""

    def __init__(self, config: LlamoGraphEncoderConfig):
        super().__init__()
        self.atom_encoder = LlamoCategoricalEmbedding(config.atom_vocab_sizes, config.hidden_size)
        self.layers = nn.ModuleList(LlamoGINLayer(config) for _ in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.frozen = False
        _mark_graph_modules(self)

    def freeze(self, frozen: bool = True) -> "LlamoGraphEncoder":
        """Stop training the encoder: no gradients, and BatchNorm statistics stay fixed (eval mode) even when the
        whole model is put in train mode."""
        self.frozen = frozen
        for param in self.parameters():
            param.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "LlamoGraphEncoder":
        return super().train(mode and not self.frozen)

    def forward(
        self, atom_features: torch.LongTensor, edge_index: torch.LongTensor, bond_features: torch.LongTensor
    ) -> torch.Tensor:
        """
        Args:
            atom_features: `(num_atoms, 9)` OGB atom features of all molecules of the batch.
            edge_index: `(2, num_edges)` global atom indices, both directions of every bond.
            bond_features: `(num_edges, 3)` OGB bond features.

        Returns:
            `(num_layers + 1, num_atoms, hidden_size)`: level 0 is the atom embedding, level `i` the output of GIN
            layer `i` (ReLU after every layer but the last).
        """
        hidden = self.atom_encoder(atom_features)
        levels = [hidden]
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, edge_index, bond_features)
            if index < len(self.layers) - 1:
                hidden = nn.functional.relu(hidden)
            hidden = self.dropout(hidden)
            levels.append(hidden)
        return torch.stack(levels)


class LlamoGraphProjector(nn.Module):
    """Multi-level graph projector (MGProj) with motif tokens: node levels + functional groups -> LM tokens."""

    def __init__(self, config: LlamoConfig):
        super().__init__()
        projector = config.projector_config
        hidden = config.graph_config.hidden_size
        self.num_levels = config.graph_config.num_levels
        self.queries_per_level = projector.queries_per_level
        self.use_motifs = projector.use_motifs
        self.motif_tokens_first = projector.motif_tokens_position == "first"
        self.share_level_attention = projector.share_level_attention

        attention = partial(nn.MultiheadAttention, hidden, projector.num_heads, batch_first=True)
        self.level_queries = nn.Parameter(torch.empty(self.num_levels, projector.queries_per_level, hidden))
        if self.share_level_attention:
            self.level_attention = attention()
        else:
            self.level_attentions = nn.ModuleList(attention() for _ in range(self.num_levels))
        if self.use_motifs:
            self.motif_embedding = nn.Linear(projector.motif_feature_size, hidden, bias=False)
            self.motif_queries = nn.Parameter(torch.empty(projector.num_motif_queries, hidden))
            self.motif_attention = attention()
        self.layer_norm = nn.LayerNorm(hidden, eps=projector.layer_norm_eps)
        text_hidden = config.text_config.hidden_size
        layers: list[nn.Module] = [nn.Linear(hidden, text_hidden)]
        for _ in range(projector.mlp_depth - 1):
            layers += [nn.SiLU(), nn.Linear(text_hidden, text_hidden)]
        self.mlp = nn.Sequential(*layers)
        _mark_graph_modules(self)

    def level_tokens(self, levels: torch.Tensor, atom_mask: torch.BoolTensor) -> torch.Tensor:
        """`(num_levels, B, N, H)` dense node levels, `(B, N)` mask -> `(B, num_levels * queries_per_level, H)`."""
        batch, padding = levels.shape[1], ~atom_mask
        attentions = [self.level_attention] * self.num_levels if self.share_level_attention else self.level_attentions
        tokens = [
            attention(queries.expand(batch, -1, -1), keys, keys, key_padding_mask=padding, need_weights=False)[0]
            for attention, queries, keys in zip(attentions, self.level_queries, levels, strict=True)
        ]
        return torch.cat(tokens, dim=1)

    def motif_tokens(
        self, motif_features: torch.Tensor, motif_mask: torch.BoolTensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, G, 73)` group vectors, `(B, G)` mask -> `(B, num_motif_queries, H)` tokens and, if asked, the
        head-averaged attention of the motif queries over the groups `(B, num_motif_queries, G)`. A molecule without
        groups keeps the raw motif queries (as the original does for methane)."""
        batch = motif_features.shape[0]
        queries = self.motif_queries.unsqueeze(0).expand(batch, -1, -1)
        if motif_features.shape[1] == 0:
            return queries, None
        has_motif = motif_mask.any(dim=1)
        padding = ~motif_mask
        # A molecule without groups attends to its (all-zero) first slot so that attention stays finite; its output
        # is replaced by the raw queries below.
        padding[:, 0] = padding[:, 0] & has_motif
        groups = self.motif_embedding(motif_features.to(self.motif_embedding.weight.dtype))
        attended, weights = self.motif_attention(
            queries, groups, groups, key_padding_mask=padding, need_weights=output_attentions
        )
        tokens = torch.where(has_motif[:, None, None], attended, queries)
        if weights is not None:
            weights = weights * has_motif[:, None, None]
        return tokens, weights

    def forward(
        self,
        levels: torch.Tensor,
        atom_mask: torch.BoolTensor,
        motif_features: torch.Tensor | None = None,
        motif_mask: torch.BoolTensor | None = None,
    ) -> torch.Tensor:
        """`(num_levels, B, N, H)` node levels + motif groups -> `(B, num_graph_tokens, text_hidden_size)`."""
        tokens = self.level_tokens(levels, atom_mask)
        if self.use_motifs:
            if motif_features is None or motif_mask is None:
                raise ValueError("This LLaMo uses motif tokens: pass `motif_features` and `motif_mask`.")
            motifs, _ = self.motif_tokens(motif_features, motif_mask.bool())
            tokens = torch.cat([motifs, tokens] if self.motif_tokens_first else [tokens, motifs], dim=1)
        return self.mlp(self.layer_norm(tokens))


class LlamoPreTrainedModel(PreTrainedModel):
    config: LlamoConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ("LlamoGraphEncoder", "LlamoGraphProjector")
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # generation compiles the decoding step, which reads no graph inputs (they are consumed at prefill), and a forward
    # with `graph_embeds` is one graph too; only raw graph inputs break it (the GIN's data-dependent shapes)
    _can_compile_fullgraph = True
    # The graph stack is trained and computes in float32 under a bf16/fp16 LM: it is built in float32 whatever the
    # default dtype, `from_pretrained(dtype=...)` keeps its saved float32 tensors, and its tokens are cast to the LM's
    # dtype at the scatter. Its state is all float (`LlamoBatchNorm` keeps no step counter).
    _keep_in_fp32_modules_strict = ("graph_encoder", "graph_projector")
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"\.num_batches_tracked$"]  # original, earlier llamo

    def set_attn_implementation(self, attn_implementation: str | dict, allow_all_kernels: bool = False):
        """transformers' `set_attn_implementation`, with the graph encoder's and projector's configs following the
        request unchecked and unannounced: neither module uses transformers' attention interface (the projector's
        cross-attention is PyTorch's `nn.MultiheadAttention`), so transformers finds no sub-model to check for them."""
        configs = {key: getattr(self.config, key) for key in ("graph_config", "projector_config")}
        before = {key: config._attn_implementation_internal for key, config in configs.items()}
        for key, config in configs.items():
            wanted = attn_implementation.get(key) if isinstance(attn_implementation, dict) else attn_implementation
            if isinstance(wanted, str):
                config._attn_implementation_internal = wanted
        try:
            super().set_attn_implementation(attn_implementation, allow_all_kernels=allow_all_kernels)
        except Exception:
            for key, config in configs.items():
                config._attn_implementation_internal = before[key]
            raise

    def _init_weights(self, module: nn.Module):
        if isinstance(module, LlamoGraphProjector):
            init.normal_(module.level_queries, mean=0.0, std=1.0)
            if module.use_motifs:
                init.normal_(module.motif_queries, mean=0.0, std=1.0)
        elif isinstance(module, GINEConv):
            init.zeros_(module.eps)
        elif isinstance(module, nn.Linear) and getattr(module, "_llamo_graph_module", False):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding) and getattr(module, "_llamo_graph_module", False):
            init.xavier_uniform_(module.weight)  # each table itself: loading skips modules without own parameters
        elif isinstance(module, LlamoBatchNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        else:
            super()._init_weights(module)


def _molecules_per_row(atom_mask: torch.Tensor) -> torch.LongTensor:
    """`(B,)` molecules of each sequence: real slots of a `(B, M, N)` mask, or one each for the `(B, N)` layout."""
    if atom_mask.dim() == 2:
        return torch.ones(atom_mask.shape[0], dtype=torch.long, device=atom_mask.device)
    return atom_mask.bool().any(-1).sum(-1)


class LlamoModel(LlamoPreTrainedModel):
    """LLaMo without the LM head: graph encoder, graph projector and the decoder-only language model."""

    def __init__(self, config: LlamoConfig):
        super().__init__(config)
        # float32 even under `from_config(dtype=...)` or another default dtype (see `_keep_in_fp32_modules_strict`)
        self.graph_encoder = LlamoGraphEncoder(config.graph_config).float()
        self.graph_projector = LlamoGraphProjector(config).float()
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_graph_features(
        self,
        atom_features: torch.LongTensor,
        atom_mask: torch.Tensor,
        bond_index: torch.LongTensor,
        bond_features: torch.LongTensor,
        bond_mask: torch.Tensor,
        motif_features: torch.Tensor | None = None,
        motif_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Encode padded molecules into graph tokens.

        Args:
            atom_features: `(B, M, N, 9)` OGB atom features: `M` molecule slots per sequence, `N` atoms per molecule,
                padded. The one-molecule layout `(B, N, 9)` (one molecule per sequence) is also read.
            atom_mask: `(B, M, N)` True for real atoms; a slot without atoms holds no molecule.
            bond_index: `(B, M, E, 2)` atom indices of each directed bond, local to its molecule.
            bond_features: `(B, M, E, 3)` OGB bond features.
            bond_mask: `(B, M, E)` True for real bonds.
            motif_features: `(B, M, G, 73)` functional-group vectors.
            motif_mask: `(B, M, G)` True for real groups.

        Returns:
            `(num_molecules, num_graph_tokens, text_hidden_size)`: the graph tokens of every real molecule, in
            sequence order then slot order (the order of the `<graph>` placeholder runs in the batch).
        """
        atom_mask = atom_mask.bool()
        if atom_mask.dim() == 3:
            present = atom_mask.any(-1)
            atom_features, atom_mask = atom_features[present], atom_mask[present]
            bond_index, bond_features, bond_mask = bond_index[present], bond_features[present], bond_mask[present]
            if motif_features is not None and motif_mask is not None:
                motif_features, motif_mask = motif_features[present], motif_mask[present]
        bond_mask = bond_mask.bool()
        molecules, num_atoms = atom_mask.shape
        flat_position = atom_mask.flatten().cumsum(0).view(molecules, num_atoms) - 1
        sources = flat_position.gather(1, bond_index[..., 0])[bond_mask]
        targets = flat_position.gather(1, bond_index[..., 1])[bond_mask]
        atoms = atom_features[atom_mask]
        # The number of real atoms is data-dependent; telling the tracer it is never 0 lets `torch.export` trace the GIN
        # without guarding on it (graph inputs always hold a molecule: the processor sends none for a batch without).
        torch._check(atoms.shape[0] > 0, lambda: "The graph inputs hold no atom: leave them out without a molecule.")
        levels = self.graph_encoder(atoms, torch.stack([sources, targets]), bond_features[bond_mask])
        dense = levels.new_zeros(levels.shape[0], molecules, num_atoms, levels.shape[-1])
        dense[:, atom_mask] = levels
        return self.graph_projector(dense, atom_mask, motif_features, motif_mask)

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        graph_embeds: torch.Tensor,
        molecules_per_row: torch.LongTensor | None = None,
    ) -> torch.BoolTensor:
        """`(B, L, 1)` mask of the `<graph>` positions. They must hold exactly the graph tokens of `graph_embeds`
        `(num_molecules, num_graph_tokens, hidden)`: one run of `num_graph_tokens` positions per molecule, and, when
        `molecules_per_row` `(B,)` is known, as many runs in each sequence as it has molecules."""
        if input_ids is None:
            graph_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.graph_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == graph_embedding).all(-1)
        else:
            mask = input_ids == self.config.graph_token_id
        per_row = mask.sum(dim=1)
        num_molecules, num_tokens = graph_embeds.shape[:2]
        if torch.compiler.is_compiling():
            # No data-dependent branch in a compiled graph: a hint that the counts agree instead of the checks below.
            torch._check_tensor_all(per_row.sum() == num_molecules * num_tokens)
            return mask.unsqueeze(-1)
        if molecules_per_row is not None:
            wrong = molecules_per_row.shape != per_row.shape or bool(
                (per_row != molecules_per_row.to(per_row.device) * num_tokens).any()
            )
        else:
            wrong = int(per_row.sum()) != num_molecules * num_tokens or bool((per_row % num_tokens != 0).any())
        if wrong:
            counts = per_row.tolist()
            molecules = molecules_per_row.tolist() if molecules_per_row is not None else num_molecules
            hint = ""
            if len(set(counts)) == 1 and counts[0] not in (0, num_tokens) and molecules == [1] * len(counts):
                hint = (
                    f" Every sequence holds {counts[0]} placeholders: the processor's num_graph_tokens "
                    f"({counts[0]}) and the model's config.num_graph_tokens ({num_tokens}) disagree; use the processor "
                    "saved with this model."
                )
            raise ValueError(
                f"Graph tokens and <graph> positions disagree: the {mask.shape[0]} sequences hold {counts} <graph> "
                f"positions, but the molecules given ({molecules} per sequence) make {num_tokens} graph tokens each."
                f"{hint} Build inputs with LlamoProcessor, which expands every <graph> into {num_tokens} placeholders "
                "(and do not truncate them away)."
            )
        return mask.unsqueeze(-1)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        atom_features: torch.LongTensor | None = None,
        atom_mask: torch.Tensor | None = None,
        bond_index: torch.LongTensor | None = None,
        bond_features: torch.LongTensor | None = None,
        bond_mask: torch.Tensor | None = None,
        motif_features: torch.Tensor | None = None,
        motif_mask: torch.Tensor | None = None,
        graph_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LlamoModelOutputWithPast:
        r"""
        Args:
            input_ids: `(B, L)` token ids, with one run of `config.num_graph_tokens` `<graph>` placeholders per
                molecule. Exactly one of `input_ids` and `inputs_embeds` `(B, L, hidden)` is given; in embeddings the
                placeholders are the `<graph>` token's embedding.
            attention_mask: `(B, L_total)` 1 for real tokens (cached ones included), 0 for padding.
            cache: the language model's cache (`past_key_values` is its deprecated name). Graph inputs are only read
                for positions not yet in it.
            atom_features ... motif_mask: the batch-first graph inputs, see [`~LlamoModel.get_graph_features`].
            graph_embeds: precomputed graph tokens `(num_molecules, num_graph_tokens, hidden)` in placeholder order,
                instead of graph inputs.
            kwargs: `output_attentions`, `output_hidden_states` and other [`TransformersKwargs`] of the language
                model; `return_dict=False` returns a tuple.

        Returns:
            `LlamoModelOutputWithPast`: `last_hidden_state` `(B, L, hidden)`, `cache`, optional `hidden_states` and
            `attentions`, and the `graph_embeds` scattered into the input (prefill only).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        molecules_per_row = None
        if graph_embeds is not None and atom_features is not None:
            raise ValueError("Pass the graph inputs (atom_features, ...) or `graph_embeds` made from them, not both.")
        if graph_embeds is not None and (graph_embeds.ndim != 3 or graph_embeds.shape[-1] != inputs_embeds.shape[-1]):
            raise ValueError(
                f"graph_embeds must be (num_molecules, num_graph_tokens, {inputs_embeds.shape[-1]}): the language "
                f"model's width, got {tuple(graph_embeds.shape)}."
            )
        if atom_features is not None:
            molecules_per_row = _molecules_per_row(atom_mask)
            graph_embeds = self.get_graph_features(
                atom_features, atom_mask, bond_index, bond_features, bond_mask, motif_features, motif_mask
            )
        if graph_embeds is not None:
            graph_embeds = graph_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, graph_embeds, molecules_per_row)
            inputs_embeds = inputs_embeds.masked_scatter(placeholder_mask, graph_embeds)
        elif (
            input_ids is not None
            and self.config.graph_token_id is not None
            and not torch.compiler.is_compiling()
            and (cache is None or cache.get_seq_length() == 0)
            and bool((input_ids == self.config.graph_token_id).any())
        ):
            logger.warning_once(
                "input_ids hold <graph> placeholders but no graph inputs were given, so they are read as the <graph> "
                f"token's text embedding: pass the processor's {', '.join(GRAPH_INPUT_NAMES)} (or `graph_embeds`)."
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return LlamoModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            graph_embeds=graph_embeds,
        )


class LlamoForConditionalGeneration(LlamoPreTrainedModel, GenerationMixin):
    """LLaMo with its LM head: answers instructions about a molecule given as graph inputs plus a text prompt.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoProcessor
    >>> model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [
    ...     {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
    ...     {"type": "text", "text": "Describe this molecule."}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    >>> output = model.generate(**inputs, max_new_tokens=64)
    >>> processor.batch_decode(output, prompt_length=inputs["input_ids"])[0]
    ```
    """

    # Vocabulary-parallel head, matching the `embedding_rowwise` input embeddings it may be tied to (both shard the
    # vocabulary dimension); gathered so that every rank gets the full logits.
    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LlamoConfig):
        super().__init__(config)
        self.model = LlamoModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        language_model = self.model.language_model
        embeddings = language_model.get_input_embeddings()
        embedding_name = next(name for name, module in language_model.named_modules() if module is embeddings)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{embedding_name}.weight"}
        self._input_embedding_name = f"model.language_model.{embedding_name}"
        self.post_init()

    def init_parallel_plans(self) -> None:
        """Collect the LM's tensor-parallel plan; shard `lm_head` only where the LM shards its input embeddings on the
        vocabulary (a tied head and embedding are one tensor and must be split alike)."""
        super().init_parallel_plans()
        if self._tp_plan.get(self._input_embedding_name) != "embedding_rowwise":
            self._tp_plan.pop("lm_head", None)

    def get_graph_features(self, *args, **kwargs) -> torch.Tensor:
        return self.model.get_graph_features(*args, **kwargs)

    def freeze_graph_encoder(self, frozen: bool = True) -> None:
        """Freeze the GIN (no gradients, BatchNorm kept in eval mode through `model.train()`), as in stage 2."""
        self.model.graph_encoder.freeze(frozen)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        atom_features: torch.LongTensor | None = None,
        atom_mask: torch.Tensor | None = None,
        bond_index: torch.LongTensor | None = None,
        bond_features: torch.LongTensor | None = None,
        bond_mask: torch.Tensor | None = None,
        motif_features: torch.Tensor | None = None,
        motif_mask: torch.Tensor | None = None,
        graph_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LlamoCausalLMOutputWithPast:
        r"""
        Inputs as [`LlamoModel.forward`], plus:

        Args:
            labels: `(B, L)` next-token targets aligned with `input_ids` (shifted inside the loss); `-100` positions
                are ignored.
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0: all), or for the given
                `(K,)` positions.

        Returns:
            `LlamoCausalLMOutputWithPast`: `loss`, `logits` `(B, L or K, vocab)`, `cache`, optional `hidden_states`
            and `attentions`, and `graph_embeds`; a tuple (without the `None` fields) under `return_dict=False`.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            atom_features=atom_features,
            atom_mask=atom_mask,
            bond_index=bond_index,
            bond_features=bond_features,
            bond_mask=bond_mask,
            motif_features=motif_features,
            motif_mask=motif_mask,
            graph_embeds=graph_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LlamoCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            graph_embeds=outputs.graph_embeds,
        )

    def save_pretrained(self, *args, **kwargs):
        """transformers' `save_pretrained`; a generation config that sets LLaMo's keys (`LOOP_GUARD_KEYS`) is saved as
        the model's own (`_from_model_config` off), because loading drops the keys transformers does not know from a
        generation config marked as derived from the model config."""
        if any(getattr(self.generation_config, key, None) is not None for key in LOOP_GUARD_KEYS):
            self.generation_config._from_model_config = False
        return super().save_pretrained(*args, **kwargs)

    def generate(self, *args, logits_processor: LogitsProcessorList | None = None, **kwargs):
        """`GenerationMixin.generate`, plus LLaMo's loop guard (`AnswerLoopStopLogitsProcessor`), set by keywords or
        else attributes of the generation config: `answer_loop_repeats` (`None` or 0: off), the answer ends once it
        repeats one block that many times in a row; `answer_sentence_end_token_ids`, the tokens that end a sentence,
        for the rule that ends an answer once a sentence starts as an earlier one did. The `<graph>` placeholder is
        always among the `suppress_tokens`: a generated one would be read as a molecule's slot at the next step.
        """
        config = kwargs.get("generation_config") or self.generation_config
        suppressed = list(kwargs.get("suppress_tokens", getattr(config, "suppress_tokens", None)) or [])
        if self.config.graph_token_id is not None and self.config.graph_token_id not in suppressed:
            kwargs["suppress_tokens"] = [*suppressed, self.config.graph_token_id]
        repeats, sentence_ends = (
            kwargs.pop(key, getattr(config, key, getattr(self.generation_config, key, None))) for key in LOOP_GUARD_KEYS
        )
        processors = list(logits_processor or [])
        if repeats:
            eos = config.eos_token_id if config.eos_token_id is not None else self.generation_config.eos_token_id
            if eos is None:
                raise ValueError("answer_loop_repeats needs an eos_token_id to end the answer with")
            processors.append(AnswerLoopStopLogitsProcessor(repeats, eos, sentence_end_token_ids=sentence_ends))
        return super().generate(*args, logits_processor=LogitsProcessorList(processors), **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """The generic preparation (`input_ids` `(B, L)` or, at the first step, `inputs_embeds` `(B, L, hidden)`, sliced
        to the positions not yet cached), with the graph inputs and `graph_embeds` passed exactly while the cache
        holds no tokens: at the prefill of every `generate` call (also an assistant model's first drafting call,
        which is not `is_first_iteration`) and at every step without a cache. Once the cache holds the prompt, the
        graph tokens are in it and the inputs are dropped."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        graph_names = [name for name in (*GRAPH_INPUT_NAMES, "graph_embeds") if name in model_inputs]
        # Feeding only a suffix means the rest is cached; this avoids reading a static cache's length on the device.
        suffix_only = next_sequence_length is not None and next_sequence_length < input_ids.shape[1]
        if graph_names and (suffix_only or (cache is not None and cache.get_seq_length() > 0)):
            model_inputs = {key: value for key, value in model_inputs.items() if key not in graph_names}
        return model_inputs


__all__ = ["LlamoForConditionalGeneration", "LlamoModel", "LlamoPreTrainedModel"]
