"""The evaluation runner: one config dataclass, one entry point (`evaluate`).

    from llamo.evaluation import EvaluationConfig, evaluate

    results = evaluate(EvaluationConfig(model="path/to/llamo", data="test.jsonl", output_dir="eval/llamo-test"))

Rows are predicted in dataset order, a window of `SORT_WINDOW_BATCHES` batches at a time; only inside a window are
they sorted longest prompt first, so that a batch holds prompts of similar length. Predictions are written to the
output folder as they come (see `llamo.evaluation.predictions`), so a stopped run holds a prefix of the dataset's
rows (plus part of one window), never a length-biased subset; running the same command again resumes it, and the
rows are scored per task once all are done. The run's settings are recorded with the predictions: a rerun with other
settings (model, data, `max_rows`, decoding, baseline) is refused, naming the setting, unless `overwrite`.

On the CPU, generation uses `choose_threads` threads; the progress bar advances per batch and shows, while a batch
generates, the tokens generated so far and the rows of the batch already finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS
from llamo.storage import disk_full_guard

from .data import DatasetInfo, EvalExample, SkippedRow, load_rows, rows_fingerprint, select_examples
from .naming import naming_metrics
from .predictions import RESULTS_FORMAT, PredictionRecord, PredictionStore, Skip
from .properties import PropertyTarget, property_metrics
from .text_metrics import (
    LLAMO_PROTOCOL,
    MOLT5_PROTOCOL,
    ROUGE_PROTOCOL,
    SCIBERT_HUB_ID,
    MetricReport,
    TokenProtocol,
    UnavailableMetric,
    compute_text_metrics,
    first_line,
    molt5_protocol,
)
from .wordnet import WordNetUnavailable, load_wordnet

RESULTS_FORMAT_VERSION = 1
BASELINES = ("retrieval", "mean", "no-graph")
TRAINED_BASELINES = ("retrieval", "mean")

TASK_TITLES = {
    "description": "Molecule description",
    "iupac": "IUPAC name generation",
    "property": "Molecular property QA (QM9 HOMO/LUMO/gap)",
    "conversation": "Multi-turn molecular conversation",
}
TASK_FAMILIES = {"iupac": "naming", "property": "property"}
"""How each task is scored; any other task (description, conversation, user-defined) gets the text metrics."""

PROTOCOL_NOTES = {
    MOLT5_PROTOCOL: "SciBERT uncased WordPiece tokens (first 512, [PAD]/[CLS]/[SEP] removed); NLTK corpus BLEU "
    "without smoothing; mean NLTK METEOR; 0-100",
    LLAMO_PROTOCOL: "as molt5_scibert, with the LLM's own tokenizer (LLaMo's evaluator); 0-100",
    ROUGE_PROTOCOL: "rouge_score F-measure on the raw strings, no stemmer, mean over rows; 0-100",
}

SORT_WINDOW_BATCHES = 8
"""Rows are sorted by length only within windows of this many batches, in dataset order (see the module docstring)."""
STEP_REPORT_SECONDS = 1.0

ProgressCallback = Callable[[int, int], None]
StepCallback = Callable[[int, int, int], None]
"""Called while a batch generates, as `(new_tokens_so_far, rows_finished, rows_in_batch)`."""
Predictor = Callable[[Sequence[EvalExample]], list["str | Skip"]]


@dataclass
class EvaluationConfig:
    """
    Everything one evaluation run needs.

    Args:
        output_dir: where predictions, TSVs and `results.json` go (an interrupted run resumes from it).
        model: a LLaMo folder (needed unless `baseline` is `retrieval` or `mean`; then it only provides the LLM
            tokenizer of the `llamo_llm_tokens` protocol).
        data: the evaluation rows: a JSONL/JSON/Parquet file, a `save_to_disk` folder or a Hub dataset id (or pass
            a `datasets.Dataset` to `evaluate`).
        split: the split of a folder or Hub dataset with several (default `test`).
        tasks: evaluate only these tasks (a specialist run); all tasks present when None (a generalist run).
        batch_size, max_new_tokens, min_new_tokens, num_beams, do_sample, temperature, top_p, seed: decoding
            (greedy, at most 512 new tokens by default, as in LLaMo's evaluation).
        baseline: `retrieval`, `mean` or `no-graph` (see `llamo.evaluation.baselines`).
        train_data, train_split: the training rows of the `retrieval` and `mean` baselines.
        scibert_vocab: SciBERT's `vocab.txt`, a folder, or a Hub id (MolT5 protocol).
        llm_tokenizer: tokenizer of the LLaMo protocol (default: the model's).
        nltk_data: the NLTK data folder holding WordNet (default: NLTK's search path).
        max_rows: evaluate only the first rows of the data, in its order (a quick run; another `max_rows` is another
            run: its output folder is not reused).
        device, dtype: where and in which precision the model runs (`auto`: GPU if any; the saved dtype).
        threads: CPU threads of generation (None: `choose_threads` picks them).
        index: a molecule index (folder or Hub id, `llamo index build`): the model gets the `neighbours` most
            similar entries as in-context examples, and the `retrieval` baseline copies from it. It must hold none of
            the evaluated molecules (checked by InChIKey; the run is refused otherwise).
        answer_loop_repeats: end an answer once it repeats one block this many times in a row (0: off; None: the
            model's generation config decides; the default model ships 3).
        verify_names: answer naming rows by OPSIN reranking of beam candidates (needs Java and py2opsin); the
            structure match of such a run is its verified rate.
        overwrite: discard the predictions of another run found in `output_dir`.
        progress: show a progress bar.
    """

    output_dir: str
    model: str | None = None
    data: str | None = None
    split: str | None = None
    tasks: list[str] | None = None
    batch_size: int = 16
    max_new_tokens: int = 512
    min_new_tokens: int | None = None
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    answer_loop_repeats: int | None = None
    baseline: str | None = None
    train_data: str | None = None
    train_split: str = "train"
    scibert_vocab: str | None = SCIBERT_HUB_ID
    llm_tokenizer: str | None = None
    nltk_data: str | None = None
    max_rows: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    index: str | None = None
    neighbours: int = DEFAULT_NEIGHBOURS
    verify_names: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}.")
        if (
            self.baseline in TRAINED_BASELINES
            and self.train_data is None
            and not (self.baseline == "retrieval" and self.index)
        ):
            raise ValueError(f"The {self.baseline} baseline needs training rows: give train_data (--train-data).")
        for name in ("batch_size", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must lie in [0, max_new_tokens], got {self.min_new_tokens}.")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")
        if self.tasks is not None:
            self.tasks = sorted(set(self.tasks))

    @property
    def generates(self) -> bool:
        """Whether the run generates with the model (the model itself, or the no-graph ablation)."""
        return self.baseline not in TRAINED_BASELINES

    def decoding(self) -> dict[str, Any] | None:
        """The decoding settings, as recorded in the results (None for the non-generating baselines)."""
        if not self.generates:
            return None
        strategy = "sampling" if self.do_sample else ("beam search" if self.num_beams > 1 else "greedy")
        settings: dict[str, Any] = {
            "strategy": strategy,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            settings.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        if self.answer_loop_repeats is not None:
            settings["answer_loop_repeats"] = self.answer_loop_repeats
        if self.verify_names:
            from llamo.pipeline_llamo import VERIFY_CANDIDATES

            settings["verify_names"] = {"checker": "opsin", "candidates": VERIFY_CANDIDATES}
        return settings

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `model.generate` (name verification adds its own: see `GenerationPredictor`)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        if self.answer_loop_repeats is not None:
            kwargs["answer_loop_repeats"] = self.answer_loop_repeats
        return kwargs


@dataclass
class RunState:
    """What one call of `evaluate` learned about its inputs, for the run config and the results."""

    data: DatasetInfo
    data_fingerprint: str
    examples: list[EvalExample]
    skipped: list[SkippedRow]
    model_fingerprint: str | None = None
    train: DatasetInfo | None = None
    train_fingerprint: str | None = None
    train_rows: list[dict[str, Any]] | None = field(default=None, repr=False)
    baseline_info: dict[str, Any] = field(default_factory=dict)
    index: Any = field(default=None, repr=False)
    index_fingerprint: str | None = None


def model_fingerprint(folder: str | Path) -> str | None:
    """A cheap identity of a saved model: its config files' contents and its weight files' names, sizes and
    modification times (retraining into the same folder changes it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "generation_config.json", "processor_config.json", "chat_template.jinja"):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def run_config(config: EvaluationConfig, state: RunState) -> dict[str, Any]:
    """What defines a run's predictions (the settings as given and the contents they point at); an output folder is
    only reused by a run with the same."""
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "model": state.model_fingerprint if config.generates else None,
        "model_path": config.model if config.generates else None,
        "baseline": config.baseline,
        "train_data": state.train_fingerprint,
        "train_data_path": config.train_data if config.baseline in TRAINED_BASELINES else None,
        "train_split": config.train_split if config.baseline in TRAINED_BASELINES else None,
        "data": state.data_fingerprint,
        "data_path": config.data,
        "split": config.split,
        "max_rows": config.max_rows,
        "tasks": config.tasks,
        "decoding": config.decoding(),
        "index": state.index_fingerprint,
        "index_path": config.index,
        "neighbours": config.neighbours if config.index and config.generates else None,
    }


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """
    CPU threads for generation, and why: `requested` (`--threads`); else `OMP_NUM_THREADS` when set; else the cores
    this process may use that are not busy: `len(os.sched_getaffinity(0))` minus the 1-minute load average, at
    least 1. (torch's default, every core, stalls a busy machine: threads wait for each other.)
    """
    if requested is not None:
        return requested, "--threads"
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load))), f"{cores} cores, 1-minute load {load:.1f}"


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with `torch.set_num_threads(count)`, restoring the previous number afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_model(config: EvaluationConfig):
    """The model and processor of `config.model`, on `config.device`, in eval mode."""
    from llamo.builder import load_llamo

    if not Path(str(config.model)).is_dir():
        raise FileNotFoundError(f"Model folder not found: {config.model}")
    return load_llamo(config.model, config.device, config.dtype)


