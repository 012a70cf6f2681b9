"""LLaMo: a molecular graph encoder + multi-level graph projector with motif tokens + a causal LM.

Importing `llamo` registers the model with transformers' Auto classes, so saved LLaMo folders also load without
`trust_remote_code` while this package is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .chat_template_llamo import add_neighbours
from .configuration_llamo import GRAPH_INPUT_NAMES, LlamoConfig, LlamoGraphEncoderConfig, LlamoProjectorConfig
from .default_model import default_model_path
from .feature_extraction_llamo import LlamoMoleculeFeaturizer, collate_sequence_molecules, prepare_molecule
from .featurization_llamo import MoleculeGraph, collate_molecule_graphs, featurize_smiles, parse_smiles
from .modeling_llamo import LlamoForConditionalGeneration, LlamoModel, LlamoPreTrainedModel
from .pipeline_llamo import MOLECULE_TASK, LlamoMoleculePipeline
from .processing_llamo import LlamoProcessor

__version__ = "0.1.0.dev0"

AutoConfig.register("llamo", LlamoConfig, exist_ok=True)
AutoModel.register(LlamoConfig, LlamoModel, exist_ok=True)
AutoModelForCausalLM.register(LlamoConfig, LlamoForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlamoConfig, LlamoProcessor, exist_ok=True)

LlamoConfig.register_for_auto_class()
LlamoModel.register_for_auto_class("AutoModel")
LlamoForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")
LlamoProcessor.register_for_auto_class("AutoProcessor")
PIPELINE_REGISTRY.register_pipeline(
    MOLECULE_TASK, pipeline_class=LlamoMoleculePipeline, pt_model=AutoModelForCausalLM, type="multimodal"
)

__all__ = [
    "GRAPH_INPUT_NAMES",
    "MOLECULE_TASK",
    "LlamoConfig",
    "LlamoForConditionalGeneration",
    "LlamoGraphEncoderConfig",
    "LlamoModel",
    "LlamoMoleculeFeaturizer",
    "LlamoMoleculePipeline",
    "LlamoPreTrainedModel",
    "LlamoProcessor",
    "LlamoProjectorConfig",
    "MoleculeGraph",
    "add_neighbours",
    "collate_molecule_graphs",
    "collate_sequence_molecules",
    "default_model_path",
    "featurize_smiles",
    "parse_smiles",
    "prepare_molecule",
]
