"""Export a LLaMo model into one self-contained folder, ready for the Hub.

The folder holds the weights (safetensors), `config.json` with `auto_map` and the `molecule-text-generation` custom
pipeline, exactly the remote-code files (configuration, modeling, processing, featurization, pipeline), the processor
and tokenizer files, the chat template, `generation_config.json`, and the model card (`README.md`).

The folder is written beside its destination first and moved into place only once complete, so a failed export
leaves the destination untouched.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cards import PIPELINE_TASK, ModelCardOptions, build_model_card

REMOTE_CODE_FILES = (
    "chat_template_llamo.py",
    "configuration_llamo.py",
    "feature_extraction_llamo.py",
    "featurization_llamo.py",
    "modeling_llamo.py",
    "pipeline_llamo.py",
    "processing_llamo.py",
)
"""The Python files an exported folder carries, and no others."""

CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_llamo.LlamoMoleculePipeline",
        "pt": ["AutoModelForCausalLM"],
        "type": "multimodal",
    }
}
"""`config.json`'s `custom_pipelines`: with one task there, `pipeline(model=folder, trust_remote_code=True)` reads the
task from the config, without asking the Hub."""

REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "README.md",
)


class ExportError(ValueError):
    """A model folder that cannot be exported, or an export that came out incomplete (named in the message)."""


@dataclass
class ExportResult:
    """What was written: the folder and its files as `(relative path, size in bytes)`."""

    folder: Path
    files: list[tuple[str, int]]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def list_files(folder: Path) -> list[tuple[str, int]]:
    """Regular files under `folder` (hidden ones excluded), as `(relative POSIX path, size)`, sorted."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append((relative.as_posix(), path.stat().st_size))
    return found


def check_destination(output_dir: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse a destination that is a file, the source itself, or a non-empty folder without `overwrite`."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder.")
    if source is not None and output_dir.resolve() == source.resolve():
        raise ExportError(f"Cannot export {source} into itself: choose another output folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new folder or pass --overwrite.")


def check_model_folder(model_dir: Path) -> None:
    """A LLaMo model folder: `config.json` of model type `llamo` and the processor's files."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder not found: {model_dir}")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        if (model_dir / "adapter_config.json").is_file():
            raise ExportError(
                f"{model_dir} holds a PEFT adapter, not a full model: export the merged model (stage 2 writes it to "
                "OUTPUT_DIR/merged)."
            )
        raise ExportError(f"{model_dir} has no config.json: not a saved model folder.")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    if model_type != "llamo":
        raise ExportError(f"{model_dir} holds a {model_type!r} model, not a LLaMo (model_type 'llamo').")
    if not (model_dir / "processor_config.json").is_file():
        raise ExportError(f"{model_dir} has no processor_config.json: save the LlamoProcessor with the model.")


def check_export_folder(folder: Path) -> None:
    """Check a written export: required files, safetensors weights, exactly the remote-code files, the config's
    `auto_map` and custom pipeline."""
    names = {relative for relative, _ in list_files(folder)}
    missing = [name for name in REQUIRED_FILES if name not in names]
    if not any(name.endswith(".safetensors") and "/" not in name for name in names):
        missing.append("model*.safetensors")
    code = {name for name in names if name.endswith(".py") and "/" not in name}
    if missing or code != set(REMOTE_CODE_FILES):
        raise ExportError(
            f"The export in {folder} came out incomplete: missing {missing}, remote code {sorted(code)} instead of "
            f"{list(REMOTE_CODE_FILES)}."
        )
    if any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in names):
        raise ExportError(f"The export in {folder} holds pickled files; only safetensors weights may be published.")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "AutoModelForCausalLM" not in (config.get("auto_map") or {}) or PIPELINE_TASK not in (
        config.get("custom_pipelines") or {}
    ):
        raise ExportError(f"{folder}/config.json lacks the auto_map or the {PIPELINE_TASK} custom pipeline.")


def write_export(
    model,
    processor,
    output_dir: str | Path,
    card,
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> ExportResult:
    """
    Write `model` + `processor` + `card` as an export folder (see the module docstring).

    Args:
        model: a `LlamoForConditionalGeneration` (its config gets the custom pipeline in the saved file only).
        processor: its `LlamoProcessor`.
        output_dir: the destination; a non-empty one is replaced only with `overwrite`.
        card: the `ModelCard` written as `README.md`.
        extra: called with the staging folder to add more files (e.g. a PEFT adapter) before the check.
    """
    import llamo

    output_dir = Path(output_dir)
    check_destination(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.export-", dir=output_dir.parent))
    had_pipelines = hasattr(model.config, "custom_pipelines")
    previous = getattr(model.config, "custom_pipelines", None)
    try:
        model.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        model.save_pretrained(staging, max_shard_size="5GB")
        processor.save_pretrained(staging)
        shutil.copyfile(Path(llamo.__file__).parent / "pipeline_llamo.py", staging / "pipeline_llamo.py")
        card.save(staging / "README.md")
        if extra is not None:
            extra(staging)
        check_export_folder(staging)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if had_pipelines:
            model.config.custom_pipelines = previous
        else:
            del model.config.custom_pipelines
    return ExportResult(output_dir, list_files(output_dir))


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Replace `output_dir` by `staging`; the old folder is removed only after the new one is in place."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    os.replace(output_dir, retired / output_dir.name)
    os.replace(staging, output_dir)
    shutil.rmtree(retired, ignore_errors=True)


def export_model(
    model_dir: str | Path,
    output_dir: str | Path,
    card_options: ModelCardOptions | None = None,
    overwrite: bool = False,
    dtype: str = "auto",
) -> ExportResult:
    """
    Export a saved LLaMo folder (from `llamo init`, training, or `convert-original`) for the Hub.

    The model is loaded and saved again, so the export always holds safetensors weights, the remote code of the
    installed `llamo`, and none of a training folder's other files (optimizer states, logs, checkpoints).

    Args:
        model_dir: the saved model + processor.
        output_dir: where to write; must be new or empty unless `overwrite`.
        card_options: what the model card says (see `ModelCardOptions`).
        dtype: `auto` keeps the saved dtype; `float32`, `bfloat16` or `float16` converts the weights.
    """
    from llamo.builder import load_llamo
    from llamo.cli_common import DTYPE_CHOICES

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    check_model_folder(model_dir)
    check_destination(output_dir, overwrite, source=model_dir)
    if dtype not in DTYPE_CHOICES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}.")
    model, processor = load_llamo(model_dir, "cpu", dtype)
    card = build_model_card(model, processor, card_options, model_dir=model_dir)
    return write_export(model, processor, output_dir, card, overwrite=overwrite)


__all__ = [
    "CUSTOM_PIPELINES",
    "REMOTE_CODE_FILES",
    "ExportError",
    "ExportResult",
    "check_export_folder",
    "check_model_folder",
    "export_model",
    "list_files",
    "write_export",
]
