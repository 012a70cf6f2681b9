"""In-context neighbours in the demo: which molecule index a question uses, its nearest entries to the query molecule,
and the page's panel that shows them. An index is loaded only when a question needs it."""

from __future__ import annotations

import html
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdkit import Chem

from llamo import retrieval
from llamo.chat_template_llamo import DEFAULT_NEIGHBOURS
from llamo.pipeline_llamo import near_twin_only

from . import MAX_NEIGHBOURS
from .molecule_view import draw_molecule_svg, read_molecule

SHOWN_ANSWER_CHARS = 300
"""A neighbour's answer is cut to this many characters on the page."""
SHOWN_SMILES_CHARS = 80
NEIGHBOUR_DRAWING_SIZE = (200, 150)
NO_INDEX = "none"
"""The `index` choice that turns neighbours off."""


@dataclass
class InContext:
    """The neighbours one answer uses, and where they come from (`source`, for the page)."""

    neighbours: list[Any]
    source: str


@dataclass(eq=False)
class Retrieval:
    """Which molecule index the demo's answers use, as `llamo generate --index` and `--name-hint auto` do. `index`: a
    folder or Hub dataset id, a loaded `MoleculeIndex`, `"none"` (off), or `None`/`"auto"` (the defaults of
    `model_dir`'s `llamo_retrieval.json`); `neighbours` per answer (capped at `MAX_NEIGHBOURS`, 0: off);
    `name_hints=False` gives no rule-based names, as hints or verified answers."""

    index: Any = None
    model_dir: str | os.PathLike | None = None
    neighbours: int | None = None
    name_hints: bool = True

    def __post_init__(self):
        self.model_dir = Path(self.model_dir) if self.model_dir is not None else None
        self.enabled = self.index != NO_INDEX and self.neighbours != 0
        self.given = self.index not in (None, "auto", NO_INDEX)  # every question uses it, not the model's defaults
        self._loaded: dict[str, Any] = {"given": self.index} if hasattr(self.index, "neighbours") else {}  # per key
        self._hinter: Any = None
        self._verifier: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> dict[str, Any]:
        """The model's `llamo_retrieval.json` (`{}` without one)."""
        return retrieval.retrieval_settings(self.model_dir)

    def _key(self, question: str) -> str:
        return "given" if self.given else retrieval.question_task(question)

    def needs_loading(self, question: str) -> bool:
        """Whether answering `question` first loads (or, for a default index, builds) an index."""
        key = self._key(question)
        if not self.enabled or key in self._loaded:
            return False
        return self.given or key in self.settings.get("default_indexes", {})

    def preload(self) -> None:
        """Load a given index now, so that a bad folder or Hub id fails at start-up (`FileNotFoundError`,
        `ValueError`) rather than at the first answer."""
        if self.enabled and self.given:
            self.index_for("")

    def index_for(self, question: str) -> tuple[Any, int]:
        """`(index, k)` for `question`, or `(None, 0)` where no index applies; each index is loaded once."""
        if not self.enabled:
            return None, 0
        key = self._key(question)
        choice = str(self.index) if self.given else None  # a folder or Hub id; None: the model's default index
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = retrieval.load_index(choice, self.model_dir, question)[0]
        if (index := self._loaded[key]) is None:
            return None, 0
        model_k = retrieval.neighbours_for(self.settings, retrieval.question_task(question))
        wanted = self.neighbours if self.neighbours is not None else model_k
        return index, max(0, min(wanted if wanted is not None else DEFAULT_NEIGHBOURS, MAX_NEIGHBOURS))

    def decoding(self, question: str) -> dict[str, Any]:
        """The model's decoding settings for `question`'s task (`task_generation` of its `llamo_retrieval.json`, as
        `llamo generate` uses them), e.g. `{"num_beams": 3}` for the default model's descriptions."""
        return retrieval.generation_for(self.settings, retrieval.question_task(question))

    def ranks_answers(self, question: str) -> bool:
        """Whether the answer to `question` competes with its neighbours' own answers (the model's
        `neighbour_answer_tasks`, as `llamo generate --neighbour-answers auto` does)."""
        return retrieval.ranks_neighbour_answers(self.settings, retrieval.question_task(question))

    def verification(self, question: str) -> dict[str, Any]:
        """For a naming question, the pipeline's name verification as `llamo generate` does it by default: OPSIN
        checks the beam candidates (`verify_names`), the rule-based namer's name last (`propose_names`, when
        installed). Nothing for other questions, with `name_hints=False`, or where OPSIN cannot run."""
        if not self.name_hints or retrieval.question_task(question) != "iupac":
            return {}
        with self._lock:
            if self._verifier is None:
                self._verifier = retrieval.verification_options()
        return self._verifier

    def name_hint(self, smiles: str, question: str) -> str | None:
        """The rule-based name to give with `question` (`llamo.retrieval.name_hinter`: checked by OPSIN where Java is
        present), or None where the model does not ask for one or no name fits."""
        if not self.name_hints or retrieval.question_task(question) not in self.settings.get("name_hint_tasks", []):
            return None
        with self._lock:
            if self._hinter is None:
                self._hinter = retrieval.name_hinter(retrieval.opsin_checker()) or (lambda smiles: None)
        return self._hinter(smiles)

    def find(self, mol: Chem.Mol, question: str, max_atoms: int | None) -> InContext:
        """The neighbours of the query molecule `mol` for `question` (none where no index applies; the nearest alone
        where the model's `task_near_twin` says so, as in `llamo generate`). Neighbours the processor could not read
        (over `max_atoms`, unparsable) are left out, as the prompt must hold them."""
        index, k = self.index_for(question)
        if index is None or k == 0:
            return InContext([], "")
        near_twin = retrieval.near_twin_for(self.settings, retrieval.question_task(question))
        found = near_twin_only(index.neighbours(mol, k=k, question=question or None), near_twin)
        if not self.given:
            source = f"the model's default {self._key(question)} index"
        else:
            source = "the given index" if hasattr(self.index, "neighbours") else f"the index {self.index}"
        return InContext([n for n in found if readable_molecule(n.smiles, max_atoms) is not None], source)


