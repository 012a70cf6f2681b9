"""Export a LLaMo model into one self-contained, Hub-ready folder: safetensors weights, `config.json` (`auto_map`, the
custom pipeline), exactly the remote-code files, processor and tokenizer files, generation config and model card. It
is written beside its destination and moved into place once complete: a failed export leaves the destination alone."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamo.storage import format_bytes, refuse_output_over

from .cards import PIPELINE_TASK, ModelCardOptions, build_model_card

REMOTE_CODE_FILES = (
    "chat_template_llamo.py",
    "configuration_llamo.py",
    "feature_extraction_llamo.py",
    "featurization_llamo.py",
    "generation_llamo.py",
    "modeling_llamo.py",
    "pipeline_llamo.py",
    "processing_llamo.py",
    "smiles_llamo.py",
)
"""The Python files an exported folder carries, and no others."""
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "README.md",
)
HIDDEN_PATTERNS = [".*", "*/.*"]
"""Hidden files and folders: never listed, never uploaded."""


class ExportError(ValueError):
    """A model folder that cannot be exported, or an export that came out incomplete (named in the message)."""


def list_files(folder: Path) -> list[tuple[str, int]]:
    """The files under `folder` that `upload_folder` sends (hidden ones left out), as `(relative path, size)`."""
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    kept = filter_repo_objects(paths, ignore_patterns=HIDDEN_PATTERNS)
    return [(path, (folder / path).stat().st_size) for path in kept]


@dataclass
class ExportResult:
    """A folder and its files as `(relative path, size in bytes)`."""

    folder: Path
    files: list[tuple[str, int]]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def listing(self) -> str:
        return "\n".join(f"  {format_bytes(size):>10}  {path}" for path, size in self.files)


def check_destination(output_dir: Path, overwrite: bool, **inputs: Path | None) -> None:
    """Refuse an output that is a file, that is or holds one of the `inputs` (`refuse_output_over`), or that is not
    empty without `overwrite`."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder.")
    try:
        refuse_output_over(output_dir, **inputs)
    except ValueError as error:
        raise ExportError(str(error)) from None
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new folder or pass --overwrite.")


def check_export_folder(folder: Path) -> None:
    """Check a written export: required files, safetensors (no pickles), exactly the remote code, auto_map, pipeline."""
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
    pipelines = config.get("custom_pipelines", {})
    if "AutoModelForCausalLM" not in config.get("auto_map", {}) or PIPELINE_TASK not in pipelines:
        raise ExportError(f"{folder}/config.json lacks the auto_map or the {PIPELINE_TASK} custom pipeline.")


def write_export(
    model, processor, output_dir: str | Path, card, overwrite: bool = False, extra: Callable[[Path], None] | None = None
) -> ExportResult:
    """Write `model` (its `config.custom_pipelines` gets set) + `processor` + `card` (a `ModelCard`) as an export folder
    in `output_dir`, replacing a non-empty one only with `overwrite`. `extra` is called with the staging folder to add
    more files (e.g. a PEFT adapter) before the check."""
    from llamo.pipeline_llamo import LlamoMoleculePipeline

    output_dir = Path(output_dir)
    check_destination(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.export-", dir=output_dir.parent))
    try:
        # the registered pipeline writes its task into config.json and its code beside the model's remote code
        pipe = LlamoMoleculePipeline(model=model, processor=processor, device=model.device)
        pipe.save_pretrained(staging, max_shard_size="5GB")
        processor.save_pretrained(staging)
        card.save(staging / "README.md")
        if extra is not None:
            extra(staging)
        check_export_folder(staging)
        if output_dir.exists():  # the old folder goes only once the new one is in place
            retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, retired / output_dir.name)
            os.replace(staging, output_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(output_dir, list_files(output_dir))


def export_model(
    model_dir: str | Path,
    output_dir: str | Path,
    card_options: ModelCardOptions | None = None,
    overwrite: bool = False,
    dtype: str = "auto",
) -> ExportResult:
    """Export a saved LLaMo folder to `output_dir` (new or empty unless `overwrite`), with the card `card_options`
    describe. The model is loaded (`dtype` `auto`: as saved) and saved again, so none of a training folder's other
    files (optimizer states, logs, checkpoints) come along."""
    from llamo.builder import load_llamo
    from llamo.cli_common import DTYPE_CHOICES

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        if (model_dir / "adapter_config.json").is_file():
            raise ExportError(
                f"{model_dir} holds a PEFT adapter, not a full model: export the merged model (stage 2 writes it to "
                "OUTPUT_DIR/merged)."
            )
        raise ExportError(f"{model_dir} has no config.json: not a saved model folder.")
    model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "llamo":
        raise ExportError(f"{model_dir} holds a {model_type!r} model, not a LLaMo (model_type 'llamo').")
    if not (model_dir / "processor_config.json").is_file():
        raise ExportError(f"{model_dir} has no processor_config.json: save the LlamoProcessor with the model.")
    check_destination(output_dir, overwrite, model_folder=model_dir)
    if dtype not in DTYPE_CHOICES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}.")
    model, processor = load_llamo(model_dir, "cpu", dtype)
    card = build_model_card(model, processor, card_options, model_dir=model_dir)
    return write_export(model, processor, output_dir, card, overwrite=overwrite)
