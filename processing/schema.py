"""The one dataset schema of llamo: a conversation about one molecule (or several).

Every loader produces rows of this schema, so that training, evaluation and instruction-data generation read the same:

- `id`: a stable record id, unique within its source (e.g. `chebi20:5280343`, `qm9:gdb_17:homo`).
- `smiles`: the molecule as given; further molecules go, in order, in the metadata under `molecules`.
- `messages`: `[{"role": "user" | "assistant", "content": str}, ...]`, text only: the molecules are attached to the
  first user turn as content blocks when rendered (`to_chat_messages`), so every chat template and SMILES mode works.
- `task`: one of `TASKS` or another name a user chooses; `source`: where the row comes from (`chebi20`, `qm9`, ...).
- `metadata`: a JSON string with anything task-specific (property QA: `{"property": "HOMO", "value": -0.25,
  "unit": "Hartree"}`; generated data: teacher, model, prompt version)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import datasets

TASKS = ("description", "iupac", "property", "conversation")
MAX_TURNS = 256
"""The most turns a record may hold: locating the assistant turns of a conversation (for the loss mask) renders each
of its prefixes, so its cost grows with the square of the turns (1,024 turns take seconds per row)."""

CONVERSATION_FEATURES = datasets.Features(
    {
        **{name: datasets.Value("string") for name in ("id", "smiles")},
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        **{name: datasets.Value("string") for name in ("task", "source", "metadata")},
    }
)


def make_record(
    record_id: str,
    smiles: str | list[str],
    messages: list[dict[str, str]],
    task: str,
    source: str,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the conversation schema; checks the turn structure (user first, roles alternate, no empty turn, at
    most `MAX_TURNS`), that further molecules (metadata `molecules`) are SMILES strings, and that every text is
    valid Unicode (a lone surrogate, e.g. from a JSON `\\ud800` escape, cannot be stored). A `ValueError` names the
    record and the culprit."""
    if len(messages) > MAX_TURNS:
        raise ValueError(f"Record {record_id}: {len(messages)} turns, over the limit of {MAX_TURNS}.")
    if not messages or messages[0].get("role") != "user":
        raise ValueError(f"Record {record_id}: a conversation starts with a user turn.")
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(f"Record {record_id}: turn {index} should be {expected}, got {message.get('role')!r}.")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise ValueError(f"Record {record_id}: turn {index} is empty.")
    if not isinstance(smiles, str):
        molecules = list(smiles)
        if not molecules or not all(isinstance(item, str) for item in molecules):
            raise ValueError(f"Record {record_id}: `smiles` must be a SMILES string or a non-empty list of them.")
        smiles, metadata = molecules[0], {**(metadata or {}), "molecules": molecules[1:]} if molecules[1:] else metadata
    further = (metadata or {}).get("molecules", [])
    if not isinstance(further, list) or not all(isinstance(item, str) for item in further):
        raise ValueError(f"Record {record_id}: metadata `molecules` must be a list of SMILES strings.")
    record = {
        "id": record_id,
        "smiles": smiles,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "task": task,
        "source": source,
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    for name in ("id", "smiles", "task", "source", "messages"):
        try:
            json.dumps(record[name], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"Record {record_id!a:.80}: its {name} holds a lone surrogate ({error.reason}).") from None
    return record


def records_dataset(records: Iterable[dict[str, Any]]) -> datasets.Dataset:
    """Rows of this schema as a `datasets.Dataset` with `CONVERSATION_FEATURES` (also when there are none)."""
    rows = list(records)
    return datasets.Dataset.from_dict(
        {name: [row[name] for row in rows] for name in CONVERSATION_FEATURES}, features=CONVERSATION_FEATURES
    )


def record_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The decoded `metadata` of a row."""
    raw = record.get("metadata") or "{}"
    metadata = json.loads(raw) if isinstance(raw, str) else dict(raw)
    if not isinstance(metadata, dict | None):
        what = type(metadata).__name__
        raise ValueError(f"Record {record.get('id')!a:.80}: metadata is a JSON {what}, not an object.")
    return metadata or {}


def to_chat_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's conversation for `LlamoProcessor.apply_chat_template`: the first user turn gets one molecule content
    block (`{"type": "molecule", "smiles": ...}`) per molecule of the row, in order (its `smiles`, then any further
    molecules listed in the metadata under `molecules`, e.g. the second of "compare these two") before its text."""
    molecules = [record["smiles"], *record_metadata(record).get("molecules", [])]
    blocks = [{"type": "molecule", "smiles": smiles} for smiles in molecules]
    messages: list[dict[str, Any]] = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if messages:
        messages[0]["content"] = [*blocks, {"type": "text", "text": messages[0]["content"]}]
    return messages
