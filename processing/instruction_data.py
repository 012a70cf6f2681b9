"""Multi-turn instruction data about molecules: the LLaMo paper's GPT-4 pipeline, with any teacher.

Three steps, as in the paper:

1. seed a few exemplar conversations from a short instruction (`SEED_INSTRUCTION`), on molecules drawn from the input;
2. generate one conversation per molecule, with exemplars sampled into the teacher's context;
3. filter (`judge_reply`): drop truncated, unparsable or malformed conversations and those over `max_turns` pairs.

Files, for `--output OUT.jsonl`:

- `OUT.jsonl`: one conversation-schema record per generated molecule, keyed by the molecule id; append-only, one
  write + fsync per record, so a killed job leaves at most a half-written last line, which the next run redoes.
- `OUT.jsonl.status.jsonl`: one line per molecule filtered (final, with the reason and the raw output) or failed
  (retried by the next run).
- `OUT.jsonl.exemplars.json`: the exemplars of step 1, reused by a resumed job.
- `OUT.jsonl.summary.json`: counts, teacher, model, prompt version (keys in `SUMMARY_KEYS`).

A rerun continues where the last one stopped; an output made by another teacher, model or prompt version is refused
(unless `allow_mixed`); `overwrite` starts over. A full disk stops the run with a `DiskFullError` naming the folder.

This module runs the job; its parts (`instruction_inputs`, `_store`, `_summary`, `_prompts`) live beside it."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import random
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llamo.smiles_llamo import parse_smiles
from llamo.storage import disk_full_guard

from .grounded_teacher import GroundedTeacher
from .instruction_inputs import Molecule, MoleculeInput, read_molecules
from .instruction_prompts import (
    ConversationFormatError,
    Exemplar,
    conversation_problem,
    generation_messages,
    parse_conversation,
    seed_messages,
)
from .instruction_store import ConversationStore, write_json_atomically
from .instruction_summary import RunState, build_summary
from .schema import make_record
from .teachers import BudgetExhausted, GenerationStopped, TeacherError, TeacherFatalError, TeacherReply, build_teacher

logger = logging.getLogger(__name__)

_FINISHED = frozenset({None, "stop", "eos", "end_turn", "stop_sequence"})
_RAW_OUTPUT_LIMIT = 4000


@dataclass
class DataGenerationConfig:
    """Options of `generate_conversations` (named apart from transformers' `GenerationConfig`).

    `max_turns`: most question-answer pairs a conversation may have (step 3; also asked of the teacher).
    `num_exemplars`: exemplars per request (step 2); 0 skips step 1. `seed_exemplars`: how many step 1 makes.
    `exemplars_file`: exemplars to use instead of step 1 (the `<output>.exemplars.json` format).
    `concurrency`: requests in flight. `seed`: seeds exemplar choice and sampling (each molecule gets its own seed).
    `allow_mixed`: append to an output made with another teacher/model/prompt. `overwrite`: start the output over."""

    max_turns: int = 8
    num_exemplars: int = 2
    seed_exemplars: int = 3
    exemplars_file: str | None = None
    concurrency: int = 4
    seed: int = 0
    allow_mixed: bool = False
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self):
        for name, least in (("max_turns", 1), ("concurrency", 1), ("num_exemplars", 0), ("seed_exemplars", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")


@dataclass
class Outcome:
    """One molecule's `status`: `generated` (with `record`), `filtered` or `failed` (with `reason` and `detail`)."""

    molecule: Molecule
    status: str
    record: dict[str, Any] | None = None
    reason: str | None = None
    detail: str | None = None
    raw_output: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


def molecule_seed(seed: int, molecule_id: str) -> int:
    """A 32-bit seed for one molecule, stable across runs and independent of the input order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{molecule_id}".encode()).digest()[:4], "big")


def judge_reply(reply: TeacherReply, max_turns: int) -> tuple[list[dict[str, str]] | None, str | None, str | None]:
    """Step 3 on a teacher reply: (messages, None, None) to keep, or (None, reason, detail) to drop. The reasons:
    `truncated_output` (a `finish_reason` other than the end of the answer, e.g. `length`), the parser's
    (`parse_conversation`) and the filter's (`conversation_problem`)."""
    if reply.finish_reason not in _FINISHED:
        return None, "truncated_output", f"finish_reason={reply.finish_reason!r}"
    try:
        messages = parse_conversation(reply.text)
    except ConversationFormatError as error:
        return None, error.reason, error.detail
    problem = conversation_problem(messages, max_turns)
    return (None, problem, f"{len(messages)} messages") if problem else (messages, None, None)


def _identity(teacher) -> dict[str, str]:
    return {"teacher": teacher.name, "model": teacher.model, "prompt_version": teacher.prompt_version}


def generate_one(teacher, molecule: Molecule, exemplars: list[Exemplar], config: DataGenerationConfig) -> Outcome:
    """Steps 2 and 3 for one molecule (the grounded teacher writes the conversation itself)."""
    seed = molecule_seed(config.seed, molecule.id)
    metadata: dict[str, Any] = {**_identity(teacher), "seed": seed}
    if isinstance(teacher, GroundedTeacher):
        mol = parse_smiles(molecule.smiles)
        conversation = teacher.converse(mol, molecule.description, molecule.iupac, seed, config.max_turns)
        messages, usage = conversation.messages, {}
        if (problem := conversation_problem(messages, config.max_turns)) is not None:
            return Outcome(molecule, "filtered", reason=problem, detail="grounded conversation")
        metadata.update(teacher.metadata(), provenance=conversation.provenance)
    else:
        candidates = [exemplar for exemplar in exemplars if exemplar.id != molecule.id]  # none about the molecule
        chosen = random.Random(seed).sample(candidates, min(config.num_exemplars, len(candidates)))
        prompt = generation_messages(molecule.smiles, molecule.description, molecule.iupac, chosen, config.max_turns)
        try:
            reply = teacher.complete(prompt, seed=seed)
        except TeacherError as error:
            if isinstance(error, TeacherFatalError):
                raise
            return Outcome(molecule, "failed", reason=error.reason, detail=error.detail)
        (messages, reason, detail), usage = judge_reply(reply, config.max_turns), reply.usage
        if messages is None:
            raw = reply.text[:_RAW_OUTPUT_LIMIT]
            return Outcome(molecule, "filtered", reason=reason, detail=detail, raw_output=raw, usage=usage)
        metadata.update(finish_reason=reply.finish_reason, exemplars=[exemplar.id for exemplar in chosen], usage=usage)
    metadata["context"] = {"description": molecule.description, "iupac": molecule.iupac}
    record = make_record(molecule.id, molecule.smiles, messages, "conversation", f"generated:{teacher.name}", metadata)
    return Outcome(molecule, "generated", record=record, usage=usage)


def _result(future: Future, teacher, state: RunState) -> Any:
    """The future's result, or None when it says the job stops (budget spent, interrupt, fatal error: noted in
    `state`; a fatal error stops the teacher's other requests too)."""
    try:
        return future.result()
    except BudgetExhausted:
        state.stopped = state.stopped or "budget_exhausted"
    except GenerationStopped:
        state.stopped = state.stopped or "interrupted"
    except TeacherFatalError as error:
        state.stopped, state.fatal = "fatal_error", error
        _stop(teacher)
    return None


def _exemplars(teacher, molecules: list[Molecule], config, executor, store, state: RunState) -> list[Exemplar]:
    """Step 1: the exemplars saved by an earlier run (or `config.exemplars_file`), else the seed conversations on
    `config.seed_exemplars` molecules drawn with `config.seed` that pass the filter, saved once all were answered."""
    if isinstance(teacher, GroundedTeacher) or config.num_exemplars <= 0:
        return []
    if (loaded := store.load_exemplars(config.exemplars_file and Path(config.exemplars_file))) is not None:
        return loaded
    chosen = random.Random(config.seed).sample(molecules, min(config.seed_exemplars, len(molecules)))

    def seed_one(molecule: Molecule) -> tuple[Exemplar | None, dict[str, int]] | None:
        """(the exemplar, None if filtered; token usage), or None when the request failed."""
        prompt = seed_messages(molecule.smiles, molecule.description, molecule.iupac, config.max_turns)
        try:
            reply = teacher.complete(prompt, seed=molecule_seed(config.seed, f"exemplar:{molecule.id}"))
        except TeacherFatalError:
            raise
        except TeacherError as error:
            logger.warning("Seed exemplar request failed: %s", error)
            return None
        messages, reason, _ = judge_reply(reply, config.max_turns)
        if messages is None:
            logger.warning("Seed exemplar for %s dropped: %s", molecule.id, reason)
            return None, reply.usage
        return Exemplar(molecule.id, molecule.smiles, molecule.description, molecule.iupac, messages), reply.usage

    results = []
    for future in [executor.submit(seed_one, molecule) for molecule in chosen]:
        results.append(result := _result(future, teacher, state))
        if result is not None:  # counted as each answer comes, so that an interrupted run still reports them
            state.tokens.update(result[1])
    exemplars = [exemplar for exemplar, _ in filter(None, results) if exemplar is not None]
    if all(results):
        store.save_exemplars(exemplars)
    elif state.stopped is None:
        logger.warning("Some seed requests failed: this run uses %d exemplars, the next seeds again.", len(exemplars))
    if not exemplars and state.stopped is None:
        logger.warning("No seed exemplar is usable: conversations are generated zero-shot.")
    return exemplars


def _stop(teacher) -> None:
    if (event := getattr(teacher, "stop_event", None)) is not None:
        event.set()


def _record(store: ConversationStore, outcome: Outcome, state: RunState) -> None:
    state.tokens.update(outcome.usage)
    state.counts[outcome.status] += 1
    if outcome.status == "generated":
        store.add_record(outcome.record)
        return
    status = {"id": outcome.molecule.id, "status": outcome.status, "reason": outcome.reason, "detail": outcome.detail}
    if outcome.raw_output is not None:
        status["raw_output"] = outcome.raw_output
    store.add_status({**status, **store.identity})
    if outcome.status == "failed":
        logger.warning("%s failed: %s (%s)", outcome.molecule.id, outcome.reason, outcome.detail)


def _run_molecules(teacher, todo, exemplars, config, executor, workers, store, state, progress) -> None:
    """Step 2 + 3 over `todo`, at most 2 x workers submitted at a time, writing each outcome as it arrives."""
    queue, in_flight = iter(todo), set()

    def fill() -> None:
        for molecule in itertools.islice(queue, 2 * workers - len(in_flight) if state.stopped is None else 0):
            in_flight.add(executor.submit(generate_one, teacher, molecule, exemplars, config))

    fill()
    while in_flight:
        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        in_flight.difference_update(done)
        for future in done:
            if (outcome := _result(future, teacher, state)) is not None:
                _record(store, outcome, state)
                progress.update(1)
        fill()


def generate_conversations(
    molecules: MoleculeInput | list[Molecule], teacher, output: str | Path, config: DataGenerationConfig | None = None
) -> dict[str, Any]:
    """Run the pipeline over `molecules` with `teacher`, appending to `output`; returns the summary (also written to
    `<output>.summary.json`). Molecules already generated or filtered are skipped, failed ones retried. Stops cleanly
    when the teacher's request budget is spent (`summary["stopped"] == "budget_exhausted"`). Raises
    `TeacherFatalError` (after writing the summary) when the teacher refuses every request, e.g. a wrong API key."""
    from tqdm.auto import tqdm

    config = config or DataGenerationConfig()
    if not isinstance(molecules, MoleculeInput):
        molecules = MoleculeInput(molecules=list(molecules), source="molecules", rows=len(molecules))
    store = ConversationStore(output)

    def kept() -> str:
        return (
            f"The {len(store.records)} conversations in {store.path} are kept (a half-written last line is cut on "
            "rerun): the rerun continues with the other molecules."
        )

    with disk_full_guard(store.path.parent, f"conversations to {store.path.name}", kept=kept):
        store.open(_identity(teacher), allow_mixed=config.allow_mixed, overwrite=config.overwrite)
        started = time.monotonic()
        budget = getattr(teacher, "budget", None)
        used_before = budget.used if budget is not None else 0
        state = RunState()
        workers = min(config.concurrency, teacher.max_concurrency or config.concurrency)
        exemplars: list[Exemplar] = []
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llamo-teacher")
        try:
            exemplars = _exemplars(teacher, molecules.molecules, config, executor, store, state)
            todo = [molecule for molecule in molecules.molecules if not store.is_final(molecule.id)]
            bar = {"unit": "mol", "desc": "generate-data", "file": sys.stderr, "disable": not config.show_progress}
            with tqdm(total=len(molecules.molecules), initial=len(molecules.molecules) - len(todo), **bar) as progress:
                if state.stopped is None:
                    _run_molecules(teacher, todo, exemplars, config, executor, workers, store, state, progress)
        except KeyboardInterrupt:
            state.stopped = "interrupted"
            _stop(teacher)
            raise
        finally:
            executor.shutdown(wait=state.stopped != "interrupted", cancel_futures=True)
            store.close()
            state.requests = (budget.used - used_before) if budget is not None else 0
            summary = build_summary(store, molecules, config, state, len(exemplars), time.monotonic() - started, budget)
            write_json_atomically(store.summary_path, summary)
    if state.stopped == "budget_exhausted":
        logger.warning(
            "Request budget of %s spent: %d molecules left; rerun the same command with a larger budget to continue.",
            summary["settings"]["max_requests"],
            summary["pending"],
        )
    if state.fatal is not None:
        raise state.fatal
    return summary


def generate_from_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """One `generate_conversations` run described by a dict, as a training recipe's `conversations` step gives it.

    Keys: `input`, `output` (required), `teacher` (default `grounded`) and `build_teacher`'s options, `read_molecules`'s
    `format`, `id_prefix` and `limit`, and `DataGenerationConfig` fields. An unknown key is a `ValueError`."""
    options = {key: value for key, value in settings.items() if value is not None}
    if missing := [key for key in ("input", "output") if options.get(key) in (None, "")]:
        raise ValueError(f"The conversations settings need {' and '.join(missing)}.")
    source, output, kind = options.pop("input"), options.pop("output"), options.pop("teacher", "grounded")
    reading = {key: options.pop(key) for key in ("format", "id_prefix", "limit") if key in options}
    chosen = {item.name: options.pop(item.name) for item in fields(DataGenerationConfig) if item.name in options}
    config = DataGenerationConfig(**{"show_progress": False, **chosen})
    teacher_options = set(inspect.signature(build_teacher).parameters) - {"kind", "max_turns"}
    if unknown := sorted(set(options) - teacher_options):
        raise ValueError(f"Unknown conversations settings {unknown}: see llamo generate-data --help.")
    teacher = build_teacher(kind, max_turns=config.max_turns, **options)
    molecules = read_molecules(source, reading.pop("format", "auto"), **reading)
    return generate_conversations(molecules, teacher, output, config)
