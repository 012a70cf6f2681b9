"""`EvaluationConfig`: everything one evaluation run needs, checked when made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS

from .text_metrics import SCIBERT_HUB_ID

BASELINES = ("retrieval", "mean", "no-graph", "namer")
TRAINED_BASELINES = ("retrieval", "mean")
MODEL_FREE_BASELINES = (*TRAINED_BASELINES, "namer")
MAX_THREADS = 256
"""The most CPU threads of generation (thousands crash torch's thread pool)."""


@dataclass
class EvaluationConfig:
    """Everything one evaluation run needs, checked when made. `output_dir` gets the predictions, TSVs and
    `results.json` (an interrupted run resumes from it). `model`: a LLaMo folder (for the `retrieval`, `mean` and
    `namer` baselines only the LLM tokenizer of the `llamo_llm_tokens` protocol). `data`: a JSONL/JSON/Parquet file, a
    `save_to_disk` folder or a Hub dataset id, `split` its split (default `test`); `tasks` makes a specialist run.
    `train_data`/`train_split`: the rows of the trained baselines. `scibert_vocab`: SciBERT's `vocab.txt`, a folder or
    a Hub id (MolT5 protocol); `llm_tokenizer`: the LLaMo protocol's (default: the model's); `nltk_data`: the NLTK
    folder holding WordNet. `max_rows` evaluates only the first rows (another value is another run). `index`: the
    model's in-context examples and what the `retrieval` baseline copies from; it must hold none of the evaluated
    molecules. `answer_loop_repeats` ends an answer that repeats one block this many times in a row (0: off; None: the
    model's generation config). `verify_names` answers naming rows by OPSIN reranking of beam candidates, and
    `propose_names` adds the rule-based namer's name as a last candidate. `name_hints` gives every description question
    the molecule's OPSIN-checked rule-based IUPAC name (`llamo.retrieval.name_hinter`)."""

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
    near_twin: float | None = None
    rank_neighbour_answers: bool = False
    verify_names: bool = False
    propose_names: bool = False
    name_hints: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}.")
        if self.trained_baseline and self.train_data is None and not self.index_retrieval:
            raise ValueError(f"The {self.baseline} baseline needs training rows: give train_data (--train-data).")
        for name in ("batch_size", "max_new_tokens", "num_beams", "max_rows"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be from 1 to {MAX_THREADS}, got {self.threads}.")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number above 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:  # NaN too
            raise ValueError(f"top_p must be above 0 and at most 1, got {self.top_p}.")
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be at least 0, got {self.neighbours}.")
        if self.near_twin is not None and not 0 <= self.near_twin <= 1:
            raise ValueError(f"near_twin must be a similarity from 0 to 1, got {self.near_twin}.")
        if self.min_new_tokens is not None and not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must lie in [0, max_new_tokens], got {self.min_new_tokens}.")
        if self.propose_names and not self.verify_names:
            raise ValueError("propose_names needs verify_names: the namer's names are answered only when verified.")
        for name in ("scibert_vocab", "llm_tokenizer"):  # a mistyped path would fail only after generation
            value = getattr(self, name)
            if value and not Path(value).exists() and (value.count("/") != 1 or value[0] in "./~"):
                raise ValueError(f"{name} {value[:80]!r} is neither a file or folder here nor a Hub id (OWNER/NAME).")
        if self.tasks is not None:
            self.tasks = sorted(set(self.tasks))

    @property
    def generates(self) -> bool:
        """Whether the run generates with the model (the model itself, or the no-graph ablation)."""
        return self.baseline not in MODEL_FREE_BASELINES

    @property
    def trained_baseline(self) -> bool:
        return self.baseline in TRAINED_BASELINES

    @property
    def index_retrieval(self) -> bool:
        """The retrieval baseline copying from `index` (it needs no training rows)."""
        return self.baseline == "retrieval" and bool(self.index)

    def decoding(self) -> dict[str, Any] | None:
        """The decoding settings, as recorded in the results (None for the non-generating baselines)."""
        if not self.generates:
            return None
        strategy = "sampling" if self.do_sample else ("beam search" if self.num_beams > 1 else "greedy")
        names = ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample")
        names += ("temperature", "top_p", "seed") if self.do_sample else ()
        settings: dict[str, Any] = {"strategy": strategy, **{name: getattr(self, name) for name in names}}
        if self.answer_loop_repeats is not None:
            settings["answer_loop_repeats"] = self.answer_loop_repeats
        if self.verify_names:
            from llamo.pipeline_llamo import VERIFY_CANDIDATES

            proposer = {"proposer": "openclatura"} if self.propose_names else {}
            settings["verify_names"] = {"checker": "opsin", "candidates": VERIFY_CANDIDATES, **proposer}
        if self.name_hints:
            from llamo.retrieval import NAME_HINT_MAX_CHARS

            settings["name_hints"] = dict(
                tasks=["description"], namer="openclatura", checker="opsin", max_chars=NAME_HINT_MAX_CHARS
            )
        return settings

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `model.generate` (name verification adds its own: see `GenerationPredictor`)."""
        dropped = {"strategy", "seed", "verify_names", "name_hints"}
        if not self.min_new_tokens:
            dropped.add("min_new_tokens")
        return {name: value for name, value in (self.decoding() or {}).items() if name not in dropped}
