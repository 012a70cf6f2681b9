"""Baselines computed by the same harness, their answers scored by the same metric code as the model's.

- `retrieval`: copies the answer of the nearest training row of the same task (and property) or index entry, by
  Tanimoto similarity of Morgan fingerprints (ties: the earlier row); empty when none is known.
- `mean`: property QA only: the mean training target of the asked property.
- `namer`: IUPAC naming only: `openclatura`'s rule-based name (empty where it names nothing).
- `no-graph` (in `llamo.evaluation.predict`): the same model with the graph tokens removed from the prompt."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from llamo import retrieval
from llamo.processing.schema import TASKS

from .data import PROPERTY_TASK, EvalExample, check_row, select_examples
from .predictions import Skip


class RetrievalBaseline:
    """Copy the answer of the most similar molecule in `index`, or in its task's `train_rows` (module docstring)."""

    def __init__(self, train_rows: Sequence[dict[str, Any]] | None = None, index=None):
        from llamo.processing.index import MoleculeIndex

        if index is not None:
            self._indexes = {index.task: index}
        else:
            rows = [row for i, row in enumerate(train_rows or []) if check_row(row, i)[1] is None]  # no malformed rows
            tasks = sorted({row["task"] for row in rows if row["task"] in TASKS})
            self._indexes = {
                task: MoleculeIndex.from_records(rows, task, max_atoms=None, progress=False)[0] for task in tasks
            }
        self.train_rows = sum(len(index) for index in self._indexes.values())
        if not self.train_rows:
            raise ValueError("The retrieval baseline's training data holds no usable row.")

    def __call__(self, examples: Sequence[EvalExample]) -> list[str | Skip]:
        answers: list[str | Skip] = []
        for example in examples:
            index = self._indexes.get(example.task)
            key = example.target.property if example.target is not None else None  # a property picks its answers
            question = example.prompt[-1]["content"]
            try:
                found = index.neighbours(example.smiles, k=1, question=question, key=key) if index else []
            except ValueError as error:  # e.g. a property the index holds no answer of
                answers.append(Skip(f"retrieval: {error}"))
                continue
            answers.append(found[0].answer if found else "")
        return answers


class MeanBaseline:
    """Answer every property question with the mean training value of that property."""

    def __init__(self, train_rows: Sequence[dict[str, Any]]):
        train, _ = select_examples(
            [row for row in train_rows if isinstance(row, dict) and row.get("task") == PROPERTY_TASK]
        )
        values: dict[str, list[float]] = defaultdict(list)
        for example in train:
            values[example.target.property].append(example.target.value)
        if not values:
            raise ValueError("The mean baseline's training data holds no usable property row.")
        self.means = {name: sum(found) / len(found) for name, found in values.items()}
        self.train_rows = len(train)

    def __call__(self, examples: Sequence[EvalExample]) -> list[str | Skip]:
        answers = {name: repr(mean) for name, mean in self.means.items()}
        return [
            Skip("the mean baseline answers property questions only")
            if example.target is None
            else answers.get(example.target.property, "")
            for example in examples
        ]


class NamerBaseline:
    """Answer every naming question with the rule-based namer's name (`llamo.retrieval.rule_namer`)."""

    def __init__(self):
        if (namer := retrieval.rule_namer()) is None:
            raise ValueError("The namer baseline needs openclatura: pip install openclatura")
        self.namer = namer

    def __call__(self, examples: Sequence[EvalExample]) -> list[str | Skip]:
        return [
            (self.namer(example.smiles) or "") if example.task == "iupac" else Skip("the namer answers naming only")
            for example in examples
        ]
