"""Prompts, teacher output format and parser for LLaMo's instruction-data generation.

The teacher sees one molecule (SMILES, description sentences, IUPAC name when known) and answers with one JSON object
`{"messages": [{"role": "user", "content": "..."}, ...]}`, which `parse_conversation` reads (also inside a code fence
or prose), falling back to plain "User: ... / Assistant: ..." lines.

Every change to the wording below must bump `PROMPT_VERSION`, which every generated record carries."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

PROMPT_VERSION = "llamo-conversation-v1"

_SYSTEM_PROMPT = """\
You are an AI assistant specialised in chemistry. In every request you are shown one molecule: {what_you_see}. \
Write a conversation about this molecule between a curious user and you, the assistant. Answer as though you were \
looking at the molecule itself: never mention a description, a text, a SMILES string or a name you were given, and \
do not copy the SMILES into the conversation; refer to it as "this molecule" or "it".

Make the questions diverse and the answers informative and precise. Where the information allows, cover the class \
of compounds it belongs to, its conjugate acid or base, its functional groups, its chemical or biological roles, \
its structure, and the compounds it derives from or is related to{iupac_topic}. Ask only questions that the \
information lets you answer with confidence: leave out anything you would have to guess.

Write between 2 and {max_turns} question-answer pairs. Reply with a single JSON object and nothing else:
{{"messages": [{{"role": "user", "content": "..."}}, {{"role": "assistant", "content": "..."}}]}}
The user speaks first, the roles alternate, and the conversation ends with the assistant's answer."""

SEED_INSTRUCTION = (
    "Write one example conversation about this molecule, following the rules above. It will serve as a model for "
    "many later conversations, so make the questions varied and the answers careful."
)
"""Step 1 of the pipeline: the short instruction that seeds the exemplar conversations."""


def molecule_context(smiles: str, description: str, iupac: str | None = None) -> str:
    """What the teacher sees of one molecule (one `SMILES:` line, then the IUPAC name and description)."""
    return "\n".join(
        ["Molecule", f"SMILES: {smiles}", *([f"IUPAC name: {iupac}"] if iupac else []), f"Description: {description}"]
    )


@dataclass
class Exemplar:
    """One in-context example: a molecule's context and a conversation about it."""

    id: str
    smiles: str
    description: str
    iupac: str | None
    messages: list[dict[str, str]]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exemplar:
        return cls(data["id"], data["smiles"], data["description"], data.get("iupac"), list(data["messages"]))


def seed_messages(smiles: str, description: str, iupac: str | None, max_turns: int) -> list[dict[str, str]]:
    """Chat messages of step 1: system prompt + one molecule + the seed instruction."""
    *system, molecule = generation_messages(smiles, description, iupac, [], max_turns)
    return [*system, {"role": "user", "content": f"{molecule['content']}\n\n{SEED_INSTRUCTION}"}]


def generation_messages(
    smiles: str, description: str, iupac: str | None, exemplars: list[Exemplar], max_turns: int
) -> list[dict[str, str]]:
    """Chat messages of step 2: system prompt, each exemplar as a (context, conversation) pair, then the molecule."""
    if iupac is not None:
        seen, topic = "its SMILES string, a few sentences describing it, and its IUPAC name", ", and its IUPAC name"
    else:
        seen, topic = "its SMILES string and a few sentences describing it", ""
    system = _SYSTEM_PROMPT.format(what_you_see=seen, iupac_topic=topic, max_turns=max_turns)
    messages = [{"role": "system", "content": system}]
    for exemplar in exemplars:
        turns = [{"role": m["role"], "content": m["content"]} for m in exemplar.messages]
        messages += [
            {"role": "user", "content": molecule_context(exemplar.smiles, exemplar.description, exemplar.iupac)},
            {"role": "assistant", "content": json.dumps({"messages": turns}, ensure_ascii=False)},
        ]
    return [*messages, {"role": "user", "content": molecule_context(smiles, description, iupac)}]


# --- parsing the teacher's output -----------------------------------------------------------------------------------

_ROLES = {
    **dict.fromkeys(("user", "human", "question", "q"), "user"),
    **dict.fromkeys(("assistant", "ai", "gpt", "answer", "a"), "assistant"),
}
_TURN_KEYS = ("messages", "conversation", "turns", "dialogue")
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_LINE_TURN = re.compile(r"^\s*(?:\*\*)?(user|human|question|q|assistant|ai|answer|a)(?:\*\*)?\s*:\s*(.*)$", re.I)