def readable_molecule(smiles: str, max_atoms: int | None) -> Chem.Mol | None:
    """The molecule of `smiles` if the processor can read it (parsable, within `max_atoms`), else `None`."""
    try:
        return read_molecule(smiles, max_atoms)
    except ValueError:
        return None


def cut(text: str, limit: int) -> str:
    """`text` with runs of white space made single, cut to `limit` characters (ending in an ellipsis)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "\u2026"


def neighbours_html(context: InContext, max_atoms: int | None = None) -> str:
    """The page's neighbours panel: a heading, a note when the query molecule is in the index (its entry comes
    first), one card per neighbour (a drawing, SMILES, similarity and answer). Empty without neighbours."""
    if not context.neighbours:
        return ""
    count = len(context.neighbours)
    heading = (
        f"<p><b>In context:</b> {count} known {'molecule' if count == 1 else 'molecules'} from "
        f"{html.escape(context.source)}, most similar first (Tanimoto similarity of Morgan fingerprints), with their "
        "answers, precede the question in the prompt.</p>"
    )
    if context.neighbours[0].exact:
        heading += (
            '<p class="llamo-exact"><b>The query molecule itself is in the index</b> (neighbour 1): the model sees '
            "its known answer.</p>"
        )
    cards = ""
    for rank, neighbour in enumerate(context.neighbours, start=1):
        mol = readable_molecule(neighbour.smiles, max_atoms)
        drawing = draw_molecule_svg(mol, size=NEIGHBOUR_DRAWING_SIZE, atom_indices=False) if mol is not None else ""
        same = " &middot; <b>the query molecule itself</b>" if neighbour.exact else ""
        cards += (
            f'<div class="llamo-neighbour" style="flex:0 1 {NEIGHBOUR_DRAWING_SIZE[0] + 20}px;font-size:0.85em">'
            f"{drawing}<div><b>{rank}.</b> <code>{html.escape(cut(neighbour.smiles, SHOWN_SMILES_CHARS))}</code></div>"
            f'<div class="llamo-similarity">Tanimoto similarity {neighbour.similarity:.2f}{same}</div>'
            f'<div class="llamo-answer">{html.escape(cut(neighbour.answer, SHOWN_ANSWER_CHARS))}</div></div>'
        )
    return (
        f'<div class="llamo-neighbours">{heading}<div style="display:flex;flex-wrap:wrap;gap:8px">{cards}</div></div>'
    )
