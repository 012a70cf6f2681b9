"""Scoring a run's predictions per task (by its family, see `llamo.evaluation`), and the results document
(`results.json`, described there)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .naming import naming_metrics
from .properties import property_metrics
from .text_metrics import (
    LLAMO_PROTOCOL,
    MOLT5_PROTOCOL,
    ROUGE_PROTOCOL,
    MetricReport,
    TokenProtocol,
    UnavailableMetric,
    compute_text_metrics,
    first_line,
    molt5_protocol,
)
from .wordnet import WordNetUnavailable, load_wordnet

if TYPE_CHECKING:
    from .config import EvaluationConfig
    from .data import EvalExample, RunState, SkippedRow

RESULTS_FORMAT = "llamo-evaluation"
"""The `format` of a results document; `hub_cards.results` reads only this format."""
RESULTS_FORMAT_VERSION = 1

TASK_TITLES = {
    "description": "Molecule description",
    "iupac": "IUPAC name generation",
    "property": "Molecular property QA (QM9 HOMO/LUMO/gap)",
    "conversation": "Multi-turn molecular conversation",
}
TASK_FAMILIES = {"iupac": "naming", "property": "property"}

PROTOCOL_NOTES = {
    MOLT5_PROTOCOL: "SciBERT uncased WordPiece tokens (first 512, [PAD]/[CLS]/[SEP] removed); NLTK corpus BLEU "
    "without smoothing; mean NLTK METEOR; 0-100",
    LLAMO_PROTOCOL: "as molt5_scibert, with the LLM's own tokenizer (LLaMo's evaluator); 0-100",
    ROUGE_PROTOCOL: "rouge_score F-measure on the raw strings, no stemmer, mean over rows; 0-100",
}


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
        source = config.llm_tokenizer or config.model
        reason = None if llm_tokenizer is not None else "no LLM tokenizer: give a model folder or --llm-tokenizer"
        if source is not None:
            from transformers import AutoTokenizer

            try:
                llm_tokenizer, reason = AutoTokenizer.from_pretrained(source), None
            except (OSError, ValueError) as error:
                llm_tokenizer = None
                reason = f"the LLM tokenizer could not be loaded from {source} ({first_line(error)})"
        llamo = TokenProtocol(LLAMO_PROTOCOL, llm_tokenizer, unavailable_reason=reason)
        protocols = [molt5_protocol(config.scibert_vocab), llamo]
        try:
            return cls(protocols, load_wordnet(config.nltk_data))
        except WordNetUnavailable as error:
            return cls(protocols, None, str(error))


def score_task(
    task: str,
    examples: Sequence[EvalExample],
    records: dict,
    resources: MetricResources,
    skipped_rows: Sequence[SkippedRow] = (),
):
    """Metrics and counts of one task over its predicted rows. Property QA's valid ratio counts every question with a
    target: one left unanswered (refused by the predictor, or skipped for an unparsable SMILES) is invalid."""
    done = [(example, records[example.key]) for example in examples if records[example.key].skipped is None]
    family = TASK_FAMILIES.get(task, "text")
    counts: dict[str, Any] = {}
    if done:
        counts["empty_predictions"] = sum(not (record.prediction or "").strip() for _, record in done)
    if family == "property":
        answered = [(e.target, records[e.key]) for e in examples]
        answered = [(target, None if r.skipped is not None else r.prediction or "") for target, r in answered]
        answered += [(row.target, None) for row in skipped_rows if row.target is not None]
        if answered:
            targets, answers = zip(*answered, strict=True)
            report, counts["valid_answers"] = property_metrics(targets, answers)
            return report, counts
    if not done:
        reason = "no row of this task could be predicted"
        return MetricReport(unavailable=[UnavailableMetric("all_metrics", family, reason)]), counts
    references = [example.reference for example, _ in done]
    predictions = [record.prediction or "" for _, record in done]
    metric_inputs = (resources.protocols, resources.wordnet, resources.wordnet_reason)
    if family == "naming":
        report, found = naming_metrics([example.smiles for example, _ in done], references, predictions, *metric_inputs)
        counts.update(found)
    else:
        report = compute_text_metrics(references, predictions, *metric_inputs)
    return report, counts


def _task_entry(task: str, state: RunState, records: dict, resources: MetricResources) -> dict[str, Any]:
    examples = [example for example in state.examples if example.task == task]
    data_skips = [row for row in state.skipped if row.task == task]
    predictor_skips = [records[e.key].skipped for e in examples if records[e.key].skipped is not None]
    report, family_counts = score_task(task, examples, records, resources, data_skips)
    reasons = Counter(reason.split(":")[0] for reason in [row.reason for row in data_skips] + predictor_skips)
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
        "unavailable_metrics": [asdict(metric) for metric in report.unavailable],
    }


def build_results(
    config: EvaluationConfig, state: RunState, records: dict, resources: MetricResources, files: dict[str, Any]
) -> dict[str, Any]:
    """The results document (its format is described in `llamo.evaluation`)."""
    import llamo

    tasks = sorted({example.task for example in state.examples} | {row.task for row in state.skipped if row.task})
    train = state.train.to_dict() if state.train else None
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
        "baseline": {"name": config.baseline, "train_data": train, **state.baseline_info} if config.baseline else None,
        "dataset": state.data.to_dict(),
        "decoding": config.decoding(),
        "scale": "BLEU, METEOR, ROUGE, exact match, structure match, parse rate and valid ratio are 0-100; MAE is in "
        "the property's unit",
        "protocols": PROTOCOL_NOTES,
        "results": [_task_entry(task, state, records, resources) for task in tasks],
        "rows_without_task": {"count": len(unassigned), "reasons": dict(Counter(row.reason for row in unassigned))},
        "files": files,
    }
