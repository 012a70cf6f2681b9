"""The default property index's size, chosen on validation molecules: the bundled model and retrieval with 2 neighbours
from the 30,000 QM9 molecules the model trained on (the index before) and from all of QM9.

    python3 benchmarks/eval_property_index_size.py --work-dir runs/property-index-size

The validation molecules are 120 QM9 molecules (360 HOMO / LUMO / gap questions) that are neither in that training
subset (nor share an InChIKey with one of its molecules) nor on the test side of the fixed InChIKey hold-out, so no
model saw them and no test figure chose the index. Both indexes leave out the validation molecules and every held-out
molecule. Writes `summary.json` in the work folder; interrupted runs resume. The indexes rank neighbours as the
current code does (radius-1 Morgan counts for properties since the session of 2026-12-05, ninth; radius-2 bits before:
`eval_property_fingerprints.py` compares them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval_default_model import headline, write_jsonl
from rdkit import Chem

from llamo.default_model import default_model_dir
from llamo.evaluation import EvaluationConfig, evaluate
from llamo.processing.index import MoleculeIndex
from llamo.processing.loaders import load_qm9_properties, stable_fraction
from llamo.processing.mixture import is_held_out
from llamo.retrieval import ANSWER_TOKENS

TRAINING_SUBSET = 30_000
VALIDATION_MOLECULES = 120


def inchikey(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToInchiKey(mol) if mol is not None else ""


def build(work: Path) -> Path:
    """The validation rows and the two indexes, once."""
    data = work / "property.val.jsonl"
    if data.is_file():
        return data
    full, _ = load_qm9_properties()
    subset, _ = load_qm9_properties(limit=TRAINING_SUBSET)
    subset_keys = {inchikey(smiles) for smiles in set(subset["smiles"])}
    molecules = {row_id.split(":")[1]: smiles for row_id, smiles in zip(full["id"], full["smiles"], strict=True)}
    keys = {number: inchikey(smiles) for number, smiles in molecules.items()}
    held_out = {key for key in keys.values() if is_held_out(key, 0.1)}
    candidates = [n for n, key in keys.items() if key and key not in held_out and key not in subset_keys]
    chosen = set(sorted(candidates, key=lambda n: stable_fraction(n, "llamo-validation"))[:VALIDATION_MOLECULES])
    excluded = held_out | {keys[n] for n in chosen}
    for name, source in (("index-subset", subset), ("index-all", full)):
        index, _ = MoleculeIndex.from_records(source, "property", max_atoms=None)
        index.excluding(excluded).save(work / name)
    validation = full.filter(lambda row: row["id"].split(":")[1] in chosen).shuffle(seed=0)
    return write_jsonl(validation, data)


def main(work: Path) -> dict:
    data = build(work)
    summary = {}
    for index in ("index-subset", "index-all"):
        for name in ("retrieval", "model"):
            settings = EvaluationConfig(
                output_dir=str(work / f"{name}-{index}"),
                model=None if name == "retrieval" else str(default_model_dir()),
                baseline="retrieval" if name == "retrieval" else None,
                data=str(data),
                tasks=["property"],
                max_new_tokens=ANSWER_TOKENS["property"],
                index=str(work / index),
                neighbours=2,
            )
            summary[f"{name}, {index}"] = headline(evaluate(settings), "property")
            print(name, index, summary[f"{name}, {index}"], flush=True)
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/property-index-size")
    main(Path(parser.parse_args().work_dir))
