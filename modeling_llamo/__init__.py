"""LLaMo: a molecular graph encoder + multi-level graph projector with motif tokens + a causal LM.

Importing `llamo` registers the model with transformers' Auto classes, so saved LLaMo folders also load without
`trust_remote_code` while this package is installed. The import itself is light (no torch, no transformers: the
command line's `--help` stays fast): names are imported on first use, and the registration happens as soon as
transformers' Auto API is loaded (`llamo.auto_registration`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import auto_registration

__version__ = "0.1.0.dev0"

_EXPORTS = {
    name: module
    for module, names in {
        "chat_template_llamo": ("add_name_hint", "add_neighbours"),
        "configuration_llamo": ("GRAPH_INPUT_NAMES", "LlamoConfig", "LlamoGraphEncoderConfig", "LlamoProjectorConfig"),
        "default_model": ("default_model_path",),
        "feature_extraction_llamo": ("LlamoMoleculeFeaturizer", "collate_sequence_molecules", "prepare_molecule"),
        "featurization_llamo": ("MoleculeGraph", "collate_molecule_graphs", "featurize_smiles"),
        "modeling_llamo": ("LlamoForConditionalGeneration", "LlamoModel", "LlamoPreTrainedModel"),
        "pipeline_llamo": ("MOLECULE_TASK", "LlamoMoleculePipeline"),
        "processing_llamo": ("LlamoProcessor",),
        "smiles_llamo": ("parse_smiles",),
    }.items()
    for name in names
}
# modules whose classes go into the Auto API: using one of their names registers at once (errors are raised)
_REGISTERED_MODULES = frozenset({"configuration_llamo", "modeling_llamo", "pipeline_llamo", "processing_llamo"})

# ruff: noqa: F401 -- the imports below are for type checkers and IDEs, re-exported through `__all__`
if TYPE_CHECKING:
    from .chat_template_llamo import add_name_hint, add_neighbours
    from .configuration_llamo import GRAPH_INPUT_NAMES, LlamoConfig, LlamoGraphEncoderConfig, LlamoProjectorConfig
    from .default_model import default_model_path
    from .feature_extraction_llamo import LlamoMoleculeFeaturizer, collate_sequence_molecules, prepare_molecule
    from .featurization_llamo import MoleculeGraph, collate_molecule_graphs, featurize_smiles
    from .modeling_llamo import LlamoForConditionalGeneration, LlamoModel, LlamoPreTrainedModel
    from .pipeline_llamo import MOLECULE_TASK, LlamoMoleculePipeline
    from .processing_llamo import LlamoProcessor
    from .smiles_llamo import parse_smiles


def __getattr__(name: str) -> Any:
    """Import an exported name (or a submodule, as `import llamo` used to) on first access."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    if module_name in _REGISTERED_MODULES:
        auto_registration.register_when_ready(strict=True)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The module `__getattr__`, `__dir__` and `__all__` of a package whose names (`exports`: `{name: submodule}`) are
    imported from its submodules on first use (PEP 562), so that importing the package stays light:
    `__getattr__, __dir__, __all__ = lazy_exports(__name__, EXPORTS)`."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return getattr_, dir_, sorted(exports)


__all__ = sorted(_EXPORTS)

auto_registration.install()
