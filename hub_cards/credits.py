"""Data credits and the LLaMo citation, as cards show them. A card credits what its model was trained and evaluated on:
the source types of its training runs, the names of its evaluation datasets, and the keys the user names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class DataCredit(NamedTuple):
    title: str
    credit: str
    url: str
    terms: str


DATA_CREDITS = {
    "chebi": DataCredit(
        "ChEBI",
        "Chemical Entities of Biological Interest, curated at EMBL-EBI; the source of the natural-language "
        "descriptions behind ChEBI-20.",
        "https://www.ebi.ac.uk/chebi/",
        "CC BY 4.0",
    ),
    "chebi20": DataCredit(
        "ChEBI-20",
        "Molecule-description pairs assembled by Edwards et al. for MolT5 (EMNLP 2022) from PubChem and ChEBI.",
        "https://github.com/blender-nlp/MolT5",
        "see the MolT5 repository; ChEBI annotations are CC BY 4.0",
    ),
    "pubchem": DataCredit(
        "PubChem",
        "The NCBI's open chemistry database: structures, names (including IUPAC names) and descriptions.",
        "https://pubchem.ncbi.nlm.nih.gov/",
        "public domain (NCBI data policy); some descriptions carry their depositors' terms",
    ),
    "pubchem324k": DataCredit(
        "PubChem324k",
        "Molecule-text pairs collected from PubChem by Liu et al. for MolCA (EMNLP 2023); LLaMo's IUPAC and "
        "conversation data start from it.",
        "https://github.com/acharkq/MolCA",
        "see the MolCA repository and PubChem's terms",
    ),
    "mol-instructions": DataCredit(
        "Mol-Instructions",
        "Biomolecular instruction data by Fang et al. (ICLR 2024); its molecule-oriented part holds description "
        "and QM9 property questions.",
        "https://huggingface.co/datasets/zjunlp/Mol-Instructions",
        "CC BY 4.0",
    ),
    "qm9": DataCredit(
        "QM9",
        "Quantum-chemical properties (DFT, B3LYP/6-31G(2df,p)) of about 134k small organic molecules by "
        "Ramakrishnan et al. (Scientific Data, 2014); HOMO, LUMO and gap in Hartree.",
        "https://doi.org/10.6084/m9.figshare.c.978904.v5",
        "CC0 (figshare release)",
    ),
    "chemicals": DataCredit(
        "chemicals (Python package)",
        "Caleb Bell's chemical database package, whose PubChem-derived table supplies IUPAC names.",
        "https://github.com/CalebBell/chemicals",
        "MIT (package); names from PubChem",
    ),
    "generated": DataCredit(
        "Generated conversations",
        "Multi-turn conversations about molecules written by a teacher with `llamo generate-data`, following the "
        "LLaMo paper's GPT-4 recipe; see the dataset card of the generated data for its teacher and filters.",
        "https://arxiv.org/abs/2411.00871",
        "the terms of the teacher and of the source data",
    ),
}
SOURCE_TYPE_CREDITS = {
    "chebi20": ("chebi20", "chebi"),
    "pubchem324k": ("pubchem324k", "pubchem"),
    "mol-instructions": ("mol-instructions",),
    "chemicals": ("chemicals", "pubchem"),
    "qm9": ("qm9",),
    "conversations": ("generated",),
}
"""Training source types -> their credits; other sources (`iupac`, a user's CSV) are credited from their path only."""
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


def resolve_credits(source_types: Iterable[str] = (), names: Iterable[str] = (), keys: Iterable[str] = ()):
    """The credits for training source types, dataset names or paths (e.g. `.../chebi20/test.txt` -> ChEBI-20 and
    ChEBI) and explicit keys, each once, in a stable order."""
    keys = list(keys)
    if unknown := [key for key in keys if key not in DATA_CREDITS]:
        raise ValueError(f"Unknown data credit {unknown[0]!r}; known: {', '.join(sorted(DATA_CREDITS))}.")
    wanted = {*keys, *(key for kind in source_types for key in SOURCE_TYPE_CREDITS.get(kind, ()))}
    for name in names:
        wanted.update(next((found for found, hints in _NAME_HINTS if any(hint in name.lower() for hint in hints)), ()))
    return [credit for key, credit in DATA_CREDITS.items() if key in wanted]
