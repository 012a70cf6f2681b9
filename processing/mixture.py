"""The training mixture: the fixed hold-out rule and weighted mixing of the sources."""

from __future__ import annotations

import random

import datasets

from .loaders import stable_fraction


def is_held_out(key: str, fraction: float) -> bool:
    """The fixed hold-out rule, on a molecule's InChIKey: one molecule never lands in both parts, whatever its task."""
    return stable_fraction(key or "", "holdout") < fraction


def holdout_split(dataset: datasets.Dataset, fraction: float, part: str, key_column: str = "inchikey"):
    """The `"train"` or `"test"` part of a featurized `dataset` by the hold-out rule (`is_held_out`)."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    if key_column not in dataset.column_names:
        raise ValueError(f"holdout_split needs the `{key_column}` column: featurize the dataset first")
    return dataset.filter(
        lambda key: is_held_out(key, fraction) == (part == "test"),
        input_columns=key_column,
        desc=f"Hold-out split ({part})",
    )


def mix_datasets(parts: list[tuple[datasets.Dataset, float]], seed: int = 0) -> datasets.Dataset:
    """A generalist mixture: each part contributes `weight` x its size rows (weight 1: every row once; 0.5: a seeded
    half; 2: every row twice), concatenated and shuffled with `seed`."""
    rng = random.Random(seed)
    pieces = []
    for dataset, weight in parts:
        if weight < 0:
            raise ValueError(f"mixture weights must be >= 0, got {weight}")
        whole, fraction = int(weight), weight - int(weight)
        indices = list(range(len(dataset))) * whole + rng.sample(range(len(dataset)), round(fraction * len(dataset)))
        if indices:
            pieces.append(dataset.select(indices))
    if not pieces:
        raise ValueError("The mixture is empty: every source has weight 0 or no rows.")
    return datasets.concatenate_datasets(pieces).shuffle(seed=seed).flatten_indices()
