"""Conversion of the original LLaMo release: moved beside the model, to `llamo.convert_llamo_original_to_hf`. This
alias keeps `llamo.hub_cards.convert` (and `from llamo.hub_cards import convert_original_checkpoint`) working."""

from llamo.convert_llamo_original_to_hf import (
    LLM_PREFIX,
    RELEASE_LORA_ALPHA,
    RELEASE_LORA_DROPOUT,
    CheckpointError,
    ConversionResult,
    OriginalParts,
    UnsafeCheckpointError,
    adapter_state_dict,
    align_tokenizer,
    convert_graph_part,
    convert_original_checkpoint,
    converted_config,
    describe_level_attention,
    language_model_weights,
    level_attention_differences,
    load_checkpoint_state_dict,
    merge_lora,
    split_original_state_dict,
)

__all__ = [
    "LLM_PREFIX",
    "RELEASE_LORA_ALPHA",
    "RELEASE_LORA_DROPOUT",
    "CheckpointError",
    "ConversionResult",
    "OriginalParts",
    "UnsafeCheckpointError",
    "adapter_state_dict",
    "align_tokenizer",
    "convert_graph_part",
    "convert_original_checkpoint",
    "converted_config",
    "describe_level_attention",
    "language_model_weights",
    "level_attention_differences",
    "load_checkpoint_state_dict",
    "merge_lora",
    "split_original_state_dict",
]
