"""Loaders that turn each data source into the conversation schema (`processing/schema.py`), featurization with a
report of what was dropped, a fixed hold-out rule, and task mixtures.

Sources (each from a local path or a Hub dataset id):

- `load_chebi20`: ChEBI-20 (tab-separated `CID`, `SMILES`, `description`) -> description task.
- `load_pubchem324k`: PubChem324k as MolCA released it (a folder with `text/` + `smiles/` files, or the V2 `.pt`
  files, which are pickles and load only with `allow_pickle=True`) -> description task.
- `load_mol_instructions`: Mol-Instructions' molecule JSON (`instruction`, SELFIES `input`, `output`, `metadata`)
  -> description (or property) task, SELFIES converted with the `selfies` package.
- `load_iupac_pairs` / `load_chemicals_iupac`: SMILES + IUPAC name pairs (e.g. the PubChem table of the `chemicals`
  package) -> iupac task.
- `load_qm9_properties`: QM9 HOMO / LUMO / gap in Hartree (e.g. the `qm9pack` package) -> property task, phrased as
  Mol-Instructions does (a question, a number as the answer).
- `load_conversations`: JSONL of conversation-schema rows (what the instruction-data generator writes).

Every loader skips and counts rows it cannot use (a `DataReport`), never crashes on a bad row.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS
from llamo.feature_extraction_llamo import prepare_molecule
from llamo.featurization_llamo import OversizedMoleculeError

from .schema import CONVERSATION_FEATURES, make_record

logger = logging.getLogger(__name__)

DESCRIPTION_INSTRUCTIONS = (
    "Describe this molecule.",
    "Give a description of this molecule.",
    "What can you tell me about this molecule?",
    "Provide a brief overview of this molecule.",
    "Write a short description of the given molecule.",
)
IUPAC_INSTRUCTIONS = (
    "What is the IUPAC name of this molecule?",
    "Give the IUPAC name of this molecule.",
    "Name this molecule following IUPAC nomenclature.",
)
PROPERTY_QUESTIONS = {
    "HOMO": (
        "What is the HOMO energy of this molecule, in Hartree?",
        "Please give the highest occupied molecular orbital (HOMO) energy of this molecule in Hartree.",
        "Predict the HOMO energy (Hartree) of this molecule.",
    ),
    "LUMO": (
        "What is the LUMO energy of this molecule, in Hartree?",
        "Please give the lowest unoccupied molecular orbital (LUMO) energy of this molecule in Hartree.",
        "Predict the LUMO energy (Hartree) of this molecule.",
    ),
    "gap": (
        "What is the HOMO-LUMO gap of this molecule, in Hartree?",
        "Please give the energy difference between the HOMO and LUMO of this molecule in Hartree.",
        "Predict the HOMO-LUMO gap (Hartree) of this molecule.",
    ),
}
QM9_COLUMNS = {"HOMO": "HOMO_au", "LUMO": "LUMO_au", "gap": "HOMO_LUMO_gap_au"}
CHEMICALS_TABLE = ("chemicals", "Identifiers/chemical identifiers pubchem large.tsv")
QM9PACK_FILES = ("qm9pack", ("data/qm9_part1.csv", "data/qm9_part2.csv", "data/qm9_part3.csv"))

FEATURIZED_FEATURES = {
    "atom_features": datasets.List(datasets.List(datasets.Value("int16"))),
    "edge_index": datasets.List(datasets.List(datasets.Value("int32"))),
    "edge_features": datasets.List(datasets.List(datasets.Value("int8"))),
    "motif_features": datasets.List(datasets.List(datasets.Value("uint8"))),
    "prompt_smiles": datasets.Value("string"),
    "inchikey": datasets.Value("string"),
    "num_atoms": datasets.Value("int32"),
}
FEATURIZATION_VERSION = "1"
MULTIPROCESS_MIN_ROWS = 512


@dataclass
class DataReport:
    """What a loading or featurization step kept and dropped, by reason."""

    name: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def merge(self, other: DataReport) -> None:
        self.dropped.update(other.dropped)

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped.most_common()) or "none"
        return f"{self.name}: read {self.read}, kept {self.kept}, dropped {sum(self.dropped.values())} ({reasons})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "read": self.read, "kept": self.kept, "dropped": dict(self.dropped)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        return cls(data["name"], data["read"], data["kept"], Counter(data.get("dropped", {})))


def stable_fraction(key: str, salt: str = "llamo") -> float:
    """A deterministic number in [0, 1) for `key`: the first 8 hex digits of sha1(`salt:key`) / 16^8."""
    return int(hashlib.sha1(f"{salt}:{key}".encode()).hexdigest()[:8], 16) / 16**8


def stable_choice(options: tuple[str, ...], key: str) -> str:
    """Pick one of `options` deterministically from `key` (the same record always gets the same phrasing)."""
    return options[int(stable_fraction(key, "phrasing") * len(options))]


def _installed_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The {package} package is not installed (pip install {package}), and no path was given."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package} package.")
    return path


def _is_hub_id(path: str) -> bool:
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def _records_to_dataset(records: Iterable[dict[str, Any]]) -> datasets.Dataset:
    rows = list(records)
    if not rows:
        return datasets.Dataset.from_dict({name: [] for name in CONVERSATION_FEATURES}, features=CONVERSATION_FEATURES)
    return datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)


def _require(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Data path not found: {path}")
    return path


def _hub_rows(dataset_id: str, split: str, columns: dict[str, str]) -> Iterator[dict[str, Any]]:
    loaded = datasets.load_dataset(dataset_id, split=split)
    missing = [column for column in columns.values() if column not in loaded.column_names]
    if missing:
        raise ValueError(f"{dataset_id} ({split}) has no column(s) {missing}; its columns: {loaded.column_names}")
    for row in loaded:
        yield {key: row[column] for key, column in columns.items()}


def qa_record(record_id: str, smiles: str, answer: str, task: str, source: str, instruction: str | None = None):
    """A one-question record of `task` (`description` or `iupac`): the instruction, else one of the task's own chosen
    by the record's id, and its answer."""
    choices = DESCRIPTION_INSTRUCTIONS if task == "description" else IUPAC_INSTRUCTIONS
    question = instruction or stable_choice(choices, record_id)
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}]
    return make_record(record_id, smiles, messages, task, source)


