"""The whole recipe of a model in one config and one command: instruction data, stage 1, stage 2, bundle.

    llamo train pipeline --config llamo_smollm2_135m --chebi20 PATH/TO/ChEBI-20.tsv

Each step is skipped when its output is complete, and the training stages resume from their checkpoints, so
rerunning the same command after an interruption continues where it stopped."""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import StageArguments, read_recipe, recipe_file, stage_arguments


@dataclass
class PipelineConfig:
    """
    Args:
        work_dir: where every step writes (conversations, stage1, stage2, bundle).
        placeholders: values substituted for `{name}` in every string of the recipe (e.g. `{chebi20}`).
        conversations: `llamo generate-data` settings (`input`, `teacher`, `limit`, ...) or empty to skip.
        stage1, stage2: each stage's recipe keys; `output_dir` and `model_name_or_path` are filled in from `work_dir`.
        stage2b: an optional second stage-2 round continuing stage 2's adapter on another mixture (the bundle is then
            taken from it).
        bundle: `{"output", "base_vocab_size", "dtype", "retrieval", "generation"}` to export a default-model bundle,
            or empty.
        start_from_bundle: skip stage 1 and continue a bundle folder (or `default`, the packaged one): its model
            before the adapter becomes the stage-1 folder, and stage 2 continues its adapter."""

    work_dir: str
    stage1: dict[str, Any]
    stage2: dict[str, Any]
    placeholders: dict[str, str] = field(default_factory=dict)
    conversations: dict[str, Any] = field(default_factory=dict)
    stage2b: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    start_from_bundle: str | None = None

    def bundle_path(self) -> Path | None:
        if self.start_from_bundle == "default":
            from llamo.default_model import BUNDLE_DIR

            return BUNDLE_DIR
        return Path(self.start_from_bundle) if self.start_from_bundle else None


def _substitute(value, placeholders: dict[str, str]):
    if isinstance(value, str):
        for name, replacement in placeholders.items():
            value = value.replace("{" + name + "}", str(replacement))
        return value
    if isinstance(value, list):
        return [_substitute(item, placeholders) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, placeholders) for key, item in value.items()}
    return value


def load_pipeline(path: str, overrides: dict[str, str]) -> PipelineConfig:
    raw, where = read_recipe(path), recipe_file(path)
    known = {item.name: item for item in fields(PipelineConfig)}
    if unknown := sorted(set(raw) - set(known)):
        raise ValueError(f"{where}: unknown pipeline keys {', '.join(unknown)} (known: {', '.join(known)})")
    required = [name for name, item in known.items() if item.default is item.default_factory is MISSING]
    if missing := [name for name in required if name not in raw]:
        raise ValueError(f"{where}: a pipeline recipe needs {', '.join(missing)}")
    mappings = [name for name, item in known.items() if str(item.type).startswith("dict")]
    if wrong := [name for name in mappings if name in raw and not isinstance(raw[name], dict)]:
        raise ValueError(f"{where}: {', '.join(wrong)} must be a mapping of settings (write {{}} for none)")
    placeholders = {**raw.get("placeholders", {}), **overrides}
    if missing := sorted(name for name, value in placeholders.items() if value in (None, "")):
        raise ValueError(f"The recipe needs {', '.join('--' + name for name in missing)}")
    raw = _substitute({k: v for k, v in raw.items() if k != "placeholders"}, placeholders)
    return PipelineConfig(placeholders=placeholders, **raw)


def stage1_dir(config: PipelineConfig) -> Path:
    return Path(config.stage1.get("output_dir") or Path(config.work_dir) / "stage1")


def stage_configs(config: PipelineConfig) -> tuple[StageArguments | None, StageArguments]:
    """The stages' arguments (no stage 1 when the pipeline starts from a bundle)."""
    bundle, start = config.bundle_path(), str(stage1_dir(config))
    first = None if bundle else stage_arguments("stage1", copy.deepcopy({"output_dir": start, **config.stage1}))
    second = {"output_dir": str(Path(config.work_dir) / "stage2"), "model_name_or_path": start}
    if bundle is not None:
        second["adapter_path"] = str(bundle)
    return first, stage_arguments("stage2", copy.deepcopy({**second, **config.stage2}))


def stage2_rounds(config: PipelineConfig) -> list[StageArguments]:
    """Stage 2, then the optional `stage2b` round that continues its adapter."""
    _, second = stage_configs(config)
    rounds = [second]
    if config.stage2b:
        more = copy.deepcopy(config.stage2b)
        more.setdefault("output_dir", str(Path(config.work_dir) / "stage2b"))
        more.setdefault("model_name_or_path", second.model.model_name_or_path)
        more.setdefault("adapter_path", str(Path(second.training.output_dir) / "adapter"))
        rounds.append(stage_arguments("stage2", more))
    return rounds


def run(config: PipelineConfig, log=print, callbacks=()) -> Path:
    """Run the recipe's steps (each skipped when done); `callbacks` go to every stage-2 round's trainer."""
    from llamo.training import stage1, stage2

    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if config.conversations:
        prepare_conversations(config.conversations, log)
    first, _ = stage_configs(config)
    start = stage1_dir(config)
    if first is not None:
        log(f"[pipeline] stage 1 -> {first.training.output_dir}")
        stage1.main(*first, log=log)
    elif not (start / "config.json").is_file():
        from llamo.default_model import unpack_bundle

        log(f"[pipeline] starting from the bundle {config.bundle_path()} -> {start}")
        unpack_bundle(config.bundle_path(), start)
    rounds = stage2_rounds(config)
    for second in rounds:
        log(f"[pipeline] stage 2 -> {second.training.output_dir}")
        stage2.main(*second, log=log, callbacks=callbacks)
    if config.bundle:
        from llamo.default_model import export_bundle

        stage2_dir = rounds[-1].training.output_dir
        stage1 = f"bundle: {config.start_from_bundle}" if config.start_from_bundle else str(start)
        metadata = {"recipe": config.bundle.get("recipe_name"), "stage1": stage1, "stage2": str(stage2_dir)}
        options = {
            k: v for k, v in config.bundle.items() if k in ("base_vocab_size", "dtype", "retrieval", "generation")
        }
        bundle = export_bundle(str(start), stage2_dir, config.bundle["output"], metadata=metadata, **options)
        log(f"[pipeline] bundle written to {bundle}")
    return work


def prepare_conversations(settings: dict[str, Any], log=print) -> None:
    """The recipe's conversations step: `llamo generate-data` with `settings`, skipped when its output is complete."""
    from llamo.processing.instruction_data import generate_from_settings
    from llamo.processing.instruction_summary import format_summary, read_summary
    from llamo.processing.teachers import TeacherError

    if (read_summary(settings["output"]) or {}).get("complete") is True:
        log(f"[pipeline] conversations already in {settings['output']}")
        return
    log(f"[pipeline] conversations -> {settings['output']}")
    try:
        summary = generate_from_settings(settings)
    except TeacherError as error:
        raise RuntimeError(f"instruction-data generation failed: {error}") from error
    log(f"[pipeline] {format_summary(summary)}")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="llamo train pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="pipeline recipe (a file, or a shipped recipe's name)")
    known, rest = parser.parse_known_args(argv)
    overrides = {}
    for index in range(0, len(rest), 2):
        if not rest[index].startswith("--") or index + 1 >= len(rest):
            parser.error(f"placeholder values come as --name value, got {rest[index:]}")
        overrides[rest[index][2:].replace("-", "_")] = rest[index + 1]
    return run(load_pipeline(known.config, overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
