"""Loaders (`load_*`) that turn each data source (a local path or a Hub dataset id) into the conversation schema
(`processing/schema.py`). Each skips and counts the rows it cannot use in a `DataReport`, never crashes on one."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pandas

from .schema import make_record, record_metadata, records_dataset

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
_PROPERTY_WORDS = {"gap": ("gap",), "LUMO": ("lumo", "lowest unoccupied"), "HOMO": ("homo", "highest occupied")}
"""How a question names each property; one that names both orbitals asks for the gap."""
QM9_COLUMNS = {"HOMO": "HOMO_au", "LUMO": "LUMO_au", "gap": "HOMO_LUMO_gap_au"}
CHEMICALS_TABLE = ("chemicals", "Identifiers/chemical identifiers pubchem large.tsv")
QM9PACK_FILES = ("qm9pack", ("data/qm9_part1.csv", "data/qm9_part2.csv", "data/qm9_part3.csv"))


@dataclass
class DataReport:
    """What a loading or featurization step kept and dropped, by reason."""

    name: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] += count

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped.most_common()) or "none"
        return f"{self.name}: read {self.read}, kept {self.kept}, dropped {self.dropped.total()} ({reasons})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "read": self.read, "kept": self.kept, "dropped": dict(self.dropped)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        return cls(data["name"], data["read"], data["kept"], Counter(data.get("dropped", {})))


def stable_fraction(key: str, salt: str = "llamo") -> float:
    """A deterministic number in [0, 1) for `key`: the first 8 hex digits of sha1(`salt:key`) / 16^8."""
    return int(hashlib.sha1(f"{salt}:{key}".encode()).hexdigest()[:8], 16) / 16**8


def stable_choice(options: tuple[str, ...], key: str) -> str:
    """One of `options` chosen by `key` (the same record always gets the same phrasing)."""
    return options[int(stable_fraction(key, "phrasing") * len(options))]


def property_from_text(text: str) -> str | None:
    """The QM9 property (`HOMO`, `LUMO`, `gap`) a question asks about, None if none: the gap when it says "gap" or
    names both orbitals ("the energy difference between the HOMO and LUMO")."""
    lowered = text.lower()
    named = [name for name, words in _PROPERTY_WORDS.items() if any(word in lowered for word in words)]
    return "gap" if "gap" in named or {"HOMO", "LUMO"} <= set(named) else next(iter(named), None)


def _installed_file(package: str, relative: str) -> Path:
    if (spec := importlib.util.find_spec(package)) is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"No path was given and {package} is not installed (pip install {package}).")
    if not (path := Path(next(iter(spec.submodule_search_locations))) / relative).is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package} package.")
    return path


def _is_hub_id(path: Any) -> bool:
    return isinstance(path, str) and not Path(path).exists() and path.count("/") == 1 and path[0] not in "./~"


def _require(path: str | Path) -> Path:
    if not (path := Path(path).expanduser()).exists():
        raise FileNotFoundError(f"Data path not found: {path}")
    return path


def read_table(
    path: str | Path | list, split: str = "train", columns: list[str] | None = None, optional=(), **read_csv
):
    """A Hub dataset's `split` or local CSV file(s) as a pandas table: its `columns` (a `ValueError` names missing ones)
    and the existing `optional` ones, or every column. Local files: `pandas.read_csv(**read_csv)`, by default all text,
    extra fields ignored, non-UTF-8 bytes as U+FFFD; an unreadable file is a `ValueError` naming it."""
    if _is_hub_id(path):
        loaded = datasets.load_dataset(path, split=split)
        origin, available = f"{path} ({split})", loaded.column_names
    else:
        options = {"dtype": str, "keep_default_na": False, "usecols": lambda name: True, "index_col": False}
        options.update(encoding_errors="replace", **read_csv)
        files = [_require(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
        loaded = pandas.concat([_read_csv(f, options) for f in files], ignore_index=True)
        origin, available = ", ".join(map(str, files)), list(loaded.columns)
    if missing := [column for column in columns or [] if column not in available]:
        shown = [str(name)[:30] for name in available[:8]] + [f"... {len(available)} in all"] * bool(available[8:])
        raise ValueError(f"{origin} has no column(s) {missing}; its columns: {shown}")
    keep = available if columns is None else [*columns, *(name for name in optional if name and name in available)]
    return loaded.select_columns(keep).to_pandas() if isinstance(loaded, datasets.Dataset) else loaded[keep]


def _read_csv(file: Path, options: dict[str, Any]) -> pandas.DataFrame:
    try:
        return pandas.read_csv(file, **options)
    except (pandas.errors.ParserError, pandas.errors.EmptyDataError, UnicodeError) as error:
        raise ValueError(f"{file}: not a readable table ({type(error).__name__}: {str(error)[:200]})") from error


def read_jsonl_rows(path: str | Path) -> Iterator[dict[str, Any] | None]:
    """The objects of a JSONL file (a UTF-8 byte order mark is skipped), None for each non-blank line that is not a
    JSON object: not UTF-8, not JSON, or nested too deep to parse."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle):
            try:
                line = raw.decode("utf-8-sig" if number == 0 else "utf-8")
                if not line.strip():
                    continue
                row = json.loads(line)
            except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                row = None
            yield row if isinstance(row, dict) else None


