"""Featurization of a conversation-schema dataset (`featurize_dataset`)."""

from __future__ import annotations

from collections import Counter

import datasets
from rdkit import Chem, rdBase

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS
from llamo.feature_extraction_llamo import prepare_molecule
from llamo.smiles_llamo import OversizedMoleculeError

from .loaders import DataReport

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


def _featurization_error(failure: Exception) -> str:
    """The report reason of a molecule that could not be featurized."""
    if not isinstance(failure, ValueError):
        return f"featurization error: {type(failure).__name__}"
    if isinstance(failure, OversizedMoleculeError):
        return "oversized molecule"
    return "empty SMILES" if str(failure).startswith("Empty") else "unparsable SMILES"


def _featurize_batch(batch: dict[str, list], max_atoms: int | None) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in [*FEATURIZED_FEATURES, "featurization_error"]}
    with rdBase.BlockLogs():
        for smiles in batch["smiles"]:
            try:
                prepared = prepare_molecule(smiles, max_atoms)
                row = {
                    **prepared.graph.to_dict(),
                    "prompt_smiles": prepared.smiles,
                    "inchikey": Chem.MolToInchiKey(prepared.mol) or "",
                    "num_atoms": prepared.graph.num_atoms,
                    "featurization_error": "",
                }
            except Exception as failure:  # one bad molecule is counted, never stops the job
                row = {**dict.fromkeys(FEATURIZED_FEATURES), "featurization_error": _featurization_error(failure)}
            for name, column in out.items():
                column.append(row[name])
    return out


def featurize_dataset(
    dataset: datasets.Dataset,
    max_atoms: int | None = DEFAULT_MAX_ATOMS,
    num_proc: int | None = None,
    name: str = "dataset",
    multiprocess_min_rows: int = MULTIPROCESS_MIN_ROWS,
) -> tuple[datasets.Dataset, DataReport]:
    """Featurize every molecule once with `datasets.map`, adding the `FEATURIZED_FEATURES` columns (`prompt_smiles`:
    canonical, non-isomeric, uncut). Unparsable, empty and oversized molecules, and any whose featurization raises
    (`featurization error: <exception type>`), are dropped and counted in the returned report. `num_proc` processes
    are used above `multiprocess_min_rows` rows (below that, starting the processes costs more than it saves)."""
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
    )
    errors = Counter(filter(None, mapped["featurization_error"]))
    kept = mapped.filter(lambda error: not error, input_columns="featurization_error", desc="Dropping bad molecules")
    report = DataReport(f"featurization of {name}", read=len(dataset), kept=len(kept), dropped=errors)
    return kept.remove_columns("featurization_error"), report
