"""Collators that turn featurized conversation rows into training batches for LLaMo."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import torch

from llamo.chat_template_llamo import add_neighbours, span_token_mask
from llamo.feature_extraction_llamo import PreparedMolecule, collate_sequence_molecules
from llamo.featurization_llamo import MoleculeGraph

from .schema import record_metadata, to_chat_messages

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
NEIGHBOURS_COLUMN = "neighbours"
"""Optional column of a training row: a JSON list of `{"smiles", "answer"}` in-context neighbours, most similar
first (see `llamo.processing.index.attach_neighbours`)."""


@dataclass
class LlamoDataCollator:
    """Batches featurized conversation rows for training: renders each with the processor's chat template (its molecule
    from the row's precomputed graph), expands `<graph>`, and builds `labels` that keep exactly the assistant turns
    (answer + end-of-turn text), everything else `-100`; pads on the right. Further molecules and neighbours are
    featurized once each (`cache_size` kept). Needs a fast tokenizer. Rows over `max_length` drop neighbours (least
    similar first), then are cut; a row whose placeholders do not fit is left out with a warning and counted
    (`dropped`), and a batch of only such rows is an error naming them."""

    processor: Any
    max_length: int | None = 512
    chat_template: str | None = None
    cache_size: int = 100_000
    dropped: int = field(default=0, init=False)
    _cache: dict[str, PreparedMolecule] = field(default_factory=dict, init=False, repr=False)

    def _prepare(self, smiles: str) -> PreparedMolecule:
        if (molecule := self._cache.get(smiles)) is None:
            molecule = self.processor.featurizer.prepare(smiles)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[smiles] = molecule
        return molecule

    def render(
        self, row: dict[str, Any], index: int = 0, max_neighbours: int | None = None
    ) -> tuple[str, list[tuple[int, int]], list[MoleculeGraph]]:
        """One row as expanded prompt text, its assistant spans in that text, and its molecules in placeholder
        order (with at most `max_neighbours` of its in-context neighbours)."""
        molecules = [PreparedMolecule(MoleculeGraph.from_dict(row), row["prompt_smiles"])]  # featurized once
        molecules += [self._prepare(smiles) for smiles in record_metadata(row).get("molecules", [])]
        messages = to_chat_messages(row)
        if neighbours := json.loads(row.get(NEIGHBOURS_COLUMN) or "[]")[:max_neighbours]:
            messages = add_neighbours(messages, neighbours)
            molecules = [self._prepare(neighbour["smiles"]) for neighbour in neighbours] + molecules
        rendered = self.processor.render_conversation(
            messages, chat_template=self.chat_template, index=index, molecules=molecules
        )
        text, spans = self.processor.expand_placeholders(rendered.text, rendered.assistant_spans)
        return text, spans, [molecule.graph for molecule in rendered.molecules]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("LlamoDataCollator needs a fast tokenizer (it maps assistant turns to tokens by offsets).")
        input_ids, labels, graphs = [], [], []
        for index, row in enumerate(rows):
            # a row too long for its neighbours drops them, last (least similar) first
            for neighbours in range(len(json.loads(row.get(NEIGHBOURS_COLUMN) or "[]")), -1, -1):
                text, spans, row_graphs = self.render(row, index, max_neighbours=neighbours)
                encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                if self.max_length is None or len(encoding["input_ids"]) <= self.max_length:
                    break
            # Cut here rather than with `truncation=True`, which would leave the setting on the shared fast tokenizer
            # (and every checkpoint's tokenizer.json would carry it).
            ids, offsets = encoding["input_ids"][: self.max_length], encoding["offset_mapping"][: self.max_length]
            keep = torch.tensor(span_token_mask(offsets, spans), dtype=torch.bool)
            input_ids.append(ids)
            labels.append(torch.tensor(ids, dtype=torch.long).masked_fill(~keep, IGNORE_INDEX))
            graphs.append(row_graphs)
        names = [f"Row {row.get('id', index)} (max_length={self.max_length})" for index, row in enumerate(rows)]
        fits = [
            ids.count(self.processor.graph_token_id) >= len(row_graphs) * self.processor.num_graph_tokens
            for ids, row_graphs in zip(input_ids, graphs, strict=True)
        ]
        if any(fits) and not all(fits):
            for name in compress(names, [not kept for kept in fits]):
                logger.warning("%s left out of its batch: its molecules' graph placeholders do not fit.", name)
            self.dropped += fits.count(False)
            input_ids, labels, graphs, names = ([*compress(part, fits)] for part in (input_ids, labels, graphs, names))
        self.processor.check_placeholders(input_ids, list(map(len, graphs)), names=names)
        batch = dict(tokenizer.pad({"input_ids": input_ids}, padding_side="right", return_tensors="pt"))  # longest row
        batch["labels"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        if any(graphs):
            batch.update(collate_sequence_molecules(graphs))
        return batch
