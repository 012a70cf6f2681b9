"""The offline grounded teacher: conversations written only from verified facts of the molecule.

No language model: the facts are the description sentences, the IUPAC name when given, and what RDKit computes
(formula, weight, charge, rings, `group_rules` counts, ...). Each question-answer pair states one fact; the metadata's
`provenance` keeps, per assistant turn, its key, source (`description`, `iupac`, `rdkit`), value and `evidence`."""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Any

import rdkit
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors, Lipinski, rdMolDescriptors

from .group_rules import RULES, group_counts

GROUNDED_VERSION = "llamo-grounded-v2"
"""Version of the question/answer templates and fact extraction below (recorded as the records' prompt version; v2:
functional groups counted with `group_rules`)."""

# what a description sentence states, tried in this order; unmatched sentences are "other"
_SENTENCE_KINDS: tuple[tuple[str, re.Pattern], ...] = (
    ("conjugate", re.compile(r"\bconjugate (acid|base)\b", re.I)),
    ("role", re.compile(r"\bha(s|ve) (a )?roles? as\b", re.I)),
    ("isomer", re.compile(r"\b(tautomer|enantiomer|stereoisomer|isomer|epimer)s?\b", re.I)),
    ("derivation", re.compile(r"\b(derives? from|functionally related to|derived from)\b", re.I)),
    ("origin", re.compile(r"\b(isolated from|found in|produced by|obtained from)\b", re.I)),
    ("class", re.compile(r"^(it|the molecule|this molecule) is (a|an)\b|\bis a member of\b", re.I)),
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\[])")

QUESTIONS: dict[str, tuple[str, ...]] = {
    "description:definition": (
        "What is this molecule?",
        "Can you describe this molecule?",
        "What kind of compound is this?",
        "Tell me about this molecule.",
    ),
    "description:class": (
        "Which classes of compounds does it belong to?",
        "How would you classify it chemically?",
        "What compound classes is it a member of?",
    ),
    "description:role": (
        "What roles does it have?",
        "Does it have a known biological or chemical role?",
        "What is its role?",
    ),
    "description:conjugate": (
        "What is its conjugate acid or base?",
        "How is it related to its conjugate acid or base?",
        "Is it the conjugate acid or base of another species?",
    ),
    "description:isomer": (
        "Is it related to any isomers, such as tautomers or enantiomers?",
        "Which isomers is it related to?",
    ),
    "description:derivation": (
        "What compounds is it derived from or related to?",
        "Which parent compound is it related to?",
    ),
    "description:origin": ("Where does it occur or where has it been found?", "What is its natural source?"),
    "description:other": ("What else can you tell me about it?", "Is there anything more to know about this molecule?"),
    "iupac_name": (
        "What is its IUPAC name?",
        "How is this compound named systematically?",
        "Give me the IUPAC name of this molecule.",
    ),
    "formula": (
        "What is the molecular formula of this molecule?",
        "Which atoms, and how many of each, make up this molecule?",
        "Can you give me its molecular formula?",
    ),
    "molecular_weight": (
        "What is its molecular weight?",
        "How heavy is this molecule, in g/mol?",
        "What is the molar mass of this compound?",
    ),
    "formal_charge": (
        "Does this molecule carry a net charge?",
        "Is it charged or neutral?",
        "What is its overall formal charge?",
    ),
    "rings": (
        "How many rings does it contain?",
        "Does it have any rings, and are they aromatic?",
        "Describe its ring system: how many rings, and how many are aromatic?",
    ),
    "functional_groups": (
        "Which functional groups does it have?",
        "What functional groups can you identify in this molecule?",
        "Name the functional groups present in it.",
    ),
    "heavy_atoms": ("How many non-hydrogen atoms does it have?", "How many heavy atoms are in this molecule?"),
    "hydrogen_bonding": (
        "How many hydrogen-bond donors and acceptors does it have?",
        "Can it take part in hydrogen bonding, as a donor or as an acceptor?",
    ),
    "stereocentres": (
        "Does it have any stereocentres?",
        "Does it contain stereocentres, and are their configurations specified?",
    ),
    "components": ("Is it a single connected molecule?", "Does this substance consist of more than one component?"),
}
"""Question phrasings per fact key; one is drawn per turn."""