class _StepReporter:
    """A stopping criterion that never stops: it reports each generation step (tokens so far, rows finished), so that
    a progress bar moves while a long batch generates. It is called once per new token, for every decoding strategy,
    beams included; the first call tells the prompt's length."""

    def __init__(self, callback: StepCallback, rows: int, eos_token_ids: list[int]):
        self.callback = callback
        self.rows = rows
        self.eos_token_ids = eos_token_ids
        self.prompt_length: int | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1] - 1
        new = input_ids[:, self.prompt_length :]
        finished = 0
        if self.eos_token_ids and input_ids.shape[0] == self.rows:  # beams: sequences are not rows
            finished = int(torch.isin(new, torch.tensor(self.eos_token_ids, device=new.device)).any(dim=1).sum())
        self.callback(new.shape[1], finished, self.rows)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class GenerationPredictor:
    """Answers with the model through its `molecule-text-generation` pipeline (the prompt, generation and decoding of
    `llamo generate`), a batch at a time; `include_graph=False` is the no-graph ablation (SMILES text kept, `<graph>`
    and the graph tensors dropped). With an `index`, each prompt gets its `neighbours` nearest entries (the property
    asked about picks the index's answers); with a `name_checker` (`names -> InChIKeys`), naming rows are answered by
    the first of the pipeline's verification candidates that reads back as the molecule. `on_step`, when set, is
    called at every generation step."""

    def __init__(
        self,
        model,
        processor,
        generation_kwargs: dict[str, Any],
        include_graph: bool = True,
        index=None,
        neighbours: int = DEFAULT_NEIGHBOURS,
        name_checker=None,
    ):
        from llamo.pipeline_llamo import LlamoMoleculePipeline

        self.pipe = LlamoMoleculePipeline(model=model, processor=processor, device=model.device)
        self.processor = processor
        self.generation_kwargs = generation_kwargs
        self.include_graph = include_graph
        self.index = index
        self.neighbours = neighbours
        self.name_checker = name_checker
        self.on_step: StepCallback | None = None

    def _messages(self, example: EvalExample) -> list[dict[str, Any]]:
        """The example's prompt, with its nearest index entries before the question when an index is given."""
        from llamo import add_neighbours

        messages = example.chat_messages()
        if self.index is None or not self.neighbours:
            return messages
        key = example.target.property if example.target is not None else None
        found = self.index.neighbours(
            example.smiles, k=self.neighbours, question=example.prompt[-1]["content"], key=key
        )
        return add_neighbours(messages, [{"smiles": n.smiles, "answer": n.answer} for n in found])

    def _render(self, examples: Sequence[EvalExample]) -> dict[str, Any]:
        """The model inputs of a batch, as the pipeline prepares them."""
        from llamo.pipeline_llamo import MoleculeBatch

        batch = MoleculeBatch([self._messages(example) for example in examples])
        return self.pipe.preprocess(batch, include_graph=self.include_graph)

    def _generate(self, examples: Sequence[EvalExample]) -> list[str]:
        from llamo.pipeline_llamo import verification_settings, verified_candidate

        settings = dict(self.generation_kwargs)
        if self.name_checker is not None:
            settings.update(verification_settings(settings))
        if self.on_step is not None:
            from transformers import StoppingCriteriaList

            eos = self.pipe.model.generation_config.eos_token_id
            eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            settings["stopping_criteria"] = StoppingCriteriaList([_StepReporter(self.on_step, len(examples), eos_ids)])
        conversations = [self._messages(example) for example in examples]
        groups = self.pipe(conversations, batch_size=len(examples), include_graph=self.include_graph, **settings)
        answers = []
        for example, group in zip(examples, groups, strict=True):
            candidates = [answer["generated_text"] for answer in group]
            verify = self.name_checker is not None and example.task == "iupac"
            chosen = verified_candidate(candidates, example.smiles, self.name_checker) if verify else None
            answers.append(candidates[chosen or 0])
        return answers

    def __call__(self, examples: Sequence[EvalExample]) -> list[str | Skip]:
        try:
            return self._generate(examples)
        except ValueError:
            # find the rows the processor refuses (e.g. too many atoms), answer the others as one batch
            refused: dict[int, Skip] = {}
            for position, example in enumerate(examples):
                try:
                    self._render([example])
                except ValueError as error:
                    refused[position] = Skip(f"refused by the processor: {error}")
            if not refused:
                raise
        accepted = [example for position, example in enumerate(examples) if position not in refused]
        answers = iter(self._generate(accepted) if accepted else [])
        return [refused[position] if position in refused else next(answers) for position in range(len(examples))]


