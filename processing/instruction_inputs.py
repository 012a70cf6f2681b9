"""The molecules that instruction conversations are written about, as `read_molecules` reads them."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from rdkit import Chem, rdBase

from .loaders import read_jsonl_rows, read_table

_COLUMN_CANDIDATES = {
    "smiles": ("smiles", "canonical_smiles", "isomeric_smiles", "isosmiles"),
    "description": ("description", "caption", "text", "desc"),
    "iupac": ("iupac", "iupac_name", "iupacname"),
    "id": ("id", "cid", "chebi_id", "molecule_id", "mol_id"),
}


@dataclass
class Molecule:
    """One molecule with its contexts: `id` (stable key), `smiles` (as given), `description`, optional `iupac`."""

    id: str
    smiles: str
    description: str
    iupac: str | None = None


@dataclass
class ColumnNames:
    """Input column names; None: detect (case-insensitively) among the usual names, e.g. `CID`/`id`, `SMILES`."""

    smiles: str | None = None
    description: str | None = None
    iupac: str | None = None
    id: str | None = None


@dataclass
class MoleculeInput:
    """The valid molecules of an input, and the rows skipped (`{reason: count}`)."""

    molecules: list[Molecule]
    skipped: Counter = field(default_factory=Counter)
    source: str = ""
    rows: int = 0
    limit: int | None = None


def _resolve_column(role: str, wanted: str | None, available: list[str]) -> str | None:
    if wanted is not None:
        if wanted not in available:
            raise ValueError(f"Input has no {role} column {wanted!r}; its columns are {available}.")
        return wanted
    lowered = {name.lower(): name for name in available}
    found = next((lowered[candidate] for candidate in _COLUMN_CANDIDATES[role] if candidate in lowered), None)
    if found is None and role in ("smiles", "description"):  # the required roles
        raise ValueError(
            f"Input has no {role} column (tried {_COLUMN_CANDIDATES[role]}; name it with --{role}-column); "
            f"its columns are {available}."
        )
    return found


def _dataset_rows(dataset) -> Iterator[dict[str, Any]]:
    """Rows of a `datasets.Dataset`; in the conversation schema, the description is the last assistant message."""
    for row in dataset:
        if "messages" in row:
            answers = [m["content"] for m in row["messages"] or [] if m.get("role") == "assistant"]
            row = {**row, "description": answers[-1] if answers else ""}
        yield row


def _raw_rows(source, input_format: str) -> tuple[Iterable[dict[str, Any] | None], str]:
    if isinstance(source, datasets.Dataset):
        return _dataset_rows(source), f"datasets.Dataset({source.num_rows} rows)"
    if not (path := Path(source)).exists():
        raise FileNotFoundError(f"Input not found: {path}")
    if input_format == "auto":  # a folder is one saved with `save_to_disk`; .txt files are ChEBI-20 TSVs
        formats = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
        input_format = "dataset" if path.is_dir() else formats.get(path.suffix.lower(), "")
        if not input_format:
            raise ValueError(f"Cannot tell the format of {path} from its suffix; pass --format tsv|csv|jsonl|dataset.")
    if input_format in ("tsv", "chebi20", "csv"):
        tabs = input_format != "csv"
        table = read_table(path, sep="\t" if tabs else ",", quoting=csv.QUOTE_NONE if tabs else csv.QUOTE_MINIMAL)
        return table.to_dict("records"), str(path)
    if input_format == "jsonl":
        return read_jsonl_rows(path), str(path)
    if input_format == "dataset":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path} holds splits {list(loaded)}; point at one split's folder.")
        return _dataset_rows(loaded), str(path)
    raise ValueError(f"Unknown input format {input_format!r}: use auto, tsv, chebi20, csv, jsonl or dataset.")


def read_molecules(
    source,
    input_format: str = "auto",
    columns: ColumnNames | None = None,
    id_prefix: str = "",
    limit: int | None = None,
) -> MoleculeInput:
    """Read molecules with contexts from a ChEBI-20 style TSV, a CSV, a JSONL, a saved dataset folder, or a
    `datasets.Dataset` (a conversation-schema one gives its last assistant message as the description). Rows with no
    or unparsable SMILES, no description, text that is not UTF-8, a repeated id or unreadable JSON are counted in
    `skipped`; a missing column raises `ValueError` naming it. `limit` stops after that many molecules."""
    from llamo.smiles_llamo import parse_smiles

    wanted = asdict(columns or ColumnNames())
    rows, described = _raw_rows(source, input_format)
    result = MoleculeInput(molecules=[], source=described, limit=limit)
    resolved: dict[str, str | None] = {}
    seen: set[str] = set()

    def molecule(row: dict[str, Any] | None) -> Molecule | str:
        if row is None:
            return "unreadable_row"
        if not resolved:
            resolved.update({role: _resolve_column(role, wanted[role], list(row)) for role in wanted})
        text = {role: str(row.get(column) or "").strip() for role, column in resolved.items()}
        if not text["smiles"]:
            return "missing_smiles"
        if any("\ufffd" in value for value in text.values()):  # bytes that were not UTF-8 (`read_table`)
            return "invalid_utf8"
        try:
            mol = parse_smiles(text["smiles"])
        except ValueError:
            return "invalid_smiles"
        if not text["description"]:
            return "missing_description"
        raw_id = row.get(resolved["id"])
        if raw_id in (None, ""):  # the InChIKey is the id
            with rdBase.BlockLogs():
                molecule_id = Chem.MolToInchiKey(mol) or f"smiles:{text['smiles']}"
        else:
            molecule_id = f"{id_prefix}{raw_id}".strip()
        if molecule_id in seen:
            return "duplicate_id"
        return Molecule(molecule_id, text["smiles"], text["description"], text["iupac"] or None)

    for row in rows:
        if limit is not None and len(result.molecules) >= limit:
            break
        result.rows += 1
        if isinstance(found := molecule(row), str):
            result.skipped[found] += 1
        else:
            seen.add(found.id)
            result.molecules.append(found)
    return result