@dataclass
class Fact:
    """One verified fact about a molecule: `key` (`formula`, `description:role`, ...), `source` (`description`,
    `iupac`, `rdkit`), JSON-able `value`, the `answer` stating it, and `evidence` strings found verbatim in `answer`."""

    key: str
    source: str
    value: Any
    answer: str
    evidence: list[str]


def split_sentences(text: str) -> list[str]:
    """The sentences of a description, each verbatim (split after `.`, `!`, `?` before a capital or bracket)."""
    return [sentence.strip() for sentence in _SENTENCE_END.split(text.strip()) if sentence.strip()]


def _count(number: int, singular: str) -> str:
    return f"{number} {singular}{'' if number == 1 else 's'}"


def description_facts(description: str) -> list[Fact]:
    """The first sentence as the definition, the others grouped by kind (in order of first appearance)."""
    if not (sentences := split_sentences(description or "")):
        return []
    groups: dict[str, list[str]] = {"definition": [sentences[0]]}
    for sentence in sentences[1:]:
        kind = next((name for name, pattern in _SENTENCE_KINDS if pattern.search(sentence)), "other")
        groups.setdefault(kind, []).append(sentence)
    return [
        Fact(f"description:{kind}", "description", group, " ".join(group), list(group))
        for kind, group in groups.items()
    ]


def _rings_answer(rings: int, aromatic: int) -> tuple[str, list[str]]:
    if rings == 0:
        return "It has no rings: it is an acyclic molecule.", ["no rings"]
    if rings == 1:
        return f"It has 1 ring, which is {'' if aromatic else 'not '}aromatic.", ["1 ring"]
    tail = f"{'none' if aromatic == 0 else 'all' if aromatic == rings else aromatic} of them aromatic"
    return f"It has {rings} rings, {tail}.", [f"{rings} rings", tail]


def _charge_answer(charge: int) -> tuple[str, list[str]]:
    if charge == 0:
        return "It is electrically neutral overall: its net formal charge is 0.", ["net formal charge is 0"]
    signed = f"{charge:+d}"
    kind = "an anion" if charge < 0 else "a cation"
    return f"It is {kind} with a net formal charge of {signed}.", [f"net formal charge of {signed}"]


def _stereo_answer(total: int, specified: int) -> tuple[str, list[str]]:
    if total == 0:
        return "It has no stereocentres.", ["no stereocentres"]
    if total == 1:
        detail = "with a specified configuration" if specified else "whose configuration is unspecified"
    else:
        amount = "all" if specified == total else "none" if specified == 0 else specified
        detail = f"{amount} of them with a specified configuration"
    return f"It has {_count(total, 'stereocentre')}, {detail}.", [_count(total, "stereocentre"), detail]


def structure_facts(mol: Chem.Mol) -> list[Fact]:
    """Facts RDKit computes from the structure (source `rdkit`)."""
    facts: list[Fact] = []

    def add(key: str, value: Any, answer: str, evidence: list[str]) -> None:
        facts.append(Fact(key, "rdkit", value, answer, evidence))

    formula, weight = rdMolDescriptors.CalcMolFormula(mol), round(Descriptors.MolWt(mol), 2)
    add("formula", formula, f"Its molecular formula is {formula}.", [formula])
    add("molecular_weight", weight, f"Its molecular weight is about {weight:.2f} g/mol.", [f"{weight:.2f} g/mol"])
    charge = Chem.GetFormalCharge(mol)
    add("formal_charge", charge, *_charge_answer(charge))
    rings, aromatic = rdMolDescriptors.CalcNumRings(mol), rdMolDescriptors.CalcNumAromaticRings(mol)
    add("rings", {"rings": rings, "aromatic_rings": aromatic}, *_rings_answer(rings, aromatic))
    if groups := group_counts(mol):  # not exhaustive: finding none proves nothing, so nothing is said
        listed = [f"{name} ({count})" for name, count in groups.items()]
        answer = f"Substructure matching finds these functional groups, with their counts: {', '.join(listed)}."
        add("functional_groups", groups, answer, listed)
    heavy = _count(mol.GetNumHeavyAtoms(), "heavy (non-hydrogen) atom")
    add("heavy_atoms", mol.GetNumHeavyAtoms(), f"It has {heavy}.", [heavy])
    donors, acceptors = Lipinski.NumHDonors(mol), Lipinski.NumHAcceptors(mol)
    bonding = [_count(donors, "hydrogen-bond donor"), _count(acceptors, "hydrogen-bond acceptor")]
    answer = f"Counted with Lipinski's rules, it has {bonding[0]} and {bonding[1]}."
    add("hydrogen_bonding", {"donors": donors, "acceptors": acceptors}, answer, bonding)
    centres = Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False)
    stereo = {"stereocentres": len(centres), "specified": sum(label != "?" for _, label in centres)}
    add("stereocentres", stereo, *_stereo_answer(*stereo.values()))
    if (components := len(Chem.GetMolFrags(mol))) > 1:
        text = f"{components} disconnected components"
        answer = f"No: it consists of {text}, for example the ions of a salt or a compound with its solvent."
        add("components", components, answer, [text])
    return facts


