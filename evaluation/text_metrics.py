"""Caption-style text metrics (BLEU-2/4, METEOR, ROUGE-1/2/L) under named tokenization protocols.

A protocol fixes how texts become tokens before BLEU and METEOR: `molt5_scibert`, the field's standard (SciBERT's
uncased WordPiece tokens, the first 512, [PAD]/[CLS]/[SEP] removed), or `llamo_llm_tokens`, LLaMo's evaluator (the
same with the model's tokenizer, its pad/BOS/EOS removed). BLEU is NLTK's corpus BLEU without smoothing; METEOR the
mean of NLTK's `meteor_score` (WordNet: `llamo.evaluation.wordnet`); ROUGE-1/2/L the mean `rouge_score` F-measures on
the raw strings without stemming, reported once as `*_molt5_raw_text`. Every value is on a 0-100 scale."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MOLT5_PROTOCOL = "molt5_scibert"
LLAMO_PROTOCOL = "llamo_llm_tokens"
ROUGE_PROTOCOL = "molt5_raw_text"
SCIBERT_HUB_ID = "allenai/scibert_scivocab_uncased"
MAX_TOKENS = 512
ROUGE_MAX_CHARS = 20_000
"""ROUGE reads the first 20,000 characters of a text (ChEBI-20's longest description has 979)."""

TEXT_METRICS = ("bleu2", "bleu4", "meteor", "rouge1", "rouge2", "rougeL")
BLEU_WEIGHTS = {"bleu2": (0.5, 0.5), "bleu4": (0.25, 0.25, 0.25, 0.25)}


@dataclass
class MetricValue:
    """One reported number; `name` carries the protocol (e.g. `bleu4_molt5_scibert`), `type` is its family."""

    name: str
    type: str
    value: float
    unit: str = "percent"
    protocol: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class UnavailableMetric:
    """A metric that could not be computed, with a plain reason (never a number)."""

    name: str
    type: str
    reason: str


@dataclass
class MetricReport:
    """Metrics computed for one task, and those that could not be."""

    metrics: list[MetricValue] = field(default_factory=list)
    unavailable: list[UnavailableMetric] = field(default_factory=list)

    def values(self) -> dict[str, float]:
        """`{name: value}` of the computed metrics."""
        return {metric.name: metric.value for metric in self.metrics}


@dataclass
class TokenProtocol:
    """A named way of turning text into tokens for BLEU and METEOR. Without a tokenizer, `unavailable_reason` says
    why, and the protocol's metrics are reported as unavailable."""

    name: str
    tokenizer: Any = None
    unavailable_reason: str | None = None

    def __post_init__(self) -> None:
        if self.tokenizer is None and self.unavailable_reason is None:
            raise ValueError(f"Protocol {self.name}: give a tokenizer or the reason there is none.")
        names = ("pad_token", "cls_token", "sep_token", "bos_token", "eos_token")
        self._dropped = {str(getattr(self.tokenizer, name, None)) for name in names} - {"None"}

    def tokenize(self, text: str) -> list[str]:
        """The protocol's tokens of `text`: the first `MAX_TOKENS` tokens, padding and sequence markers removed."""
        return [token for token in self.tokenizer.tokenize(text)[:MAX_TOKENS] if token not in self._dropped]


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type when it has none), for reasons shown to users."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_scibert_tokenizer(source: str | Path = SCIBERT_HUB_ID):
    """SciBERT's uncased WordPiece tokenizer from a `vocab.txt` file, a folder holding one, or a Hub id; `OSError`
    when the vocabulary cannot be loaded (or yields a tokenizer that knows no words)."""
    from transformers import BertTokenizerFast

    if (path := Path(source)).is_file():
        # transformers 5 reads the vocabulary from `vocab`; a `vocab_file=` keyword would be silently ignored
        tokenizer = BertTokenizerFast(vocab=str(path), do_lower_case=True)
    else:
        try:
            tokenizer = BertTokenizerFast.from_pretrained(str(source), do_lower_case=True, local_files_only=True)
        except OSError:
            tokenizer = BertTokenizerFast.from_pretrained(str(source), do_lower_case=True)
    if tokenizer.tokenize("acid") == [tokenizer.unk_token]:
        raise OSError(f"The SciBERT vocabulary from {source} does not know the word 'acid': not a SciBERT vocab.txt?")
    return tokenizer


