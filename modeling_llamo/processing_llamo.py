# Copyright 2026 The llamo contributors. Licensed under the Apache License, Version 2.0.
"""Processor for LLaMo: molecules -> batch-first graph tensors (its `featurizer`), text -> tokens in which every
`<graph>` placeholder is expanded into the model's graph-token positions."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, TextKwargs, Unpack
from transformers.utils.chat_template_utils import render_jinja_template

from .chat_template_llamo import (
    CHAT_TEMPLATES,
    GRAPH_TOKEN,
    LLAMA2_CHAT_TEMPLATE,
    answer_marker,
    as_content_blocks,
    assistant_spans,
    join_parts,
    reads_content_blocks,
    resolve_chat_template,
    span_token_mask,
)
from .configuration_llamo import GRAPH_INPUT_NAMES, LlamoConfig
from .feature_extraction_llamo import (
    LlamoMoleculeFeaturizer,
    MoleculeInput,
    PreparedMolecule,
    collate_sequence_molecules,
)
from .smiles_llamo import shorten_for_message

PROMPT_SMILES_MODES = ("canonical", "input", "none")


class LlamoProcessorKwargs(ProcessingKwargs, total=False):
    """`LlamoProcessor`'s call options: transformers' `text_kwargs` (padding, truncation, `max_length`, `return_tensors`
    ...) and `max_atoms`, the size limit for this call's molecules (`None`: any size; defaults to the processor's)."""

    max_atoms: int | None


_CALL_KEYS = frozenset(LlamoProcessorKwargs.__annotations__) | frozenset(TextKwargs.__annotations__)
"""`apply_chat_template` keywords that are call options (as transformers takes them), not template variables."""


@dataclass
class RenderedConversation:
    """A conversation rendered by the chat template: its `text` with one `<graph>` (not yet expanded) per molecule, its
    featurized `molecules` in placeholder order, and the `(start, end)` character spans of every assistant turn in
    `text`, each covering the answer and the template's end-of-turn text (so a model trained on them learns to stop)."""

    text: str
    molecules: list[PreparedMolecule] = field(default_factory=list)
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)


_GRAPH_TOKEN_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _direct_backend(tokenizer) -> Any:
    """The `tokenizers.Tokenizer` behind a fast tokenizer when calling it directly gives what the tokenizer's
    `__call__` gives for one text without truncation or padding, else `None`: no special-token splitting, no inputs
    beyond `input_ids` and `attention_mask`, and no truncation or fixed-length padding left set on the backend (the
    `__call__` would clear them)."""
    names = list(getattr(tokenizer, "model_input_names", ()))
    if names not in (["input_ids", "attention_mask"], ["input_ids"]):
        return None
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "split_special_tokens", False):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or getattr(backend, "encode_special_tokens", True):
        return None
    padding = backend.padding
    if padding is not None and (padding.get("length") is not None or padding.get("pad_to_multiple_of")):
        return None
    return backend


def _graph_token_splits(tokenizer, graph_token_id: int) -> bool:
    """Whether the tokenizer's backend splits text at every occurrence of the graph token (a special added token, not
    `single_word`), read once per tokenizer and vocabulary size."""
    key = len(tokenizer)
    cached = _GRAPH_TOKEN_SPLITS.get(tokenizer)
    if cached is None or cached[0] != key:
        token = tokenizer.backend_tokenizer.get_added_tokens_decoder().get(graph_token_id)
        cached = (key, token is not None and bool(token.special) and not token.single_word)
        _GRAPH_TOKEN_SPLITS[tokenizer] = cached
    return cached[1]