def molecule_facts(mol: Chem.Mol, description: str, iupac: str | None = None) -> list[Fact]:
    """All facts of one molecule: description facts, the IUPAC name (if given), then the RDKit facts."""
    facts = description_facts(description)
    if name := (iupac or "").strip():
        facts.append(Fact("iupac_name", "iupac", name, f"Its IUPAC name is {name}.", [name]))
    with rdBase.BlockLogs():
        facts.extend(structure_facts(mol))
    return facts


@dataclass
class GroundedConversation:
    """Messages plus, per assistant turn, the fact it states (`provenance`)."""

    messages: list[dict[str, str]]
    provenance: list[dict[str, Any]]


class GroundedTeacher:
    """Writes a conversation from a molecule's facts only: the definition first, then the other description facts and
    the IUPAC name, then RDKit facts drawn at random, `min_turns`..`max_turns` question-answer pairs in all (fewer if
    the molecule has fewer facts). Deterministic given `seed`."""

    name = "grounded"
    model = "rdkit-facts"
    prompt_version = GROUNDED_VERSION
    max_concurrency = 1  # CPU-bound: threads would not help, and one worker keeps the output in input order

    def __init__(self, min_turns: int = 4, max_turns: int = 7):
        if not 1 <= min_turns <= max_turns:
            raise ValueError(f"need 1 <= min_turns <= max_turns, got {min_turns} and {max_turns}")
        self.min_turns, self.max_turns = min_turns, max_turns

    def __repr__(self) -> str:
        return f"GroundedTeacher(min_turns={self.min_turns}, max_turns={self.max_turns})"

    def converse(
        self, mol: Chem.Mol, description: str, iupac: str | None, seed: int, max_turns: int | None = None
    ) -> GroundedConversation:
        """A conversation about `mol`; at most `max_turns` (if given, else `self.max_turns`) question-answer pairs."""
        rng = random.Random(seed)
        facts = molecule_facts(mol, description, iupac)
        upper = min(self.max_turns, max_turns) if max_turns else self.max_turns
        turns = min(len(facts), upper, rng.randint(min(self.min_turns, upper), upper))
        textual = [fact for fact in facts if fact.source != "rdkit"]
        computed = [fact for fact in facts if fact.source == "rdkit"]
        rng.shuffle(computed)
        chosen = [*textual, *computed][:turns]
        head, tail = chosen[:1], chosen[1:]
        rng.shuffle(tail)
        messages, provenance = [], []
        for fact in head + tail:
            question = rng.choice(QUESTIONS[fact.key])
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": fact.answer}]
            stated = {k: v for k, v in asdict(fact).items() if k != "answer"}
            provenance.append({"message": len(messages) - 1, **stated})
        return GroundedConversation(messages, provenance)

    def metadata(self) -> dict[str, Any]:
        """What a record notes about this teacher besides teacher/model/prompt version."""
        return {"rdkit_version": rdkit.__version__, "functional_group_patterns": len(RULES)}
