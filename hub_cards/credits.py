"""Data credits and the LLaMo citation, as cards show them.

Which credits a card lists is decided from what a model was trained and evaluated on: the data source types of its
training runs (`sources[].type` in `llamo_run_config.json`), the names of its evaluation datasets, and any dataset
the user names explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class DataCredit:
    """A data source to credit: what it is, who made it, where it lives, and its terms."""

    key: str
    title: str
    credit: str
    url: str
    terms: str


DATA_CREDITS = {
    credit.key: credit
    for credit in (
        DataCredit(
            "chebi",
            "ChEBI",
            "Chemical Entities of Biological Interest, curated at EMBL-EBI; the source of the natural-language "
            "descriptions behind ChEBI-20.",
            "https://www.ebi.ac.uk/chebi/",
            "CC BY 4.0",
        ),
        DataCredit(
            "chebi20",
            "ChEBI-20",
            "Molecule-description pairs assembled by Edwards et al. for MolT5 (EMNLP 2022) from PubChem and ChEBI.",
            "https://github.com/blender-nlp/MolT5",
            "see the MolT5 repository; ChEBI annotations are CC BY 4.0",
        ),
        DataCredit(
            "pubchem",
            "PubChem",
            "The NCBI's open chemistry database: structures, names (including IUPAC names) and descriptions.",
            "https://pubchem.ncbi.nlm.nih.gov/",
            "public domain (NCBI data policy); some descriptions carry their depositors' terms",
        ),
        DataCredit(
            "pubchem324k",
            "PubChem324k",
            "Molecule-text pairs collected from PubChem by Liu et al. for MolCA (EMNLP 2023); LLaMo's IUPAC and "
            "conversation data start from it.",
            "https://github.com/acharkq/MolCA",
            "see the MolCA repository and PubChem's terms",
        ),
        DataCredit(
            "mol-instructions",
            "Mol-Instructions",
            "Biomolecular instruction data by Fang et al. (ICLR 2024); its molecule-oriented part holds description "
            "and QM9 property questions.",
            "https://huggingface.co/datasets/zjunlp/Mol-Instructions",
            "CC BY 4.0",
        ),
        DataCredit(
            "qm9",
            "QM9",
            "Quantum-chemical properties (DFT, B3LYP/6-31G(2df,p)) of about 134k small organic molecules by "
            "Ramakrishnan et al. (Scientific Data, 2014); HOMO, LUMO and gap in Hartree.",
            "https://doi.org/10.6084/m9.figshare.c.978904.v5",
            "CC0 (figshare release)",
        ),
        DataCredit(
            "chemicals",
            "chemicals (Python package)",
            "Caleb Bell's chemical database package, whose PubChem-derived table supplies IUPAC names.",
            "https://github.com/CalebBell/chemicals",
            "MIT (package); names from PubChem",
        ),
        DataCredit(
            "generated",
            "Generated conversations",
            "Multi-turn conversations about molecules written by a teacher with `llamo generate-data`, following the "
            "LLaMo paper's GPT-4 recipe; see the dataset card of the generated data for its teacher and filters.",
            "https://arxiv.org/abs/2411.00871",
            "the terms of the teacher and of the source data",
        ),
    )
}
"""Every data source a LLaMo card may credit, by key."""

SOURCE_TYPE_CREDITS = {
    "chebi20": ("chebi20", "chebi"),
    "pubchem324k": ("pubchem324k", "pubchem"),
    "mol-instructions": ("mol-instructions",),
    "chemicals": ("chemicals", "pubchem"),
    "qm9": ("qm9",),
    "conversations": ("generated",),
}
"""Training data source types (`llamo.training`) -> the credits they call for. A source of unknown origin (`iupac`,
a user's CSV) is credited from its path only (see `credits_from_names`)."""

_NAME_HINTS = (
    (("mol-instructions",), ("mol-instructions", "mol_instructions", "molinstructions")),
    (("chebi20", "chebi"), ("chebi20", "chebi-20", "chebi_20")),
    (("chebi",), ("chebi",)),
    (("pubchem324k", "pubchem"), ("pubchem324k",)),
    (("pubchem",), ("pubchem",)),
    (("qm9",), ("qm9",)),
)
"""(credit keys, substrings of a dataset name or path that call for them); the first match wins."""

LLAMO_CITATION = """@inproceedings{park2024llamo,
  title     = {LLaMo: Large Language Model-based Molecular Graph Assistant},
  author    = {Park, Jinyoung and Bae, Minseong and Ko, Dohwan and Kim, Hyunwoo J.},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024},
  eprint    = {2411.00871},
  archivePrefix = {arXiv}
}"""
LLAMO_PAPER_URL = "https://arxiv.org/abs/2411.00871"
LLAMO_CODE_URL = "https://github.com/mlvlab/LLaMo"


def credits_from_names(names: Iterable[str]) -> list[str]:
    """Credit keys suggested by dataset names or paths (e.g. `.../chebi20/test.txt` -> ChEBI-20 and ChEBI)."""
    found: list[str] = []
    for name in names:
        lowered = name.lower()
        for keys, hints in _NAME_HINTS:
            if any(hint in lowered for hint in hints):
                found.extend(keys)
                break
    return found


def resolve_credits(source_types: Iterable[str] = (), names: Iterable[str] = (), keys: Iterable[str] = ()):
    """The credits for training source types, dataset names and explicit keys, each once, in a stable order."""
    wanted: list[str] = []
    for source_type in source_types:
        wanted.extend(SOURCE_TYPE_CREDITS.get(source_type, ()))
    wanted.extend(credits_from_names(names))
    for key in keys:
        if key not in DATA_CREDITS:
            raise ValueError(f"Unknown data credit {key!r}; known: {', '.join(sorted(DATA_CREDITS))}.")
        wanted.append(key)
    order = list(DATA_CREDITS)
    return [DATA_CREDITS[key] for key in sorted(set(wanted), key=order.index)]


__all__ = [
    "DATA_CREDITS",
    "LLAMO_CITATION",
    "LLAMO_CODE_URL",
    "LLAMO_PAPER_URL",
    "SOURCE_TYPE_CREDITS",
    "DataCredit",
    "credits_from_names",
    "resolve_credits",
]
