"""Which fingerprint finds the QM9 neighbours of closest HOMO / LUMO / gap: nearest-neighbour MAE (Hartree) on the
validation molecules of `eval_property_index_size.py` (120 QM9 molecules outside the model's training subset and the
test hold-out), searched among all other QM9 molecules outside the hold-out, for several RDKit fingerprints as bit
and as count vectors (Tanimoto similarity).

    python3 benchmarks/eval_property_fingerprints.py --work-dir runs/property-index-size

Columns: the answer of the nearest molecule (`top1`), the mean of the 2 and 3 nearest, and the mean of the 3 nearest
weighted by similarity to the 4th power. Writes `fingerprints.json` in the work folder. No model runs; the model's
figures with the chosen fingerprint come from `eval_property_index_size.py`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import numpy as np
from eval_property_index_size import build
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

PROPERTIES = ("homo", "lumo", "gap")
GENERATORS = {
    "morgan radius 1": lambda: rdFingerprintGenerator.GetMorganGenerator(radius=1, fpSize=2048),
    "morgan radius 2": lambda: rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048),
    "morgan radius 3": lambda: rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=2048),
    "atom pairs": lambda: rdFingerprintGenerator.GetAtomPairGenerator(fpSize=2048),
    "rdkit paths <= 3": lambda: rdFingerprintGenerator.GetRDKitFPGenerator(maxPath=3, fpSize=2048),
    "rdkit paths <= 5": lambda: rdFingerprintGenerator.GetRDKitFPGenerator(maxPath=5, fpSize=2048),
}


def values_by_smiles(rows: dict[str, list]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for smiles, key, answer in zip(rows["smiles"], rows["key"], rows["answer"], strict=True):
        table.setdefault(smiles, {})[key.lower()] = float(answer)
    return {smiles: values for smiles, values in table.items() if all(name in values for name in PROPERTIES)}


def nearest_errors(similarities: list[np.ndarray], known: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    errors: dict[str, list[np.ndarray]] = {"top1": [], "mean of 2": [], "mean of 3": [], "weighted 3": []}
    for similarity, target in zip(similarities, truth, strict=True):
        order = np.argsort(-similarity, kind="stable")[:3]
        for k, name in ((1, "top1"), (2, "mean of 2"), (3, "mean of 3")):
            errors[name].append(np.abs(known[order[:k]].mean(0) - target))
        weights = similarity[order] ** 4 + 1e-9
        errors["weighted 3"].append(np.abs((known[order] * weights[:, None]).sum(0) / weights.sum() - target))
    return {name: round(float(np.mean(values)), 5) for name, values in errors.items()}


def main(work: Path) -> dict:
    data = build(work)
    index = datasets.load_from_disk(str(work / "index-all"))
    known_values = values_by_smiles(index.select_columns(["smiles", "key", "answer"]).to_dict())
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    query_values = values_by_smiles(
        {
            "smiles": [row["smiles"] for row in rows],
            "key": [json.loads(row["metadata"])["property"] for row in rows],
            "answer": [json.loads(row["metadata"])["value"] for row in rows],
        }
    )
    known = np.array([[values[name] for name in PROPERTIES] for values in known_values.values()])
    truth = np.array([[values[name] for name in PROPERTIES] for values in query_values.values()])
    known_mols = [Chem.MolFromSmiles(smiles) for smiles in known_values]
    query_mols = [Chem.MolFromSmiles(smiles) for smiles in query_values]
    results = {}
    for name, make in GENERATORS.items():
        generator = make()
        for kind, fingerprint in (("bits", generator.GetFingerprint), ("counts", generator.GetCountFingerprint)):
            references = [fingerprint(mol) for mol in known_mols]
            similarities = [
                np.asarray(DataStructs.BulkTanimotoSimilarity(fingerprint(mol), references)) for mol in query_mols
            ]
            results[f"{name}, {kind}"] = nearest_errors(similarities, known, truth)
            print(f"{name}, {kind}", results[f"{name}, {kind}"], flush=True)
    (work / "fingerprints.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/property-index-size")
    main(Path(parser.parse_args().work_dir))
