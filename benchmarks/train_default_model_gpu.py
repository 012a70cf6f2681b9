"""Train a default-model recipe on one CUDA GPU inside a time budget (a leased machine), and keep what it measured.

    python benchmarks/train_default_model_gpu.py --recipe llamo_smollm2_135m_v9 --chebi20 PATH/TO/ChEBI-20.tsv \
        --minutes 5.5 --output gpu_run

Runs the recipe as `llamo train pipeline` does (instruction data, stage 2 continuing the bundled model, bundle export;
each step skipped when done, so data prepared beforehand on a CPU machine, `LLAMO_DATA_CACHE` and the conversations
file, is reused), with a `TimeBudgetCallback` that fits `max_steps` to `--minutes` from the measured step time.
`OUTPUT/summary.json` holds the fitted steps, step time, samples/s, peak GPU memory and the loss curve;
`OUTPUT/adapter_model.safetensors` is the new bundle's adapter, and `OUTPUT/bundle_files.tar` its small files with the
stage-2 run's settings and summary under `stage2/` (for `llamo export --run-dir`, which writes the model card); the
bundle's tokenizer and graph-encoder weights are the starting bundle's, unchanged by stage 2.

On a machine without internet, set `HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0`: transformers otherwise tries to fetch Hub
kernels when a model loads or switches to training mode on CUDA, and fails offline."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import time
from pathlib import Path

import torch

from llamo.training.budget import TimeBudgetCallback
from llamo.training.config import RUN_CONFIG, SUMMARY
from llamo.training.pipeline import load_pipeline, run, stage2_rounds

CHANGED_FILES = ("adapter_model.safetensors",)
SMALL_FILES = ("adapter_config.json", "bundle.json", "llamo_retrieval.json", "config.json", "processor_config.json")


def train_within(
    recipe: str, placeholders: dict[str, str], seconds: float, probe: int | None = None, skip: int | None = None
) -> dict:
    """Run the recipe with the time budget (`probe`, `skip`: `TimeBudgetCallback`'s, its defaults when None);
    returns what was measured and where the bundle is."""
    config = load_pipeline(recipe, placeholders)
    timing = {name: value for name, value in (("probe", probe), ("skip", skip)) if value is not None}
    budget = TimeBudgetCallback(seconds, **timing)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    run(config, callbacks=[budget])
    stage2 = stage2_rounds(config)[-1]
    summary = json.loads((Path(stage2.training.output_dir) / SUMMARY).read_text())
    batch = stage2.training.per_device_train_batch_size * stage2.training.gradient_accumulation_steps
    result = {
        "recipe": recipe,
        "budget_seconds": seconds,
        "fitted_max_steps": budget.fitted_steps,
        "step_seconds": budget.step_seconds,
        "samples_per_s": round(batch / budget.step_seconds, 1) if budget.step_seconds else None,
        "global_step": summary["global_step"],
        "samples_seen": summary["global_step"] * batch,
        "train_seconds": summary["wall_seconds"],
        "pipeline_seconds": round(time.monotonic() - started, 1),
        "metrics": summary["metrics"],
        "log_history": summary["log_history"],
        "bundle": config.bundle.get("output"),
        "stage2_dir": stage2.training.output_dir,
    }
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def keep_results(result: dict, output: Path) -> None:
    """Write `summary.json`, the bundle's changed weights and a tar of its small files into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    bundle = Path(result["bundle"])
    for name in CHANGED_FILES:
        (output / name).write_bytes((bundle / name).read_bytes())
    stage2 = Path(result["stage2_dir"])
    with tarfile.open(output / "bundle_files.tar", "w") as archive:
        for name in SMALL_FILES:
            if (bundle / name).is_file():
                archive.add(bundle / name, arcname=name)
        for name in (RUN_CONFIG, SUMMARY):
            if (stage2 / name).is_file():
                archive.add(stage2 / name, arcname=f"stage2/{name}")
    result = {**result, "torch": torch.__version__, "python": platform.python_version()}
    (output / "summary.json").write_text(json.dumps(result, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="a pipeline recipe (file or shipped name)")
    parser.add_argument("--chebi20", required=True, help="the ChEBI-20 file the recipe reads")
    parser.add_argument("--work-dir", help="the recipe's work_dir (default: the recipe's own)")
    parser.add_argument("--minutes", type=float, required=True, help="training time budget")
    parser.add_argument("--probe", type=int, help="timed steps that fit max_steps (default: TimeBudgetCallback's)")
    parser.add_argument("--skip", type=int, help="untimed steps before the probe (default: TimeBudgetCallback's)")
    parser.add_argument("--output", required=True, help="folder for summary.json and the bundle's new files")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a rehearsal at tiny scale)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("No CUDA GPU here (torch.cuda.is_available() is False); --allow-cpu rehearses on the CPU.")
    placeholders = {"chebi20": args.chebi20, **({"work_dir": args.work_dir} if args.work_dir else {})}
    result = train_within(args.recipe, placeholders, args.minutes * 60, args.probe, args.skip)
    keep_results(result, Path(args.output))
    print(json.dumps({k: v for k, v in result.items() if k != "log_history"}, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
