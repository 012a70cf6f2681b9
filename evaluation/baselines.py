"""Baselines computed by the same harness, their answers scored by the same metric code as the model's.

- `retrieval`: nearest neighbour by Tanimoto similarity of Morgan fingerprints (radius 2, 2048 bits) among the
  training rows of the same task (and, for property QA, the same property); the neighbour's answer is copied (ties go
  to the earlier training row). A row with no training row of its kind gets an empty answer.
- `mean`: property QA only: the mean training target of the asked property, for every molecule.
- `no-graph` (in `llamo.evaluation.runner`): the same model with the graph tokens removed from the prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from .data import PROPERTY_TASK, EvalExample, select_examples
from .predictions import Skip

MORGAN_RADIUS = 2
MORGAN_BITS = 2048


def _group(example: EvalExample) -> tuple[str, str | None]:
    return (example.task, example.target.property if example.target is not None else None)


class RetrievalBaseline:
    """Copy the answer of the most similar training molecule (see the module docstring)."""

    name = "retrieval"

    def __init__(self, train_rows: Sequence[dict[str, Any]], radius: int = MORGAN_RADIUS, n_bits: int = MORGAN_BITS):
        from rdkit.Chem import rdFingerprintGenerator

        self._generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
        train, self.train_skipped = select_examples(train_rows)
        self._index: dict[tuple[str, str | None], tuple[list, list[str]]] = defaultdict(lambda: ([], []))
        for example in train:
            fingerprints, answers = self._index[_group(example)]
            fingerprints.append(self._fingerprint(example.smiles))
            answers.append(example.reference)
        self.train_rows = len(train)
        if not self.train_rows:
            raise ValueError("The retrieval baseline's training data holds no usable row.")

    def _fingerprint(self, smiles: str):
        from llamo import parse_smiles

        return self._generator.GetFingerprint(parse_smiles(smiles))

    def __call__(self, examples: Sequence[EvalExample]) -> list[str | Skip]:
        from rdkit import DataStructs

        answers: list[str | Skip] = []
        for example in examples:
            group = self._index.get(_group(example))
            if group is None:
                answers.append("")
                continue
            similarities = DataStructs.BulkTanimotoSimilarity(self._fingerprint(example.smiles), group[0])
            best = max(range(len(similarities)), key=similarities.__getitem__)
            answers.append(group[1][best])
        return answers


class MeanBaseline:
    """Answer every property question with the mean training value of that property."""

    name = "mean"

    def __init__(self, train_rows: Sequence[dict[str, Any]]):
        train, self.train_skipped = select_examples(train_rows, tasks=[PROPERTY_TASK])
        values: dict[str, list[float]] = defaultdict(list)
        for example in train:
            values[example.target.property].append(example.target.value)
        if not values:
            raise ValueError("The mean baseline's training data holds no usable property row.")
        self.means = {name: sum(found) / len(found) for name, found in values.items()}
        self.train_rows = len(train)

    def __call__(self, examples: Sequence[EvalExample]) -> list[str | Skip]:
        answers: list[str | Skip] = []
        for example in examples:
            if example.target is None:
                answers.append(Skip("the mean baseline answers property questions only"))
            else:
                mean = self.means.get(example.target.property)
                answers.append("" if mean is None else repr(mean))
        return answers


__all__ = ["MORGAN_BITS", "MORGAN_RADIUS", "MeanBaseline", "RetrievalBaseline"]
