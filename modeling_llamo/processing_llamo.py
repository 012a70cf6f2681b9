"""Processor for LLaMo: SMILES -> padded graph tensors + motif tensors, text -> tokens with `<graph>` placeholders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from transformers import BatchFeature, ProcessorMixin

from .configuration_llamo import GRAPH_INPUT_NAMES, LlamoConfig
from .featurization_llamo import (
    MoleculeGraph,
    check_size,
    collate_molecule_graphs,
    featurize_molecule,
    parse_smiles,
    prompt_smiles,
)

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

PROMPT_SMILES_MODES = ("canonical", "input", "none")

_USER_SENTINEL = "LLAMOUSERTURNSENTINEL"
_ANSWER_SENTINEL = "LLAMOANSWERSENTINEL"


@dataclass
class RenderedConversation:
    """A conversation rendered by the chat template, with where its assistant turns are.

    Attributes:
        text: the prompt text, with one `<graph>` (not yet expanded) where the molecule is.
        molecule: the conversation's molecule (an RDKit `Mol` or a precomputed `MoleculeGraph`), or `None`.
        assistant_spans: `(start, end)` character spans of every assistant turn in `text`, each covering the answer
            and the template's end-of-turn text (so a model trained on them learns to stop).
    """

    text: str
    molecule: object | None
    assistant_spans: list[tuple[int, int]]


def _saved_model_config(folder: str | Path) -> LlamoConfig | None:
    """The LLaMo model config saved beside a processor in a local folder, or `None` (no folder, no `config.json`, or
    not a LLaMo config)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("model_type") != LlamoConfig.model_type:
            return None
        return LlamoConfig.from_pretrained(path.parent)
    except Exception:
        # An unreadable model config is for the model's loader to report; the processor does not depend on it.
        return None


def _check_graph_size(graph: MoleculeGraph, max_atoms: int | None, index: int) -> None:
    if max_atoms is not None and graph.num_atoms > max_atoms:
        raise ValueError(
            f"Molecule at index {index} has {graph.num_atoms} atoms, over the limit of {max_atoms} "
            "(raise `max_atoms` to accept it)."
        )