def molt5_protocol(source: str | Path | None = SCIBERT_HUB_ID) -> TokenProtocol:
    """The MolT5 protocol; unavailable (with the reason) when SciBERT's vocabulary cannot be loaded."""
    if source is None:
        return TokenProtocol(MOLT5_PROTOCOL, unavailable_reason="no SciBERT vocabulary given (--scibert-vocab)")
    try:
        return TokenProtocol(MOLT5_PROTOCOL, load_scibert_tokenizer(source))
    except Exception as error:  # offline Hub, missing file, bad vocabulary: all mean "unavailable", with the reason
        hint = "pass --scibert-vocab with a local vocab.txt"
        reason = f"SciBERT's tokenizer could not be loaded from {source} ({first_line(error)}); {hint}"
        return TokenProtocol(MOLT5_PROTOCOL, unavailable_reason=reason)


def compute_text_metrics(
    references: Sequence[str],
    predictions: Sequence[str],
    protocols: Sequence[TokenProtocol],
    wordnet: Any = None,
    wordnet_reason: str | None = None,
    include: Sequence[str] = TEXT_METRICS,
) -> MetricReport:
    """BLEU-2/4 and METEOR under each protocol, ROUGE-1/2/L on raw strings (those in `include`), all 0-100, of one
    prediction per reference (an empty one is a valid, zero-scoring answer). `wordnet` is NLTK's WordNet reader for
    METEOR; when `None`, METEOR is unavailable for `wordnet_reason`."""
    if len(references) != len(predictions):
        raise ValueError(f"Got {len(references)} references and {len(predictions)} predictions.")
    report = MetricReport()
    if not references:
        return report
    from nltk.translate.bleu_score import corpus_bleu
    from nltk.translate.meteor_score import meteor_score

    for protocol in protocols:
        tokens = None
        for name in [name for name in ("bleu2", "bleu4", "meteor") if name in include]:
            metric, kind = f"{name}_{protocol.name}", name.rstrip("24")
            reason = protocol.unavailable_reason if protocol.tokenizer is None else None
            if reason is None and name == "meteor" and wordnet is None:
                reason = wordnet_reason or "WordNet is not available"
            if reason is not None:
                report.unavailable.append(UnavailableMetric(metric, kind, str(reason)))
                continue
            tokens = tokens or ([protocol.tokenize(t) for t in references], [protocol.tokenize(t) for t in predictions])
            if name == "meteor":
                scores = [meteor_score([ref], pred, wordnet=wordnet) for ref, pred in zip(*tokens, strict=True)]
                value = 100 * sum(scores) / len(scores)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # NLTK warns when an n-gram order has no match; BLEU is then ~0
                    value = 100.0 * corpus_bleu([[ref] for ref in tokens[0]], tokens[1], weights=BLEU_WEIGHTS[name])
            report.metrics.append(MetricValue(metric, kind, value, protocol=protocol.name))
    if rouge_wanted := [kind for kind in ("rouge1", "rouge2", "rougeL") if kind in include]:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge_wanted, use_stemmer=False)
        pairs = zip(references, predictions, strict=True)  # cut: ROUGE-L's time grows with the product of lengths
        scores = [scorer.score(ref[:ROUGE_MAX_CHARS], pred[:ROUGE_MAX_CHARS]) for ref, pred in pairs]
        for kind in rouge_wanted:
            value = 100 * sum(score[kind].fmeasure for score in scores) / len(references)
            report.metrics.append(MetricValue(f"{kind}_{ROUGE_PROTOCOL}", "rouge", value, protocol=ROUGE_PROTOCOL))
    return report
