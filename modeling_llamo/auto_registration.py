"""Registration of LLaMo with transformers' Auto API and pipeline registry, deferred until transformers is used.

`import llamo` stays light (no torch), yet `AutoModelForCausalLM.from_pretrained(folder)` must then find the LLaMo
classes without `trust_remote_code`. Unless transformers' Auto API is already loaded, `install()` puts a finder on
`sys.meta_path`: once no transformers or llamo import is in progress and `transformers.models.auto` is loaded, it
registers the classes and removes itself. Until then nothing here imports more than the standard library."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from types import ModuleType

AUTO_PACKAGE = "transformers.models.auto"
WATCHED_PACKAGES = ("transformers", "llamo")

_lock = threading.RLock()
_state = {"registered": False, "depth": 0}


def register_auto_classes() -> None:
    """Register config, models, processor and the molecule pipeline (imports torch and the model)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_llamo import LlamoConfig
    from .modeling_llamo import LlamoForConditionalGeneration, LlamoModel
    from .pipeline_llamo import MOLECULE_TASK, LlamoMoleculePipeline
    from .processing_llamo import LlamoProcessor

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


def is_registered() -> bool:
    """Whether the LLaMo classes are registered with the Auto API in this process."""
    return _state["registered"]


def register_when_ready(strict: bool = False) -> bool:
    """Register now if transformers' Auto API is loaded and no transformers / llamo import is half done; returns
    whether the classes are registered. A failed registration raises with `strict`, else it is a warning (the finder
    calls this inside the user's own `import transformers...`, which a broken optional dependency must not break)."""
    with _lock:
        if _state["registered"] or _state["depth"] or AUTO_PACKAGE not in sys.modules:
            return _state["registered"]
        _state["registered"] = True  # set first: registering imports watched modules, which call back here
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _RegistrationFinder)]
    try:
        register_auto_classes()  # outside the lock: it imports, and other threads' imports take the lock
    except Exception as error:
        _state["registered"] = False
        if strict:
            raise
        warnings.warn(f"llamo could not register its classes with transformers' Auto API: {error!r}", stacklevel=2)
    return _state["registered"]


def install() -> None:
    """Register at once if transformers' Auto API is loaded, else once it is (see the module docstring)."""
    if register_when_ready():
        return
    with _lock:
        if not _state["registered"] and not any(isinstance(f, _RegistrationFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _RegistrationFinder())


class _RegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader that the other finders give for a watched module."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in WATCHED_PACKAGES:
            return None
        finders = (finder for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec"))
        spec = next(filter(None, (finder.find_spec(fullname, path, target) for finder in finders)), None)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CallbackLoader(spec.loader)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    """Runs the real loader, puts it back on the module, then tries to register."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # defined by every loader with exec_module (Python >= 3.6)

    def exec_module(self, module: ModuleType) -> None:
        with _lock:
            _state["depth"] += 1
        try:
            self.loader.exec_module(module)
        finally:
            with _lock:
                _state["depth"] -= 1
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader
        register_when_ready()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)
