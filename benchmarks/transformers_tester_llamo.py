"""LLaMo's testers for transformers' own common tests (`ModelTesterMixin`, `GenerationTesterMixin`, `ConfigTester`,
`ProcessorTesterMixin`).

Not run from here: `benchmarks/run_transformers_common_tests.py` copies this file into a transformers source checkout's
`tests/models/` and runs it there (transformers' test mixins are not in its wheel). The model classes are named in
transformers' auto-mapping dicts, where an in-library model's are: the mixins look models up by name there (which
classes train with labels, which base model the RoPE tests build)."""

import unittest

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, MODEL_MAPPING_NAMES
from transformers.testing_utils import require_torch, torch_device

from llamo import (
    LlamoConfig,
    LlamoForConditionalGeneration,
    LlamoModel,
    LlamoProcessor,
    collate_sequence_molecules,
    featurize_smiles,
)

from ...generation.test_utils import GenerationTesterMixin
from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin
from ...test_processing_common import ProcessorTesterMixin

MODEL_MAPPING_NAMES.setdefault("llamo", "LlamoModel")
MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault("llamo", "LlamoForConditionalGeneration")

MOLECULES = ("CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "OCC1OC(O)C(O)C(O)C1O")


class LlamoModelTester:
    """A tiny LLaMo (Llama text model, 2-layer GIN, 2-deep projector) and batches of one molecule per row: its run of
    `num_graph_tokens` `<graph>` ids first, then random text ids."""

    def __init__(self, parent, batch_size: int = 3, text_length: int = 7):
        self.parent = parent
        self.batch_size = batch_size
        self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 99, 32, 2, 4
        self.pad_token_id, self.graph_token_id = 1, 0
        self.is_training = True
        self.num_graph_tokens = self.get_config().num_graph_tokens
        self.seq_length = text_length + self.num_graph_tokens

    def get_config(self) -> LlamoConfig:
        text_config = {
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": 37,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": 512,
            "pad_token_id": self.pad_token_id,
        }
        return LlamoConfig(
            text_config=text_config,
            graph_config={"hidden_size": 16, "num_layers": 2},
            projector_config={"num_heads": 2, "mlp_depth": 2},
            graph_token_id=self.graph_token_id,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[LlamoConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        input_ids = torch.randint(2, self.vocab_size, (self.batch_size, self.seq_length))
        input_ids[:, : self.num_graph_tokens] = self.graph_token_id
        graphs = [[featurize_smiles(MOLECULES[row % len(MOLECULES)])] for row in range(self.batch_size)]
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        inputs.update(collate_sequence_molecules(graphs))
        return config, {name: value.to(torch_device) for name, value in inputs.items()}


@require_torch
class LlamoModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (LlamoModel, LlamoForConditionalGeneration)
    _is_composite = True

    def setUp(self):
        self.model_tester = LlamoModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=LlamoConfig, has_text_modality=False, common_properties=["graph_token_id"]
        )

    def test_config(self):
        self.config_tester.run_common_tests()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE over a few molecule sentences, with `<graph>` and a pad token, as `llamo init` prepares one."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    sentences = [*MOLECULES, "Describe this molecule.", "The molecule is an aromatic ester.", "What is its name?"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(sentences * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_tokens(["<graph>"], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


class LlamoProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = LlamoProcessor

    @classmethod
    def _setup_tokenizer(cls) -> PreTrainedTokenizerFast:
        return tiny_tokenizer()

    @staticmethod
    def prepare_processor_dict() -> dict:
        return {"chat_template": "llama2", "num_graph_tokens": 4}
