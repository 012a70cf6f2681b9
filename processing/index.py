"""A molecule index: known molecules with their answers for one task, searched by fingerprint similarity.

An index is a `datasets.Dataset` (saved with `save_to_disk`, pushed to the Hub as a dataset, loaded from a folder or
a Hub id) holding per entry its canonical isomeric SMILES (so a neighbour's graph keeps its chirality; prompts show
SMILES without it), InChIKey, the question and answer of its conversation, a `key` that groups comparable answers (the
property name for property QA, else the task), and a Morgan fingerprint: radius 2 bits, and for property QA radius 1
counts, which find neighbours of closer HOMO / LUMO / gap among QM9's small molecules (chosen on validation molecules:
`benchmarks/eval_property_index_size.py`). Neighbours are ranked by Tanimoto similarity with RDKit's bulk similarity."""

from __future__ import annotations

import json
import numbers
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator
from tqdm.auto import tqdm

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS
from llamo.retrieval import NEIGHBOUR_TASKS
from llamo.smiles_llamo import check_size, parse_smiles, shorten_for_message
from llamo.storage import disk_full_guard

from .loaders import property_from_text, stable_fraction
from .mixture import is_held_out
from .schema import TASKS, record_metadata

INDEX_FEATURES = datasets.Features(
    {
        **{name: datasets.Value("string") for name in ("smiles", "inchikey", "task", "key", "question", "answer")},
        "fingerprint": datasets.Value("binary"),
    }
)
FINGERPRINT_SIZE = 2048
COUNT_FINGERPRINT_TASKS = ("property",)
"""Tasks whose indexes hold radius-1 Morgan count vectors; the others' hold radius-2 bit vectors."""


@dataclass
class Neighbour:
    """A known molecule close to a query: SMILES, answer, Tanimoto similarity; `exact`: the query's own InChIKey."""

    smiles: str
    answer: str
    similarity: float
    inchikey: str
    exact: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fingerprinter(task: str) -> Callable[[Chem.Mol], Any]:
    """The fingerprint of a task's entries and queries (see the module's docstring)."""
    counts = task in COUNT_FINGERPRINT_TASKS
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=1 if counts else 2, fpSize=FINGERPRINT_SIZE)
    return generator.GetCountFingerprint if counts else generator.GetFingerprint


def _keys(inchikeys: Iterable[str] | str | None) -> set[str]:
    """InChIKeys given as an iterable, one string or None (a string is one key, never its characters)."""
    return {inchikeys} if isinstance(inchikeys, str) else set(inchikeys or ())


def answer_key(task: str, question: str, metadata: dict[str, Any] | None = None) -> str:
    """What groups comparable answers: the property of property QA (from the metadata or question), else the task."""
    if task == "property":
        return str((metadata or {}).get("property") or property_from_text(question) or "property")
    return task