@dataclass
class MetricResources:
    """Tokenizers and WordNet shared by the scoring of every task."""

    protocols: list[TokenProtocol]
    wordnet: Any = None
    wordnet_reason: str | None = None

    @classmethod
    def load(cls, config: EvaluationConfig, llm_tokenizer=None) -> MetricResources:
        """The MolT5 protocol, the LLaMo protocol (the tokenizer of `config.llm_tokenizer`, else of `config.model`,
        else `llm_tokenizer`) and WordNet; what cannot be loaded is kept as the reason its metrics are unavailable."""
        protocols = [molt5_protocol(config.scibert_vocab), cls._llamo_protocol(config, llm_tokenizer)]
        try:
            return cls(protocols, load_wordnet(config.nltk_data))
        except WordNetUnavailable as error:
            return cls(protocols, None, str(error))

    @staticmethod
    def _llamo_protocol(config: EvaluationConfig, llm_tokenizer) -> TokenProtocol:
        source = config.llm_tokenizer or config.model
        if source is None and llm_tokenizer is None:
            reason = "no LLM tokenizer: give a model folder or --llm-tokenizer"
            return TokenProtocol(LLAMO_PROTOCOL, unavailable_reason=reason)
        if source is not None:
            from transformers import AutoTokenizer

            try:
                llm_tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError) as error:
                reason = f"the LLM tokenizer could not be loaded from {source} ({first_line(error)})"
                return TokenProtocol(LLAMO_PROTOCOL, unavailable_reason=reason)
        return TokenProtocol(LLAMO_PROTOCOL, llm_tokenizer)


