"""Featurization of a conversation-schema dataset (`featurize_dataset`)."""

from __future__ import annotations

from collections import Counter

import datasets
from rdkit import Chem, rdBase

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS, GRAPH_TOKEN
from llamo.feature_extraction_llamo import prepare_molecule
from llamo.smiles_llamo import OversizedMoleculeError

from .loaders import DataReport
from .schema import record_metadata

FEATURIZED_FEATURES = {
    "atom_features": datasets.List(datasets.List(datasets.Value("int16"))),
    "edge_index": datasets.List(datasets.List(datasets.Value("int32"))),
    "edge_features": datasets.List(datasets.List(datasets.Value("int8"))),
    "motif_features": datasets.List(datasets.List(datasets.Value("uint8"))),
    "prompt_smiles": datasets.Value("string"),
    "inchikey": datasets.Value("string"),
    "num_atoms": datasets.Value("int32"),
}
FEATURIZATION_VERSION = "2"  # 2: rows with bad further molecules, or with the graph token in their text, are dropped
MULTIPROCESS_MIN_ROWS = 512


def _featurization_error(failure: Exception) -> str:
    """The report reason of a molecule that could not be featurized."""
    if isinstance(failure, OversizedMoleculeError):
        return "oversized molecule"
    if isinstance(failure, ValueError):
        return "empty SMILES" if str(failure).startswith("Empty") else "unparsable SMILES"
    return f"featurization error: {type(failure).__name__}"


def _row_problem(batch: dict[str, list], index: int, max_atoms: int | None) -> str:
    """Why a row cannot be collated beyond its own molecule: the graph token in its text, or a further molecule
    (metadata `molecules`, featurized by the collator) that is unusable; "" if none."""
    messages = batch["messages"][index] if "messages" in batch else []
    if any(GRAPH_TOKEN in (message.get("content") or "") for message in messages):
        return f"text holds the graph token {GRAPH_TOKEN}"
    metadata = batch["metadata"][index] if "metadata" in batch else None
    try:
        for smiles in record_metadata({"metadata": metadata}).get("molecules", []):
            prepare_molecule(smiles, max_atoms, canonical=False)
    except Exception as failure:
        return f"further molecule: {_featurization_error(failure)}"
    return ""


def _featurize_batch(batch: dict[str, list], max_atoms: int | None) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in [*FEATURIZED_FEATURES, "featurization_error"]}
    with rdBase.BlockLogs():
        for index, smiles in enumerate(batch["smiles"]):
            row = dict.fromkeys(FEATURIZED_FEATURES)
            try:
                if not (error := _row_problem(batch, index, max_atoms)):
                    prepared = prepare_molecule(smiles, max_atoms)
                    inchikey = Chem.MolToInchiKey(prepared.mol) or ""
                    row = {**prepared.graph.to_dict(), "prompt_smiles": prepared.smiles, "inchikey": inchikey}
                    row["num_atoms"] = prepared.graph.num_atoms
            except Exception as failure:  # one bad molecule is counted, never stops the job
                error = _featurization_error(failure)
            for name, column in out.items():
                column.append(error if name == "featurization_error" else row[name])
    return out


def featurize_dataset(
    dataset: datasets.Dataset,
    max_atoms: int | None = DEFAULT_MAX_ATOMS,
    num_proc: int | None = None,
    name: str = "dataset",
    multiprocess_min_rows: int = MULTIPROCESS_MIN_ROWS,
) -> tuple[datasets.Dataset, DataReport]:
    """Featurize every molecule once with `datasets.map`, adding the `FEATURIZED_FEATURES` columns. Rows with an
    unparsable, empty or oversized molecule (further ones included), one whose featurization raises, or a text that
    writes the graph token are dropped and counted in the report. `num_proc` is used above `multiprocess_min_rows`."""
    features = datasets.Features({**dataset.features, **FEATURIZED_FEATURES})
    if not len(dataset):  # `map` adds no columns to an empty dataset
        empty = {name: [] for name in features}
        return datasets.Dataset.from_dict(empty, features=features), DataReport(f"featurization of {name}")
    mapped = dataset.map(
        _featurize_batch,
        batched=True,
        batch_size=256,
        fn_kwargs={"max_atoms": max_atoms},
        num_proc=num_proc if num_proc and num_proc > 1 and len(dataset) > multiprocess_min_rows else None,
        features=datasets.Features({**features, "featurization_error": datasets.Value("string")}),
        desc=f"Featurizing {name}",
    )
    errors = Counter(filter(None, mapped["featurization_error"]))
    kept = mapped.filter(lambda error: not error, input_columns="featurization_error", desc="Dropping bad molecules")
    report = DataReport(f"featurization of {name}", read=len(dataset), kept=len(kept), dropped=errors)
    return kept.remove_columns("featurization_error"), report
