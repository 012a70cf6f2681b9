"""Whether another fingerprint finds ChEBI-20 neighbours with closer descriptions: leave-one-out nearest-neighbour
retrieval over the training side of the description split (each molecule answered with the description of its most
similar other training molecule), scored with BLEU-4 (MolT5 protocol) and ROUGE-L. No test molecule is read.

    python3 benchmarks/eval_description_fingerprints.py --train runs/eval/data/description.train.jsonl \
        --scibert-vocab PATH/TO/vocab.txt

The training file is the one `eval_default_model.py` writes. Writes the figures as JSON to standard output."""

from __future__ import annotations

import argparse
import json

import numpy as np
from eval_property_fingerprints import GENERATORS
from rdkit import Chem, DataStructs, RDLogger

from llamo.evaluation.text_metrics import compute_text_metrics, molt5_protocol


def main(train: str, vocab: str) -> dict:
    RDLogger.DisableLog("rdApp.*")
    molecules: dict[str, tuple[Chem.Mol, str]] = {}
    with open(train, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            mol = Chem.MolFromSmiles(row["smiles"])
            if mol is not None:
                molecules.setdefault(Chem.MolToInchiKey(mol), (mol, row["messages"][-1]["content"]))
    mols, texts = zip(*molecules.values(), strict=True)
    protocol = molt5_protocol(vocab)
    results = {"molecules": len(mols)}
    for name, make in GENERATORS.items():
        generator = make()
        for kind, fingerprint in (("bits", generator.GetFingerprint), ("counts", generator.GetCountFingerprint)):
            fingerprints = [fingerprint(mol) for mol in mols]
            answers = []
            for row, query in enumerate(fingerprints):
                similarity = np.asarray(DataStructs.BulkTanimotoSimilarity(query, fingerprints))
                similarity[row] = -1.0
                answers.append(texts[int(similarity.argmax())])
            report = compute_text_metrics(texts, answers, [protocol], include=("bleu4", "rougeL"))
            results[f"{name}, {kind}"] = {metric.name: round(metric.value, 2) for metric in report.metrics}
            print(f"{name}, {kind}", results[f"{name}, {kind}"], flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="description.train.jsonl from eval_default_model.py")
    parser.add_argument("--scibert-vocab", required=True, help="SciBERT's vocab.txt (MolT5's BLEU protocol)")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.train, arguments.scibert_vocab), indent=2))