def property_answers(
    examples: Sequence[EvalExample], records: dict, skipped_rows: Sequence[SkippedRow] = ()
) -> tuple[list[PropertyTarget], list[str | None]]:
    """Every property question with a target and its answer; None for a question left unanswered (refused by the
    predictor, or skipped for an unparsable SMILES)."""
    targets: list[PropertyTarget] = []
    answers: list[str | None] = []
    for example in examples:
        record = records[example.key]
        targets.append(example.target)
        answers.append(None if record.skipped is not None else record.prediction or "")
    for row in skipped_rows:
        if row.target is not None:
            targets.append(row.target)
            answers.append(None)
    return targets, answers


def score_task(
    task: str,
    examples: Sequence[EvalExample],
    records: dict,
    resources: MetricResources,
    skipped_rows: Sequence[SkippedRow] = (),
):
    """Metrics and counts of one task over its predicted rows; property QA's valid ratio also counts the questions
    left unanswered (see `property_answers`) as invalid."""
    done = [(example, records[example.key]) for example in examples if records[example.key].skipped is None]
    family = TASK_FAMILIES.get(task, "text")
    counts: dict[str, Any] = {}
    if done:
        counts["empty_predictions"] = sum(not (record.prediction or "").strip() for _, record in done)
    if family == "property":
        targets, answers = property_answers(examples, records, skipped_rows)
        if targets:
            report, counts["valid_answers"] = property_metrics(targets, answers)
            return report, counts
    if not done:
        reason = "no row of this task could be predicted"
        report = MetricReport(unavailable=[UnavailableMetric("all_metrics", family, reason)])
        return report, counts
    references = [example.reference for example, _ in done]
    predictions = [record.prediction or "" for _, record in done]
    if family == "naming":
        smiles = [example.smiles for example, _ in done]
        report, found = naming_metrics(
            smiles, references, predictions, resources.protocols, resources.wordnet, resources.wordnet_reason
        )
        counts.update(found)
    else:
        report = compute_text_metrics(
            references, predictions, resources.protocols, resources.wordnet, resources.wordnet_reason
        )
    return report, counts


