"""The graph part of the original checkpoint's conversion: moved to `llamo.convert_llamo_original_to_hf`, which holds
the whole conversion. This alias keeps the old import path working."""

from .convert_llamo_original_to_hf import (  # noqa: F401 (re-exported)
    ENCODER_PREFIX,
    PROJECTOR_PREFIX,
    UNUSED_PREFIXES,
    convert_original_graph_state_dict,
    is_level_attention_shared,
    load_original_graph_weights,
    original_graph_configs,
)