def _collect(
    report: DataReport, items: Iterable[Any], limit: int | None, convert: Callable[[Any], dict | str]
) -> tuple[datasets.Dataset, DataReport]:
    """The records `convert` makes of `items`, at most `limit`; a string it returns is a reason to drop, counted, and so
    is an exception it raises (`malformed row (<exception type>)`): one bad row never stops the job."""
    records = []
    for item in items:
        report.read += 1
        if limit is not None and len(records) >= limit:
            break
        try:
            record = convert(item)
        except KeyError as error:  # the loaders read fixed keys, so the name is short
            record = f"malformed row (no {error})"
        except Exception as error:  # a row of unexpected types or structure
            record = f"malformed row ({type(error).__name__})"
        if isinstance(record, str):
            report.drop(record)
        else:
            records.append(record)
    report.kept = len(records)
    return records_dataset(records), report


def _qa(task: str, source: str, instruction: str | None = None, empty: str = "empty SMILES or description"):
    """A `convert` for `_collect`: a `(record_id, smiles, answer)` row -> a one-question record of `task` (`description`
    or `iupac`) asking `instruction`, else one of the task's own chosen by the id; `empty` for a row missing either."""
    questions = DESCRIPTION_INSTRUCTIONS if task == "description" else IUPAC_INSTRUCTIONS

    def convert(row: tuple[str, str, str]) -> dict | str:
        record_id, smiles, answer = row
        if not (smiles or "").strip() or not (answer or "").strip():
            return empty
        if "\ufffd" in smiles + answer:  # bytes that were not UTF-8 (see `read_table`)
            return "invalid UTF-8"
        question = instruction or stable_choice(questions, record_id)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}]
        return make_record(record_id, smiles.strip(), messages, task, source)

    return convert


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
    table = read_table(path, split, [id_column, smiles_column, text_column], sep="\t")
    rows = ((f"chebi20:{cid}", smiles, text) for cid, smiles, text in table.itertuples(index=False))
    return _collect(DataReport(f"chebi20 ({path})"), rows, limit, _qa("description", "chebi20", instruction))


def _read_pubchem_text_layout(root: Path) -> Iterator[tuple[str, str, str]]:
    text_files, smiles_files = (sorted(filter(Path.is_file, (root / kind).iterdir())) for kind in ("text", "smiles"))
    if len(text_files) != len(smiles_files):
        raise ValueError(f"{root}: {len(text_files)} text files but {len(smiles_files)} SMILES files")
    for text_file, smiles_file in zip(text_files, smiles_files, strict=True):
        if text_file.stem.split("_")[-1] != smiles_file.stem.split("_")[-1]:
            raise ValueError(f"{root}: {text_file.name} has no SMILES file of its id (paired with {smiles_file.name})")
    for text_file, smiles_file in zip(text_files, smiles_files, strict=True):
        # bytes that are not UTF-8 become U+FFFD, and `_qa` drops the row
        text = " ".join(line.strip() for line in text_file.read_text("utf-8", "replace").splitlines())
        yield text_file.stem.split("_")[-1], smiles_file.read_text("utf-8", "replace").strip(), text


