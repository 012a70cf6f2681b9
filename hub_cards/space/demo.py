"""The Gradio page of the LLaMo demo: `render_molecule` and `Demo` do what each event does, as plain functions of
their inputs; `build_demo` lays out components and wires events to them. (No `from __future__ import annotations`:
Gradio spots the `gr.Request` parameter of an event handler by its evaluated annotation.)"""

import os
import threading
from collections.abc import Iterator
from typing import NamedTuple

from llamo.chat_template_llamo import add_name_hint, add_neighbours

from . import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_CAP
from .chat import conversation_messages, generation_settings, stream_answer
from .molecule_view import EXAMPLES, drawing_html, groups_table_html, load_molecule, message_html
from .motif_attention import motif_attention, uses_motifs
from .neighbours import Retrieval, neighbours_html, readable_molecule

TITLE = "LLaMo: ask a language model about a molecular graph"
CSS = """
.llamo-groups { border-collapse: collapse; font-size: 0.9em; }
.llamo-groups td, .llamo-groups th { padding: 2px 8px; text-align: left; border-bottom: 1px solid #ddd; }
.llamo-drawing svg, .llamo-neighbour svg { max-width: 100%; height: auto; }
"""
INTRO = (
    "Enter a molecule as SMILES (or pick an example). The drawing highlights the **functional groups** that LLaMo's "
    "graph projector turns into motif tokens, one colour per group; the table lists them, with their chemical names "
    "where a rule knows them (ester, amide, benzene ring, ...). With *shade by motif "
    "attention*, a group's colour is as strong as the attention the projector's motif queries give it (averaged over "
    "queries and heads; not in the paper). Then ask the model about the molecule: follow-up questions keep the "
    "conversation, a new molecule starts a new one. Where a molecule index applies to the question, its most similar "
    "known molecules and their answers go into the prompt, and are shown under the chat."
)
GENERATING = "Generating... (Stop ends the answer)"
GENERATING_BEAMS = "Generating with beam search, the model's decoding for this question: the answer comes whole..."
LOADING_INDEX = "Loading the molecule index (a default index is built once, on first use: this can take minutes)..."


class MoleculePanels(NamedTuple):
    """What the page shows for an entered SMILES. `smiles` is set only for a molecule the model can take."""

    drawing: str
    groups: str
    status: str
    smiles: str | None


def render_molecule(smiles: str, model=None, processor=None, shade_by_attention: bool = True) -> MoleculePanels:
    """The drawing, group table and status line for `smiles`; a bad or oversized molecule gives an error message
    in the status line (never an exception). With a model, the table and shading show its motif attention."""
    view = load_molecule(smiles) if processor is None else load_molecule(smiles, processor.max_atoms)
    if not view.ok:
        return MoleculePanels("", "", message_html(view.error), None)
    attention = None
    if model is not None and processor is not None and view.groups:
        try:
            attention = motif_attention(model, processor, view.mol)
        except ValueError as error:
            return MoleculePanels("", "", message_html(str(error)), None)
    weights = attention.mean.tolist() if attention is not None else None
    summary = f"{view.num_atoms} atoms, {len(view.groups)} functional groups."
    if model is not None and not uses_motifs(model):
        summary += " This model has no motif tokens, so there is no motif attention."
    elif attention is not None:
        queries = f"{attention.per_query.shape[0]} motif queries"
        summary += f" Motif attention: the share each group gets, averaged over {queries} and their heads."
    drawing = drawing_html(view, weights if shade_by_attention else None)
    return MoleculePanels(drawing, groups_table_html(view.groups, weights), message_html(summary, "info"), view.smiles)