def _qa_dataset(
    rows: Iterable[tuple[str, str, str]],
    task: str,
    source: str,
    report: DataReport,
    limit: int | None,
    instruction: str | None = None,
    empty: str = "empty SMILES or description",
) -> tuple[datasets.Dataset, DataReport]:
    """The `qa_record`s of `(record_id, smiles, answer)` rows, at most `limit`; a row without a SMILES or an answer
    is dropped and counted as `empty`."""
    records = []
    for record_id, smiles, answer in rows:
        report.read += 1
        if limit is not None and len(records) >= limit:
            break
        if not (smiles or "").strip() or not (answer or "").strip():
            report.drop(empty)
            continue
        records.append(qa_record(record_id, smiles.strip(), answer, task, source, instruction))
    report.kept = len(records)
    return _records_to_dataset(records), report


def load_chebi20(
    path: str,
    split: str = "train",
    instruction: str | None = None,
    limit: int | None = None,
    smiles_column: str = "SMILES",
    text_column: str = "description",
    id_column: str = "CID",
) -> tuple[datasets.Dataset, DataReport]:
    """ChEBI-20 molecule-description pairs (MolT5's TSV layout, or a Hub dataset with those columns)."""
    report = DataReport(f"chebi20 ({path})")
    columns = {"id": id_column, "smiles": smiles_column, "text": text_column}
    if _is_hub_id(path):
        rows = _hub_rows(path, split, columns)
    else:
        handle = open(_require(path), encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [column for column in columns.values() if column not in (reader.fieldnames or [])]
        if missing:
            handle.close()
            raise ValueError(f"{path} has no column(s) {missing}; expected a tab-separated CID/SMILES/description file")
        rows = ({key: row[column] for key, column in columns.items()} for row in reader)
    try:
        rows = ((f"chebi20:{row['id']}", row["smiles"], row["text"]) for row in rows)
        return _qa_dataset(rows, "description", "chebi20", report, limit, instruction)
    finally:
        if not _is_hub_id(path):
            handle.close()


def _read_pubchem_text_layout(root: Path) -> Iterator[tuple[str, str, str]]:
    text_files = sorted((root / "text").iterdir())
    smiles_files = sorted((root / "smiles").iterdir())
    if len(text_files) != len(smiles_files):
        raise ValueError(f"{root}: {len(text_files)} text files but {len(smiles_files)} SMILES files")
    for text_file, smiles_file in zip(text_files, smiles_files, strict=True):
        record_id = text_file.stem.split("_")[-1]
        text = " ".join(line.strip() for line in text_file.read_text(encoding="utf-8").splitlines())
        smiles = smiles_file.read_text(encoding="utf-8").strip()
        yield record_id, smiles, text


def _read_pubchem_pickle(path: Path) -> Iterator[tuple[str, str, str]]:
    import torch

    loaded = torch.load(path, weights_only=False)  # the caller opted in: this runs the pickle's code
    data = loaded[0] if isinstance(loaded, (tuple, list)) else loaded
    get = data.get if isinstance(data, dict) else lambda key: getattr(data, key, None)
    texts, smiles = get("text"), get("smiles")
    if texts is None or smiles is None:
        raise ValueError(f"{path} holds no `text`/`smiles` attributes: not a MolCA PubChem324k file")
    cids = get("cid")
    for index, (smile, text) in enumerate(zip(smiles, texts, strict=True)):
        record_id = str(cids[index]) if cids is not None else f"{path.stem}-{index}"
        yield record_id, smile, text


def pickle_refusal(pickle_file: Path) -> str:
    """Why a PubChem324kV2 `.pt` file is not read, and exactly which option reads it."""
    return (
        f"Refusing to read {pickle_file}: it is a pickle (PubChem324kV2's PyG format), and unpickling runs whatever "
        "code the file holds, so llamo reads it only when asked to. If you trust this file, set `allow_pickle: true` "
        "on this `pubchem324k` data source in the recipe, e.g. "
        f"`- {{type: pubchem324k, path: {pickle_file.parent}, split: {pickle_file.stem}, allow_pickle: true}}` "
        "(in Python: `load_pubchem324k(..., allow_pickle=True)`). Alternatively point `path` at PubChem324k's text "
        f"layout ({pickle_file.stem}/text/*.txt + {pickle_file.stem}/smiles/*.txt), which needs no flag."
    )


def load_pubchem324k(
    path: str,
    split: str = "train",
    allow_pickle: bool = False,
    instruction: str | None = None,
    limit: int | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """
    PubChem324k as MolCA released it: `path/split/{text,smiles}/` (one file per molecule) or `path/split.pt`
    (PubChem324kV2). The `.pt` files are pickles that can execute code: they are read only with `allow_pickle=True`.
    A Hub id is read with columns `smiles` and `text`.
    """
    report = DataReport(f"pubchem324k ({path}, {split})")
    if _is_hub_id(path):
        rows = (
            (str(i), r["smiles"], r["text"])
            for i, r in enumerate(_hub_rows(path, split, {"smiles": "smiles", "text": "text"}))
        )
    else:
        root = _require(path)
        folder = root / split if (root / split).is_dir() else root
        pickle_file = root / f"{split}.pt" if root.is_dir() else root
        if (folder / "text").is_dir() and (folder / "smiles").is_dir():
            rows = _read_pubchem_text_layout(folder)
        elif pickle_file.suffix == ".pt" and pickle_file.is_file():
            if not allow_pickle:
                raise PermissionError(pickle_refusal(pickle_file))
            rows = _read_pubchem_pickle(pickle_file)
        else:
            raise FileNotFoundError(f"{path}: neither {folder}/text + {folder}/smiles nor {pickle_file} exist")
    rows = ((f"pubchem324k:{record_id}", smiles, text) for record_id, smiles, text in rows)
    return _qa_dataset(rows, "description", "pubchem324k", report, limit, instruction)


def _selfies_to_smiles(value: str) -> str | None:
    import selfies

    cleaned = value.strip().removeprefix("<SELFIES>").removesuffix("</SELFIES>").strip()
    try:
        smiles = selfies.decoder(cleaned)
    except Exception:  # selfies raises its own DecoderError and, on odd input, plain exceptions
        return None
    return smiles or None


def _property_from_text(text: str) -> str | None:
    lowered = text.lower()
    if "gap" in lowered:
        return "gap"
    if "lumo" in lowered or "lowest unoccupied" in lowered:
        return "LUMO"
    if "homo" in lowered or "highest occupied" in lowered:
        return "HOMO"
    return None


def load_mol_instructions(
    path: str, split: str = "train", task: str = "description", limit: int | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """
    Mol-Instructions' molecule-oriented JSON (a list of `{"instruction", "input" (SELFIES), "output", "metadata"}`),
    e.g. `molecular_description_generation.json` (task `description`) or `property_prediction.json` (task
    `property`). Rows of other splits (`metadata.split`) are skipped; SELFIES that do not decode are counted.
    """
    if task not in ("description", "property"):
        raise ValueError(f"Mol-Instructions task must be 'description' or 'property', got {task!r}")
    report = DataReport(f"mol-instructions ({path}, {task}, {split})")
    if _is_hub_id(path):
        entries = list(datasets.load_dataset(path, split=split))
    else:
        with open(_require(path), encoding="utf-8") as handle:
            entries = json.load(handle)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of instruction entries")
    records = []
    for index, entry in enumerate(entries):
        report.read += 1
        if limit is not None and len(records) >= limit:
            break
        entry_split = (entry.get("metadata") or {}).get("split")
        if entry_split is not None and entry_split != split:
            report.drop(f"split {entry_split}")
            continue
        smiles = _selfies_to_smiles(entry.get("input") or "")
        if smiles is None:
            report.drop("undecodable SELFIES")
            continue
        answer = (entry.get("output") or "").strip()
        question = (entry.get("instruction") or "").strip()
        if not answer or not question:
            report.drop("empty instruction or output")
            continue
        metadata = {}
        if task == "property":
            name = _property_from_text(question)
            try:
                value = float(answer)
            except ValueError:
                report.drop("non-numeric property answer")
                continue
            if name is None:
                report.drop("unknown property")
                continue
            metadata = {"property": name, "value": value, "unit": "Hartree"}
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        records.append(
            make_record(f"mol-instructions:{task}:{index}", smiles, messages, task, "mol-instructions", metadata)
        )
    report.kept = len(records)
    return _records_to_dataset(records), report


def load_iupac_pairs(
    path: str,
    smiles_column: str = "SMILES",
    name_column: str = "iupac",
    id_column: str | None = None,
    split: str = "train",
    limit: int | None = None,
    source: str = "iupac",
) -> tuple[datasets.Dataset, DataReport]:
    """SMILES / IUPAC-name pairs from a CSV or TSV with a header (or a Hub dataset with those columns)."""
    report = DataReport(f"iupac pairs ({path})")
    if _is_hub_id(path):
        columns = {"smiles": smiles_column, "name": name_column, **({"id": id_column} if id_column else {})}
        rows = list(_hub_rows(path, split, columns))
    else:
        file = _require(path)
        with open(file, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if file.suffix in (".tsv", ".txt") else ",")
            missing = [c for c in (smiles_column, name_column) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} has no column(s) {missing}; its columns: {reader.fieldnames}")
            rows = [
                {
                    "smiles": row[smiles_column],
                    "name": row[name_column],
                    "id": row.get(id_column) if id_column else None,
                }
                for row in reader
            ]
    rows = [(f"{source}:{row.get('id') or index}", row["smiles"], row["name"]) for index, row in enumerate(rows)]
    return _qa_dataset(rows, "iupac", source, report, limit, empty="missing SMILES or name")


def load_chemicals_iupac(path: str | None = None, limit: int | None = None) -> tuple[datasets.Dataset, DataReport]:
    """
    IUPAC names of the PubChem table shipped in the `chemicals` package (tab-separated, no header: CID, CAS, formula,
    MW, SMILES, InChI, InChIKey, IUPAC name, ...). `limit` keeps a deterministic, spread-out subset: the rows whose
    InChIKey ranks lowest by `stable_fraction`.
    """
    file = Path(path) if path else _installed_file(*CHEMICALS_TABLE)
    report = DataReport(f"chemicals iupac ({file.name})")
    candidates = []
    with open(_require(file), encoding="utf-8") as handle:
        for line in handle:
            report.read += 1
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 8 or not fields[4].strip() or not fields[7].strip():
                report.drop("missing SMILES or IUPAC name")
                continue
            candidates.append((fields[0], fields[4].strip(), fields[7].strip(), fields[6]))
    if limit is not None and limit < len(candidates):
        candidates.sort(key=lambda row: stable_fraction(row[3] or row[0], "subset"))
        report.drop("beyond limit", len(candidates) - limit)
        candidates = candidates[:limit]
    records = [qa_record(f"pubchem:{cid}", smiles, name, "iupac", "chemicals") for cid, smiles, name, _ in candidates]
    report.kept = len(records)
    return _records_to_dataset(records), report


def property_record(molecule_id: str, smiles: str, name: str, value: float, source: str) -> dict[str, Any]:
    record_id = f"{molecule_id}:{name}"
    question = stable_choice(PROPERTY_QUESTIONS[name], record_id)
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": f"{value:.4f}"}]
    return make_record(
        record_id, smiles, messages, "property", source, {"property": name, "value": value, "unit": "Hartree"}
    )


def _qm9_table(path: str | list[str] | None, split: str, columns: list[str]):
    """The QM9 rows as a pandas table with `columns` (plus `Index` when the source has it), and a name for reports."""
    import pandas

    if isinstance(path, str) and _is_hub_id(path):
        loaded = datasets.load_dataset(path, split=split)
        missing = [c for c in columns if c not in loaded.column_names]
        if missing:
            raise ValueError(f"{path} ({split}) has no column(s) {missing}; its columns: {loaded.column_names}")
        keep = columns + (["Index"] if "Index" in loaded.column_names else [])
        return loaded.select_columns(keep).to_pandas(), f"{path}, {split}"
    if path is None:
        files = [_installed_file(QM9PACK_FILES[0], name) for name in QM9PACK_FILES[1]]
    else:
        files = [_require(p) for p in ([path] if isinstance(path, str) else path)]
    frames = []
    for file in files:
        header = pandas.read_csv(file, nrows=0).columns
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{file} has no column(s) {missing}")
        frames.append(pandas.read_csv(file, usecols=columns + (["Index"] if "Index" in header else [])))
    return pandas.concat(frames, ignore_index=True), ", ".join(f.name for f in files)


def load_qm9_properties(
    path: str | list[str] | None = None,
    properties: tuple[str, ...] | list[str] = ("HOMO", "LUMO", "gap"),
    limit: int | None = None,
    split: str = "train",
    smiles_column: str = "SMILES",
    property_columns: dict[str, str] | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """
    QM9 HOMO / LUMO / HOMO-LUMO gap (Hartree) as question -> number conversations, one per property per molecule.
    `path`: CSV file(s) or a Hub dataset id (its `split`), with the columns `SMILES`, `HOMO_au`, `LUMO_au`,
    `HOMO_LUMO_gap_au` (rename with `smiles_column` and `property_columns`, e.g. `{"HOMO": "homo"}`; the values must be
    in Hartree); default: the `qm9pack` package's parts. `limit` keeps that many molecules, a deterministic
    spread-out subset (QM9 is ordered by size).
    """
    unknown = [name for name in properties if name not in QM9_COLUMNS]
    if unknown:
        raise ValueError(f"Unknown QM9 properties {unknown}; choose from {list(QM9_COLUMNS)}")
    column_of = {**QM9_COLUMNS, **(property_columns or {})}
    table, origin = _qm9_table(path, split, [smiles_column, *(column_of[name] for name in properties)])
    table = table.rename(columns={smiles_column: "SMILES", **{column_of[n]: QM9_COLUMNS[n] for n in properties}})
    report = DataReport(f"qm9 ({origin})")
    report.read = len(table)
    if "Index" not in table.columns:
        table["Index"] = range(len(table))
    if limit is not None and limit < len(table):
        order = table["Index"].map(lambda index: stable_fraction(str(index), "qm9-subset"))
        table = table.loc[order.sort_values().index[:limit]]
        report.drop("beyond limit", report.read - limit)
    records = []
    for row in table.itertuples(index=False):
        smiles = row.SMILES
        if not isinstance(smiles, str) or not smiles.strip():
            report.drop("missing SMILES")
            continue
        for name in properties:
            value = getattr(row, QM9_COLUMNS[name])
            if value is None or (isinstance(value, float) and math.isnan(value)):
                report.drop(f"missing {name}")
                continue
            records.append(property_record(f"qm9:{row.Index}", smiles.strip(), name, float(value), "qm9"))
    report.kept = len(records)
    return _records_to_dataset(records), report


def _jsonl_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line


def load_conversations(
    path: str, limit: int | None = None, split: str = "train"
) -> tuple[datasets.Dataset, DataReport]:
    """
    Conversation-schema rows (`id`, `smiles`, `messages`, ...) from a JSONL file or a Hub dataset id (its `split`);
    malformed rows are skipped and counted.
    """
    report = DataReport(f"conversations ({path})")
    rows = datasets.load_dataset(path, split=split) if _is_hub_id(path) else _jsonl_lines(_require(path))
    records = []
    for line in rows:
        report.read += 1
        if limit is not None and len(records) >= limit:
            break
        try:
            row = json.loads(line) if isinstance(line, str) else dict(line)
            metadata = row.get("metadata") or {}
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            records.append(
                make_record(
                    row["id"],
                    row["smiles"],
                    row["messages"],
                    row.get("task") or "conversation",
                    row.get("source") or "conversations",
                    metadata,
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            report.drop(f"malformed row ({type(error).__name__})")
    report.kept = len(records)
    return _records_to_dataset(records), report


# --- featurization ----------------------------------------------------------------------------------------------


def _featurization_error(failure: Exception) -> str:
    """The report reason of a molecule that could not be featurized."""
    if not isinstance(failure, ValueError):
        return f"featurization error: {type(failure).__name__}"
    if isinstance(failure, OversizedMoleculeError):
        return "oversized molecule"
    return "empty SMILES" if str(failure).startswith("Empty") else "unparsable SMILES"


def _featurize_batch(batch: dict[str, list], max_atoms: int | None) -> dict[str, list]:
    from rdkit import Chem, rdBase

    out: dict[str, list] = {name: [] for name in FEATURIZED_FEATURES}
    out["featurization_error"] = []
    with rdBase.BlockLogs():
        for smiles in batch["smiles"]:
            try:
                prepared = prepare_molecule(smiles, max_atoms)
                graph = prepared.graph
                error = ""
                values = (
                    graph.atom_features.tolist(),
                    graph.edge_index.tolist(),
                    graph.edge_features.tolist(),
                    graph.motif_features.tolist(),
                    prepared.smiles,
                    Chem.MolToInchiKey(prepared.mol) or "",
                    graph.num_atoms,
                )
            except Exception as failure:  # one bad molecule is counted, never stops the job
                error = _featurization_error(failure)
                values = ([], [[], []], [], [], "", "", 0)
            for name, value in zip(FEATURIZED_FEATURES, values, strict=True):
                out[name].append(value)
            out["featurization_error"].append(error)
    return out


def featurize_dataset(
    dataset: datasets.Dataset,
    max_atoms: int | None = DEFAULT_MAX_ATOMS,
    num_proc: int | None = None,
    name: str = "dataset",
    cache_file_name: str | None = None,
    multiprocess_min_rows: int = MULTIPROCESS_MIN_ROWS,
) -> tuple[datasets.Dataset, DataReport]:
    """
    Featurize every molecule once with `datasets.map`, adding `atom_features`, `edge_index`, `edge_features`,
    `motif_features`, `prompt_smiles` (canonical, non-isomeric, uncut), `inchikey` and `num_atoms`. Unparsable, empty
    and oversized molecules, and any molecule whose featurization raises, are dropped and counted in the returned
    report (the latter as `featurization error: <exception type>`).

    `num_proc` processes are used when the dataset has more than `multiprocess_min_rows` rows (below that, starting
    the processes costs more than it saves).
    """
    features = datasets.Features(
        {**dataset.features, **FEATURIZED_FEATURES, "featurization_error": datasets.Value("string")}
    )
    mapped = dataset.map(
        _featurize_batch,
        batched=True,
        batch_size=256,
        fn_kwargs={"max_atoms": max_atoms},
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > multiprocess_min_rows else None,
        features=features,
        desc=f"Featurizing {name}",
        cache_file_name=cache_file_name,
    )
    errors = Counter(mapped["featurization_error"])
    report = DataReport(f"featurization of {name}", read=len(dataset))
    for reason, count in errors.items():
        if reason:
            report.drop(reason, count)
    kept = mapped.filter(lambda error: not error, input_columns="featurization_error", desc="Dropping bad molecules")
    report.kept = len(kept)
    return kept.remove_columns("featurization_error"), report


# --- splits and mixtures ----------------------------------------------------------------------------------------


def holdout_split(dataset: datasets.Dataset, fraction: float, part: str, key_column: str = "inchikey"):
    """
    The fixed hold-out rule: a row is held out when `stable_fraction(key, "holdout")` < `fraction`, with the key its
    InChIKey (so one molecule never lands in both parts, whatever its task). `part` is `"train"` or `"test"`.
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    if key_column not in dataset.column_names:
        raise ValueError(f"holdout_split needs the `{key_column}` column: featurize the dataset first")
    want_test = part == "test"
    return dataset.filter(
        lambda key: (stable_fraction(key or "", "holdout") < fraction) == want_test,
        input_columns=key_column,
        desc=f"Hold-out split ({part})",
    )


def mix_datasets(parts: list[tuple[datasets.Dataset, float]], seed: int = 0) -> datasets.Dataset:
    """
    A generalist mixture: each part contributes `weight` x its size rows (weight 1: every row once; 0.5: a seeded half;
    2: every row twice), concatenated and shuffled with `seed`.
    """
    rng = random.Random(seed)
    pieces = []
    for dataset, weight in parts:
        if weight < 0:
            raise ValueError(f"mixture weights must be >= 0, got {weight}")
        whole, fraction = int(weight), weight - int(weight)
        indices = list(range(len(dataset))) * whole
        indices += rng.sample(range(len(dataset)), round(fraction * len(dataset)))
        if indices:
            pieces.append(dataset.select(indices))
    if not pieces:
        raise ValueError("The mixture is empty: every source has weight 0 or no rows.")
    return datasets.concatenate_datasets(pieces).shuffle(seed=seed).flatten_indices()


__all__ = [
    "DESCRIPTION_INSTRUCTIONS",
    "FEATURIZED_FEATURES",
    "IUPAC_INSTRUCTIONS",
    "PROPERTY_QUESTIONS",
    "DataReport",
    "featurize_dataset",
    "holdout_split",
    "load_chebi20",
    "load_chemicals_iupac",
    "load_conversations",
    "load_iupac_pairs",
    "load_mol_instructions",
    "load_pubchem324k",
    "load_qm9_properties",
    "mix_datasets",
    "stable_choice",
    "stable_fraction",
]
