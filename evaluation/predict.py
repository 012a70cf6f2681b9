"""Predicting the rows of a run: through the model's `molecule-text-generation` pipeline (or a baseline), a batch at a
time, each batch saved (`llamo.evaluation.predictions`) before the next.

Rows are predicted in dataset order, a window of `SORT_WINDOW_BATCHES` batches at a time; only inside a window are
they sorted longest prompt first, so that a batch holds prompts of similar length. A stopped run thus holds a prefix
of the dataset's rows (plus part of one window), never a length-biased subset, and the same command resumes it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS, add_name_hint

from .config import MAX_THREADS
from .data import EvalExample
from .predictions import PredictionRecord, PredictionStore, Skip

if TYPE_CHECKING:
    from .config import EvaluationConfig
    from .data import RunState

SORT_WINDOW_BATCHES = 8
STEP_REPORT_SECONDS = 1.0

ProgressCallback = Callable[[int, int], None]
StepCallback = Callable[[int, int, int], None]
"""Called while a batch generates, as `(new_tokens_so_far, rows_finished, rows_in_batch)`."""
Predictor = Callable[[Sequence[EvalExample]], list["str | Skip"]]


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """CPU threads for generation, and why: `requested` (`--threads`); else `OMP_NUM_THREADS` when set; else the cores
    this process may use minus the 1-minute load average, at least 1 (torch's default, all cores, stalls busy hosts);
    never over `MAX_THREADS`."""
    if requested is not None:
        return requested, "--threads"
    if (from_env := os.environ.get("OMP_NUM_THREADS", "").strip()).isdigit() and int(from_env) > 0:
        return min(int(from_env), MAX_THREADS), "OMP_NUM_THREADS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load))), f"{cores} cores, 1-minute load {load:.1f}"


@dataclass
class _StepReporter:
    """A stopping criterion that never stops: it reports each generation step (tokens so far, rows finished), so that
    a progress bar moves while a long batch generates. It is called once per new token, for every decoding strategy,
    beams included; the first call tells the prompt's length."""

    callback: StepCallback
    rows: int
    eos_token_ids: list[int]
    prompt_length: int | None = None

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
    """Answers with the model through its `molecule-text-generation` pipeline (as `llamo generate`), a batch at a time;
    `include_graph=False` is the no-graph ablation (SMILES text kept, `<graph>` and the graph tensors dropped). With an
    `index`, the pipeline gives each prompt its `neighbours` nearest entries, as `llamo generate` does (the property a
    question names picks a property index's answers); with a `name_checker` (`names -> InChIKeys`), naming rows are
    answered by the pipeline's choice among its verification candidates (`llamo.pipeline_llamo.verified_answer`), a
    `name_proposer`'s name (`smiles -> name`) among them. `on_step`, when set, is called at every generation step."""

    def __init__(
        self,
        model,
        processor,
        generation_kwargs: dict[str, Any],
        include_graph: bool = True,
        index=None,
        neighbours: int = DEFAULT_NEIGHBOURS,
        near_twin: float | None = None,
        rank_neighbour_answers: bool = False,
        name_checker=None,
        name_proposer=None,
        name_hint=None,
    ):
        from llamo.pipeline_llamo import LlamoMoleculePipeline

        self.pipe = LlamoMoleculePipeline(model=model, processor=processor, device=model.device)
        self.processor, self.generation_kwargs = processor, generation_kwargs
        context = dict(index=index, neighbours=neighbours, near_twin=near_twin) if index is not None else {}
        self.pipe_options = dict(include_graph=include_graph, **context)
        self.ranking = {"rank_neighbour_answers": True} if rank_neighbour_answers and index is not None else {}
        self.name_checker, self.name_proposer, self.name_hint = name_checker, name_proposer, name_hint
        self.on_step: StepCallback | None = None

    def _messages(self, example: EvalExample) -> list[dict[str, Any]]:
        """The example's conversation; a description question gets the molecule's `name_hint` name, if there is one."""
        messages = example.chat_messages()
        if self.name_hint is not None and example.task == "description" and (name := self.name_hint(example.smiles)):
            messages = add_name_hint(messages, name)
        return messages

    def _render(self, examples: Sequence[EvalExample]) -> dict[str, Any]:
        """The model inputs of a batch, as the pipeline prepares them."""
        from llamo.pipeline_llamo import MoleculeBatch

        return self.pipe.preprocess(MoleculeBatch(list(map(self._messages, examples))), **self.pipe_options)

    def _generate(self, examples: Sequence[EvalExample]) -> list[str]:
        from llamo.pipeline_llamo import verification_settings, verified_answer

        settings = dict(self.generation_kwargs)
        if self.name_checker is not None:
            settings.update(verification_settings(settings))
        if self.on_step is not None:
            from transformers import StoppingCriteriaList

            eos = self.pipe.model.generation_config.eos_token_id
            eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            settings["stopping_criteria"] = StoppingCriteriaList([_StepReporter(self.on_step, len(examples), eos_ids)])
        conversations = [self._messages(example) for example in examples]
        ranking = self.ranking if self.name_checker is None else {}
        groups = self.pipe(conversations, batch_size=len(examples), **self.pipe_options, **ranking, **settings)
        answers = []
        for example, group in zip(examples, groups, strict=True):
            if self.name_checker is not None and example.task == "iupac":
                group = [verified_answer(group, example.smiles, self.name_checker, self.name_proposer)]
            answers.append(group[0]["generated_text"])
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


def make_predictor(config: EvaluationConfig, state: RunState, model, processor) -> Predictor:
    """The run's predictor: a trained baseline, or the model (loaded from `config.model` unless given)."""
    from .baselines import MeanBaseline, NamerBaseline, RetrievalBaseline

    if config.baseline == "namer":
        return NamerBaseline()
    if config.trained_baseline:
        rows = state.train_rows
        baseline = MeanBaseline(rows or []) if config.baseline == "mean" else RetrievalBaseline(rows, index=state.index)
        state.baseline_info["train_rows_used"] = baseline.train_rows
        return baseline
    if model is None:
        from llamo.builder import load_llamo
        from llamo.default_model import resolve_model_dir

        model, processor = load_llamo(resolve_model_dir(config.model), config.device, config.dtype)
    elif processor is None:
        raise ValueError("An in-memory model needs its processor as well.")
    if config.do_sample:
        import torch

        torch.manual_seed(config.seed)
    name_checker = name_proposer = name_hint = None
    if config.name_hints or config.verify_names:
        from llamo.retrieval import name_hinter, opsin_checker, rule_namer

        from .naming import opsin_unavailable_reason

        if (checker := opsin_checker()) is None:
            needs = "name_hints needs OPSIN to check the names" if config.name_hints else "verify_names needs OPSIN"
            raise ValueError(f"{needs}: {opsin_unavailable_reason()}")
        if config.name_hints and (name_hint := name_hinter(checker)) is None:
            raise ValueError("name_hints needs openclatura: pip install openclatura")
        name_checker = checker if config.verify_names else None
        if config.propose_names and (name_proposer := rule_namer()) is None:
            raise ValueError("propose_names needs openclatura: pip install openclatura")
    return GenerationPredictor(
        model,
        processor,
        config.generation_kwargs(),
        include_graph=config.baseline != "no-graph",
        index=state.index,
        neighbours=config.neighbours,
        near_twin=config.near_twin,
        rank_neighbour_answers=config.rank_neighbour_answers,
        name_checker=name_checker,
        name_proposer=name_proposer,
        name_hint=name_hint,
    )


def batches_in_order(pending: Sequence[EvalExample], batch_size: int) -> Iterator[list[EvalExample]]:
    """The batches of `pending` (in dataset order), sorted longest first only inside windows of
    `SORT_WINDOW_BATCHES` batches (see the module docstring)."""
    window = batch_size * SORT_WINDOW_BATCHES
    for start in range(0, len(pending), window):
        chunk = sorted(pending[start : start + window], key=lambda example: -example.approximate_length())
        for first in range(0, len(chunk), batch_size):
            yield chunk[first : first + batch_size]


def _step_postfix(bar, template: str) -> StepCallback:
    """A `StepCallback` writing a batch's progress into the bar's postfix, at most once per `STEP_REPORT_SECONDS`."""
    last = [0.0]

    def report(tokens: int, finished: int, rows: int) -> None:
        if time.monotonic() - last[0] >= STEP_REPORT_SECONDS:
            last[0] = time.monotonic()
            bar.set_postfix_str(f"{template.format(tokens)}, {finished}/{rows} rows done")

    return report


def predict(
    config: EvaluationConfig,
    state: RunState,
    store: PredictionStore,
    records: dict,
    model=None,
    processor=None,
    callback: ProgressCallback | None = None,
):
    """Predict the rows of `state` missing from `records` with `choose_threads` CPU threads, saving each batch to
    `store` and `records` before the next; returns the processor used (its tokenizer is the LLaMo protocol's). A
    trained baseline is always built (cheap), so that its description is in every run's results."""
    import torch
    from tqdm.auto import tqdm

    pending = [example for example in state.examples if example.key not in records]
    if not pending and config.generates:
        return processor
    predictor = make_predictor(config, state, model, processor)
    threads, reason = choose_threads(config.threads)
    if config.progress and config.generates:
        print(f"[evaluate] generating with {threads} CPU thread(s) ({reason}; --threads N to choose)", file=sys.stderr)
    total, done = len(state.examples), len(state.examples) - len(pending)
    batches = -(-len(pending) // config.batch_size)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tqdm(total=total, initial=done, disable=not config.progress, unit="row", desc="evaluating") as bar:
            for number, batch in enumerate(batches_in_order(pending, config.batch_size), start=1):
                if config.progress and hasattr(predictor, "on_step"):
                    template = f"batch {number}/{batches}: token {{}}/{config.max_new_tokens}"
                    predictor.on_step = _step_postfix(bar, template)
                new = []
                for e, answer in zip(batch, predictor(batch), strict=True):
                    outcome = {"skipped": answer.reason} if isinstance(answer, Skip) else {"prediction": answer}
                    new.append(PredictionRecord(e.index, e.id, e.task, e.smiles, e.reference, **outcome))
                store.append(new)
                records.update((record.key, record) for record in new)
                done += len(batch)
                bar.update(len(batch))
                if callback is not None:
                    callback(done, total)
    finally:
        torch.set_num_threads(previous_threads)
    return getattr(predictor, "processor", processor)
