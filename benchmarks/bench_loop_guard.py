"""What the default model's loop guard (`AnswerLoopStopLogitsProcessor`, `answer_loop_repeats: 3`) stops.

1. False stops: reference texts the guard would end early, ChEBI-20 descriptions and PubChem IUPAC names (a
   spread-out subset of `--max-names` names of the `chemicals` table, as `load_chemicals_iupac` takes it), tokenized
   with the default model's tokenizer. A reference counts when the guard fires on any prefix shorter than the whole
   text.
2. Loops caught: answers of `llamo evaluate` prediction files (`predictions.jsonl`) that reached their token limit,
   and the answer length at which the guard would have ended each.

Each rule set is measured on the same texts: `exact` (a block repeated three times), `+counter` (copies that differ
in one token), `+long` (blocks of 24-48 tokens twice), `exact+counter+long` (the guard until the tenth version),
`+frequent` (a block of 4 tokens 6 times within the last 64), `+count` (30 tokens of 2-5-token blocks, each copy
changing in one token: ",21,22,23,..."), `+few` (at most 14 distinct tokens among the last 96), `+sentence` (a
sentence whose first 10 tokens are an earlier sentence's, with the bundle's `answer_sentence_end_token_ids`),
`+long-block` (a block of 16 tokens the fourth time in the answer), `+fragment` (a block of 6 tokens the eighth time
in the answer), `tenth` (the guard shipped with the tenth version: all but `+sentence`, `+long-block` and `+fragment`),
`tenth+sentence`, `no-fragment` (all but `+fragment`), `all` (the shipped guard).

    python3 benchmarks/bench_loop_guard.py --chebi20 ../shared/data/chebi20/validation.txt \
        --predictions RUN/description/model/predictions.jsonl:256 RUN/iupac/model/predictions.jsonl:96
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from llamo.default_model import BUNDLE_MANIFEST
from llamo.generation_llamo import AnswerLoopStopLogitsProcessor
from llamo.processing.loaders import load_chemicals_iupac

REPO = Path(__file__).resolve().parents[1]
OFF = {"frequent_block": (1, 10**6, 1), "counter_tokens": 10**6, "few_tokens": (0, 10**6), "long_blocks": ()}
TENTH_OFF = {"long_blocks": ()}
RULES = {
    "exact": {"near_min_period": 10**6, "long_periods": (10**6, 0), **OFF},
    "+counter": {"long_periods": (10**6, 0), **OFF},
    "+long": {"near_min_period": 10**6, **OFF},
    "exact+counter+long": OFF,
    "+frequent": {**OFF, "near_min_period": 10**6, "long_periods": (10**6, 0), "frequent_block": (4, 6, 64)},
    "+count": {**OFF, "long_periods": (10**6, 0), "counter_tokens": 30},
    "+few": {**OFF, "near_min_period": 10**6, "long_periods": (10**6, 0), "few_tokens": (14, 96)},
    "+sentence": {**OFF, "near_min_period": 10**6, "long_periods": (10**6, 0), "sentence_end_token_ids": "bundle"},
    "+long-block": {**OFF, "near_min_period": 10**6, "long_periods": (10**6, 0), "long_blocks": ((16, 4),)},
    "+fragment": {**OFF, "near_min_period": 10**6, "long_periods": (10**6, 0), "long_blocks": ((6, 8),)},
    "tenth": TENTH_OFF,
    "tenth+sentence": {**TENTH_OFF, "sentence_end_token_ids": "bundle"},
    "no-fragment": {"sentence_end_token_ids": "bundle", "long_blocks": ((16, 4),)},
    "all": {"sentence_end_token_ids": "bundle"},
}


def first_stop(guard: AnswerLoopStopLogitsProcessor, ids: list[int], upto: int) -> int | None:
    """The shortest prefix length (< `upto`) at which the guard fires, or None: all prefixes in one call, each
    left-padded with fillers that match nothing (a distinct negative id per column)."""
    width = len(ids)
    if upto < 2:
        return None
    prefixes = torch.arange(-1, -width - 1, -1).repeat(upto - 1, 1)
    for row, end in enumerate(range(1, upto)):
        prefixes[row, width - end :] = torch.tensor(ids[:end])
    fired = guard.looping(prefixes).nonzero()
    return int(fired[0, 0]) + 1 if len(fired) else None


def chemicals_names(limit: int) -> list[str]:
    """`limit` IUPAC names of the `chemicals` PubChem table, a spread-out subset (`load_chemicals_iupac`)."""
    records, _ = load_chemicals_iupac(limit=limit)
    return [messages[-1]["content"] for messages in records["messages"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chebi20", required=True, help="ChEBI-20 TSV (its `description` column)")
    parser.add_argument("--tokenizer", default=str(REPO / "modeling_llamo" / "bundled" / "llamo-smollm2-135m"))
    parser.add_argument("--max-names", type=int, default=8000)
    parser.add_argument("--no-names", action="store_true")
    parser.add_argument("--predictions", nargs="*", default=[], help="PATH:TOKEN_LIMIT of predictions.jsonl files")
    parser.add_argument("--rules", nargs="*", choices=list(RULES), help="measure only these rule sets")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    manifest = json.loads((Path(args.tokenizer) / BUNDLE_MANIFEST).read_text())
    sentence_ends = manifest["generation"]["answer_sentence_end_token_ids"]

    def encode(texts: list[str]) -> list[list[int]]:
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    with open(args.chebi20, encoding="utf-8", newline="") as handle:
        references = {
            "chebi20 descriptions": encode([row["description"] for row in csv.DictReader(handle, delimiter="\t")])
        }
    if not args.no_names:
        references["pubchem names"] = encode(chemicals_names(args.max_names))
    looped = []
    for item in args.predictions:
        path, limit = item.rsplit(":", 1)
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            ids = encode([json.loads(line).get("prediction") or ""])[0]
            if len(ids) >= int(limit) - 1:
                looped.append(ids)

    rules = {name: RULES[name] for name in args.rules} if args.rules else dict(RULES)
    report = {}
    for name, settings in rules.items():
        if settings.get("sentence_end_token_ids"):
            settings = {**settings, "sentence_end_token_ids": sentence_ends}
        guard = AnswerLoopStopLogitsProcessor(3, eos_token_id=0, **settings)
        entry = {
            f"false stops, {source}": f"{sum(first_stop(guard, ids, len(ids)) is not None for ids in texts)}"
            f"/{len(texts)}"
            for source, texts in references.items()
        }
        stops = [first_stop(guard, ids, len(ids) + 1) for ids in looped]
        entry["loops caught"] = f"{sum(stop is not None for stop in stops)}/{len(looped)}"
        entry["ended at (tokens)"] = stops
        report[name] = entry
        print(name, json.dumps(entry), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
