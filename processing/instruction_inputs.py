"""The molecules that instruction conversations are written about: read from a ChEBI-20 TSV, a CSV, a JSONL, a saved
datasets folder or a `datasets.Dataset`, with the rows that cannot be used counted by reason."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _resolve_column(role: str, wanted: str | None, available: list[str], required: bool) -> str | None:
    if wanted is not None:
        if wanted not in available:
            raise ValueError(f"Input has no {role} column {wanted!r}; its columns are {available}.")
        return wanted
    lowered = {name.lower(): name for name in available}
    for candidate in _COLUMN_CANDIDATES[role]:
        if candidate in lowered:
            return lowered[candidate]
    if required:
        option = f"--{role}-column"
        raise ValueError(
            f"Input has no {role} column (tried {_COLUMN_CANDIDATES[role]}; name it with {option}); "
            f"its columns are {available}."
        )
    return None


def detect_format(path: Path) -> str:
    """`tsv` (.tsv, .txt: ChEBI-20), `csv`, `jsonl` (.jsonl, .json) or `dataset` (a folder from `save_to_disk`)."""
    if path.is_dir():
        return "dataset"
    suffix = path.suffix.lower()
    formats = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
    if suffix not in formats:
        raise ValueError(f"Cannot tell the format of {path} from its suffix; pass --format tsv|csv|jsonl|dataset.")
    return formats[suffix]


def _table_rows(path: Path, delimiter: str) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
        if not reader.fieldnames:
            raise ValueError(f"{path} is empty or has no header row.")
        yield from reader


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any] | None]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield row if isinstance(row, dict) else None


def _dataset_rows(dataset) -> Iterator[dict[str, Any]]:
    """Rows of a `datasets.Dataset`; in the conversation schema, the description is the last assistant message."""
    conversation = "messages" in dataset.column_names
    for row in dataset:
        if conversation:
            answers = [m["content"] for m in row["messages"] or [] if m.get("role") == "assistant"]
            row = {**row, "description": answers[-1] if answers else ""}
        yield row


def _raw_rows(source, input_format: str) -> tuple[Iterable[dict[str, Any] | None], str]:
    import datasets

    if isinstance(source, datasets.Dataset):
        return _dataset_rows(source), f"datasets.Dataset({source.num_rows} rows)"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Input not found: {path}")
    input_format = detect_format(path) if input_format == "auto" else input_format
    if input_format in ("tsv", "chebi20"):
        return _table_rows(path, "\t"), str(path)
    if input_format == "csv":
        return _table_rows(path, ","), str(path)
    if input_format == "jsonl":
        return _jsonl_rows(path), str(path)
    if input_format == "dataset":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path} holds splits {list(loaded)}; point at one split's folder.")
        return _dataset_rows(loaded), str(path)
    raise ValueError(f"Unknown input format {input_format!r}: use auto, tsv, chebi20, csv, jsonl or dataset.")


def inchikey(smiles: str) -> str:
    """The InChIKey of a valid SMILES (the molecule id when the source has none)."""
    from rdkit import Chem, rdBase

    from llamo.featurization_llamo import parse_smiles

    with rdBase.BlockLogs():
        key = Chem.MolToInchiKey(parse_smiles(smiles))
    return key or f"smiles:{smiles}"


def read_molecules(
    source,
    input_format: str = "auto",
    columns: ColumnNames | None = None,
    id_prefix: str = "",
    limit: int | None = None,
) -> MoleculeInput:
    """Read molecules with contexts from a ChEBI-20 style TSV, a CSV, a JSONL, a saved dataset folder, or a
    `datasets.Dataset` (a conversation-schema one gives its last assistant message as the description).

    Rows with no or unparsable SMILES (RDKit), no description, a repeated id, or unreadable JSON are skipped and
    counted in `skipped`; a missing column raises `ValueError` naming it. `limit` stops after that many molecules.
    """
    from llamo.featurization_llamo import parse_smiles

    columns = columns or ColumnNames()
    rows, described = _raw_rows(source, input_format)
    result = MoleculeInput(molecules=[], source=described, limit=limit)
    resolved = None
    seen: set[str] = set()
    for row in rows:
        if limit is not None and len(result.molecules) >= limit:
            break
        result.rows += 1
        if row is None:
            result.skipped["unreadable_row"] += 1
            continue
        if resolved is None:
            available = list(row)
            resolved = {
                "smiles": _resolve_column("smiles", columns.smiles, available, required=True),
                "description": _resolve_column("description", columns.description, available, required=True),
                "iupac": _resolve_column("iupac", columns.iupac, available, required=False),
                "id": _resolve_column("id", columns.id, available, required=False),
            }
        smiles = str(row.get(resolved["smiles"]) or "").strip()
        if not smiles:
            result.skipped["missing_smiles"] += 1
            continue
        try:
            parse_smiles(smiles)
        except ValueError:
            result.skipped["invalid_smiles"] += 1
            continue
        description = str(row.get(resolved["description"]) or "").strip()
        if not description:
            result.skipped["missing_description"] += 1
            continue
        iupac = str(row.get(resolved["iupac"]) or "").strip() if resolved["iupac"] else ""
        raw_id = row.get(resolved["id"]) if resolved["id"] else None
        molecule_id = f"{id_prefix}{raw_id}".strip() if raw_id not in (None, "") else inchikey(smiles)
        if molecule_id in seen:
            result.skipped["duplicate_id"] += 1
            continue
        seen.add(molecule_id)
        result.molecules.append(Molecule(molecule_id, smiles, description, iupac or None))
    return result


__all__ = ["ColumnNames", "Molecule", "MoleculeInput", "detect_format", "inchikey", "read_molecules"]
