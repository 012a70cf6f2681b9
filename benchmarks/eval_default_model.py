"""Quality of the default model (LLaMo-SmolLM2-135M) on its held-out splits, beside the baselines.

The test splits are the `part: test` side of the recipe's own sources (the fixed InChIKey hold-out), so no test
molecule was seen in training:

    python benchmarks/eval_default_model.py --chebi20 ../shared/data/chebi20/validation.txt \
        --scibert-vocab ../shared/data/tokenizers/scibert_scivocab_uncased/vocab.txt

For each task it evaluates the model, the same model without graph tokens (`no-graph`), nearest-neighbour
`retrieval` from the training part, and (properties) the training `mean`, all through `llamo.evaluation`, then writes
`summary.json` and `summary.md` in the work folder. Interrupted runs resume.

With `--neighbours K` the model answers with the K nearest entries of a molecule index that holds no test molecule:
descriptions from the ChEBI-20 training side, names from the whole `chemicals` table and properties from all of QM9
molecules, the test molecules removed from both. Then `model` has the neighbours, `model, no index` does not,
`no-graph` has them without graph tokens, and `retrieval` copies the nearest entry of the same index. Every run also
reports its loop rate: the share of answers that reach the token limit. Where OPSIN runs (Java), names are also
evaluated with `verify_names` (OPSIN reranking of 4 beam candidates): that run's structure match is its verified
rate; with `openclatura` installed also `model, verified names + namer` (the rule-based namer's name as a last
candidate, answered when verified) and the `namer` alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import parse_config

from llamo.evaluation import EvaluationConfig, evaluate, setup_wordnet
from llamo.evaluation.naming import opsin_unavailable_reason
from llamo.evaluation.text_metrics import SCIBERT_HUB_ID
from llamo.processing.index import MoleculeIndex
from llamo.processing.index_commands import build_index
from llamo.processing.mixture import holdout_split
from llamo.processing.schema import CONVERSATION_FEATURES
from llamo.retrieval import ANSWER_TOKENS, DEFAULT_INDEX_SOURCES, rule_namer
from llamo.training.data import default_cache_dir, prepare_source
from llamo.training.pipeline import load_pipeline, stage2_rounds, stage_configs

TASK_OF_SOURCE = {"chebi20": "description", "chemicals": "iupac", "qm9": "property"}
HEADLINE = {
    "description": [
        "bleu2_molt5_scibert",
        "bleu4_molt5_scibert",
        "rouge1_molt5_raw_text",
        "rouge2_molt5_raw_text",
        "rougeL_molt5_raw_text",
        "meteor_molt5_scibert",
    ],
    "iupac": [
        "bleu4_molt5_scibert",
        "meteor_molt5_scibert",
        "exact_match_normalized",
        "parse_rate_opsin",
        "structure_match_opsin_inchikey",
    ],
    "property": ["mae_homo_hartree", "mae_lumo_hartree", "mae_gap_hartree", "mae_hartree", "valid_ratio"],
}


@dataclass
class EvalConfig:
    chebi20: str = field(metadata={"help": "the ChEBI-20 TSV the recipe was trained with"})
    recipe: str = "llamo_smollm2_135m"
    model: str | None = field(default=None, metadata={"help": "model folder (default: the bundled default model)"})
    work_dir: str = "runs/llamo-smollm2-135m/eval"
    scibert_vocab: str = SCIBERT_HUB_ID
    batch_size: int = 16
    num_beams: int = field(default=1, metadata={"help": "1: greedy, as in LLaMo's evaluation"})
    max_rows: int | None = None
    first_row: int = field(default=1, metadata={"help": "start at this row of each test split (1-based)"})
    tasks: list[str] | None = field(
        default=None, metadata={"choices": list(HEADLINE), "help": "evaluate only these tasks"}
    )
    neighbours: int = field(default=0, metadata={"help": "answer with this many index neighbours (0: none)"})
    verify_names: bool = field(default=True, metadata={"help": "the OPSIN-reranked naming run (off: skipped)"})
    answer_loop_repeats: int | None = field(
        default=None, metadata={"help": "end answers that repeat a block this often (0: off; default: the model's)"}
    )
    runs: list[str] | None = field(
        default=None, metadata={"help": "evaluate only these runs (e.g. model 'model, no index')"}
    )


def write_jsonl(dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [name for name in CONVERSATION_FEATURES if name in dataset.column_names]
    with open(path, "w", encoding="utf-8") as handle:
        for row in dataset.select_columns(columns):
            handle.write(json.dumps(row) + "\n")
    return path


def build_splits(config: EvalConfig, work: Path) -> dict[str, dict[str, Path]]:
    """`{task: {"test": jsonl, "train": jsonl}}` from the recipe's sources.

    Where several stages read a source, the largest subset is used: its `test` side is still held out from
    both stages (the hold-out rule is per InChIKey, not per subset), and retrieval then searches every training
    molecule the model saw, which makes it the stronger baseline.
    """
    pipeline = load_pipeline(config.recipe, {"chebi20": config.chebi20})
    stage1, _ = stage_configs(pipeline)
    rounds = stage2_rounds(pipeline)
    script = rounds[0].script
    cache = Path(script.data_cache_dir) if script.data_cache_dir else default_cache_dir()
    chosen = {}
    first_sources = stage1.script.sources if stage1 is not None else []
    for source in [*first_sources, *(source for stage in rounds for source in stage.script.sources)]:
        task = TASK_OF_SOURCE.get(source.type)
        if task is None:
            continue
        featurized, _ = prepare_source(source, cache, script.max_atoms, rounds[0].training.dataset_num_proc or 1)
        if task not in chosen or len(featurized) > len(chosen[task][1]):
            chosen[task] = (source, featurized)
    splits = {}
    for task in ("description", "iupac", "property"):
        if task not in chosen:
            continue
        source, featurized = chosen[task]
        splits[task] = {
            part: write_jsonl(holdout_split(featurized, source.holdout, part), work / "data" / f"{task}.{part}.jsonl")
            for part in ("test", "train")
        }
    return splits


def rows_from(path: Path, first_row: int) -> Path:
    """A copy of the JSONL file `path` from its row `first_row` (1-based) on."""
    part = path.with_name(f"{path.stem}.from-row-{first_row}.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text("".join(lines[first_row - 1 :]), encoding="utf-8")
    return part


def evaluation_index(task: str, files: dict[str, Path], work: Path) -> Path:
    """An index for the task that holds no test molecule (see the module docstring), built once."""
    folder = work / "index" / task
    if (folder / "state.json").is_file():
        return folder
    test_rows = [json.loads(line) for line in files["test"].read_text(encoding="utf-8").splitlines()]
    probe, _ = MoleculeIndex.from_records(test_rows, task, max_atoms=None, progress=False)
    if task in DEFAULT_INDEX_SOURCES:
        index, _, _ = build_index(DEFAULT_INDEX_SOURCES[task], task)
    else:
        train_rows = [json.loads(line) for line in files["train"].read_text(encoding="utf-8").splitlines()]
        index, _ = MoleculeIndex.from_records(train_rows, task, max_atoms=None)
    index.excluding(probe.inchikeys).save(folder)
    return folder


def loop_rate(output_dir: Path, tokenizer, limit: int, namer=None) -> float | None:
    """Percentage of answers whose length reaches the token limit (they ran on instead of ending). With `namer`, an
    answer that is the namer's name was not generated (it is complete at any length) and never counts as reaching it."""
    path = output_dir / "predictions.jsonl"
    if tokenizer is None or not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    records = [record for record in records if record.get("prediction") is not None]
    answers = [
        "" if namer is not None and record["prediction"] == namer(record["smiles"]) else record["prediction"]
        for record in records
    ]
    if not answers:
        return None
    hit = sum(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) >= limit - 1 for answer in answers)
    return round(100 * hit / len(answers), 2)


