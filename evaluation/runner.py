"""`evaluate`: one run from its config: read the inputs (`data`), predict what the output folder lacks (`predict`),
score every task and write `results.json` (`score`)."""

from __future__ import annotations

from typing import Any

from llamo.processing.instruction_store import write_json_atomically
from llamo.storage import disk_full_guard

from . import predict
from .config import EvaluationConfig
from .data import RunState, prepare
from .predictions import RESULTS_FILE, PredictionStore
from .score import RESULTS_FORMAT_VERSION, MetricResources, build_results


def run_config(config: EvaluationConfig, state: RunState) -> dict[str, Any]:
    """What defines a run's predictions (the settings as given and the contents they point at); an output folder is
    only reused by a run with the same."""
    trained = config.trained_baseline
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "model": state.model_fingerprint if config.generates else None,
        "model_path": config.model if config.generates else None,
        "baseline": config.baseline,
        "train_data": state.train_fingerprint,
        "train_data_path": config.train_data if trained else None,
        "train_split": config.train_split if trained else None,
        "data": state.data_fingerprint,
        "data_path": config.data,
        "split": config.split,
        "max_rows": config.max_rows,
        "tasks": config.tasks,
        "decoding": config.decoding(),
        "index": state.index_fingerprint,
        "index_path": config.index,
        "neighbours": config.neighbours if config.index and config.generates else None,
        **({"near_twin": config.near_twin} if config.near_twin is not None and config.index else {}),
        **({"rank_neighbour_answers": True} if config.rank_neighbour_answers and config.index else {}),
    }


def evaluate(
    config: EvaluationConfig,
    dataset=None,
    train_dataset=None,
    model=None,
    processor=None,
    callback: predict.ProgressCallback | None = None,
) -> dict[str, Any]:
    """Predict every row of the data that the output folder does not already hold, then score all tasks; returns the
    results document, written to `output_dir/results.json`. `dataset`, `train_dataset`: rows in memory (a
    `datasets.Dataset` or a list of dicts) instead of `config.data` / `config.train_data`; `model`, `processor`: an
    already loaded LLaMo instead of `config.model` (the run's identity then does not cover the weights); `callback` is
    called as `callback(rows_done, rows_total)` after each batch is saved."""
    if dataset is None and config.data is None:
        raise ValueError("No evaluation data: give config.data or a dataset.")
    if config.generates and config.model is None and model is None:
        raise ValueError("No model given: pass a LLaMo model folder (or a baseline that needs none).")
    state = prepare(config, dataset, train_dataset, model)
    store = PredictionStore(config.output_dir)

    def kept() -> str:
        return (
            f"The {store.saved_count()} predictions in {store.predictions_path} are kept (a half-written last line is "
            "cut on rerun): the rerun predicts only the other rows."
        )

    with disk_full_guard(config.output_dir, "the predictions and results", kept=kept):
        records = store.start(run_config(config, state), overwrite=config.overwrite)
        saved = [(e, records[e.key]) for e in state.examples if e.key in records]
        if stale := [e.id for e, r in saved if (r.smiles, r.reference) != (e.smiles, e.reference)]:
            raise ValueError(
                f"{store.predictions_path} holds {len(stale)} predictions of rows whose SMILES or reference is not the "
                f"data's (lines of another run?), e.g. id {stale[0][:80]!r}: remove them to predict these rows again."
            )
        processor = predict.predict(config, state, store, records, model, processor, callback)
        ordered = sorted((records[example.key] for example in state.examples), key=lambda record: record.index)
        files = {"predictions": store.predictions_path.name, "tsv": store.write_tsvs(ordered)}
        resources = MetricResources.load(config, getattr(processor, "tokenizer", None))
        results = build_results(config, state, records, resources, files)
        write_json_atomically(store.output_dir / RESULTS_FILE, results)  # whole or not at all
    return results
