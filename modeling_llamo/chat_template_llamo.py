"""Chat templates of LLaMo, where assistant turns are in a rendered conversation, and in-context neighbours.

This remote-code file imports only the standard library, so the defaults shared with the command line live here."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

LLAMA2_SYSTEM_PROMPT = "The following is a conversation between a curious human and AI assistant."

# The prompt of the released LLaMo code (LLaMA-2 chat format). A system message, if given, replaces the default one.
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '" + LLAMA2_SYSTEM_PROMPT + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first -%}"
    "{{- bos_token + '[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- bos_token + '[INST] ' + message['content'] + ' [/INST]' -}}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' ' -}}{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

CHAT_TEMPLATES = {"llama2": LLAMA2_CHAT_TEMPLATE}
"""Built-in chat templates, selectable by name wherever a chat template is accepted."""

GRAPH_TOKEN = "<graph>"
"""The placeholder that marks where a molecule goes in a prompt (the processor's default `graph_token`)."""
DEFAULT_MAX_ATOMS = 512
"""Larger molecules are refused by the processor, and left out of training data and molecule indexes."""
DEFAULT_NEIGHBOURS = 2
"""In-context neighbours per question when an index is given (chosen by measurement: see BENCHMARKS.md)."""

NEIGHBOURS_INTRO = "Known molecules similar to the query, with their answers:"
NEIGHBOURS_QUERY = "Query molecule:"
NEIGHBOUR_ANSWER_MAX_CHARS = 2000
"""A neighbour's answer longer than this is cut in the prompt (at a space, ending " ..."), so that one long entry of a
user's index cannot fill the model's context (ChEBI-20's longest description: 980 characters)."""
NAME_HINT = "Its IUPAC name is {name}."
"""How `add_name_hint` gives the query molecule's name (e.g. a rule-based namer's) before the question."""

_USER_SENTINEL = "LLAMOUSERTURNSENTINEL"
_ANSWER_SENTINEL = "LLAMOANSWERSENTINEL"

Render = Callable[[list[dict[str, Any]], bool], str]
"""`render(messages, add_generation_prompt) -> text`: a chat template applied to plain-string messages."""


def builtin_or_jinja(chat_template: str, names: set[str] = frozenset(CHAT_TEMPLATES)) -> str:
    """A built-in template by its name, or `chat_template` itself when it is Jinja; a `ValueError` for any other
    string, which can only be a name misspelled (it would render as that text, without the conversation)."""
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if "{{" in chat_template or "{%" in chat_template:
        return chat_template
    raise ValueError(f"Unknown chat template {chat_template[:40]!r}: a name of {sorted(names)}, or a Jinja template.")


def resolve_chat_template(chat_template: str | None, *owners: str | dict | None) -> str:
    """The template to render: `chat_template` (the name of one of the `owners`' named templates, a built-in name, or a
    Jinja string), else the first owner's template (processor, then tokenizer; of a dict of named templates, its
    `"default"`)."""
    if chat_template is not None:
        named = (owner[chat_template] for owner in owners if isinstance(owner, dict) and chat_template in owner)
        if (found := next(named, None)) is not None:
            return found
        names = {name for owner in owners if isinstance(owner, dict) for name in owner} | set(CHAT_TEMPLATES)
        return builtin_or_jinja(chat_template, names)
    for owner in filter(None, owners):
        if not isinstance(owner, dict):
            return CHAT_TEMPLATES.get(owner, owner)
        if "default" not in owner:
            raise ValueError(
                f"The chat templates are named {sorted(owner)[:8]}, none of them 'default': pass `chat_template` with "
                "one of these names."
            )
        return owner["default"]
    raise ValueError(
        "No chat template: the processor and its tokenizer have none. Pass `chat_template` (a Jinja string or one of "
        f"{sorted(CHAT_TEMPLATES)})."
    )


_CONTENT = r"""(?:\[\s*['"]content['"]\s*\]|\.content\b)"""
_READS_BLOCKS = re.compile(rf"{_CONTENT}\s*\[\s*-?\d|\bin\s+[\w.]+{_CONTENT}")


@lru_cache(maxsize=64)
def reads_content_blocks(template: str) -> bool:
    """Whether a chat template indexes or loops over a message's content (`message['content'][0]['text']`, `for block
    in message['content']`: transformers' multimodal convention) instead of printing it as one string."""
    return _READS_BLOCKS.search(template) is not None


def as_content_blocks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every string content as one text block, for templates that read content blocks."""
    return [
        {**message, "content": [{"type": "text", "text": message["content"]}]}
        if isinstance(message.get("content"), str)
        else message
        for message in messages
    ]


def assistant_spans(
    messages: list[dict[str, Any]], render: Render, index: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the `(start, end)` character span of every assistant turn: the text the template
    adds between the prompt before that turn and the conversation through the turn (answer and end-of-turn text). A
    `ValueError` where the template renders a prefix differently from the start of the whole conversation."""
    text = render(messages, False)
    spans = []
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:position], True)
        through = render(messages[: position + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError(
                f"Conversation {index}: the chat template does not render prefixes of the conversation consistently, "
                "so assistant turns cannot be located for the loss mask."
            )
        spans.append((len(before), len(through)))
    return text, spans


def answer_marker(render: Render) -> str | None:
    """The text a chat template puts between a user turn and the assistant's answer (e.g. `[/INST]`), or `None`."""
    turns = [{"role": "user", "content": _USER_SENTINEL}, {"role": "assistant", "content": _ANSWER_SENTINEL}]
    rendered = render(turns, False)
    start, end = rendered.find(_USER_SENTINEL), rendered.find(_ANSWER_SENTINEL)
    marker = rendered[start + len(_USER_SENTINEL) : end].strip() if 0 <= start < end else ""
    return marker or None


def span_token_mask(offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for every token (character `offsets` `(start, end)` from a fast tokenizer) that overlaps one of the character
    `spans`, else 0; empty tokens (padding, special tokens added by the tokenizer) are 0."""
    return [int(end > start and any(start < b and end > a for a, b in spans)) for start, end in offsets]


def join_parts(parts: Sequence[str]) -> str:
    """Content-block texts joined by a space, or nothing after a part that ends a line."""
    text = ""
    for part in filter(None, parts):
        text += part if not text or text.endswith("\n") else " " + part
    return text


def add_neighbours(conversation: list[dict[str, Any]], neighbours: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `conversation` with known molecules and their answers (`neighbours`: dicts with `smiles` and
    `answer`, or an index's `Neighbour`s, most similar first) before the question, as in-context examples. The first
    user turn that holds a molecule block (the query) becomes: `NEIGHBOURS_INTRO`, one line per neighbour (its molecule
    block, then its answer), then `NEIGHBOURS_QUERY` and the turn's own blocks. With the default SMILES display, two
    neighbours read:

        Known molecules similar to the query, with their answers:
        1. CCO<graph> The molecule is ethanol ...
        2. CCCO<graph> The molecule is propan-1-ol ...
        Query molecule: CCN<graph> Describe this molecule."""
    if not neighbours:
        return list(conversation)
    messages = [dict(message) for message in conversation]
    if (query := query_turn(messages)) is None:
        raise ValueError("add_neighbours needs a user turn with a molecule block (the query molecule).")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": NEIGHBOURS_INTRO + "\n"}]
    for rank, neighbour in enumerate(neighbours, start=1):
        entry = neighbour.to_dict() if hasattr(neighbour, "to_dict") else neighbour  # an index's `Neighbour` too
        blocks += [
            {"type": "text", "text": f"{rank}."},
            {"type": "molecule", "smiles": entry["smiles"]},
            {"type": "text", "text": as_prompt_text(entry["answer"]) + "\n"},
        ]
    query["content"] = [*blocks, {"type": "text", "text": NEIGHBOURS_QUERY}, *query["content"]]
    return messages


def as_prompt_text(answer: Any, limit: int | None = NEIGHBOUR_ANSWER_MAX_CHARS) -> str:
    """A neighbour's answer as `add_neighbours` writes it into the prompt: on one line, runs of white space single,
    cut to `limit` characters (None: whole)."""
    text = " ".join(str(answer).split())
    return text if limit is None or len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def query_turn(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first user turn holding a molecule block (the query), or None."""
    for message in messages:
        content = message.get("content")
        if message.get("role") != "user" or isinstance(content, str) or not content:
            continue
        if any(isinstance(block, Mapping) and block.get("type") == "molecule" for block in content):
            return message
    return None


def add_name_hint(conversation: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """A copy of `conversation` whose query turn (the first user turn with a molecule block) gives the molecule's
    name before its question: its first text block after the molecule starts with `NAME_HINT` ("CCO<graph> Its IUPAC
    name is ethanol. Describe this molecule.")."""
    messages = [dict(message) for message in conversation]
    if (query := query_turn(messages)) is None:
        raise ValueError("add_name_hint needs a user turn with a molecule block (the query molecule).")
    hint = NAME_HINT.format(name=" ".join(name.split()))
    content = [dict(block) if isinstance(block, Mapping) else block for block in query["content"]]
    kinds = [block.get("type") if isinstance(block, Mapping) else None for block in content]
    last_molecule = len(kinds) - 1 - kinds[::-1].index("molecule")
    if "text" in kinds[last_molecule:]:
        block = content[kinds.index("text", last_molecule)]
        block["text"] = f"{hint} {block['text'].lstrip()}"
    else:
        content.append({"type": "text", "text": hint})
    query["content"] = content
    return messages