class MoleculeIndex:
    """Molecules with their answers for one task, for nearest-neighbour search (`from_records`, `save`, `load`)."""

    def __init__(self, table: datasets.Dataset):
        columns = INDEX_FEATURES.items()
        if wrong := [name for name, kind in columns if table.features.get(name) != kind or table.data[name].null_count]:
            raise ValueError(f"Not a molecule index: columns {wrong} are missing, of another type or hold nulls.")
        self.table = table
        self.task = table[0]["task"] if len(table) else ""
        columns = table.select_columns(["fingerprint", "inchikey", "key"]).to_dict()  # by Arrow, not row by row
        counts = self.task in COUNT_FINGERPRINT_TASKS
        kind = f"radius-{1 if counts else 2} Morgan {'count' if counts else 'bit'} vectors of {FINGERPRINT_SIZE}"
        try:
            decode = DataStructs.UIntSparseIntVect if counts else DataStructs.ExplicitBitVect
            self._fingerprints = [decode(raw) for raw in columns["fingerprint"]]
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"Its fingerprints are not {kind} (an older llamo's index? build it again).") from error
        length = "GetLength" if counts else "GetNumBits"
        if any(getattr(fingerprint, length)() != FINGERPRINT_SIZE for fingerprint in self._fingerprints):
            raise ValueError(f"Its fingerprints are not {kind}.")
        self._rows_by_inchikey: dict[str, list[int]] = defaultdict(list)
        for row, inchikey in enumerate(columns["inchikey"]):
            self._rows_by_inchikey[inchikey].append(row)
        self._key_counts = dict(sorted(Counter(columns["key"]).items()))
        lowered = np.asarray([key.lower() for key in columns["key"]], dtype=object)
        distinct = set(lowered.tolist())
        self._key_masks = {key: lowered == key for key in distinct} if len(distinct) > 1 else {}
        self._fingerprint = _fingerprinter(self.task)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def inchikeys(self) -> set[str]:
        return set(self._rows_by_inchikey)

    @classmethod
    def from_records(
        cls,
        records: Iterable[dict[str, Any]],
        task: str,
        max_atoms: int | None = DEFAULT_MAX_ATOMS,
        holdout: float = 0.0,
        progress: bool = True,
    ) -> tuple[MoleculeIndex, dict[str, int]]:
        """Index the rows of `task` among conversation-schema `records`, one entry per molecule and answer key (the
        first row wins; the answer is the last assistant turn, the question the user turn before it). Molecules over
        `max_atoms` are skipped, and with `holdout` those the training hold-out rule (`is_held_out`) puts in the test
        part of that fraction. Returns the index and counts: `read`, `indexed`, `other task`, `duplicate`, `bad
        molecule`, `held out`, `bad row` (not a conversation ending in a question and a non-empty text answer)."""
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; choose from {TASKS}.")
        if max_atoms is not None and (isinstance(max_atoms, bool) or not isinstance(max_atoms, int) or max_atoms < 1):
            raise ValueError(f"max_atoms must be a whole number of at least 1 (or None), got {max_atoms!r:.40}.")
        if not 0 <= holdout < 1:  # NaN too
            raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r:.40}.")
        fingerprinter, seen, entries = _fingerprinter(task), set(), []

        def entry(row: Any) -> str:
            if not isinstance(row, Mapping):
                return "bad row"
            if (row.get("task") or task) != task:
                return "other task"
            try:
                question, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
                metadata = record_metadata(row)
            except (KeyError, IndexError, TypeError, ValueError):
                return "bad row"
            if not (isinstance(question, str) and isinstance(answer, str) and answer.strip()):
                return "bad row"
            key = answer_key(task, question, metadata)
            try:
                mol = parse_smiles(row.get("smiles"), max_atoms=max_atoms)
                check_size(mol, max_atoms, row["smiles"])
                inchikey, smiles = Chem.MolToInchiKey(mol) or "", Chem.MolToSmiles(mol)
            except (ValueError, RuntimeError):
                return "bad molecule"
            if holdout and is_held_out(inchikey, holdout):
                return "held out"
            molecule = (inchikey or smiles, key)  # without an InChIKey (`*` atoms) the SMILES tells molecules apart
            if molecule in seen:
                return "duplicate"
            seen.add(molecule)
            entries.append((smiles, inchikey, task, key, question, answer, fingerprinter(mol).ToBinary()))
            return "indexed"

        counts = dict.fromkeys(("read", "indexed", "other task", "duplicate", "bad molecule", "held out", "bad row"), 0)
        with rdBase.BlockLogs():
            for row in tqdm(records, desc=f"Indexing {task}", unit=" rows", disable=not progress):
                counts["read"] += 1
                counts[entry(row)] += 1
        columns = {name: [values[i] for values in entries] for i, name in enumerate(INDEX_FEATURES)}
        return cls(datasets.Dataset.from_dict(columns, features=INDEX_FEATURES)), counts

    def save(self, folder: str | Path) -> None:
        """Write the index as a `datasets` folder (`save_to_disk`), never into a non-empty one. It appears whole:
        on a full disk the partial copy is removed and a `DiskFullError` names the folder and the space needed."""
        folder = Path(folder).resolve()  # `.` has no name to add `.partial` to
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not empty: choose a new folder for the index.")
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")  # this process's own, never the user's
        shutil.rmtree(partial, ignore_errors=True)
        try:
            with disk_full_guard(folder.parent, "a molecule index", needed=self.table.data.nbytes, kept="nothing"):
                self.table.save_to_disk(str(partial), num_shards=None if len(self) else 1)  # 0 shards do not load
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if not folder.exists():
            partial.rename(folder)
            return
        for path in sorted(partial.iterdir(), key=lambda path: path.name == "state.json"):  # an empty folder, perhaps
            path.rename(folder / path.name)  # the working directory, is filled, not replaced; state.json comes last
        partial.rmdir()

    @classmethod
    def load(cls, path: str | Path) -> MoleculeIndex:
        """Load an index saved with `save` (a folder) or pushed to the Hub (a dataset id, its train split)."""
        if (local := Path(path).expanduser()).exists():
            if not (local / "dataset_info.json").is_file() and not (local / "state.json").is_file():
                raise ValueError(f"{local} is not a saved molecule index (build one with `llamo index build`).")
        elif str(path).count("/") != 1:
            raise FileNotFoundError(f"Index not found: {path} is neither a folder nor a Hub dataset id.")
        try:
            if local.exists():
                return cls(datasets.load_from_disk(str(local)))
            return cls(datasets.load_dataset(str(path), split="train"))
        except Exception as error:  # truncated or foreign files, broken JSON, bad fingerprints, an unreachable Hub
            raise ValueError(
                f"Could not load the molecule index {path}: {type(error).__name__}: {error!s:.300}"
            ) from error

    def excluding(self, inchikeys: Iterable[str] | str) -> MoleculeIndex:
        """A copy without the molecules of `inchikeys` (e.g. an evaluation's test molecules; one InChIKey may be given
        as a string)."""
        drop = {row for key in _keys(inchikeys) for row in self._rows_by_inchikey.get(key, [])}
        return MoleculeIndex(self.table.select([row for row in range(len(self)) if row not in drop]))

    def query_fingerprint(self, smiles: str | Chem.Mol):
        mol = smiles if isinstance(smiles, Chem.Mol) else parse_smiles(smiles)
        with rdBase.BlockLogs():
            return self._fingerprint(mol), Chem.MolToInchiKey(mol) or ""

    def neighbours(
        self,
        smiles: str | Chem.Mol,
        k: int = 4,
        question: str | None = None,
        exclude: Sequence[str] | str = (),
        key: str | None = None,
    ) -> list[Neighbour]:
        """The `k` entries most similar to a molecule, most similar first; an entry of the same molecule (InChIKey)
        comes first and is marked `exact`. In an index of several answer keys (property QA), `key` (e.g. `LUMO`) or
        else the `question` picks the key; `exclude`: InChIKeys never returned (in training, the row's own)."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be a whole number of neighbours, got {shorten_for_message(k, 40)}.")
        if not all(isinstance(text, str | None) for text in (question, key)):
            raise TypeError("question and key must be strings (or None).")
        if key is not None and key.lower() not in {known.lower() for known in self._key_counts}:
            raise ValueError(f"The index holds no answers of key {key[:40]!r}; its keys: {sorted(self._key_counts)}.")
        if k < 1 or not len(self):
            return []
        fingerprint, inchikey = self.query_fingerprint(smiles)
        similarity = np.asarray(DataStructs.BulkTanimotoSimilarity(fingerprint, self._fingerprints))
        if (key is not None or question is not None) and self._key_masks:
            wanted = self._key_masks.get((key if key is not None else answer_key(self.task, question)).lower())
            if wanted is not None:
                similarity[~wanted] = -1.0
        same = self._rows_by_inchikey.get(inchikey, []) if inchikey else []
        similarity[same] = np.where(similarity[same] >= 0, 2.0, similarity[same])
        for excluded in _keys(exclude):
            similarity[self._rows_by_inchikey.get(excluded, [])] = -1.0
        count = min(k, len(similarity))
        top = np.argpartition(-similarity, count - 1)[:count]
        top = top[np.argsort(-similarity[top], kind="stable")]
        results = []
        for row in top[similarity[top] >= 0].tolist():
            entry, exact = self.table[row], row in same
            with rdBase.BlockLogs():
                if Chem.MolFromSmiles(entry["smiles"]) is None:  # only a table made by hand holds one
                    raise ValueError(
                        f"Entry {row} of the molecule index, SMILES {shorten_for_message(entry['smiles'], 60)}, is not "
                        "a molecule RDKit reads: build the index again with `llamo index build`."
                    )
            score = 1.0 if exact else float(similarity[row])
            results.append(Neighbour(entry["smiles"], entry["answer"], score, entry["inchikey"], exact))
        return results

    def describe(self) -> dict[str, Any]:
        """Size, task and answer keys, for reports and cards."""
        return {"entries": len(self), "task": self.task, "keys": dict(self._key_counts)}


def attach_neighbours(
    dataset: datasets.Dataset,
    k: int,
    share: float = 0.5,
    near_twin: Mapping[str, float] | None = None,
) -> datasets.Dataset:
    """Give a share of the training rows `k` in-context neighbours: the most similar other molecules of the same task
    (and property) among the dataset's own rows (so, from a hold-out's training part, never a test molecule), never
    the row's own. A row is chosen by a fixed rule on its id (`stable_fraction(id, "neighbours") < share`); the others
    keep an empty list, so that one model learns to answer with and without neighbours. `near_twin` (task ->
    similarity): a nearest neighbour at least that similar is given alone (`llamo.pipeline_llamo.near_twin_only`, as at
    inference). Adds the collator's `neighbours` column."""
    from llamo.pipeline_llamo import near_twin_only

    if k < 0 or not 0 <= share <= 1:
        raise ValueError(f"neighbours must be >= 0 and the share in [0, 1], got {k} and {share}.")
    indexes = {}
    for task in NEIGHBOUR_TASKS:
        rows = dataset.filter(lambda value, task=task: value == task, input_columns="task", desc=f"Rows of {task}")
        if len(rows):
            indexes[task] = MoleculeIndex.from_records(rows, task, max_atoms=None)[0]

    def neighbours_of(row_id: str, smiles: str, task: str, messages: list, inchikey: str) -> dict[str, str]:
        index = indexes.get(task)
        if k == 0 or index is None or stable_fraction(row_id, "neighbours") >= share:
            return {"neighbours": "[]"}
        found = index.neighbours(smiles, k=k, question=messages[0]["content"], exclude=[inchikey])
        found = near_twin_only(found, (near_twin or {}).get(task))
        return {"neighbours": json.dumps([{"smiles": n.smiles, "answer": n.answer} for n in found])}

    columns = ["id", "smiles", "task", "messages", "inchikey"]
    return dataset.map(neighbours_of, input_columns=columns, desc=f"Finding {k} neighbours per row")