def _task_entry(task: str, state: RunState, records: dict, resources: MetricResources) -> dict[str, Any]:
    examples = [example for example in state.examples if example.task == task]
    data_skips = [row for row in state.skipped if row.task == task]
    predictor_skips = [records[e.key].skipped for e in examples if records[e.key].skipped is not None]
    report, family_counts = score_task(task, examples, records, resources, data_skips)
    reasons = Counter([row.reason for row in data_skips] + [reason.split(":")[0] for reason in predictor_skips])
    predicted = len(examples) - len(predictor_skips)
    return {
        "task": {"name": task, "title": TASK_TITLES.get(task, task), "type": "text-generation"},
        "dataset": {**state.data.to_dict(), "rows": len(examples) + len(data_skips), "evaluated_rows": predicted},
        "counts": {
            "rows": len(examples) + len(data_skips),
            "predicted": predicted,
            "skipped": len(data_skips) + len(predictor_skips),
            "skipped_reasons": dict(sorted(reasons.items())),
            **family_counts,
        },
        "metrics": [metric.to_dict() for metric in report.metrics],
        "unavailable_metrics": [metric.to_dict() for metric in report.unavailable],
    }


def build_results(
    config: EvaluationConfig, state: RunState, records: dict, resources: MetricResources, files: dict[str, Any]
) -> dict[str, Any]:
    """The results document (its format is described in `llamo.evaluation`)."""
    import llamo

    tasks = sorted({example.task for example in state.examples} | {row.task for row in state.skipped if row.task})
    baseline = None
    if config.baseline is not None:
        baseline = {"name": config.baseline, "train_data": state.train.to_dict() if state.train else None}
        baseline.update(state.baseline_info)
    unassigned = [row for row in state.skipped if not row.task]
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_FORMAT_VERSION,
        "llamo_version": llamo.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name_or_path": config.model,
            "fingerprint": state.model_fingerprint,
            "evaluated": f"baseline:{config.baseline}" if config.baseline else "model",
        },
        "baseline": baseline,
        "dataset": state.data.to_dict(),
        "decoding": config.decoding(),
        "scale": "BLEU, METEOR, ROUGE, exact match, structure match, parse rate and valid ratio are 0-100; MAE is in "
        "the property's unit",
        "protocols": PROTOCOL_NOTES,
        "results": [_task_entry(task, state, records, resources) for task in tasks],
        "rows_without_task": {"count": len(unassigned), "reasons": dict(Counter(row.reason for row in unassigned))},
        "files": files,
    }


