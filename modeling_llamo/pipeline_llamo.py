"""The `molecule-text-generation` pipeline: a molecule (SMILES) and an instruction in, LLaMo's answer out.

    from transformers import pipeline

    pipe = pipeline(model="path/or/hub-id", trust_remote_code=True)  # the task is declared in config.json
    pipe({"smiles": "CC(=O)Oc1ccccc1C(=O)O", "text": "Describe this molecule."})
    # -> [{"generated_text": "..."}]
    pipe("Describe this molecule.", smiles="CCO", max_new_tokens=64)
    pipe([{"smiles": "CCO", "text": "Name it."}, {"smiles": "C", "text": "Name it."}], batch_size=2)
    # -> [[{"generated_text": "..."}], [{"generated_text": "..."}]]

Accepted inputs: a dict `{"smiles": ..., "text": ...}` (`smiles` may be a list of molecules); an instruction string
with `smiles=`; a conversation whose first user turn holds a molecule content block; or a list of these (a batch).
One input returns a list of `{"generated_text": answer}` (one per returned sequence), a batch one such list per input;
`generated_text` is the answer only, never the prompt.

`llamo export` writes this task into `config.json` (`custom_pipelines`), so `pipeline(model=folder,
trust_remote_code=True)` needs no task name; importing `llamo` registers it with `PIPELINE_REGISTRY`. This file travels
with exported models as remote code: it imports only its sibling remote-code files, never the `llamo` package."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import GenerationConfig, Pipeline
from transformers.utils import ModelOutput

from .chat_template_llamo import (
    DEFAULT_NEIGHBOURS,
    NEIGHBOUR_ANSWER_MAX_CHARS,
    NEIGHBOURS_QUERY,
    add_name_hint,
    add_neighbours,
    as_prompt_text,
    query_turn,
)
from .feature_extraction_llamo import LlamoMoleculeFeaturizer
from .generation_llamo import answer_log_likelihoods, drop_repeated_sentence_start
from .smiles_llamo import OversizedMoleculeError, shorten_for_message

MOLECULE_TASK = "molecule-text-generation"

_UNSET = object()

VERIFY_CANDIDATES = 4
"""Candidate names generated (beam search) when names are verified."""


@dataclass
class MoleculeBatch:
    """Conversations answered by one `generate` call. Not a list, so that the base class runs it as one input."""

    conversations: list[list[dict[str, Any]]]


def query_molecule(conversation: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The first molecule of a conversation's first molecule-bearing user turn, and that turn's text (the question);
    in a turn that already holds neighbours (`add_neighbours`), the molecule and text after `NEIGHBOURS_QUERY`."""
    turn = query_turn(conversation)
    if turn is None:
        return None, ""
    blocks = [block for block in turn["content"] if isinstance(block, Mapping)]
    marker = [position for position, block in enumerate(blocks) if block.get("text") == NEIGHBOURS_QUERY]
    blocks = blocks[marker[0] + 1 :] if marker else blocks
    smiles = next(block.get("smiles") for block in blocks if block.get("type") == "molecule")
    return smiles, " ".join(block.get("text", "") for block in blocks if block.get("type") == "text").strip()


def inchikey(smiles: str | None) -> str | None:
    """RDKit's standard InChIKey of a SMILES, or None."""
    if not smiles:
        return None
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
        return (Chem.MolToInchiKey(mol) or None) if mol is not None else None


def _is_conversation(value: Any) -> bool:
    messages = value if isinstance(value, (list, tuple)) else ()
    return bool(messages) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages)


def near_twin_only(found: Sequence[Any], near_twin: float | None) -> list[Any]:
    """The index entries `found` (most similar first; `Neighbour`s or their dicts), only the first when its
    `similarity` is at least `near_twin`: a near twin of the query is given alone, without a less similar entry to copy
    from."""
    first = found[0] if found else None
    similarity = first.get("similarity") if isinstance(first, Mapping) else getattr(first, "similarity", None)
    if near_twin is not None and similarity is not None and similarity >= near_twin:
        return list(found[:1])
    return list(found)


