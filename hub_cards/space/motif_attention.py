"""How much LLaMo's motif queries attend to each functional group of a molecule (an interpretability view the paper
does not show). Only the projector's motif attention runs: no language model call."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from rdkit import Chem

from llamo.featurization_llamo import collate_molecule_graphs


class MotifAttention(NamedTuple):
    """The motif queries' attention over one molecule's groups: `per_query` `(num_motif_queries, num_groups)`,
    head-averaged, each row summing to 1, and its `mean` over the queries `(num_groups,)`."""

    per_query: np.ndarray
    mean: np.ndarray


def uses_motifs(model) -> bool:
    """Whether the model's projector has motif tokens (the `--no-motifs` ablation has none)."""
    return bool(getattr(model.model.graph_projector, "use_motifs", False))


def motif_attention(model, processor, molecule: str | Chem.Mol) -> MotifAttention | None:
    """The motif attention of `model` for one molecule (SMILES or RDKit molecule) over the rows of the processor's
    `motif_features`, or `None` for a molecule without groups or a model without motif tokens (the GIN need not run).
    A `ValueError` for a molecule unparsable or over the processor's `max_atoms`."""
    if not uses_motifs(model):
        return None
    graph = processor.featurizer.featurize([molecule])[0]
    if graph.motif_features.shape[0] == 0:
        return None
    inputs = collate_molecule_graphs([graph])
    projector = model.model.graph_projector
    features, mask = (inputs[name].to(projector.motif_queries.device) for name in ("motif_features", "motif_mask"))
    with torch.inference_mode():
        per_query = projector.motif_tokens(features, mask, output_attentions=True)[1][0].float().cpu().numpy()
    return MotifAttention(per_query, per_query.mean(axis=0))
