"""The demo's conversation: the page's chat history turned into LLaMo messages, and an answer streamed from a
background generation thread that the user can stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from llamo.chat_template_llamo import as_prompt_text
from llamo.pipeline_llamo import LlamoMoleculePipeline, rank_answers
from llamo.processing.schema import to_chat_messages

from . import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_CAP

MAX_EXCHANGES = 8
"""Only the last question/answer pairs are sent back to the model; older ones fall out of the prompt."""
STREAM_TIMEOUT_S = 300.0
"""A generation thread silent for this long ends the answer rather than holding the page."""
RENDER_OPTIONS = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}
"""How the pipeline renders a prompt (its defaults), for scoring answers after it."""


def content_text(content) -> str:
    """The plain text of a chat message's content: a string, a `{"type": "text", "text": ...}` block, or a list of
    them (the form a Gradio Chatbot hands back)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    return " ".join(part for part in (content_text(item) for item in content) if part)


def exchanges(history: Sequence[dict]) -> list[tuple[str, str]]:
    """(question, answer) pairs of a chat history in the messages format; an unanswered last question is dropped."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for message in history:
        text = content_text(message.get("content"))
        if message.get("role") == "user":
            question = text
        elif message.get("role") == "assistant" and question is not None:
            pairs.append((question, text))
            question = None
    return pairs


def conversation_messages(
    smiles: str, history: Sequence[dict], question: str, max_exchanges: int = MAX_EXCHANGES
) -> list[dict]:
    """LLaMo messages for a new `question` after the last `max_exchanges` exchanges of `history` (the page's
    messages); the molecule goes into the first user turn only, as in training (`to_chat_messages`)."""
    turns: list[dict] = []
    for user_text, answer in exchanges(history)[-max_exchanges:] if max_exchanges > 0 else []:
        turns += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
    return to_chat_messages({"smiles": smiles, "messages": [*turns, {"role": "user", "content": question}]})


class StopOnEvent(StoppingCriteria):
    """Ends generation once any of `events` is set."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stopped = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)


def generation_settings(max_new_tokens: int, do_sample: bool = False, temperature: float = 0.7) -> dict:
    """`generate` keyword arguments, with `max_new_tokens` clamped to 1..MAX_NEW_TOKENS_CAP (sampling: top-p 0.9)."""
    settings = {"max_new_tokens": max(1, min(int(max_new_tokens), MAX_NEW_TOKENS_CAP)), "do_sample": bool(do_sample)}
    if do_sample:
        settings.update(temperature=float(temperature), top_p=0.9)
    return settings


def stream_answer(
    model,
    processor,
    messages: list[dict],
    settings: dict | None = None,
    stop: threading.Event | None = None,
    stats: dict | None = None,
    rivals: list[dict] | None = None,
) -> Iterator[str]:
    """Answer `messages` through the molecule pipeline in a background thread, yielding the answer so far after each
    new piece; `stats` receives `new_tokens` once it ends, and `verified` and `from_namer` where names were verified.

    Setting `stop`, or closing the iterator, ends generation at the next token. A failure (messages that cannot be
    rendered: bad SMILES, a molecule over the processor's `max_atoms`, a prompt over the model's context; or inside
    `generate`) is raised here, after the text produced before it. Answers are greedy or sampled, whatever the model's
    generation config says, unless `settings` ask for `num_beams` or verify names (`verify_names`): beam search cannot
    stream, so that answer comes whole, once. The pipeline's cleaned answer comes last when it differs from the
    streamed text. With `rivals` (the neighbours in `messages`, as dicts), a finished answer neither sampled, stopped
    nor a verified name competes with their own answers (`llamo.pipeline_llamo.rank_answers`): where one scores
    higher it comes last, and `stats` gets `from_neighbour`."""
    pipe = LlamoMoleculePipeline(model=model, processor=processor, device=model.device)
    stop, closed = stop or threading.Event(), threading.Event()
    stats = {} if stats is None else stats
    streamer = TextIteratorStreamer(
        processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S
    )
    settings = {"num_beams": 1, **(settings or generation_settings(DEFAULT_MAX_NEW_TOKENS))}
    streams = settings["num_beams"] == 1 and "verify_names" not in settings
    watch = StoppingCriteriaList([StopOnEvent(closed, stop)])
    options = {"stopping_criteria": watch, "streamer": streamer if streams else None, "return_tensors": True}
    failure: list[Exception] = []
    result: list[dict] = []

    def generate() -> None:
        try:
            with torch.inference_mode():
                result.append(pipe(messages, **options, **settings)[0])
            if not streams:
                streamer.on_finalized_text(result[0]["generated_text"], stream_end=True)
        except Exception as error:  # raised to the reader below
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=generate, name="llamo-demo-generate", daemon=True)
    worker.start()
    answer = ""
    try:
        for piece in filter(None, streamer):  # the streamer ends a failed generation with an empty piece
            answer += piece
            yield answer
    finally:
        closed.set()
        worker.join()
        found = result[0] if result else {}
        stats["new_tokens"] = len(found.get("generated_token_ids", []))
        stats.update({key: found[key] for key in ("verified", "from_namer") if key in found})
    if failure:
        raise failure[0]
    if found and rivals and not settings.get("do_sample") and "verify_names" not in settings and not stop.is_set():
        ranked = rank_answers(model, processor, messages, found.get("generated_token_ids", []), rivals, RENDER_OPTIONS)
        if ranked is not None and ranked[0] is not None:
            position, scores = ranked
            found["generated_text"] = as_prompt_text(rivals[position]["answer"])
            known = {"position": position, "score": scores[position + 1], "own_score": scores[0]}
            stats["from_neighbour"] = {**rivals[position], **known}
    if found and found["generated_text"] != answer.strip():
        yield found["generated_text"]
