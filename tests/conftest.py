"""Tiny in-process models and tokenizers: nothing is downloaded."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
CHEBI_VALIDATION = SHARED / "data" / "chebi20" / "validation.txt"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

CORPUS = [
    "The molecule is an aromatic carboxylic acid and a member of benzoic acids.",
    "It is a conjugate acid of a benzoate. It has a role as a metabolite.",
    "The molecule is a monocarboxylic acid amide obtained by formal condensation.",
    "Describe this molecule. What is its IUPAC name? Predict the HOMO energy.",
    "CC(=O)Oc1ccccc1C(=O)O CN1C=NC2=C1C(=O)N(C(=O)N2C)C OCC1OC(O)C(O)C(O)C1O [Na+].[Cl-]",
    "[INST] <<SYS>> The following is a conversation between a curious human and AI assistant. <</SYS>> [/INST]",
    "2-acetyloxybenzoic acid -0.2541 0.0123 hydroxy ester ketone alcohol amine",
]

SMILES = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "methane": "C",
    "salt": "[Na+].[Cl-]",
    "glucose": "OCC1OC(O)C(O)C(O)C1O",
}


WITHOUT_LLAMO = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockLlamo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "llamo" or name.startswith("llamo."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockLlamo())
    try:
        import llamo  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("llamo is importable: the test would prove nothing")
    """
)
"""The start of a child process's script that must work without llamo: importing it fails there (remote code only)."""


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (so any SMILES round-trips) with a ChatML chat template."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


TINY_GRAPH = {"hidden_size": 16, "num_layers": 2}
TINY_PROJECTOR = {"num_heads": 2, "mlp_depth": 2}


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("tiny_llm")
    tokenizer = make_tokenizer()
    make_tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llamo(tiny_llm_dir):
    """(model, processor) of an untrained tiny LLaMo around the tiny Llama, LLaMA-2 chat template."""
    from llamo.builder import build_llamo

    torch.manual_seed(0)
    model, processor = build_llamo(
        str(tiny_llm_dir), graph_config=TINY_GRAPH, projector_config=TINY_PROJECTOR, chat_template="llama2"
    )
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_llamo_dir(tiny_llamo, tmp_path_factory) -> Path:
    from llamo.builder import save_llamo

    model, processor = tiny_llamo
    return save_llamo(model, processor, tmp_path_factory.mktemp("tiny_llamo") / "model")


def molecule_messages(smiles: str, instruction: str = "Describe this molecule.") -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "molecule", "smiles": smiles}, {"type": "text", "text": instruction}]}
    ]


def golden_rows() -> list[dict]:
    with open(GOLDEN / "featurization_golden.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers and process groups the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