def headline(results: dict, task: str) -> dict[str, float]:
    entry = next(item for item in results["results"] if item["task"]["name"] == task)
    values = {metric["name"]: metric["value"] for metric in entry["metrics"]}
    return {name: values[name] for name in HEADLINE[task] if name in values}


def main(config: EvalConfig) -> dict:
    from llamo.default_model import default_model_dir

    work = Path(config.work_dir)
    model = config.model or str(default_model_dir())
    nltk_data = work / "nltk_data"
    setup_wordnet(nltk_data)
    splits = build_splits(config, work)
    summary: dict = {"model": model, "config": asdict(config), "tasks": {}}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    for task, files in splits.items():
        if config.tasks and task not in config.tasks:
            continue
        index = str(evaluation_index(task, files, work)) if config.neighbours else None
        test_rows = len(files["test"].read_text(encoding="utf-8").splitlines())
        if config.first_row > 1:  # the test split from that row on (the runs' folders and the summary say so)
            files = {**files, "test": rows_from(files["test"], config.first_row)}
        runs = {"model": index, "no-graph": index, "retrieval": index}
        if index:
            runs["model, no index"] = None
        if task == "iupac" and config.verify_names and opsin_unavailable_reason() is None:
            runs["model, verified names"] = index
            if rule_namer() is not None:
                runs["model, verified names + namer"] = index
                runs["namer"] = None
        if task == "property":
            runs["mean"] = None
        if config.runs:
            runs = {name: value for name, value in runs.items() if name in config.runs}
        rows = {}
        for name, run_index in runs.items():
            verified = name.startswith("model, verified names")
            baseline = None if name.startswith("model") else name
            model_free = baseline in ("retrieval", "mean", "namer")
            output_dir = work / task / name.replace(", ", "-").replace(" ", "-")
            if config.first_row > 1:
                output_dir = output_dir.with_name(f"{output_dir.name}-from-row-{config.first_row}")
            settings = EvaluationConfig(
                output_dir=str(output_dir),
                model=None if model_free else model,
                data=str(files["test"]),
                tasks=[task],
                batch_size=config.batch_size,
                num_beams=config.num_beams,
                max_new_tokens=ANSWER_TOKENS[task],
                baseline=baseline,
                train_data=str(files["train"]) if baseline in ("retrieval", "mean") and not run_index else None,
                scibert_vocab=config.scibert_vocab,
                nltk_data=str(nltk_data),
                max_rows=config.max_rows,
                index=run_index,
                neighbours=config.neighbours,
                verify_names=verified,
                propose_names=name == "model, verified names + namer",
                answer_loop_repeats=None if model_free else config.answer_loop_repeats,
            )
            rows[name] = headline(evaluate(settings), task)
            if not model_free:
                namer = rule_namer() if name == "model, verified names + namer" else None
                rows[name]["loop_rate"] = loop_rate(output_dir, tokenizer, ANSWER_TOKENS[task], namer)
        summary["tasks"][task] = {"test_rows": test_rows, "first_row": config.first_row, "results": rows}
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    (work / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


def _cell(task: str, name: str, values: dict[str, float]) -> str:
    if values.get(name) is None:
        return "-"
    return f"{values[name]:.4f}" if task == "property" and name.startswith("mae") else f"{values[name]:.2f}"


def markdown(summary: dict) -> str:
    lines = []
    for task, entry in summary["tasks"].items():
        names = [*HEADLINE[task], "loop_rate"]
        lines += [
            f"### {task} ({entry['test_rows']} held-out rows)",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for run, values in entry["results"].items():
            cells = [_cell(task, name, values) for name in names]
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main(parse_config(EvalConfig, __doc__))