class LlamoProcessor(ProcessorMixin):
    r"""
    Wraps an LLM tokenizer. Turns SMILES into batch-first graph tensors (OGB atom/bond features, functional-group
    vectors; see `GRAPH_INPUT_NAMES`) and expands each `<graph>` placeholder in the text into `num_graph_tokens`
    placeholder ids, which the model fills with graph tokens.

    Args:
        tokenizer: the LLM's tokenizer, holding `graph_token` as a token.
        chat_template (`str`, *optional*): a Jinja chat template or a built-in name (`"llama2"`, the original
            LLaMo prompt). Without one, the tokenizer's own chat template is used.
        graph_token (`str`, defaults to `"<graph>"`): the placeholder marking where the molecule goes.
        num_graph_tokens (`int`, defaults to 28): graph tokens per molecule (the model config's `num_graph_tokens`).
        max_atoms (`int`, *optional*, defaults to 512): larger molecules are refused with a `ValueError`; `None` accepts
            any size.
        prompt_smiles (`str`, defaults to `"canonical"`): how a molecule content block shows its SMILES to the LLM:
            `"canonical"` (canonical, non-isomeric, as the original), `"input"` (as given) or `"none"` (graph only).
        max_smiles_length (`int`, *optional*, defaults to 128): SMILES text in prompts is cut to this many characters.
        padding_side (`str`, defaults to `"left"`): how batches are padded (left, for generation).
    """

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | None = None,
        graph_token: str = "<graph>",
        num_graph_tokens: int = 28,
        max_atoms: int | None = 512,
        prompt_smiles: str = "canonical",
        max_smiles_length: int | None = 128,
        padding_side: str = "left",
        **kwargs,
    ):
        if prompt_smiles not in PROMPT_SMILES_MODES:
            raise ValueError(f"prompt_smiles must be one of {PROMPT_SMILES_MODES}, got {prompt_smiles!r}.")
        if num_graph_tokens < 1:
            raise ValueError(f"num_graph_tokens must be at least 1, got {num_graph_tokens}.")
        self.graph_token = graph_token
        self.num_graph_tokens = num_graph_tokens
        self.max_atoms = max_atoms
        self.prompt_smiles = prompt_smiles
        self.max_smiles_length = max_smiles_length
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        self.padding_side = padding_side
        super().__init__(tokenizer, chat_template=CHAT_TEMPLATES.get(chat_template, chat_template), **kwargs)
        tokenizer.padding_side = padding_side
        graph_ids = tokenizer.encode(graph_token, add_special_tokens=False)
        if len(graph_ids) != 1 or graph_ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no single token for {graph_token!r} (it encodes to {graph_ids}). Add it with "
                f"`tokenizer.add_tokens([{graph_token!r}], special_tokens=True)` and resize the model's embeddings, "
                "or build the model with `llamo init`."
            )
        self.graph_token_id = graph_ids[0]
        self._answer_markers: dict[str, str | None] = {}
        self._last_prompt: torch.Tensor | None = None

    @property
    def model_input_names(self) -> list[str]:
        return list(self.tokenizer.model_input_names) + list(GRAPH_INPUT_NAMES)

    def check_model_config(self, config) -> None:
        """
        Check that this processor builds inputs the model can read: it must expand `<graph>` into the model's number
        of graph tokens, with the model's `<graph>` id.

        Args:
            config: the model's `LlamoConfig` (anything with `num_graph_tokens` / `graph_token_id`; missing values
                are not checked).

        Raises:
            ValueError: naming both numbers (or both ids) when they disagree.
        """
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
        """
        Load a processor (see `ProcessorMixin.from_pretrained`). When the folder also holds a LLaMo model config (a
        local folder saved with `save_llamo`, `llamo init`, training or export), the processor is checked against it
        with `check_model_config`, so a mismatched pair fails here rather than in the model's forward.
        """
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        folder = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        config = _saved_model_config(folder) if folder.is_dir() else None
        if config is not None:
            processor.check_model_config(config)
        return processor

    def featurize(
        self, molecules: Sequence[str | Chem.Mol | MoleculeGraph | dict], max_atoms: int | str | None = "default"
    ) -> list[MoleculeGraph]:
        """Featurize molecules (SMILES strings or RDKit molecules; precomputed `MoleculeGraph`s or their dicts pass
        through), raising a `ValueError` that names the bad one's index."""
        limit = self.max_atoms if max_atoms == "default" else max_atoms
        graphs = []
        for index, molecule in enumerate(molecules):
            if isinstance(molecule, (MoleculeGraph, dict)):
                graph = molecule if isinstance(molecule, MoleculeGraph) else MoleculeGraph.from_dict(molecule)
                _check_graph_size(graph, limit, index)
                graphs.append(graph)
                continue
            mol = molecule if isinstance(molecule, Chem.Mol) else parse_smiles(molecule, index=index)
            check_size(mol, limit, molecule, index)
            graphs.append(featurize_molecule(mol, rings_from_sanitization=not isinstance(molecule, Chem.Mol)))
        return graphs

    def __call__(
        self,
        text: str | list[str] | None = None,
        smiles: str | Chem.Mol | MoleculeGraph | Sequence[str | Chem.Mol | MoleculeGraph | dict] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        max_atoms: int | str | None = "default",
        **kwargs,
    ) -> BatchFeature:
        """
        Tokenize `text` (one string per sequence, each with one `<graph>` where its molecule goes) and featurize the
        matching `smiles` (one per sequence: SMILES strings, RDKit molecules, or precomputed `MoleculeGraph`s).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when molecules are given, the graph tensors
            `atom_features`, `atom_mask`, `bond_index`, `bond_features`, `bond_mask`, `motif_features`,
            `motif_mask` (all batch-first).

        Raises:
            ValueError: unparsable, empty or oversized SMILES (naming it and its index), or a text whose `<graph>`
                placeholders do not match its molecules.
        """
        if text is None:
            if smiles is None:
                raise ValueError("LlamoProcessor needs `text` (with a <graph> placeholder per molecule).")
            molecules = [smiles] if isinstance(smiles, (str, Chem.Mol, MoleculeGraph)) else list(smiles)
            text = [self.graph_token] * len(molecules)
        texts = [text] if isinstance(text, str) else list(text)
        if smiles is None:
            for index, sample in enumerate(texts):
                if self.graph_token in sample:
                    raise ValueError(
                        f"Text {index} holds {self.graph_token} but no `smiles` were given for it: pass one SMILES "
                        "per text."
                    )
            graph_inputs = {}
        else:
            molecules = [smiles] if isinstance(smiles, (str, Chem.Mol, MoleculeGraph)) else list(smiles)
            if len(molecules) != len(texts):
                raise ValueError(
                    f"Got {len(texts)} texts and {len(molecules)} molecules: LLaMo takes exactly one molecule per "
                    "sequence."
                )
            for index, sample in enumerate(texts):
                count = sample.count(self.graph_token)
                if count != 1:
                    raise ValueError(
                        f"Text {index} holds {count} {self.graph_token} placeholders; put exactly one where its "
                        "molecule goes (LLaMo takes one molecule per sequence)."
                    )
            graph_inputs = collate_molecule_graphs(self.featurize(molecules, max_atoms))

        expanded = [sample.replace(self.graph_token, self.graph_token * self.num_graph_tokens) for sample in texts]
        if padding and self.tokenizer.pad_token is None:
            if len(expanded) > 1:
                raise ValueError(
                    "The tokenizer has no pad token, so a batch cannot be padded: set `processor.tokenizer.pad_token` "
                    "(`llamo init` adds one)."
                )
            padding = False
        encoding = self.tokenizer(
            expanded,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
            padding_side=padding_side or self.padding_side,
            **kwargs,
        )
        if graph_inputs:
            for index, ids in enumerate(encoding["input_ids"]):
                found = sum(1 for token in ids if token == self.graph_token_id)
                if found != self.num_graph_tokens:
                    raise ValueError(
                        f"Sequence {index} keeps {found} of its {self.num_graph_tokens} graph placeholders after "
                        "tokenization (truncated?): raise `max_length` or shorten the text."
                    )

        data = dict(encoding)
        if return_tensors == "pt" or return_tensors is None:
            data.update(graph_inputs)
        elif return_tensors == "np":
            data.update({name: value.numpy() for name, value in graph_inputs.items()})
        else:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        batch = BatchFeature(data, tensor_type=return_tensors)
        if return_tensors is None:
            for name in graph_inputs:
                batch[name] = batch[name].tolist()
        if isinstance(batch.get("input_ids"), torch.Tensor):
            self._last_prompt = batch["input_ids"].detach().cpu()
        return batch

    def save_pretrained(self, save_directory, **kwargs):
        """Save tokenizer, chat template and processor options. The tokenizer's own config gets no `auto_map`, so
        `AutoTokenizer.from_pretrained(folder)` loads it without asking for remote code."""
        result = super().save_pretrained(save_directory, **kwargs)
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"
        if tokenizer_config.is_file():
            data = json.loads(tokenizer_config.read_text(encoding="utf-8"))
            if set(data.get("auto_map", {})) <= {"AutoProcessor"}:
                data.pop("auto_map", None)
                tokenizer_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return result

    def molecule_text(
        self, mol: Chem.Mol | None, given: str | Chem.Mol, canonical: str | None = None, include_graph: bool = True
    ) -> str:
        """How a molecule content block appears in the prompt: its SMILES text (per `prompt_smiles`) + `<graph>`.
        `canonical` is a precomputed canonical SMILES (then `mol` may be `None`)."""
        if self.prompt_smiles == "none":
            shown = ""
        elif self.prompt_smiles == "input" and isinstance(given, str):
            shown = given if self.max_smiles_length is None else given[: self.max_smiles_length]
        elif canonical is not None:
            shown = canonical if self.max_smiles_length is None else canonical[: self.max_smiles_length]
        else:
            shown = prompt_smiles(mol, self.max_smiles_length)
        return shown + self.graph_token if include_graph else shown

    def _flatten(
        self, conversation: list[dict], index: int, include_graph: bool = True
    ) -> tuple[list[dict], list[tuple[object, object]]]:
        """Turn content blocks into plain strings, collecting the molecules in order: `(Mol or MoleculeGraph, given)`.

        A molecule block is `{"type": "molecule", "smiles": ...}`; it may carry a precomputed `graph` (a
        `MoleculeGraph` or its dict) and its canonical `prompt_smiles`, and then RDKit is not called at all.
        """
        messages, molecules = [], []
        for message in conversation:
            content = message.get("content")
            if content is None or isinstance(content, str):
                messages.append({**message, "content": content or ""})
                continue
            parts = []
            for block in content:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "molecule":
                    given = block.get("smiles", block.get("molecule"))
                    graph = block.get("graph")
                    canonical = block.get("prompt_smiles")
                    if graph is not None and (canonical is not None or self.prompt_smiles != "canonical"):
                        graph = graph if isinstance(graph, MoleculeGraph) else MoleculeGraph.from_dict(graph)
                        molecules.append((graph, given))
                        parts.append(self.molecule_text(None, given, canonical, include_graph))
                        continue
                    mol = given if isinstance(given, Chem.Mol) else parse_smiles(given, index=index)
                    molecules.append((mol, given))
                    parts.append(self.molecule_text(mol, given, include_graph=include_graph))
                elif kind == "text":
                    parts.append(block.get("text", ""))
                else:
                    raise ValueError(
                        f"Conversation {index}: unsupported content block {block!r}; LLaMo reads "
                        '{"type": "molecule", "smiles": ...} and {"type": "text", "text": ...} blocks.'
                    )
            messages.append({**message, "content": " ".join(part for part in parts if part)})
        return messages, molecules

    def _resolve_template(self, chat_template: str | None) -> str:
        template = CHAT_TEMPLATES.get(chat_template, chat_template) or self.chat_template
        template = template or getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default") or next(iter(template.values()))
        if not template:
            raise ValueError(
                "No chat template: the processor and its tokenizer have none. Pass `chat_template` (a Jinja string "
                f"or one of {sorted(CHAT_TEMPLATES)})."
            )
        return template

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        max_atoms: int | str | None = "default",
        include_graph: bool = True,
        **template_kwargs,
    ):
        """
        Render conversations whose messages may hold a molecule content block `{"type": "molecule", "smiles": ...}`
        (and `{"type": "text", "text": ...}` blocks). Each molecule becomes its SMILES text plus `<graph>`; with
        `tokenize=True` the molecules are featurized from the same parse and the graph tensors returned.
        `include_graph=False` renders molecules as SMILES text only, without `<graph>` and graph tensors (the "no
        graph" ablation: the same model, graph tokens removed).

        Returns:
            the prompt string(s); with `tokenize=True` the `input_ids`, or the whole `BatchFeature` with
            `return_dict=True`.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        template = self._resolve_template(chat_template)
        prompts, molecules = [], []
        for index, item in enumerate(conversations):
            messages, found = self._flatten(list(item), index, include_graph)
            if len(found) > 1:
                raise ValueError(
                    f"Conversation {index} holds {len(found)} molecules; LLaMo takes one molecule per conversation."
                )
            molecules.append(found[0] if found else None)
            prompts.append(
                self.tokenizer.apply_chat_template(
                    messages,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    continue_final_message=continue_final_message,
                    **template_kwargs,
                )
            )
        if not tokenize:
            return prompts if batched else prompts[0]

        with_molecule = [molecule is not None for molecule in molecules]
        if any(with_molecule) and not all(with_molecule):
            raise ValueError(
                "Every conversation of a batch needs a molecule, or none does; conversations without one: "
                f"{[index for index, has in enumerate(with_molecule) if not has]}."
            )
        smiles = [molecule[0] for molecule in molecules] if all(with_molecule) and include_graph else None
        if smiles is not None:
            limit = self.max_atoms if max_atoms == "default" else max_atoms
            for index, (molecule, given) in enumerate(molecules):
                if isinstance(molecule, Chem.Mol):
                    check_size(molecule, limit, given, index)
                else:
                    _check_graph_size(molecule, limit, index)
        outputs = self(
            text=prompts,
            smiles=smiles,
            return_tensors=return_tensors,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            padding_side=padding_side,
            add_special_tokens=False,
            max_atoms=None,
        )
        return outputs if return_dict else outputs["input_ids"]

    def render_conversation(
        self, conversation: list[dict], chat_template: str | None = None, index: int = 0, **template_kwargs
    ) -> RenderedConversation:
        """
        Render a whole conversation (for training) and locate its assistant turns.

        Each assistant span is the text the template adds between the prompt before that turn (rendered with the
        generation prompt) and the conversation up to and including the turn. The template must render prefixes
        consistently (true of LLaMA-2, ChatML and most templates); otherwise a `ValueError` says so.
        """
        template = self._resolve_template(chat_template)
        messages, found = self._flatten(list(conversation), index)
        if len(found) > 1:
            raise ValueError(f"Conversation {index} holds {len(found)} molecules; LLaMo takes one per conversation.")

        def render(turns: list[dict], generation_prompt: bool) -> str:
            return self.tokenizer.apply_chat_template(
                turns,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=generation_prompt,
                **template_kwargs,
            )

        text = render(messages, False)
        spans = []
        for position, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = render(messages[:position], True)
            through = render(messages[: position + 1], False)
            if not (text.startswith(through) and through.startswith(before)):
                raise ValueError(
                    f"Conversation {index}: the chat template does not render prefixes of the conversation "
                    "consistently, so assistant turns cannot be located for the loss mask."
                )
            spans.append((len(before), len(through)))
        return RenderedConversation(text, found[0][0] if found else None, spans)

    def answer_marker(self, chat_template: str | None = None) -> str | None:
        """The text a chat template puts between a user turn and the assistant's answer (e.g. `[/INST]`)."""
        template = self._resolve_template(chat_template)
        if template not in self._answer_markers:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": _USER_SENTINEL}, {"role": "assistant", "content": _ANSWER_SENTINEL}],
                chat_template=template,
                tokenize=False,
            )
            start = rendered.find(_USER_SENTINEL)
            end = rendered.find(_ANSWER_SENTINEL)
            marker = rendered[start + len(_USER_SENTINEL) : end].strip() if 0 <= start < end else ""
            self._answer_markers[template] = marker or None
        return self._answer_markers[template]

    def _strip_prompt(self, rows: torch.Tensor, prompt_length: int | None) -> list[list[int]] | None:
        if prompt_length is not None:
            return rows[:, prompt_length:].tolist()
        prompt = self._last_prompt
        if prompt is None or rows.shape[1] < prompt.shape[1] or rows.shape[0] % prompt.shape[0]:
            return None
        repeats = rows.shape[0] // prompt.shape[0]
        expected = prompt.repeat_interleave(repeats, dim=0)
        if not torch.equal(rows[:, : prompt.shape[1]].cpu(), expected):
            return None
        return rows[:, prompt.shape[1] :].tolist()

    def batch_decode(
        self,
        sequences,
        prompt_length: int | torch.Tensor | None = None,
        skip_special_tokens: bool = True,
        **kwargs,
    ) -> list[str]:
        """
        Decode generated sequences into the answer text only.

        The prompt is removed by, in order: `prompt_length` (an int, or the prompt's `input_ids`); an exact match with
        the prompt of this processor's last call; the chat template's answer marker (text after its last occurrence).
        """
        rows = torch.as_tensor(np.asarray(sequences) if not isinstance(sequences, torch.Tensor) else sequences)
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        if isinstance(prompt_length, torch.Tensor):
            prompt_length = prompt_length.shape[-1]
        answers = self._strip_prompt(rows, prompt_length)
        if answers is not None:
            return [
                text.strip()
                for text in self.tokenizer.batch_decode(answers, skip_special_tokens=skip_special_tokens, **kwargs)
            ]
        try:
            marker = self.answer_marker()
        except ValueError:
            marker = None
        texts = self.tokenizer.batch_decode(rows.tolist(), skip_special_tokens=False, **kwargs)
        results = []
        for text in texts:
            if marker and marker in text:
                text = text.rsplit(marker, 1)[1]
            if skip_special_tokens:
                for token in sorted(set(self.tokenizer.all_special_tokens) | {self.graph_token}, key=len, reverse=True):
                    text = text.replace(token, "")
            results.append(text.strip())
        return results

    def decode(self, sequence, prompt_length: int | torch.Tensor | None = None, **kwargs) -> str:
        """Decode one generated sequence into its answer text (see `batch_decode`)."""
        return self.batch_decode(
            [sequence] if not hasattr(sequence, "dim") else sequence.view(1, -1), prompt_length=prompt_length, **kwargs
        )[0]


__all__ = ["CHAT_TEMPLATES", "LLAMA2_CHAT_TEMPLATE", "LlamoProcessor", "RenderedConversation"]
