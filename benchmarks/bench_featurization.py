"""Featurization throughput: llamo (OGB features + motif groups) against `ogb.utils.smiles2graph` (features only).

Both run in the same process, on the same molecules, alternating, on one core:

    taskset -c 0 python benchmarks/bench_featurization.py --data ../shared/data/chebi20/validation.txt

Needs `pip install ogb==1.3.5` (a benchmark-only dependency, `pip install -e ".[bench]"`).
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field

from common import CHEBI20, median_and_best, parse_config, read_smiles, report, throughput
from rdkit import rdBase

from llamo.featurization_llamo import featurize_smiles


@dataclass
class BenchConfig:
    data: str = field(default=CHEBI20, metadata={"help": "ChEBI-20 style TSV (CID, SMILES, description)"})
    num_molecules: int = 2000
    repeats: int = 5
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def main(config: BenchConfig) -> dict:
    from ogb.utils import smiles2graph

    smiles = read_smiles(config.data, config.num_molecules)
    ours, theirs = [], []
    with rdBase.BlockLogs():
        for _ in range(config.repeats):
            rate, ogb_failed = throughput(smiles2graph, smiles)
            theirs.append(rate)
            rate, our_failed = throughput(featurize_smiles, smiles)
            ours.append(rate)
    result = {
        "molecules": len(smiles),
        "repeats": config.repeats,
        "ogb_smiles2graph_mol_per_s": median_and_best(theirs),
        "llamo_features_and_motifs_mol_per_s": median_and_best(ours),
        "ratio_llamo_to_ogb": {
            "median_of_paired_runs": round(statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 3),
            "best_to_best": round(max(ours) / max(theirs), 3),
        },
        "failed": {"ogb": ogb_failed, "llamo": our_failed},
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "rdkit": rdBase.rdkitVersion,
    }
    return report(result, config)


if __name__ == "__main__":
    main(parse_config(BenchConfig, __doc__))