def _read_pubchem_pickle(path: Path) -> Iterator[tuple[str, str, str]]:
    import torch

    loaded = torch.load(path, weights_only=False)  # the caller opted in: this runs the pickle's code
    data = loaded[0] if isinstance(loaded, (tuple, list)) else loaded
    get = data.get if isinstance(data, dict) else lambda key: getattr(data, key, None)
    texts, smiles, cids = get("text"), get("smiles"), get("cid")
    if texts is None or smiles is None:
        raise ValueError(f"{path} holds no `text`/`smiles` attributes: not a MolCA PubChem324k file")
    for index, (smile, text) in enumerate(zip(smiles, texts, strict=True)):
        yield str(cids[index]) if cids is not None else f"{path.stem}-{index}", smile, text


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
    """PubChem324k as MolCA released it: `path/split/{text,smiles}/` (one file per molecule) or `path/split.pt`
    (PubChem324kV2, pickles that can execute code: read only with `allow_pickle=True`); a Hub id has columns
    `smiles` and `text`."""
    if _is_hub_id(path):
        table = read_table(path, split, ["smiles", "text"])
        rows = ((str(i), *row) for i, row in enumerate(table.itertuples(index=False)))
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
    report = DataReport(f"pubchem324k ({path}, {split})")
    return _collect(report, rows, limit, _qa("description", "pubchem324k", instruction))


def _selfies_to_smiles(value: str) -> str | None:
    import selfies

    try:
        return selfies.decoder(value.strip().removeprefix("<SELFIES>").removesuffix("</SELFIES>").strip()) or None
    except Exception:  # selfies raises its own DecoderError and, on odd input, plain exceptions
        return None


def load_mol_instructions(
    path: str, split: str = "train", task: str = "description", limit: int | None = None
) -> tuple[datasets.Dataset, DataReport]:
    """Mol-Instructions' molecule-oriented JSON (a list of `{"instruction", "input" (SELFIES), "output", "metadata"}`),
    e.g. `molecular_description_generation.json` (task `description`) or `property_prediction.json` (task
    `property`). Rows of other splits (`metadata.split`) are skipped; SELFIES that do not decode are counted."""
    if task not in ("description", "property"):
        raise ValueError(f"Mol-Instructions task must be 'description' or 'property', got {task!r}")
    if _is_hub_id(path):
        entries = datasets.load_dataset(path, split=split)
    else:
        try:
            entries = json.loads(_require(path).read_text(encoding="utf-8-sig"))
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON
            raise ValueError(f"{path}: not a readable JSON file ({type(error).__name__}: {str(error)[:200]})") from None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of instruction entries")

    def convert(item: tuple[int, dict]) -> dict | str:
        index, entry = item
        if (entry_split := (entry.get("metadata") or {}).get("split")) is not None and entry_split != split:
            return f"split {entry_split}"
        if (smiles := _selfies_to_smiles(entry.get("input") or "")) is None:
            return "undecodable SELFIES"
        answer, question = (entry.get("output") or "").strip(), (entry.get("instruction") or "").strip()
        if not answer or not question:
            return "empty instruction or output"
        metadata = {}
        if task == "property":
            try:
                metadata = {"property": property_from_text(question), "value": float(answer), "unit": "Hartree"}
            except ValueError:
                return "non-numeric property answer"
            if metadata["property"] is None:
                return "unknown property"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return make_record(f"mol-instructions:{task}:{index}", smiles, messages, task, "mol-instructions", metadata)

    return _collect(DataReport(f"mol-instructions ({path}, {task}, {split})"), enumerate(entries), limit, convert)


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
    sep = "\t" if Path(path).suffix in (".tsv", ".txt") else ","
    table = read_table(path, split, [smiles_column, name_column], optional=[id_column], sep=sep)
    rows = (
        (f"{source}:{row.get(id_column) or index}", row[smiles_column], row[name_column])
        for index, row in enumerate(table.to_dict("records"))
    )
    report = DataReport(f"iupac pairs ({path})")
    return _collect(report, rows, limit, _qa("iupac", source, empty="missing SMILES or name"))


def load_chemicals_iupac(path: str | None = None, limit: int | None = None) -> tuple[datasets.Dataset, DataReport]:
    """IUPAC names of the PubChem table shipped in the `chemicals` package (tab-separated, no header, ragged: CID, CAS,
    formula, MW, SMILES, InChI, InChIKey, IUPAC name, synonyms...). `limit` keeps a deterministic, spread-out subset:
    the rows whose InChIKey ranks lowest by `stable_fraction`."""
    file = _require(path or _installed_file(*CHEMICALS_TABLE))
    table = read_table(file, header=None, sep="\t", quoting=csv.QUOTE_NONE, usecols=[0, 4, 6, 7])
    table.columns = ["cid", "smiles", "inchikey", "name"]
    report = DataReport(f"chemicals iupac ({file.name})")
    usable = table[(table["smiles"].str.strip() != "") & (table["name"].str.strip() != "")]
    report.drop("missing SMILES or IUPAC name", len(table) - len(usable))
    if limit is not None and limit < len(usable):
        report.drop("beyond limit", len(usable) - limit)
        keys = usable["inchikey"].where(usable["inchikey"] != "", usable["cid"])
        usable = usable.loc[keys.map(lambda key: stable_fraction(key, "subset")).nsmallest(limit).index]
    rows = ((f"pubchem:{row.cid}", row.smiles, row.name) for row in usable.itertuples())
    dataset, report = _collect(report, rows, None, _qa("iupac", "chemicals"))
    report.read = len(table)
    return dataset, report


