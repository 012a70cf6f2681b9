"""The summary of an instruction-data run, `<output>.summary.json` (its keys: `SUMMARY_KEYS`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .instruction_store import ConversationStore
from .teachers import RequestBudget, TeacherFatalError

if TYPE_CHECKING:
    from .instruction_data import DataGenerationConfig
    from .instruction_inputs import MoleculeInput

SUMMARY_VERSION = 1
SUMMARY_KEYS = {
    "summary_version": "version of this layout (1)",
    "output": "the output JSONL path",
    "input": "what was read (path, or a description of the dataset)",
    "teacher": "openai | transformers | grounded",
    "model": "the teacher's model (grounded: rdkit-facts)",
    "prompt_version": "version of the prompts (grounded: of its templates)",
    "molecules": "valid molecules in the input (after --limit)",
    "input_rows": "rows read from the input",
    "skipped_rows": "input rows skipped",
    "skipped_by_reason": "{missing_smiles, invalid_smiles, missing_description, duplicate_id, unreadable_row: n}",
    "generated": "records in the output file",
    "generated_by_source": "{record source (generated:<teacher>): n}",
    "filtered": "molecules dropped by the filter (final; not retried)",
    "filtered_by_reason": "{reason: n}, reasons of `instruction_data.judge_reply`",
    "failed": "molecules whose teacher request failed (retried by the next run)",
    "failed_by_reason": "{reason: n}: http_<status>, retries_exhausted, invalid_response, teacher_exception",
    "pending": "input molecules not done yet (budget spent, stopped)",
    "complete": "true when no input molecule is pending or failed",
    "stopped": "null, or why the run stopped early: budget_exhausted | fatal_error | interrupted",
    "exemplars": "number of in-context exemplars available (step 1)",
    "mean_turns": "mean question-answer pairs per generated conversation",
    "this_run": "{generated, filtered, failed, requests, prompt_tokens, completion_tokens, seconds} of this run only",
    "settings": "{max_turns, num_exemplars, seed_exemplars, seed, concurrency, max_requests, limit}",
}
"""The keys of `<output>.summary.json` and what they mean. Keys are only ever added, never renamed."""


@dataclass
class RunState:
    """What one run did: outcomes and token counts, why it stopped (and the fatal error), requests sent."""

    counts: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    stopped: str | None = None
    fatal: TeacherFatalError | None = None
    requests: int = 0


def build_summary(
    store: ConversationStore,
    molecules: MoleculeInput,
    config: DataGenerationConfig,
    state: RunState,
    exemplars: int,
    seconds: float,
    budget: RequestBudget | None,
) -> dict[str, Any]:
    """The summary of an output after a run (see `SUMMARY_KEYS`)."""
    undone = {sid: s for sid, s in store.statuses.items() if sid not in store.records}
    filtered, failed = (
        Counter(s["reason"] for s in undone.values() if s["status"] == kind) for kind in ("filtered", "failed")
    )
    pending = sum(1 for m in molecules.molecules if m.id not in store.records and m.id not in undone)
    failed_in_input = sum(1 for m in molecules.molecules if undone.get(m.id, {}).get("status") == "failed")
    turns = [len(record["messages"]) // 2 for record in store.records.values()]
    return {
        "summary_version": SUMMARY_VERSION,
        "output": str(store.path),
        "input": molecules.source,
        **store.identity,
        "molecules": len(molecules.molecules),
        "input_rows": molecules.rows,
        "skipped_rows": sum(molecules.skipped.values()),
        "skipped_by_reason": dict(sorted(molecules.skipped.items())),
        "generated": len(store.records),
        "generated_by_source": dict(sorted(Counter(r["source"] for r in store.records.values()).items())),
        "filtered": sum(filtered.values()),
        "filtered_by_reason": dict(sorted(filtered.items())),
        "failed": sum(failed.values()),
        "failed_by_reason": dict(sorted(failed.items())),
        "pending": pending,
        "complete": pending == 0 and failed_in_input == 0,
        "stopped": state.stopped,
        "exemplars": exemplars,
        "mean_turns": round(sum(turns) / len(turns), 3) if turns else 0.0,
        "this_run": {
            **{status: state.counts[status] for status in ("generated", "filtered", "failed")},
            "requests": state.requests,
            **{tokens: state.tokens[tokens] for tokens in ("prompt_tokens", "completion_tokens")},
            "seconds": round(seconds, 3),
        },
        "settings": {
            **{name: getattr(config, name) for name in ("max_turns", "num_exemplars", "seed_exemplars", "seed")},
            "concurrency": config.concurrency,
            "max_requests": budget.max_requests if budget is not None else None,
            "limit": molecules.limit,
        },
    }


def read_summary(output: str | Path) -> dict[str, Any] | None:
    """An earlier run's `<output>.summary.json`; None if there is none yet or it is unreadable (rewritten next run)."""
    try:
        summary = json.loads(ConversationStore(output).summary_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable account of a summary."""

    def reasons(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    lines = [
        f"{summary['generated']} generated, {summary['filtered']} filtered{reasons(summary['filtered_by_reason'])}, "
        f"{summary['failed']} failed{reasons(summary['failed_by_reason'])}, {summary['pending']} pending, "
        f"{summary['skipped_rows']} input rows skipped{reasons(summary['skipped_by_reason'])}.",
        f"Teacher {summary['teacher']} ({summary['model']}), prompt version {summary['prompt_version']}; "
        f"{summary['this_run']['requests']} requests this run. Output: {summary['output']}",
    ]
    if summary["stopped"] == "budget_exhausted":
        lines.append(
            f"Stopped: the request budget ({summary['settings']['max_requests']}) is spent; rerun the same command "
            f"with a larger --max-requests to do the {summary['pending']} pending molecules."
        )
    elif summary["failed"]:
        lines.append("Rerun the same command to retry the failed molecules.")
    return "\n".join(lines)