class Demo:
    """The demo's state shared by all sessions: the model (or why there is none) and the per-session stop flags (one
    per browser session, so that a Stop click ends that session's answer only)."""

    def __init__(self, model=None, processor=None, unavailable=None, model_name=None, retrieval=None):
        self.model = model
        self.processor = processor
        self.unavailable = unavailable if model is None else None
        self.model_name = model_name
        self.retrieval = retrieval
        self._stops: dict[str, threading.Event] = {}
        self._stops_lock = threading.Lock()
        self._conversations: dict[str, int] = {}  # per session: its conversation's number, new with each reset
        self.can_chat = model is not None and processor is not None

    def new_conversation(self, session: str = "local") -> None:
        """Start over: the answer in progress stops and sends no more updates."""
        self._conversations[session] = self._conversations.get(session, 0) + 1
        self.stop(session)

    def show(self, smiles: str, shade: bool, session: str = "local") -> tuple:
        """A new molecule: its panels, and a fresh conversation (any answer in progress is dropped): `(drawing,
        groups, status, current SMILES, chat history, chat status, neighbours panel)`."""
        self.new_conversation(session)
        return (*render_molecule(smiles, self.model, self.processor, shade), [], "", "")

    def reshade(self, smiles: str | None, shade: bool) -> tuple[str, str]:
        """Redraw the current molecule with or without attention shading (the conversation is kept)."""
        return render_molecule(smiles, self.model, self.processor, shade)[:2] if smiles else ("", "")  # drawing, groups

    def respond(
        self,
        question: str,
        history: list[dict] | None,
        smiles: str | None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        do_sample: bool = False,
        temperature: float = 0.7,
        session: str = "local",
    ) -> Iterator[tuple[list[dict], str, str, str]]:
        """Answer `question` about the current molecule, yielding `(chat history, question box, chat status,
        neighbours panel)` as the answer streams. Problems go to the status, not exceptions; a generation that fails
        before any text leaves the question in its box. A reset meanwhile (`new_conversation`) stops generation."""
        conversation = self._conversations.get(session, 0)
        history = list(history or [])
        question = (question or "").strip()
        if not question:
            yield history, "", "", ""
            return
        if not self.can_chat:
            yield history, question, message_html(self.unavailable or "No model is loaded: chat is unavailable."), ""
            return
        if not smiles:
            yield history, question, message_html("Enter a valid molecule first (SMILES box, then Show molecule)."), ""
            return
        settings = generation_settings(max_new_tokens, do_sample, temperature)
        if self.retrieval is not None and not do_sample:  # as `llamo generate`: the task's decoding, verified names
            settings = {**self.retrieval.decoding(question), **settings, **self.retrieval.verification(question)}
        messages = conversation_messages(smiles, history, question)
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        loading = self.retrieval is not None and self.retrieval.needs_loading(question)
        working = GENERATING_BEAMS if settings.get("num_beams", 1) > 1 or "verify_names" in settings else GENERATING
        yield history, "", message_html(LOADING_INDEX if loading else working, kind="info"), ""
        with self._stops_lock:
            stop = self._stops[session] = threading.Event()
        answer, note, panel, stats, failed = "", "", "", {}, False
        try:
            messages, panel, rivals = self.in_context(messages, smiles, question)
            for answer in stream_answer(self.model, self.processor, messages, settings, stop, stats, rivals):
                if self._conversations.get(session, 0) != conversation:
                    break
                history = [*history[:-1], {"role": "assistant", "content": answer.strip()}]
                yield history, "", message_html(working, kind="info"), panel
            if stop.is_set():
                note = "Stopped."
            elif "verified" in stats and not stats["verified"]:  # a name OPSIN checked, as `llamo generate` says it
                note = "Not verified: OPSIN does not read any candidate name as this molecule."
            elif "verified" in stats:
                namer = "the rule-based namer's name (openclatura), as no model candidate verified"
                source = namer if stats.get("from_namer") else "the model's name"
                note = f"Verified: OPSIN reads this name as the molecule ({source})."
            elif known := stats.get("from_neighbour"):
                note = (
                    f"This is the known answer of neighbour {known['position'] + 1} (similarity "
                    f"{known['similarity']:.2f}), not the model's own: the model scores it {known['score']:.3f} per "
                    f"token, its own answer {known['own_score']:.3f}."
                )
            elif stats.get("new_tokens", 0) >= (limit := settings["max_new_tokens"]):
                note = f"The answer reached the limit of {limit} new tokens (see Generation settings)."
            status = message_html(note, kind="info") if note else ""
        except Exception as error:
            status, failed = message_html(f"Generation failed: {error}"), True
        finally:
            with self._stops_lock:
                if self._stops.get(session) is stop:  # forget the flag, unless a newer answer replaced it
                    del self._stops[session]
        if self._conversations.get(session, 0) != conversation:
            yield [], "", "", ""  # the reset's state, last: an update sent before the reset cannot outlive it
        elif failed and not answer.strip():  # e.g. a prompt over the model's context: the question goes back to its box
            yield history[:-2], question, status, panel
        elif not answer.strip():
            yield [*history[:-1], {"role": "assistant", "content": "(no answer)"}], "", status, panel
        else:
            yield history, "", status, panel

    def in_context(self, messages: list[dict], smiles: str, question: str) -> tuple[list[dict], str, list[dict]]:
        """`messages` with the neighbours of `smiles` for `question` and, where the model asks for it, the molecule's
        rule-based name (`Retrieval.name_hint`); the neighbours panel (an index that fails says so there); and the
        neighbours whose own answers compete with the model's (`Retrieval.ranks_answers`; else none)."""
        max_atoms = self.processor.max_atoms
        if self.retrieval is None or (mol := readable_molecule(smiles, max_atoms)) is None:
            return messages, "", []  # no index; or an unreadable molecule, which the generation reports
        given = ""
        if name := self.retrieval.name_hint(smiles, question):
            messages = add_name_hint(messages, name)
            given = message_html(f"Given with the question: its IUPAC name, {name}.", kind="info")
        try:
            context = self.retrieval.find(mol, question, max_atoms)
        except Exception as error:  # the answer goes on without neighbours
            failed = f"The molecule index could not be used ({error}); this answer has no neighbours."
            return messages, given + message_html(failed), []
        # by attribute: an index given as any object with `neighbours()` may return plain records
        entries = [{"smiles": n.smiles, "answer": n.answer, "similarity": n.similarity} for n in context.neighbours]
        rivals = entries if self.retrieval.ranks_answers(question) else []
        return add_neighbours(messages, entries), given + neighbours_html(context, max_atoms), rivals

    def stop(self, session: str = "local") -> None:
        if (event := self._stops.get(session)) is not None:
            event.set()


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "local"