def _molecules_per_text(smiles: Any, num_texts: int) -> list[list[MoleculeInput]]:
    """`smiles` as one list of molecules per text: a single molecule, a flat list (one per text, or all of a single
    text's molecules), or a list of lists."""
    smiles = [smiles] if isinstance(smiles, MoleculeInput) else list(smiles)
    if num_texts == 1 and not any(isinstance(item, (list, tuple)) for item in smiles):
        per_text = [smiles]
    else:
        per_text = [list(item) if isinstance(item, (list, tuple)) else [item] for item in smiles]
    if len(per_text) != num_texts:
        raise ValueError(
            f"Got {num_texts} texts and molecules for {len(per_text)}: give one list of molecules per text (or one "
            "molecule per text)."
        )
    return per_text


class LlamoProcessor(ProcessorMixin):
    r"""Wraps an LLM tokenizer and a molecule featurizer: molecules become batch-first graph tensors
    (`GRAPH_INPUT_NAMES`, padded to `(batch, max_molecules, ...)`) and each `<graph>` in the text becomes
    `num_graph_tokens` placeholder ids, filled by the model with that molecule's graph tokens (any number per text).

    Args:
        tokenizer: the LLM's tokenizer, holding `graph_token` as a token.
        chat_template (`str`, *optional*): a Jinja chat template or a built-in name (`"llama2"`, the original
            LLaMo prompt). Without one, the tokenizer's own chat template is used.
        graph_token (`str`, defaults to `"<graph>"`): the placeholder marking where a molecule goes.
        num_graph_tokens (`int`, defaults to 28): graph tokens per molecule (the model config's `num_graph_tokens`).
        max_atoms (`int`, *optional*, defaults to 512): larger molecules are refused (`ValueError`); `None`: any size.
        prompt_smiles (`str`, defaults to `"canonical"`): how a molecule content block shows its SMILES to the LLM:
            `"canonical"` (canonical, non-isomeric, as the original), `"input"` (as given) or `"none"` (graph only).
        max_smiles_length (`int`, *optional*, defaults to 128): SMILES text in prompts is cut to this many characters.

    The tokenizer is set to pad on the left, for generation (`padding_side="right"` here, or per call, pads right);
    call options are transformers' (`LlamoProcessorKwargs`)."""

    valid_processor_kwargs = LlamoProcessorKwargs
    text_kwargs: ClassVar[dict[str, Any]] = {"padding": True, "return_tensors": "pt"}

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | dict[str, str] | None = None,
        graph_token: str = GRAPH_TOKEN,
        num_graph_tokens: int = 28,
        max_atoms: int | None = 512,
        prompt_smiles: str = "canonical",
        max_smiles_length: int | None = 128,
        **kwargs,
    ):
        if prompt_smiles not in PROMPT_SMILES_MODES:
            raise ValueError(f"prompt_smiles must be one of {PROMPT_SMILES_MODES}, got {prompt_smiles!r}.")
        limits = {"num_graph_tokens": (num_graph_tokens, 1), "max_smiles_length": (max_smiles_length or 0, 0)}
        for name, (value, least) in limits.items():
            if type(value) is not int or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {str(value)[:40]!r}.")
        padding_side = kwargs.pop("padding_side", "left")  # also read from processor configs saved with it
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        tokenizer.padding_side = padding_side
        LlamoMoleculeFeaturizer(max_atoms)  # checks the limit
        self.max_atoms = max_atoms
        self.graph_token = graph_token
        self.num_graph_tokens = num_graph_tokens
        self.prompt_smiles = prompt_smiles
        self.max_smiles_length = max_smiles_length
        if isinstance(chat_template, str):  # any other string is a template, as transformers reads saved ones
            chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
        super().__init__(tokenizer, chat_template=chat_template, **kwargs)
        graph_ids = tokenizer.encode(graph_token, add_special_tokens=False)
        if len(graph_ids) != 1 or graph_ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no single token for {graph_token!r} (it encodes to {graph_ids}). Add it with "
                f"`tokenizer.add_tokens([{graph_token!r}], special_tokens=True)` and resize the model's embeddings, "
                "or build the model with `llamo init`."
            )
        self.graph_token_id = graph_ids[0]

    @property
    def featurizer(self) -> LlamoMoleculeFeaturizer:
        """The molecule featurizer, with the processor's `max_atoms`."""
        return LlamoMoleculeFeaturizer(self.max_atoms)

    @property
    def model_input_names(self) -> list[str]:
        return list(self.tokenizer.model_input_names) + list(GRAPH_INPUT_NAMES)

    def check_model_config(self, config) -> None:
        """Check that this processor builds inputs the model of `config` can read (its `num_graph_tokens` and
        `graph_token_id`; missing values are not checked): a `ValueError` names both numbers (or ids) if they differ."""
        expected = getattr(config, "num_graph_tokens", None)
        if expected is not None and expected != self.num_graph_tokens:
            raise ValueError(
                f"Processor and model disagree on graph tokens per molecule: the processor expands <graph> into "
                f"{self.num_graph_tokens} placeholders (processor.num_graph_tokens), the model makes {expected} "
                f"(config.num_graph_tokens). Save the processor with num_graph_tokens={expected}, or use the "
                "processor saved with this model."
            )
        graph_token_id = getattr(config, "graph_token_id", None)
        if graph_token_id is not None and graph_token_id != self.graph_token_id:
            raise ValueError(
                f"Processor and model disagree on the {self.graph_token} token: the tokenizer gives id "
                f"{self.graph_token_id}, the model's config.graph_token_id is {graph_token_id}. Use the tokenizer "
                "saved with this model."
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> LlamoProcessor:
        """`ProcessorMixin.from_pretrained`, then `check_model_config` against the folder's LLaMo config, if any."""
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        config = None
        with contextlib.suppress(Exception):  # no readable LLaMo config: the model's loader reports a broken one
            if json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"] == LlamoConfig.model_type:
                config = LlamoConfig.from_pretrained(folder)
        processor.check_model_config(config)  # None: nothing to check
        return processor

    def save_pretrained(self, save_directory, **kwargs):
        """Save tokenizer, chat template and processor options. The tokenizer's own config gets no `auto_map`, so
        `AutoTokenizer.from_pretrained(folder)` loads it without asking for remote code."""
        result = super().save_pretrained(save_directory, **kwargs)
        self.__dict__.pop("auto_map", None)  # written to the files; left on the instance it would differ from a reload
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"
        if tokenizer_config.is_file():
            data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
            if set(data.get("auto_map", {})) <= {"AutoProcessor"}:
                data.pop("auto_map", None)
                tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return result

    # --- text: placeholder expansion and tokenization, shared with the training collator -------------------------

    def expand_placeholders(
        self, text: str, spans: Sequence[tuple[int, int]] = ()
    ) -> tuple[str, list[tuple[int, int]]]:
        """The text with every `<graph>` expanded into `num_graph_tokens` copies, and the character `spans` (assistant
        turns) moved along with it."""
        boundaries = [found.start() for found in re.finditer(re.escape(self.graph_token), text)]
        growth = (self.num_graph_tokens - 1) * len(self.graph_token)
        moved = [
            (start + growth * sum(b < start for b in boundaries), end + growth * sum(b < end for b in boundaries))
            for start, end in spans
        ]
        return text.replace(self.graph_token, self.graph_token * self.num_graph_tokens), moved

    def check_placeholders(self, input_ids: Sequence[Sequence[int]], expected: Sequence[int], names=None) -> None:
        """Raise a `ValueError` for a row whose graph placeholder count is not `num_graph_tokens` per molecule (a
        truncated prompt)."""
        for index, (ids, molecules) in enumerate(zip(input_ids, expected, strict=True)):
            found, made = sum(1 for token in ids if token == self.graph_token_id), molecules * self.num_graph_tokens
            if found == made:
                continue
            name = names[index] if names is not None else f"Sequence {index}"
            if found > made:
                raise ValueError(
                    f"{name} holds {found} graph placeholders, but its {molecules} molecules make {made}: its text "
                    f"writes {self.graph_token} itself; give molecules as molecule blocks only."
                )
            raise ValueError(
                f"{name} keeps {found} of its {made} graph placeholders after tokenization (truncated?): raise "
                "`max_length` or shorten the text."
            )

    def __call__(
        self,
        text: str | list[str] | None = None,
        smiles: MoleculeInput | Sequence[MoleculeInput] | Sequence[Sequence[MoleculeInput]] | None = None,
        **kwargs: Unpack[LlamoProcessorKwargs],
    ) -> BatchFeature:
        """Tokenize `text` (one string per sequence, one `<graph>` per molecule) and featurize the matching `smiles`:
        per text, its molecules in placeholder order (SMILES, RDKit molecules or `MoleculeGraph`s); a flat list gives
        one molecule per text (or all molecules of a single text). `kwargs`: `LlamoProcessorKwargs`.

        Returns a `BatchFeature` with `input_ids`, `attention_mask` and, when any text holds a molecule, the graph
        tensors `atom_features` `(B, M, N, 9)`, `atom_mask`, `bond_index`, `bond_features`, `bond_mask`,
        `motif_features`, `motif_mask` (batch-first; `M` is the most molecules of any text). A `ValueError` names an
        unparsable, empty or oversized SMILES and its index, or a text whose placeholders do not match its molecules."""
        if text is None:
            if smiles is None:
                raise ValueError("LlamoProcessor needs `text` (with a <graph> placeholder per molecule).")
            molecules = [smiles] if isinstance(smiles, MoleculeInput) else list(smiles)
            text = [self.graph_token] * len(molecules)
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, Sequence) else None
        if not texts or not all(isinstance(sample, str) for sample in texts):
            raise TypeError(f"text must be a string or a non-empty list of strings, got {shorten_for_message(text)}.")
        if isinstance(smiles, bytes | bytearray) or not isinstance(smiles, MoleculeInput | Sequence | None):
            raise TypeError(f"smiles must be SMILES strings or molecules (or lists), got {type(smiles).__name__}.")
        per_text = [[] for _ in texts] if smiles is None else _molecules_per_text(smiles, len(texts))
        for index, (sample, molecules) in enumerate(zip(texts, per_text, strict=True)):
            count = sample.count(self.graph_token)
            if count != len(molecules):
                raise ValueError(
                    f"Text at index {index} holds {count} {self.graph_token} placeholders but {len(molecules)} "
                    f"molecules were given for it: put one {self.graph_token} per molecule, in order."
                )
        options = self._merge_kwargs(LlamoProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        graph_inputs = LlamoMoleculeFeaturizer(options.get("max_atoms", self.max_atoms))(per_text)
        return self._encode(texts, [len(molecules) for molecules in per_text], graph_inputs, options["text_kwargs"])

    def _encode(
        self, texts: list[str], molecule_counts: list[int], graph_inputs: dict, text_kwargs: dict[str, Any]
    ) -> BatchFeature:
        """Expand, tokenize (with the merged `text_kwargs`) and check the placeholders of `texts`, then join the graph
        inputs (and `mm_token_type_ids`, 1 at graph positions, when `return_mm_token_type_ids` is set)."""
        kwargs = dict(text_kwargs)
        return_tensors = kwargs.pop("return_tensors", None)
        kwargs.pop("return_text_replacement_offsets", None)
        token_types = kwargs.pop("return_mm_token_type_ids", False)
        for index, (text, molecules) in enumerate(zip(texts, molecule_counts, strict=True)):
            if (written := text.count(self.graph_token)) < molecules:
                raise ValueError(
                    f"Text at index {index} holds {written} {self.graph_token} for its {molecules} molecules: the chat "
                    "template left molecule blocks out; use one that renders every block (the processor's own does)."
                )
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:
                    raise ValueError(
                        f"Text at index {index} is not valid Unicode: {error.reason} at character {error.start}."
                    ) from None
        batch = None
        if len(texts) == 1 and return_tensors == "pt":
            batch = self._encode_single(texts[0], molecule_counts[0], graph_inputs, **kwargs)
        if batch is None:
            if len(texts) == 1 and self.tokenizer.pad_token is None:
                kwargs["padding"] = False  # nothing to pad; a batch without a pad token is refused by the tokenizer
            encoding = self.tokenizer([self.expand_placeholders(text)[0] for text in texts], **kwargs)
            self.check_placeholders(encoding["input_ids"], molecule_counts)
            batch = BatchFeature({**encoding, **graph_inputs}, tensor_type=return_tensors)  # it checks return_tensors
            if return_tensors is None:
                for name in graph_inputs:
                    batch[name] = batch[name].tolist()
        if token_types:
            ids = batch["input_ids"]
            rows = ids.tolist() if hasattr(ids, "tolist") else ids
            types = [[int(token == self.graph_token_id) for token in row] for row in rows]
            batch["mm_token_type_ids"] = BatchFeature({"ids": types}, tensor_type=return_tensors)["ids"]
        return batch

    def _encode_single(
        self,
        text: str,
        molecules: int,
        graph_inputs: dict[str, torch.Tensor],
        padding: bool | str = True,
        truncation: bool | str | None = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        **kwargs,
    ) -> BatchFeature | None:
        """One text encoded by the fast tokenizer's backend directly (much faster), giving what the tokenizer's
        `__call__` gives when there is nothing to truncate or pad; where the backend splits at the graph token, one
        placeholder per molecule is encoded, then repeated. `None` (use the general path) otherwise, and where that path
        would report or warn."""
        padded = padding not in (True, False, None, "longest", "do_not_pad")  # to a fixed length
        if kwargs or padded or max_length is not None or truncation not in (False, None, "do_not_truncate"):
            return None
        if (backend := _direct_backend(self.tokenizer)) is None:
            return None
        split = _graph_token_splits(self.tokenizer, self.graph_token_id)
        encoding = backend.encode(
            text if split else self.expand_placeholders(text)[0], add_special_tokens=add_special_tokens
        )
        ids = np.array([encoding.ids], dtype=np.int64)
        if split:  # each placeholder id repeated num_graph_tokens times
            ids = np.repeat(ids, np.where(ids[0] == self.graph_token_id, self.num_graph_tokens, 1), axis=1)
        if (ids == self.graph_token_id).sum() != molecules * self.num_graph_tokens:
            return None
        limit = getattr(self.tokenizer, "model_max_length", None)
        if limit is not None and ids.shape[1] > limit:  # the tokenizer's own call warns (0 is a limit too)
            return None
        data = {"input_ids": torch.from_numpy(ids)}
        if "attention_mask" in self.tokenizer.model_input_names:
            data["attention_mask"] = torch.ones_like(data["input_ids"])
        data.update(graph_inputs)
        return BatchFeature(data)

    # --- chat templates -------------------------------------------------------------------------------------------

    def molecule_text(self, molecule: PreparedMolecule, given: MoleculeInput, include_graph: bool = True) -> str:
        """How a molecule content block appears in the prompt: its SMILES text (per `prompt_smiles`) + `<graph>`."""
        if self.prompt_smiles == "none":
            shown = ""
        elif self.prompt_smiles == "input" and isinstance(given, str):
            shown = given
        else:
            shown = molecule.smiles or (given if isinstance(given, str) else "")
        shown = shown[: self.max_smiles_length]  # None: uncut
        return shown + self.graph_token if include_graph else shown

    def _flatten(
        self,
        conversation: Sequence[dict],
        index: int,
        include_graph: bool = True,
        prepared: Sequence[PreparedMolecule] | None = None,
        featurizer: LlamoMoleculeFeaturizer | None = None,
    ) -> tuple[list[dict], list[PreparedMolecule]]:
        """Turn content blocks into plain strings and featurize the molecules, in order; `prepared` gives the
        conversation's molecules already featurized (in block order), and then RDKit is not called at all."""
        messages, molecules = [], []
        for position, message in enumerate(getattr(conversation, "messages", conversation)):
            if dataclasses.is_dataclass(message) and not isinstance(message, type):
                message = dataclasses.asdict(message)
            elif callable(getattr(message, "model_dump", None)):  # a pydantic message
                message = message.model_dump()
            if isinstance(message, Mapping):  # keys set to None count as absent, as transformers has them
                message = {key: value for key, value in message.items() if value is not None}
            if not isinstance(message, Mapping) or "role" not in message:
                what = f"a {type(message).__name__}" if not isinstance(message, Mapping) else "a dict without 'role'"
                raise TypeError(
                    f"Conversation {index}, message {position} is {what}; a message is a dict with a 'role' and a "
                    "'content'."
                )
            content = message.get("content")
            if content is None or isinstance(content, str):
                messages.append({**message, "content": content or ""})
                continue
            if not isinstance(content, (list, tuple)):
                raise TypeError(
                    f"Conversation {index}, message {position}: content of type {type(content).__name__}; give a "
                    "string or a list of content blocks."
                )
            parts = []
            for block in content:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text" and not isinstance(block.get("text", ""), str):
                    kind = None  # reported below as an unsupported block
                if kind == "molecule":
                    given = block.get("smiles")
                    if prepared is not None:
                        if len(molecules) >= len(prepared):
                            raise ValueError(
                                f"Conversation {index} holds more molecule blocks than the {len(prepared)} molecules "
                                "given for it."
                            )
                        molecule = prepared[len(molecules)]
                    else:
                        molecule = (featurizer or self.featurizer).prepare(given, index=index)
                    molecules.append(molecule)
                    parts.append(self.molecule_text(molecule, given, include_graph))
                elif kind == "text":
                    parts.append(block.get("text", ""))
                else:
                    raise ValueError(
                        f"Conversation {index}: unsupported content block {shorten_for_message(block)}; LLaMo reads "
                        '{"type": "molecule", "smiles": ...} and {"type": "text", "text": ...} blocks.'
                    )
            messages.append({**message, "content": join_parts(parts)})
        if prepared is not None and len(prepared) != len(molecules):
            raise ValueError(
                f"Conversation {index} holds {len(molecules)} molecule blocks but {len(prepared)} molecules were given."
            )
        return messages, molecules

    def _renderer(self, chat_template: str | None, **template_kwargs):
        """The resolved chat template, and `render(messages, add_generation_prompt, **extra) -> text` applying it."""
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError(
                f"chat_template is a Jinja string or a template name, not a {type(chat_template).__name__}."
            )
        template = resolve_chat_template(
            chat_template, self.chat_template, getattr(self.tokenizer, "chat_template", None)
        )
        blocks = reads_content_blocks(template)

        def render(messages: list[dict], add_generation_prompt: bool, **extra) -> str:
            return self.tokenizer.apply_chat_template(
                as_content_blocks(messages) if blocks else messages,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **template_kwargs,
                **extra,
            )

        return template, render

    def _generation_spans(
        self, messages: list[dict], template: str, add_generation_prompt: bool, **template_kwargs
    ) -> list[tuple[int, int]] | None:
        """The character spans of the template's `{% generation %}` blocks in the rendered conversation, or `None` for
        a template without one."""
        if not re.search(r"\{%-?\s*generation\s*-?%\}", template):
            return None
        _, indices = render_jinja_template(
            [as_content_blocks(messages) if reads_content_blocks(template) else messages],
            chat_template=template,
            return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
            **{**self.tokenizer.special_tokens_map, **template_kwargs},
        )
        return [tuple(span) for span in indices[0]]

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        return_assistant_tokens_mask: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "auto",
        processor_kwargs: dict[str, Any] | None = None,
        include_graph: bool = True,
        **kwargs,
    ):
        """Render conversations whose messages may hold molecule content blocks `{"type": "molecule", "smiles": ...}`
        (and text blocks): each molecule becomes its SMILES text plus `<graph>`, and with `tokenize=True` its graph
        tensors. `include_graph=False` renders SMILES text only (the "no graph" ablation).

        `chat_template`: a Jinja string, a built-in name (`"llama2"`) or the name of one of the processor's (or
        tokenizer's) templates. `processor_kwargs` (and, as transformers accepts them, the call options among
        `kwargs`: `padding`, `max_length`, `max_atoms` ...) go to the processor's call; the other `kwargs` to the
        template. `return_tensors="auto"` is the processor's default (PyTorch). `return_assistant_tokens_mask` (with
        `tokenize` and `return_dict`) adds `assistant_masks`: 1 on the tokens of the template's `{% generation %}`
        blocks, or for a template without them, of the assistant turns (answer and end of turn).

        Returns the prompt string(s); with `tokenize=True` the `input_ids`, or the `BatchFeature` with `return_dict`."""
        if return_assistant_tokens_mask and not (tokenize and return_dict):
            raise ValueError("return_assistant_tokens_mask=True needs tokenize=True and return_dict=True.")
        if return_assistant_tokens_mask and continue_final_message:
            raise ValueError("continue_final_message=True cannot be combined with return_assistant_tokens_mask=True.")
        if not isinstance(conversation, (list, tuple)) and not hasattr(conversation, "messages"):
            raise TypeError(
                "A conversation is a list of messages (dicts with a 'role' and a 'content'), and a batch a list of "
                f"conversations; got a {type(conversation).__name__}."
            )
        call_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _CALL_KEYS}
        processor_kwargs = {**call_kwargs, **(processor_kwargs or {})}
        batched = bool(conversation) and (
            isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
        )
        conversations = conversation if batched else [conversation]
        template, render = self._renderer(chat_template, **kwargs)
        featurizer = LlamoMoleculeFeaturizer(processor_kwargs.get("max_atoms", self.max_atoms))
        prompts, molecules, spans = [], [], []
        for index, item in enumerate(conversations):
            messages, found = self._flatten(item, index, include_graph, featurizer=featurizer)
            molecules.append(found if include_graph else [])
            try:
                prompts.append(render(messages, add_generation_prompt, continue_final_message=continue_final_message))
            except ValueError as error:  # transformers' message quotes the whole rendered conversation
                if not str(error).startswith("continue_final_message is set"):
                    raise
                raise ValueError(
                    f"Conversation {index}: continue_final_message=True, but the chat template does not render the "
                    "final message as given, so the prompt cannot end with it."
                ) from None
            if return_assistant_tokens_mask:
                turns = self._generation_spans(messages, template, add_generation_prompt, **kwargs)
                if turns is None:
                    turns = assistant_spans(messages, render, index)[1]
                spans.append(self.expand_placeholders(prompts[-1], turns)[1])
        if not tokenize:
            return prompts if batched else prompts[0]
        graph_inputs = (
            collate_sequence_molecules([[m.graph for m in row] for row in molecules]) if any(molecules) else {}
        )
        processor_kwargs.setdefault("add_special_tokens", False)  # the template writes them
        if return_tensors != "auto":
            processor_kwargs["return_tensors"] = return_tensors
        if return_assistant_tokens_mask:
            processor_kwargs["return_offsets_mapping"] = True
        options = self._merge_kwargs(
            LlamoProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **processor_kwargs
        )
        outputs = self._encode(prompts, [len(row) for row in molecules], graph_inputs, options["text_kwargs"])
        if return_assistant_tokens_mask:
            offsets = outputs.pop("offset_mapping")
            offsets = offsets.tolist() if hasattr(offsets, "tolist") else offsets
            masks = [span_token_mask(row, row_spans) for row, row_spans in zip(offsets, spans, strict=True)]
            outputs["assistant_masks"] = BatchFeature(
                {"masks": masks}, tensor_type=options["text_kwargs"].get("return_tensors")
            )["masks"]
        return outputs if return_dict else outputs["input_ids"]

    def render_conversation(
        self,
        conversation: Sequence[dict],
        chat_template: str | None = None,
        index: int = 0,
        molecules: Sequence[PreparedMolecule] | None = None,
        **template_kwargs,
    ) -> RenderedConversation:
        """Render a whole conversation (for training) and locate its assistant turns (`assistant_spans`).
        `molecules`: its molecules already featurized, in block order (the training collator's cache)."""
        render = self._renderer(chat_template, **template_kwargs)[1]
        messages, found = self._flatten(list(conversation), index, prepared=molecules)
        text, spans = assistant_spans(messages, render, index)
        return RenderedConversation(text, found, spans)

    def answer_marker(self, chat_template: str | None = None) -> str | None:
        """The text a chat template puts between a user turn and the assistant's answer (e.g. `[/INST]`)."""
        return answer_marker(self._renderer(chat_template)[1])

    # --- decoding -------------------------------------------------------------------------------------------------

    def batch_decode(self, sequences, *args, prompt_length: int | torch.Tensor | None = None, **kwargs) -> list[str]:
        """The tokenizer's `batch_decode`. With `prompt_length` (an int, or the prompt's `input_ids`), the answers: each
        row after that many tokens, special tokens skipped (unless `skip_special_tokens=False`), whitespace stripped."""
        if prompt_length is None:
            return self.tokenizer.batch_decode(sequences, *args, **kwargs)
        if isinstance(prompt_length, torch.Tensor):
            prompt_length = prompt_length.shape[-1] if prompt_length.ndim else int(prompt_length)
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            shown = shorten_for_message(prompt_length, 40)
            raise ValueError(f"prompt_length must be a token count >= 0 or the prompt's input_ids, got {shown}.")
        kwargs.setdefault("skip_special_tokens", True)
        rows = [row[prompt_length:] for row in sequences]
        return [text.strip() for text in self.tokenizer.batch_decode(rows, *args, **kwargs)]

    def decode(self, sequence, *args, prompt_length: int | torch.Tensor | None = None, **kwargs) -> str:
        """The tokenizer's `decode`; with `prompt_length`, the answer (see `batch_decode`)."""
        if prompt_length is None:
            return self.tokenizer.decode(sequence, *args, **kwargs)
        if isinstance(sequence, torch.Tensor) and sequence.ndim == 2:  # `generate`'s output of one prompt
            if sequence.shape[0] != 1:
                raise ValueError(f"decode takes one sequence, got {tuple(sequence.shape)}: use batch_decode.")
            sequence = sequence[0]
        return self.batch_decode([sequence], *args, prompt_length=prompt_length, **kwargs)[0]

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        """The answers in generated sequences `(B, L)` (or one `(L,)`) that still hold their prompts: each row's text
        after the chat template's last answer marker (a row without one, new tokens only, is decoded whole). The hook
        transformers' pipelines call to turn a multimodal model's output into text."""
        rows = torch.atleast_2d(torch.as_tensor(np.asarray(generated_outputs)))
        marker = None
        with contextlib.suppress(ValueError):  # no chat template: rows are decoded whole
            marker = self.answer_marker()
        results = []
        for text in self.tokenizer.batch_decode(rows.tolist(), skip_special_tokens=False, **kwargs):
            if marker and marker in text:
                text = text.rsplit(marker, 1)[1]
            if skip_special_tokens:
                for token in sorted(set(self.tokenizer.all_special_tokens) | {self.graph_token}, key=len, reverse=True):
                    text = text.replace(token, "")
            results.append(text.strip())
        return results


__all__ = ["CHAT_TEMPLATES", "LLAMA2_CHAT_TEMPLATE", "LlamoProcessor", "LlamoProcessorKwargs", "RenderedConversation"]
