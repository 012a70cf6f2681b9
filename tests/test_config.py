import pytest
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, OPTConfig, Qwen2Config

from llamo import LlamoConfig, LlamoGraphEncoderConfig, LlamoProjectorConfig


def test_defaults_are_the_paper():
    config = LlamoConfig()
    assert config.graph_config.hidden_size == 300 and config.graph_config.num_layers == 5
    assert config.graph_config.atom_vocab_sizes == [119, 4, 12, 12, 10, 6, 6, 2, 2]
    projector = config.projector_config
    assert (projector.queries_per_level, projector.num_motif_queries, projector.num_heads, projector.mlp_depth) == (
        4,
        4,
        4,
        6,
    )
    assert projector.share_level_attention is False and projector.motif_tokens_position == "first"
    assert config.num_graph_tokens == 28
    assert config.text_config.model_type == "llama"


@pytest.mark.parametrize("text", [Qwen2Config(hidden_size=64), OPTConfig(hidden_size=64), {"model_type": "llama"}])
def test_json_round_trip(tmp_path, text):
    config = LlamoConfig(
        text_config=text,
        graph_config=LlamoGraphEncoderConfig(num_layers=3, hidden_size=60),
        projector_config=LlamoProjectorConfig(use_motifs=False, share_level_attention=True, num_heads=3),
        graph_token_id=5,
    )
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert type(again) is LlamoConfig
    assert again.num_graph_tokens == config.num_graph_tokens == 16
    assert again.text_config.model_type == config.text_config.model_type
    assert again.graph_config.hidden_size == 60 and again.projector_config.share_level_attention
    assert again.graph_token_id == 5


def test_stored_num_graph_tokens_is_ignored():
    config = LlamoConfig(num_graph_tokens=99)
    assert config.num_graph_tokens == 28
    assert "num_graph_tokens" not in config.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"projector_config": {"motif_tokens_position": "middle"}}, "motif_tokens_position"),
        ({"projector_config": {"num_heads": 7}}, "divisible"),
        ({"graph_config": {"num_layers": 0}}, "num_layers"),
        ({"projector_config": {"queries_per_level": 0}}, "queries_per_level"),
        ({"graph_config": {"batch_norm_momentum": None}}, "batch_norm_momentum"),
        ({"graph_config": {"batch_norm_momentum": 0.0}}, "batch_norm_momentum"),
        ({"graph_config": {"hidden_size": "300"}}, "hidden_size"),
        ({"graph_config": {"atom_vocab_sizes": ["119"]}}, "atom_vocab_sizes"),
        ({"projector_config": {"use_motifs": "yes"}}, "use_motifs"),
        ({"projector_config": {"num_motif_queries": 0}}, "num_motif_queries"),
        ({"graph_token_id": -1}, "graph_token_id"),
        ({"graph_token_id": True}, "graph_token_id"),
    ],
)
def test_malformed_configs_name_the_field(kwargs, message):
    with pytest.raises((ValueError, StrictDataclassError), match=message):  # transformers' configs raise the latter
        LlamoConfig(**kwargs)


def test_integer_values_of_float_fields_are_accepted():
    config = LlamoConfig(graph_config={"dropout": 0, "batch_norm_momentum": 1})
    assert config.graph_config.dropout == 0 and config.graph_config.batch_norm_momentum == 1


def test_tied_embeddings_follow_the_text_config():
    assert LlamoConfig(text_config={"model_type": "llama", "tie_word_embeddings": True}).tie_word_embeddings
    assert not LlamoConfig(text_config={"model_type": "llama", "tie_word_embeddings": False}).tie_word_embeddings