def _prepare(config: EvaluationConfig, dataset, train_dataset, model) -> RunState:
    rows, info = load_rows(dataset if dataset is not None else config.data, config.split)
    examples, skipped = select_examples(rows, config.tasks, config.max_rows)
    state = RunState(info, rows_fingerprint(rows, config.tasks), examples, skipped)
    if config.generates:
        state.model_fingerprint = model_fingerprint(config.model) if model is None else "in-memory"
    if config.baseline in TRAINED_BASELINES and not (config.baseline == "retrieval" and config.index):
        train_rows, state.train = load_rows(
            train_dataset if train_dataset is not None else config.train_data, config.train_split
        )
        state.train_fingerprint = rows_fingerprint(train_rows)
        state.train_rows = train_rows
    if config.index:
        state.index, state.index_fingerprint = _checked_index(config.index, examples)
    return state


def _checked_index(path: str, examples: Sequence[EvalExample]):
    """The evaluation's molecule index and its fingerprint; refused when it holds an evaluated molecule."""
    from llamo.processing.index import MoleculeIndex

    from .naming import inchikey

    index = MoleculeIndex.load(path)
    known = index.inchikeys
    leaked = sorted({example.smiles for example in examples if inchikey(example.smiles) in known})
    if leaked:
        shown = ", ".join(smiles[:40] for smiles in leaked[:3])
        raise ValueError(
            f"The index {path} holds {len(leaked)} of the evaluated molecules (e.g. {shown}): an evaluation index "
            "must not know the test molecules. Build it from the training side only (`llamo index build ... "
            "--holdout 0.1` for the shipped hold-out)."
        )
    fingerprint = hashlib.sha256(json.dumps(index.describe(), sort_keys=True).encode())
    fingerprint.update("".join(sorted(known)).encode())
    return index, fingerprint.hexdigest()[:16]


def _make_predictor(config: EvaluationConfig, state: RunState, model, processor) -> Predictor:
    from .baselines import MeanBaseline, RetrievalBaseline

    if config.baseline in TRAINED_BASELINES:
        baseline_class = RetrievalBaseline if config.baseline == "retrieval" else MeanBaseline
        if config.baseline == "retrieval" and state.index is not None:
            baseline = RetrievalBaseline(index=state.index)
        else:
            baseline = baseline_class(state.train_rows or [])
        state.baseline_info["train_rows_used"] = baseline.train_rows
        return baseline
    if model is None:
        model, processor = load_model(config)
    elif processor is None:
        raise ValueError("An in-memory model needs its processor as well.")
    if config.do_sample:
        import torch

        torch.manual_seed(config.seed)
    return GenerationPredictor(
        model,
        processor,
        config.generation_kwargs(),
        include_graph=config.baseline != "no-graph",
        index=state.index,
        neighbours=config.neighbours,
        name_checker=_name_checker() if config.verify_names else None,
    )


def _name_checker():
    from llamo.retrieval import opsin_checker

    from .naming import opsin_unavailable_reason

    checker = opsin_checker()
    if checker is None:
        raise ValueError(f"verify_names needs OPSIN: {opsin_unavailable_reason()}")
    return checker


def _record(example: EvalExample, answer: str | Skip) -> PredictionRecord:
    skipped = answer.reason if isinstance(answer, Skip) else None
    prediction = None if isinstance(answer, Skip) else answer
    return PredictionRecord(
        example.index, example.id, example.task, example.smiles, example.reference, prediction, skipped
    )


def batches_in_order(pending: Sequence[EvalExample], batch_size: int) -> Iterator[list[EvalExample]]:
    """The batches of `pending` (in dataset order): windows of `SORT_WINDOW_BATCHES` batches follow the dataset's
    order, and only inside a window are rows sorted longest first, so that stopping after any batch leaves a prefix
    of the dataset's rows predicted, plus part of one window."""
    window = batch_size * SORT_WINDOW_BATCHES
    for start in range(0, len(pending), window):
        chunk = sorted(pending[start : start + window], key=lambda example: -example.approximate_length())
        for first in range(0, len(chunk), batch_size):
            yield chunk[first : first + batch_size]


def _step_postfix(bar, batch_number: int, batches: int, max_new_tokens: int) -> StepCallback:
    """A `StepCallback` writing the batch's progress into the bar's postfix, at most once per `STEP_REPORT_SECONDS`."""
    last = [0.0]

    def report(tokens: int, finished: int, rows: int) -> None:
        now = time.monotonic()
        if now - last[0] >= STEP_REPORT_SECONDS:
            last[0] = now
            bar.set_postfix_str(
                f"batch {batch_number}/{batches}: token {tokens}/{max_new_tokens}, {finished}/{rows} rows done"
            )

    return report