def load_qm9_properties(
    path: str | list[str] | None = None,
    properties: tuple[str, ...] | list[str] = ("HOMO", "LUMO", "gap"),
    limit: int | None = None,
    split: str = "train",
    smiles_column: str = "SMILES",
    property_columns: dict[str, str] | None = None,
) -> tuple[datasets.Dataset, DataReport]:
    """QM9 HOMO / LUMO / HOMO-LUMO gap (Hartree) as question -> number conversations, one per property per molecule.
    `path`: CSV file(s) or a Hub dataset id (its `split`), with the columns `SMILES`, `HOMO_au`, `LUMO_au`,
    `HOMO_LUMO_gap_au` (rename with `smiles_column` and `property_columns`, e.g. `{"HOMO": "homo"}`; the values must be
    in Hartree); default: the `qm9pack` package's parts. `limit` keeps that many molecules, a deterministic
    spread-out subset (QM9 is ordered by size)."""
    if unknown := [name for name in properties if name not in QM9_COLUMNS]:
        raise ValueError(f"Unknown QM9 properties {unknown}; choose from {list(QM9_COLUMNS)}")
    column_of = {**QM9_COLUMNS, **(property_columns or {})}
    files = path or [_installed_file(QM9PACK_FILES[0], name) for name in QM9PACK_FILES[1]]
    columns = [smiles_column, *(column_of[name] for name in properties)]
    table = read_table(files, split, columns, optional=["Index"], dtype=None, keep_default_na=True)
    table.columns = ["SMILES", *properties, *table.columns[len(columns) :]]
    names = [Path(file).name for file in ([files] if isinstance(files, (str, Path)) else files)]
    report = DataReport(f"qm9 ({f'{path}, {split}' if _is_hub_id(path) else ', '.join(names)})", read=len(table))
    if "Index" not in table.columns:
        table["Index"] = range(len(table))
    if limit is not None and limit < len(table):
        fractions = table["Index"].map(lambda index: stable_fraction(str(index), "qm9-subset"))
        table = table.loc[fractions.nsmallest(limit).index]
        report.drop("beyond limit", report.read - limit)
    records = []
    for row in table.to_dict("records"):
        smiles = row["SMILES"]
        if not isinstance(smiles, str) or not smiles.strip():
            report.drop("missing SMILES")
            continue
        for name in properties:
            if row[name] is None or row[name] != row[name]:  # missing, or NaN
                report.drop(f"missing {name}")
                continue
            try:
                value = float(row[name])
            except (TypeError, ValueError):
                report.drop(f"non-numeric {name}")
                continue
            if not math.isfinite(value):
                report.drop(f"non-finite {name}")
                continue
            record_id = f"qm9:{row['Index']}:{name}"
            question = stable_choice(PROPERTY_QUESTIONS[name], record_id)
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": f"{value:.4f}"}]
            metadata = {"property": name, "value": value, "unit": "Hartree"}
            records.append(make_record(record_id, smiles.strip(), messages, "property", "qm9", metadata))
    report.kept = len(records)
    return records_dataset(records), report


def load_conversations(
    path: str, limit: int | None = None, split: str = "train"
) -> tuple[datasets.Dataset, DataReport]:
    """Conversation-schema rows from a JSONL file or a Hub dataset id (its `split`); malformed ones are counted."""
    rows = datasets.load_dataset(path, split=split) if _is_hub_id(path) else read_jsonl_rows(_require(path))

    def convert(row: dict | None) -> dict | str:
        if row is None:
            return "line is not a JSON object (or not UTF-8)"
        task, source = row.get("task") or "conversation", row.get("source") or "conversations"
        record = make_record(row["id"], row["smiles"], row["messages"], task, source, record_metadata(row))
        # a trailing user turn is never a target, and neighbour search reads the last turn as the answer
        return record if record["messages"][-1]["role"] == "assistant" else "no assistant turn at the end"

    return _collect(DataReport(f"conversations ({path})"), rows, limit, convert)
