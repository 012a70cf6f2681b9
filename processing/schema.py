"""The one dataset schema of llamo: a conversation about one molecule.

Every loader (descriptions, IUPAC names, property QA, generated multi-turn conversations) produces rows of this
schema, so that training, evaluation and instruction-data generation read the same thing:

- `id`: a stable record id, unique within its source (e.g. `chebi20:5280343`, `qm9:gdb_17:homo`).
- `smiles`: the molecule as given by the source.
- `messages`: the conversation as `[{"role": "user" | "assistant", "content": str}, ...]`, text only. The molecule is
  not written into the text: it belongs to the first user turn and is attached as a molecule content block when the
  conversation is rendered (see `to_chat_messages`), so that every chat template and SMILES display mode works.
- `task`: one of `TASKS` (`description`, `iupac`, `property`, `conversation`) or another name a user chooses.
- `source`: where the row comes from (`chebi20`, `pubchem324k`, `mol-instructions`, `chemicals`, `qm9`,
  `generated:<teacher>`, ...).
- `metadata`: a JSON string with anything task-specific (for property QA: `{"property": "HOMO", "value": -0.25,
  "unit": "Hartree"}`; for generated data: teacher, model, prompt version).
"""

from __future__ import annotations

import json
from typing import Any

import datasets

TASKS = ("description", "iupac", "property", "conversation")

CONVERSATION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "smiles": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "task": datasets.Value("string"),
        "source": datasets.Value("string"),
        "metadata": datasets.Value("string"),
    }
)


def make_record(
    record_id: str,
    smiles: str,
    messages: list[dict[str, str]],
    task: str,
    source: str,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the conversation schema; checks the turn structure (user first, roles alternate, no empty turn)."""
    if not messages or messages[0].get("role") != "user":
        raise ValueError(f"Record {record_id}: a conversation starts with a user turn.")
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(f"Record {record_id}: turn {index} should be {expected}, got {message.get('role')!r}.")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise ValueError(f"Record {record_id}: turn {index} is empty.")
    return {
        "id": record_id,
        "smiles": smiles,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "task": task,
        "source": source,
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }


def record_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The decoded `metadata` of a row."""
    raw = record.get("metadata") or "{}"
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def to_chat_messages(record: dict[str, Any], molecule: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The row's conversation for `LlamoProcessor.apply_chat_template`: the first user turn gets a molecule content
    block (`{"type": "molecule", "smiles": ...}`, or `molecule` if given, e.g. with a precomputed graph) before its
    text."""
    block = molecule if molecule is not None else {"type": "molecule", "smiles": record["smiles"]}
    messages = []
    for index, message in enumerate(record["messages"]):
        if index == 0:
            content = [block, {"type": "text", "text": message["content"]}]
            messages.append({"role": message["role"], "content": content})
        else:
            messages.append({"role": message["role"], "content": message["content"]})
    return messages


__all__ = ["CONVERSATION_FEATURES", "TASKS", "make_record", "record_metadata", "to_chat_messages"]
