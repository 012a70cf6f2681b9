"""Featurization throughput: llamo (OGB features + motif groups) against `ogb.utils.smiles2graph` (features only).

Both run in the same process, on the same molecules, alternating, on one core:

    taskset -c 0 python benchmarks/bench_featurization.py --data ../shared/data/chebi20/validation.txt

Needs `pip install ogb==1.3.5` (a benchmark-only dependency, `pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rdkit import rdBase

from llamo.featurization_llamo import featurize_smiles


@dataclass
class BenchConfig:
    data: str = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "chebi20" / "validation.txt")
    num_molecules: int = 2000
    repeats: int = 5
    output: str | None = None


def read_smiles(path: str, limit: int) -> list[str]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "SMILES" not in rows[0]:
        raise ValueError(f"{path} is not a ChEBI-20 style TSV with a SMILES column")
    return [row["SMILES"] for row in rows[:limit]]


def throughput(function, smiles: list[str]) -> tuple[float, int]:
    """Molecules per second of process CPU time (unlike wall time, not inflated by other tenants of the machine)."""
    failed = 0
    start = time.process_time()
    for item in smiles:
        try:
            function(item)
        except Exception:
            failed += 1
    return len(smiles) / (time.process_time() - start), failed


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
        "ogb_smiles2graph_mol_per_s": {"median": round(statistics.median(theirs), 1), "best": round(max(theirs), 1)},
        "llamo_features_and_motifs_mol_per_s": {
            "median": round(statistics.median(ours), 1),
            "best": round(max(ours), 1),
        },
        "ratio_llamo_to_ogb": {
            "median_of_paired_runs": round(statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 3),
            "best_to_best": round(max(ours) / max(theirs), 3),
        },
        "failed": {"ogb": ogb_failed, "llamo": our_failed},
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "rdkit": rdBase.rdkitVersion,
        "config": asdict(config),
    }
    print(json.dumps(result, indent=2))
    if config.output:
        Path(config.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--data", default=defaults.data, help="ChEBI-20 style TSV (CID, SMILES, description)")
    parser.add_argument("--num-molecules", type=int, default=defaults.num_molecules)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--output", help="also write the result as JSON here")
    main(BenchConfig(**vars(parser.parse_args())))