def _predict(
    predictor: Predictor,
    pending: list[EvalExample],
    total: int,
    store: PredictionStore,
    records: dict,
    config: EvaluationConfig,
    callback: ProgressCallback | None,
) -> None:
    """Predict `pending` a batch at a time (see `batches_in_order`), saving each batch before the next."""
    from tqdm.auto import tqdm

    done = total - len(pending)
    batches = -(-len(pending) // config.batch_size)
    with tqdm(total=total, initial=done, disable=not config.progress, unit="row", desc="evaluating") as bar:
        for number, batch in enumerate(batches_in_order(pending, config.batch_size), start=1):
            if config.progress and hasattr(predictor, "on_step"):
                predictor.on_step = _step_postfix(bar, number, batches, config.max_new_tokens)
            new = [_record(example, answer) for example, answer in zip(batch, predictor(batch), strict=True)]
            store.append(new)
            records.update((record.key, record) for record in new)
            done += len(batch)
            bar.update(len(batch))
            if callback is not None:
                callback(done, total)


def evaluate(
    config: EvaluationConfig,
    dataset=None,
    train_dataset=None,
    model=None,
    processor=None,
    callback: ProgressCallback | None = None,
) -> dict[str, Any]:
    """
    Predict every row of the data that the output folder does not already hold, then score all tasks and write
    `results.json`.

    Args:
        config: the run (see `EvaluationConfig`).
        dataset, train_dataset: rows given in memory (a `datasets.Dataset` or a list of dicts) instead of
            `config.data` / `config.train_data`.
        model, processor: an already loaded LLaMo and its processor instead of `config.model` (the run's identity
            then does not cover the weights).
        callback: called as `callback(rows_done, rows_total)` after each batch is saved.

    Returns:
        the results document, as written to `output_dir/results.json`.
    """
    if dataset is None and config.data is None:
        raise ValueError("No evaluation data: give config.data or a dataset.")
    if config.generates and config.model is None and model is None:
        raise ValueError("No model given: pass a LLaMo model folder (or a baseline that needs none).")
    state = _prepare(config, dataset, train_dataset, model)
    store = PredictionStore(config.output_dir)
    with disk_full_guard(config.output_dir, "the predictions and results", kept=lambda: _kept_message(store)):
        return _run(config, state, store, model, processor, callback)


def _kept_message(store: PredictionStore) -> str:
    return (
        f"The {store.saved_count()} predictions in {store.predictions_path} are kept (a half-written last line is "
        "cut on rerun): the rerun predicts only the other rows."
    )


def _run(
    config: EvaluationConfig,
    state: RunState,
    store: PredictionStore,
    model,
    processor,
    callback: ProgressCallback | None,
) -> dict[str, Any]:
    records = store.start(run_config(config, state), overwrite=config.overwrite)
    pending = [example for example in state.examples if example.key not in records]
    # a trained baseline is always built (cheap), so that its description is in every run's results
    if pending or not config.generates:
        predictor = _make_predictor(config, state, model, processor)
        processor = getattr(predictor, "processor", processor)
        threads, reason = choose_threads(config.threads)
        if config.progress and config.generates:
            print(
                f"[evaluate] generating with {threads} CPU thread(s) ({reason}; --threads N to choose)", file=sys.stderr
            )
        with torch_threads(threads):
            _predict(predictor, pending, len(state.examples), store, records, config, callback)
    ordered = sorted((records[example.key] for example in state.examples), key=lambda record: record.index)
    files = {"predictions": store.predictions_path.name, "tsv": store.write_tsvs(ordered)}
    tokenizer = getattr(processor, "tokenizer", None)
    resources = MetricResources.load(config, tokenizer)
    results = build_results(config, state, records, resources, files)
    store.write_results(json.dumps(results, indent=2) + "\n")
    return results


__all__ = [
    "BASELINES",
    "RESULTS_FORMAT",
    "RESULTS_FORMAT_VERSION",
    "EvaluationConfig",
    "GenerationPredictor",
    "MetricResources",
    "batches_in_order",
    "build_results",
    "choose_threads",
    "evaluate",
    "load_model",
    "model_fingerprint",
    "property_answers",
    "run_config",
    "score_task",
]