class ConversationFormatError(ValueError):
    """The teacher's output is not a conversation; `reason` is `unparsable` or `broken_turns`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _json_candidates(text: str) -> list[Any]:
    """JSON values found in `text`: the whole text, code-fenced blocks, then each `{`/`[` where a value starts."""
    found, decoder = [], json.JSONDecoder()
    for chunk in [text, *(match.group(1) for match in _FENCE.finditer(text))]:
        chunk = chunk.strip()
        with contextlib.suppress(ValueError):
            found.append(json.loads(chunk))
            continue
        for match in re.finditer(r"[{\[]", chunk):
            with contextlib.suppress(ValueError):
                value, _ = decoder.raw_decode(chunk, match.start())
                if isinstance(value, (dict, list)) and value:
                    found.append(value)
                    break
    return found


def _messages_from_json(turns: list[Any]) -> list[dict[str, str]]:
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversationFormatError("broken_turns", f"turn {index} is not an object")
        if "role" in turn or "content" in turn:
            role = _ROLES.get(str(turn.get("role", "")).strip().lower())
            content = turn.get("content")
            if role is None or not isinstance(content, str):
                raise ConversationFormatError("broken_turns", f"turn {index} has no valid role and text content")
            messages.append({"role": role, "content": content.strip()})
            continue
        # {"user": question, "assistant": answer} pairs
        pair = {_ROLES.get(key.strip().lower()): text for key, text in turn.items()}
        if set(pair) - {"user", "assistant"} or not all(isinstance(text, str) for text in pair.values()):
            raise ConversationFormatError("broken_turns", f"turn {index} has unknown keys {sorted(turn)}")
        messages.extend({"role": role, "content": pair[role].strip()} for role in ("user", "assistant") if role in pair)
    return messages


def parse_conversation(text: str) -> list[dict[str, str]]:
    """The `[{"role", "content"}, ...]` messages written by the teacher, in order and unfiltered. Raises
    `ConversationFormatError` when no conversation can be read (`unparsable`) or its turns are not role/content
    objects (`broken_turns`)."""
    if not isinstance(text, str) or not text.strip():
        raise ConversationFormatError("unparsable", "empty output")
    for value in _json_candidates(text):
        if isinstance(value, dict):  # the turns under one of `_TURN_KEYS`
            value = next((value[key] for key in _TURN_KEYS if isinstance(value.get(key), list)), None)
        if isinstance(value, list):
            return _messages_from_json(value)
    messages: list[dict[str, str]] = []  # plain "User: ... / Assistant: ..." lines
    for line in text.splitlines():
        if match := _LINE_TURN.match(line):
            messages.append({"role": _ROLES[match.group(1).lower()], "content": match.group(2).strip()})
        elif messages:
            messages[-1]["content"] = f"{messages[-1]['content']}\n{line}".strip()
    if messages:
        return messages
    raise ConversationFormatError("unparsable", "neither a JSON conversation nor User:/Assistant: lines")


def conversation_problem(messages: list[dict[str, str]], max_turns: int) -> str | None:
    """Step 3's checks on parsed messages: the first failing reason, or None for a conversation to keep. Reasons:
    `empty_conversation`, `broken_turns` (not user first, or roles not alternating), `unanswered_question` (ends with a
    user turn), `empty_turn`, `duplicate_turn` (the same question or answer twice, ignoring case and spacing),
    `too_many_turns` (more than `max_turns` question-answer pairs)."""
    if not messages:
        return "empty_conversation"
    for index, message in enumerate(messages[:-1] if messages[-1]["role"] == "user" else messages):
        if message["role"] != ("user" if index % 2 == 0 else "assistant"):
            return "broken_turns"
    if messages[-1]["role"] != "assistant":
        return "unanswered_question" if len(messages) % 2 == 1 else "broken_turns"
    if any(not message["content"].strip() for message in messages):
        return "empty_turn"
    if len({(message["role"], " ".join(message["content"].lower().split())) for message in messages}) < len(messages):
        return "duplicate_turn"
    return "too_many_turns" if len(messages) // 2 > max_turns else None
