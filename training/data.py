"""Build a training dataset from a recipe's sources: load, featurize once (cached in Arrow), split, mix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import datasets

from llamo.processing import loaders
from llamo.processing.featurization import FEATURIZATION_VERSION, MULTIPROCESS_MIN_ROWS, featurize_dataset
from llamo.processing.loaders import DataReport
from llamo.processing.mixture import holdout_split, mix_datasets

from .config import DataSourceConfig, StageArguments

CACHE_ENV = "LLAMO_DATA_CACHE"
MIXTURE_VERSION = "4"
"""Part of a cached mixture's key: raise it when mixing or the neighbour search (`attach_neighbours`) changes. 2:
neighbours keep their stereochemistry; 3: questions naming both orbitals ask for the gap; 4: property neighbours by
radius-1 count fingerprints."""
_BY_LENGTH = ("group_by_length", "batch_rebalance")  # the train_sampling_strategy values that read a length column


def default_cache_dir() -> Path:
    """`$LLAMO_DATA_CACHE`, else `~/.cache/llamo/datasets`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llamo" / "datasets")


SOURCE_LOADERS = {
    "chebi20": loaders.load_chebi20,
    "pubchem324k": loaders.load_pubchem324k,
    "mol-instructions": loaders.load_mol_instructions,
    "iupac": loaders.load_iupac_pairs,
    "chemicals": loaders.load_chemicals_iupac,
    "qm9": loaders.load_qm9_properties,
    "conversations": loaders.load_conversations,
}
"""The loader of each `SOURCE_TYPES` entry."""


def load_source(source: DataSourceConfig) -> tuple[datasets.Dataset, DataReport]:
    """Read one source into the conversation schema (its `options` are further keyword arguments of the loader)."""
    arguments: dict = {"limit": source.limit}
    if source.type != "chemicals":  # one table, no splits
        arguments["split"] = source.split
    if source.type == "pubchem324k":
        arguments["allow_pickle"] = source.allow_pickle
    if source.type == "mol-instructions":
        arguments["task"] = source.task or "description"
    return SOURCE_LOADERS[source.type](source.path, **arguments, **source.options)


def _source_fingerprint(source: DataSourceConfig, max_atoms: int) -> str:
    description = {
        "source": {k: v for k, v in asdict(source).items() if k not in ("weight", "holdout", "part")},
        "max_atoms": max_atoms,
        "featurization": FEATURIZATION_VERSION,
    }
    if source.path and (path := Path(source.path)).exists():
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        description["files"] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()][:1000]
    return hashlib.sha1(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_source(
    source: DataSourceConfig,
    cache_dir: Path,
    max_atoms: int,
    num_proc: int = 1,
    num_proc_min_rows: int = MULTIPROCESS_MIN_ROWS,
) -> tuple[datasets.Dataset, list[DataReport]]:
    """Load and featurize one source, or reuse its cached featurized copy (same source, files and options)."""
    folder = cache_dir / f"{source.type}-{_source_fingerprint(source, max_atoms)}"
    if not (folder / "llamo_reports.json").is_file():
        raw, load_report = load_source(source)
        featurized, feature_report = featurize_dataset(
            raw, max_atoms=max_atoms, num_proc=num_proc, name=source.type, multiprocess_min_rows=num_proc_min_rows
        )
        _save_atomically(featurized, folder, [load_report, feature_report])
    return _load_saved(folder)


def mixture_cache(arguments: StageArguments) -> Path:
    """Where a stage's training mixture is cached (complete when it holds `llamo_reports.json`), keyed by everything
    that decides its rows."""
    config, training = arguments.script, arguments.training
    description = {
        "version": MIXTURE_VERSION,
        "sources": [[_source_fingerprint(s, config.max_atoms), s.weight, s.holdout, s.part] for s in config.sources],
        "mode": [config.mode, config.task],
        "neighbours": [config.neighbours, config.neighbour_share, config.neighbour_near_twin],
        "seed": training.seed,
        "length": training.length_column_name if training.train_sampling_strategy in _BY_LENGTH else None,
    }
    fingerprint = hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.data_cache_dir or default_cache_dir()) / f"mixture-{fingerprint}"


def _load_saved(folder: Path) -> tuple[datasets.Dataset, list[DataReport]]:
    reports = json.loads((folder / "llamo_reports.json").read_text())
    return datasets.load_from_disk(str(folder)), [DataReport.from_dict(saved) for saved in reports]


def _save_atomically(dataset: datasets.Dataset, folder: Path, reports: list[DataReport]) -> None:
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # `datasets` writes no shard for an empty dataset, and then cannot load the folder back
    dataset.save_to_disk(str(partial), num_shards=None if len(dataset) else 1)
    (partial / "llamo_reports.json").write_text(json.dumps([report.to_dict() for report in reports]))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def build_training_dataset(arguments: StageArguments, log=print) -> tuple[datasets.Dataset, list[DataReport]]:
    """The training set of a stage: each source loaded, featurized (cached), its hold-out part selected, filtered to the
    task in specialist mode, given its neighbours, mixed by weight (the trainer's `seed`), with a length column when
    sampling by length. The mixture is cached too (a resumed run skips the neighbour search). Logs what was dropped."""
    config, training = arguments.script, arguments.training
    cached = mixture_cache(arguments)
    cached.parent.mkdir(parents=True, exist_ok=True)
    if (cached / "llamo_reports.json").is_file():
        mixture, reports = _load_saved(cached)
        log(f"[data] training rows: {len(mixture)} (cached mixture {cached.name})")
        return mixture, reports
    parts, reports = [], []
    for source in config.sources:
        dataset, source_reports = prepare_source(
            source, cached.parent, config.max_atoms, training.dataset_num_proc or 1, config.num_proc_min_rows
        )
        reports.extend(source_reports)
        if source.holdout:
            dataset = holdout_split(dataset, source.holdout, source.part)
        if config.mode == "specialist":
            dataset = dataset.filter(lambda task: task == config.task, input_columns="task")
        if config.neighbours and len(dataset):
            from llamo.processing.index import attach_neighbours

            # each source's whole training side is its neighbours' index, before weights subsample it
            dataset = attach_neighbours(
                dataset, config.neighbours, config.neighbour_share, near_twin=config.neighbour_near_twin
            )
        if len(dataset):
            parts.append((dataset, source.weight))
    for report in reports:  # before any error below: what each source kept and dropped, and why
        log(f"[data] {report.summary()}")
    if not parts:
        raise ValueError(
            "No training rows left: every source is empty after featurization, hold-out and task filtering"
            + (f" (specialist task {config.task!r})" if config.mode == "specialist" else "")
        )
    mixture = mix_datasets(parts, seed=training.seed)
    length = training.length_column_name
    if training.train_sampling_strategy in _BY_LENGTH and length not in mixture.column_names:
        mixture = mixture.map(
            lambda messages, atoms: {length: sum(len(m["content"]) for m in messages) // 4 + atoms},
            input_columns=["messages", "num_atoms"],
            desc="Estimating lengths",
        )
    log(f"[data] training rows: {len(mixture)} ({', '.join(f'{len(d)} x {w}' for d, w in parts)})")
    _save_atomically(mixture, cached, reports)
    return _load_saved(cached)