def neighbour_entries(found: Any, k: int, featurizer: LlamoMoleculeFeaturizer) -> list[dict[str, Any]]:
    """What an index's `neighbours(smiles, k, question)` returned, as the prompt's entries: at most `k` dicts with a
    `smiles` and an `answer` string (a `TypeError` names anything else). Entries whose molecule the processor refuses
    for its size are left out (an index built with a larger `max_atoms` than the model's), rather than the question."""
    entries = []
    for neighbour in list(found or [])[:k]:
        entry = neighbour.to_dict() if hasattr(neighbour, "to_dict") else neighbour
        if not isinstance(entry, Mapping) or not all(isinstance(entry.get(key), str) for key in ("smiles", "answer")):
            raise TypeError(
                "index.neighbours must return entries with a 'smiles' and an 'answer' string (as MoleculeIndex's "
                f"Neighbour), got {shorten_for_message(neighbour, 80)}."
            )
        try:
            featurizer.prepare(entry["smiles"])
        except OversizedMoleculeError:
            continue
        entries.append(dict(entry))
    return entries


def model_context(model) -> float:
    """The language model's context in tokens (`max_position_embeddings`), `inf` where its config sets none (0 is a
    context of 0 tokens, so every prompt is refused, not a context without limit)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return math.inf if limit is None else limit


def check_prompt_lengths(model, inputs: Mapping[str, Any], neighbours: Sequence[int] = ()) -> None:
    """Refuse a batch (the processor's `input_ids` `(B, L)` and `attention_mask`) holding an empty prompt, or one
    longer than the language model's context (`max_position_embeddings`): generating from it would take time and
    memory without bound, on positions the model never saw. `neighbours`: how many index entries each prompt holds
    (named in the refusal)."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    lengths = mask.sum(-1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
    if 0 in lengths:
        raise ValueError(f"Input {lengths.index(0)} renders to an empty prompt: give it a user turn.")
    limit = model_context(model)
    if max(lengths) > limit:
        row = lengths.index(max(lengths))
        given = neighbours[row] if row < len(neighbours) else 0
        advice = f", with {given} index neighbours before the question: ask for fewer" if given else ": shorten it"
        size = f"Input {row} is {lengths[row]} tokens long"
        raise ValueError(f"{size}, over the model's context of {limit} tokens{advice}.")


def verification_settings(generate_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The `generate` settings of name verification: beam search returning every beam, at least `VERIFY_CANDIDATES`."""
    beams = max(VERIFY_CANDIDATES, generate_kwargs.get("num_beams", 1))
    return {"num_beams": beams, "num_return_sequences": beams, "do_sample": False}


def verified_answer(candidates: list[dict[str, Any]], query: str | None, checker, proposer=None) -> dict[str, Any]:
    """The answer among the beam `candidates` and the `proposer`'s name, with `verified`, every beam's text and
    (with a proposer) whether the answer is its name. `checker` (`names -> [InChIKey or None, ...]`, e.g. OPSIN)
    reads all names in one call: the first that reads back as the molecule `query` is verified; else the first beam
    that reads as any molecule (a well-formed name, rather than a cut-off or malformed one); else the top beam. The
    proposer's name (e.g. a rule-based namer's) is answered only when verified."""
    names = [candidate["generated_text"] for candidate in candidates]
    proposed = [name for name in [proposer(query)] if name] if proposer is not None and query else []
    if not all(isinstance(name, str) for name in proposed):
        raise TypeError(f"propose_names must return a name (str) or None, got {type(proposed[0]).__name__}.")
    asked = [*names, *proposed]
    keys, target = checker(asked), inchikey(query)
    if not isinstance(keys, Sequence) or len(keys) != len(asked) or not all(isinstance(k, str | None) for k in keys):
        raise TypeError(f"verify_names must return one InChIKey (or None) per name, for {len(asked)}; got {keys!r:.80}")
    keys = list(keys)
    readable = [position for position, key in enumerate(keys[: len(names)]) if key is not None]
    verified = target is not None and target in keys
    position = keys.index(target) if verified else (readable or [0])[0]
    if position >= len(names):
        return {"generated_text": proposed[0], "verified": verified, "candidates": names, "from_namer": True}
    answer = {**candidates[position], "verified": verified, "candidates": names}
    return answer if proposer is None else {**answer, "from_namer": False}


def answer_token_ids(generation_config, token_ids: list[int]) -> list[int]:
    """An answer's new token ids without the repeated sentence start the loop guard ended it on, where the model's
    generation config sets that rule (`answer_sentence_end_token_ids`; `drop_repeated_sentence_start`)."""
    sentence_ends = getattr(generation_config, "answer_sentence_end_token_ids", None)
    eos = generation_config.eos_token_id
    if not sentence_ends or eos is None:
        return token_ids
    return drop_repeated_sentence_start(token_ids, eos, sentence_ends)


def rank_answers(
    model, processor, conversation: list[dict[str, Any]], answer: list[int], neighbours, render_options: dict[str, Any]
) -> tuple[int | None, list[float | None]] | None:
    """Which answer to give to `conversation`, a first question with `neighbours` (the index entries `add_neighbours`
    put in it, as dicts): None for the model's own `answer` (its generated token ids), else the position of the
    neighbour whose own answer to give; and the scores, the model's answer first. Every candidate, the model's answer
    and each neighbour's answer (as the prompt shows it), is scored by the model as the continuation of the prompt:
    its mean log-probability per token, end token included (`answer_log_likelihoods`); the highest is given. A model
    that has lost its way (an answer of low probability) can so fall back on a known molecule's text that it finds
    likelier for this one. A neighbour's answer that is empty, that the prompt shows cut (`NEIGHBOUR_ANSWER_MAX_CHARS`),
    or that would not fit in the model's context after the prompt, is no candidate (score None). None (nothing to rank)
    without neighbours, for a follow-up question (the neighbours' answers answer the first one) or without an
    end-of-sequence token. `render_options`: the pipeline's `apply_chat_template` keywords for the prompt."""
    config = model.generation_config
    eos = [config.eos_token_id] if isinstance(config.eos_token_id, int) else list(config.eos_token_id or [])
    if not neighbours or not eos or any(message.get("role") == "assistant" for message in conversation):
        return None
    own = answer_token_ids(config, answer)
    own = own[: next((i for i, token in enumerate(own) if token in eos), len(own))]
    texts = [as_prompt_text(neighbour["answer"], limit=None) for neighbour in neighbours]
    texts = [text if 0 < len(text) <= NEIGHBOUR_ANSWER_MAX_CHARS else "" for text in texts]  # "": shown cut, or empty
    known = processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
    prompt = processor.apply_chat_template([conversation], **render_options)  # every tensor is batch-first
    room = model_context(model) - prompt["input_ids"].shape[1]
    fits = [True, *(bool(text) and len(ids) < room for text, ids in zip(texts, known, strict=True))]
    candidates = [ids + eos[:1] for ids, fit in zip([own, *known], fits, strict=True) if fit]
    prompt = {key: value.to(model.device) for key, value in prompt.items()}
    pad = config.pad_token_id if config.pad_token_id is not None else eos[0]
    scored = iter(answer_log_likelihoods(model, prompt, candidates, pad))
    scores = [next(scored) if fit else None for fit in fits]
    best = max((position for position, score in enumerate(scores) if score is not None), key=scores.__getitem__)
    return (None if best == 0 else best - 1), scores


def molecule_conversation(smiles: str | Sequence[str], text: str, index: int = 0) -> list[dict[str, Any]]:
    """The one-turn conversation asking `text` about the molecule `smiles` (or several molecules, in order)."""
    molecules = list(smiles) if isinstance(smiles, (list, tuple)) else [smiles]
    for molecule in molecules:
        if not isinstance(molecule, str) or not molecule.strip():
            shown = shorten_for_message(molecule, limit=80)
            raise ValueError(f"Input {index}: `smiles` must be non-empty SMILES strings, got {shown}.")
    if not molecules:
        raise ValueError(f"Input {index}: `smiles` holds no molecule.")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Input {index}: the instruction (`text`) must be a non-empty string.")
    content = [*({"type": "molecule", "smiles": molecule} for molecule in molecules), {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


class LlamoMoleculePipeline(Pipeline):
    """Answer instructions about molecules with a LLaMo model and its `LlamoProcessor` (see the module docstring)."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=256)

    def __init__(self, model, processor=None, tokenizer=None, **kwargs):
        if processor is None:
            raise ValueError(
                "LlamoMoleculePipeline needs the model's LlamoProcessor: pass `processor=` (pipeline() loads it "
                "from the model folder or repository)."
            )
        if (check := getattr(processor, "check_model_config", None)) is not None:  # no config: nothing to check
            check(getattr(model, "config", None))  # a processor built for another model: fail now, naming both counts
        super().__init__(model=model, processor=processor, tokenizer=tokenizer or processor.tokenizer, **kwargs)

    def __call__(self, inputs, smiles: str | Sequence[str] | None = None, batch_size: int | None = None, **kwargs):
        """Answer one input or a batch (see the module docstring), `batch_size` inputs per `generate` call. `kwargs`:
        generation parameters and the options `chat_template`, `system_prompt`, `max_atoms`, `include_graph` (False:
        the "no graph" ablation), `skip_special_tokens`, `clean_up_tokenization_spaces`, `return_tensors` (True: also
        `generated_token_ids`, the new token ids as in the text), `index` (a molecule index: its nearest entries become
        in-context examples), `neighbours` (how many), `near_twin` (a similarity from which the nearest entry is given
        alone), `verify_names` (`names -> [InChIKey or None, ...]`, e.g. OPSIN: the first beam candidate naming the
        query molecule is answered) with `propose_names` (`smiles -> name or None`: a last candidate, answered only when
        verified), `name_hint` (`smiles -> name or None`: given before the question, returned as `name_hint`), and
        `rank_neighbour_answers` (True: the neighbours' own answers compete with the model's, see `rank_answers`)."""
        conversations, single = self._conversations(inputs, smiles)
        size = batch_size or self._batch_size or 1
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}.")
        answers: list[list[dict[str, Any]]] = []
        for start in range(0, len(conversations), size):
            self.call_count = 0  # these calls are batches already: transformers' "use a dataset" advice does not apply
            answers.extend(super().__call__(MoleculeBatch(conversations[start : start + size]), **kwargs))
        return answers[0] if single else answers

    def _conversations(self, inputs, smiles) -> tuple[list[list[dict[str, Any]]], bool]:
        """Normalise the accepted input forms into conversations; the flag tells whether one input was given."""
        if _is_conversation(inputs) or isinstance(inputs, (str, Mapping)):
            return [self._conversation(inputs, smiles, 0)], True
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(
                f"Unsupported input of type {type(inputs).__name__}: pass a {{'smiles': ..., 'text': ...}} dict, an "
                "instruction string with smiles=..., a conversation, or a list of these."
            )
        if not inputs:
            raise ValueError("Got an empty list of inputs.")
        if smiles is None or isinstance(smiles, str):
            per_input: list[Any] = [smiles] * len(inputs)
        elif not isinstance(smiles, (list, tuple)):
            raise TypeError(f"smiles must be a SMILES string or a list of one per input, got {type(smiles).__name__}.")
        elif len(per_input := list(smiles)) != len(inputs):
            raise ValueError(f"Got {len(inputs)} inputs but {len(per_input)} SMILES: give one per input.")
        pairs = enumerate(zip(inputs, per_input, strict=True))
        return [self._conversation(item, molecule, index) for index, (item, molecule) in pairs], False

    @staticmethod
    def _conversation(item, smiles, index: int) -> list[dict[str, Any]]:
        """One input (a conversation, a `{"smiles", "text"}` dict, or an instruction and `smiles`) as a conversation."""
        if _is_conversation(item):
            if smiles is not None:
                raise ValueError(f"Input {index} is a conversation: put its molecule in a molecule content block.")
            return list(item)
        if isinstance(item, str):
            if smiles is None:
                raise ValueError(f"Input {index} is an instruction string without a molecule: pass smiles=...")
            return molecule_conversation(smiles, item, index)
        if isinstance(item, Mapping):
            if smiles is not None:
                raise ValueError(f"Input {index} is a dict: give its SMILES under 'smiles', not as smiles=...")
            if unknown := sorted(set(item) - {"smiles", "text"}):
                raise ValueError(f"Input {index} has unknown keys {unknown}; expected 'smiles' and 'text'.")
            return molecule_conversation(item.get("smiles"), item.get("text"), index)
        raise TypeError(
            f"Input {index} is a {type(item).__name__}; expected a dict, an instruction string or a conversation."
        )

    def _sanitize_parameters(
        self,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        max_atoms: Any = _UNSET,
        include_graph: bool | None = None,
        skip_special_tokens: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        return_tensors: bool | None = None,
        index: Any = None,
        neighbours: int | None = None,
        near_twin: float | None = None,
        verify_names: Any = None,
        propose_names: Any = None,
        name_hint: Any = None,
        rank_neighbour_answers: bool | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        **generation_parameters,
    ):
        if neighbours is not None:
            if isinstance(neighbours, bool) or not isinstance(neighbours, numbers.Integral) or neighbours < 0:
                raise ValueError(f"neighbours must be a whole number >= 0, got {shorten_for_message(neighbours)}.")
            neighbours = int(neighbours)
        if near_twin is not None and (
            isinstance(near_twin, bool) or not isinstance(near_twin, numbers.Real) or not 0 <= near_twin <= 1
        ):
            raise ValueError(f"near_twin must be a similarity from 0 to 1, got {shorten_for_message(near_twin)}.")
        per_molecule, context = max(1, getattr(self.model.config, "num_graph_tokens", 1)), model_context(self.model)
        if neighbours is not None and neighbours * per_molecule > context:
            raise ValueError(
                f"neighbours={neighbours} cannot fit: each neighbour takes at least {per_molecule} graph tokens and "
                f"the model's context holds {context} tokens (at most {int(context) // per_molecule} neighbours)."
            )
        if verify_names is not None and not callable(verify_names):
            raise TypeError("verify_names must be a callable `names -> InChIKeys` (e.g. an OPSIN checker).")
        if propose_names is not None and (verify_names is None or not callable(propose_names)):
            raise TypeError("propose_names must be a callable `smiles -> name`, given with verify_names.")
        needing = _given(neighbours=neighbours or None, near_twin=near_twin)  # (ranking just finds nothing to rank)
        if index is None and needing:  # ignored without one
            raise ValueError(f"{' and '.join(needing)} need an index (index=..., e.g. MoleculeIndex.load(folder)).")
        if index is not None and not callable(getattr(index, "neighbours", None)):
            raise TypeError(
                "index must be a molecule index with a `neighbours(smiles, k, question)` method (e.g. "
                f"`llamo.processing.index.MoleculeIndex.load(folder)`), got {type(index).__name__}."
            )
        if name_hint is not None and not callable(name_hint):
            raise TypeError("name_hint must be a callable `smiles -> name or None` (e.g. a rule-based namer).")
        preprocess_params = _given(
            index=index,
            neighbours=neighbours,
            near_twin=near_twin,
            chat_template=chat_template,
            system_prompt=system_prompt,
            include_graph=include_graph,
            name_hint=name_hint,
            rank_neighbour_answers=rank_neighbour_answers,
        )
        if max_atoms is not _UNSET:  # None is a value here: no size limit
            preprocess_params["max_atoms"] = max_atoms
        forward_params = {**(generate_kwargs or {}), **generation_parameters}
        for name, most in (("max_new_tokens", context), ("num_beams", math.inf)):
            value = forward_params.get(name)  # None: the generation config's
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most):
                said = f"from 1 to the model's context of {most} tokens" if most < math.inf else "of at least 1"
                raise ValueError(f"{name} must be an integer {said}, got {shorten_for_message(value, 40)}.")
        if rank_neighbour_answers and (verify_names is not None or forward_params.get("num_return_sequences", 1) > 1):
            raise ValueError("rank_neighbour_answers gives one answer per input: not with verify_names or several.")
        if verify_names is not None:
            forward_params.update(verification_settings(forward_params))
        postprocess_params = _given(
            verify_names=verify_names, propose_names=propose_names, return_tensors=return_tensors
        )
        decoding = _given(
            skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=clean_up_tokenization_spaces
        )
        if decoding:
            postprocess_params["decode_kwargs"] = decoding
        return preprocess_params, forward_params, postprocess_params

    def preprocess(
        self,
        batch: MoleculeBatch,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        max_atoms: Any = _UNSET,
        index: Any = None,
        neighbours: int = DEFAULT_NEIGHBOURS,
        include_graph: bool = True,
        name_hint: Any = None,
        near_twin: float | None = None,
        rank_neighbour_answers: bool = False,
    ) -> dict[str, Any]:
        conversations = list(batch.conversations)
        queries = [query_molecule(conversation) for conversation in conversations]
        if name_hint is not None or (index is not None and neighbours):  # a bad query is refused before they read it
            featurizer = LlamoMoleculeFeaturizer(self.processor.max_atoms if max_atoms is _UNSET else max_atoms)
            for row, (smiles, _) in enumerate(queries):
                if smiles is not None:
                    featurizer.prepare(smiles, row)
        hints = [name_hint(smiles) if name_hint is not None and smiles is not None else None for smiles, _ in queries]
        if wrong := next((hint for hint in hints if hint is not None and not isinstance(hint, str)), None):
            raise TypeError(f"name_hint must return a name (str) or None, got {type(wrong).__name__}.")
        conversations = [add_name_hint(c, name) if name else c for c, name in zip(conversations, hints, strict=True)]
        context: list[list[dict[str, Any]]] = [[] for _ in conversations]
        if index is not None and neighbours:
            for row, (smiles, question) in enumerate(queries):
                if smiles is not None:
                    found = index.neighbours(smiles, k=neighbours, question=question or None)
                    context[row] = near_twin_only(neighbour_entries(found, neighbours, featurizer), near_twin)
                    conversations[row] = add_neighbours(conversations[row], context[row])
        if system_prompt is not None:
            system = {"role": "system", "content": system_prompt}
            conversations = [c if c[0].get("role") == "system" else [system, *c] for c in conversations]
        atoms = {} if max_atoms is _UNSET else {"max_atoms": max_atoms}
        options = dict(chat_template=chat_template, include_graph=include_graph, processor_kwargs=atoms)
        options.update(add_generation_prompt=True, tokenize=True, return_dict=True)
        inputs = self.processor.apply_chat_template(conversations, **options)
        check_prompt_lengths(self.model, inputs, [len(found) for found in context])
        ranked = rank_neighbour_answers and any(context)
        return {
            **inputs,
            "neighbours": context,
            "queries": [smiles for smiles, _ in queries],
            "name_hints": hints,
            "ranking": (conversations, options) if ranked else None,
        }

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs) -> dict[str, Any]:
        passed_on = {key: model_inputs.pop(key) for key in ("neighbours", "queries", "name_hints")}
        ranking = model_inputs.pop("ranking")
        input_ids = model_inputs["input_ids"]
        output = self.model.generate(**model_inputs, **self._prepare_generate_kwargs(generate_kwargs))
        sequences = output.sequences if isinstance(output, ModelOutput) else output
        new_tokens = sequences[:, input_ids.shape[1] :]
        if ranking is not None and new_tokens.shape[0] == input_ids.shape[0]:  # several sequences each: not ranked
            conversations, options = ranking
            rows = zip(conversations, new_tokens.tolist(), passed_on["neighbours"], strict=True)
            passed_on["ranked"] = [rank_answers(self.model, self.processor, *row, options) for row in rows]
        return {"new_tokens": new_tokens, "num_inputs": input_ids.shape[0], **passed_on}

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        decode_kwargs: dict[str, Any] | None = None,
        return_tensors: bool = False,
        verify_names: Any = None,
        propose_names: Any = None,
    ) -> list[list[dict[str, Any]]]:
        """One list of answers per input; `decode_kwargs` go to the tokenizer's `batch_decode` (special tokens are
        skipped unless it says otherwise)."""
        token_ids, num_inputs = model_outputs["new_tokens"].tolist(), model_outputs["num_inputs"]
        per_input = len(token_ids) // num_inputs
        decode_kwargs = {"skip_special_tokens": True, **(decode_kwargs or {})}
        token_ids = [answer_token_ids(self.model.generation_config, ids) for ids in token_ids]
        texts = self.processor.tokenizer.batch_decode(token_ids, **decode_kwargs)
        rows = [{"generated_text": text.strip()} for text in texts]
        if return_tensors:
            for row, ids in zip(rows, token_ids, strict=True):
                row["generated_token_ids"] = ids
        answers = []
        for index in range(num_inputs):
            group = rows[index * per_input : (index + 1) * per_input]
            if verify_names is not None:
                group = [verified_answer(group, model_outputs["queries"][index], verify_names, propose_names)]
            hint, context = model_outputs["name_hints"][index], model_outputs["neighbours"][index]
            ranked = (model_outputs.get("ranked") or [None] * num_inputs)[index]
            for answer in group:
                if hint:
                    answer["name_hint"] = hint
                if context:
                    answer.update(neighbours=context, found_in_index=bool(context[0].get("exact")))
                if ranked is not None:
                    position, scores = ranked
                    rounded = [None if score is None else round(score, 4) for score in scores]
                    answer.update(from_neighbour=position, answer_scores=rounded)
                    if position is not None:
                        answer["generated_text"] = as_prompt_text(context[position]["answer"])
                        answer.pop("generated_token_ids", None)
            answers.append(group)
        return answers


def _given(**options: Any) -> dict[str, Any]:
    """The options that were given (not None)."""
    return {name: value for name, value in options.items() if value is not None}