def build_demo(
    model=None, processor=None, unavailable=None, model_name=None, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, retrieval=None
):
    """The Gradio page (a `gr.Blocks`, not launched). Without a model, molecules are drawn and listed, and the chat
    says why it is unavailable (`unavailable`); `retrieval` gives answers their in-context neighbours (`Retrieval`)."""
    import gradio as gr

    demo = Demo(model, processor, unavailable, model_name, retrieval)
    header = [f"# {TITLE}", INTRO, f"Model: `{demo.model_name}`" if demo.model_name else ""]
    reason = demo.unavailable or "No model is loaded."
    header.append("" if demo.can_chat else f"**Chat is unavailable:** {reason} Drawing and motif groups still work.")
    with gr.Blocks(title="LLaMo demo", analytics_enabled=False) as blocks:
        gr.Markdown("\n\n".join(line for line in header if line), elem_id="intro")
        current = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                smiles = gr.Textbox(label="SMILES", placeholder="e.g. CC(=O)Oc1ccccc1C(=O)O", elem_id="smiles-input")
                with gr.Row():
                    show = gr.Button("Show molecule", variant="primary", elem_id="show-button")
                    shade = gr.Checkbox(label="Shade by motif attention", value=True, elem_id="shade")
                examples = gr.Examples(
                    examples=[[value] for _, value in EXAMPLES],
                    inputs=[smiles],
                    example_labels=[label for label, _ in EXAMPLES],
                    label="Examples",
                )
                status = gr.HTML(elem_id="molecule-status")
                drawing = gr.HTML(elem_id="molecule-drawing")
                groups = gr.HTML(elem_id="motif-groups")
            with gr.Column(scale=1):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=460, feedback_options=None)
                question = gr.Textbox(
                    label="Question",
                    placeholder="Ask about the molecule, e.g. Describe this molecule.",
                    elem_id="question",
                    interactive=demo.can_chat,
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send-button", interactive=demo.can_chat)
                    stop = gr.Button("Stop", elem_id="stop-button")
                    clear = gr.Button("New conversation", elem_id="clear-button")
                chat_status = gr.HTML(elem_id="chat-status")
                neighbours = gr.HTML(elem_id="neighbours")
                with gr.Accordion("Generation settings", open=False):
                    start = min(max_new_tokens, MAX_NEW_TOKENS_CAP)
                    limit = gr.Slider(16, MAX_NEW_TOKENS_CAP, value=start, step=16, label="Max new tokens")
                    sample = gr.Checkbox(label="Sample (instead of greedy)", value=False)
                    temperature = gr.Slider(0.1, 1.5, value=0.7, step=0.05, label="Temperature (sampling)")

        def on_show(text: str, shade_on: bool, request: gr.Request):
            return demo.show(text, shade_on, _session(request))

        def on_respond(text, history, molecule, max_tokens, sampled, temp, request: gr.Request):
            yield from demo.respond(text, history, molecule, max_tokens, sampled, temp, _session(request))

        def on_stop(request: gr.Request) -> None:
            demo.stop(_session(request))

        def on_clear(request: gr.Request):
            demo.new_conversation(_session(request))
            return [], "", ""

        chat_inputs = [question, chatbot, current, limit, sample, temperature]
        chat_outputs = [chatbot, question, chat_status, neighbours]
        gr.on([send.click, question.submit], on_respond, chat_inputs, chat_outputs, concurrency_id="generate")
        molecule_outputs = [drawing, groups, status, current, chatbot, chat_status, neighbours]
        gr.on([show.click, smiles.submit], on_show, [smiles, shade], molecule_outputs)
        examples.load_input_event.then(on_show, [smiles, shade], molecule_outputs)
        shade.change(demo.reshade, [current, shade], [drawing, groups])
        stop.click(on_stop, None, None, concurrency_limit=None)
        clear.click(on_clear, None, [chatbot, chat_status, neighbours], concurrency_limit=None)
    blocks.queue(default_concurrency_limit=1, max_size=32)
    return blocks


def launch_demo(
    model_dir: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    prevent_thread_lock: bool = False,
    index: str | None = None,
    neighbours: int | None = None,
):
    """Load the model (`model_dir`, or the bundled default) and serve the page; returns the `gr.Blocks`. `index` and
    `neighbours`: the answers' in-context neighbours (see `Retrieval`). The loading errors of the model folder (missing,
    or an unavailable default model) and of a given index (`FileNotFoundError`, `ValueError`) come before serving."""
    from llamo.builder import load_llamo
    from llamo.default_model import resolve_model_dir

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    folder = resolve_model_dir(model_dir)
    retrieval = Retrieval(index, folder, neighbours)
    retrieval.preload()
    model, processor = load_llamo(folder, device, dtype)
    blocks = build_demo(model, processor, model_name=str(folder), max_new_tokens=max_new_tokens, retrieval=retrieval)
    blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        css=CSS,
        prevent_thread_lock=prevent_thread_lock,
        footer_links=[],
        show_error=False,
    )
    return blocks
