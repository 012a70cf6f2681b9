"""Collators that turn featurized conversation rows into training batches for LLaMo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llamo.featurization_llamo import MoleculeGraph, collate_molecule_graphs

from .schema import to_chat_messages

IGNORE_INDEX = -100


def row_graph(row: dict[str, Any]) -> MoleculeGraph:
    """The precomputed `MoleculeGraph` of a featurized row (see `featurize_dataset`)."""
    return MoleculeGraph.from_dict(row)


@dataclass
class LlamoDataCollator:
    """
    Batches featurized conversation rows for training: renders each conversation with the processor's chat template
    (its molecule as precomputed graph + canonical SMILES, so RDKit never runs here), expands `<graph>`, and builds
    `labels` that keep exactly the assistant turns (answer + end-of-turn text); the prompt, the SMILES text and the
    graph positions are `-100`. Padding is on the right.

    Args:
        processor: a `LlamoProcessor` with a fast tokenizer (offsets are needed to map turns to tokens).
        max_length: longest sequence kept (longer ones are cut on the right; a cut through the graph placeholders is
            an error naming the row).
        chat_template: overrides the processor's template.
    """

    processor: Any
    max_length: int | None = 512
    chat_template: str | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("LlamoDataCollator needs a fast tokenizer (it maps assistant turns to tokens by offsets).")
        graph_token, copies = self.processor.graph_token, self.processor.num_graph_tokens
        texts, spans, graphs = [], [], []
        for index, row in enumerate(rows):
            block = {
                "type": "molecule",
                "smiles": row["smiles"],
                "graph": row_graph(row),
                "prompt_smiles": row["prompt_smiles"],
            }
            rendered = self.processor.render_conversation(
                to_chat_messages(row, molecule=block), chat_template=self.chat_template, index=index
            )
            position = rendered.text.find(graph_token)
            shift = (copies - 1) * len(graph_token)
            texts.append(rendered.text.replace(graph_token, graph_token * copies))
            spans.append([(a + shift, b + shift) if a > position else (a, b) for a, b in rendered.assistant_spans])
            graphs.append(rendered.molecule)

        # Truncated here rather than with `truncation=True`: that would leave the setting on the fast tokenizer,
        # and every checkpoint's tokenizer.json would carry it.
        encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        input_ids, labels = [], []
        for index, (ids, offsets) in enumerate(zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)):
            ids, offsets = ids[: self.max_length], offsets[: self.max_length]
            found = sum(1 for token in ids if token == self.processor.graph_token_id)
            if found != copies:
                raise ValueError(
                    f"Row {rows[index].get('id', index)} keeps {found} of its {copies} graph placeholders within "
                    f"max_length={self.max_length}: raise max_length or drop the row."
                )
            row_labels = [
                token if end > start and any(start < b and end > a for a, b in spans[index]) else IGNORE_INDEX
                for token, (start, end) in zip(ids, offsets, strict=True)
            ]
            input_ids.append(ids)
            labels.append(row_labels)

        longest = max(len(ids) for ids in input_ids)
        pad_id = tokenizer.pad_token_id
        batch = {
            "input_ids": torch.full((len(rows), longest), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long),
            "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
        }
        for index, (ids, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
            batch["input_ids"][index, : len(ids)] = torch.tensor(ids)
            batch["attention_mask"][index, : len(ids)] = 1
            batch["labels"][index, : len(ids)] = torch.tensor(row_labels)
        batch.update(collate_molecule_graphs(graphs))
        return batch


__all__ = ["IGNORE_INDEX", "LlamoDataCollator", "row_graph"]
