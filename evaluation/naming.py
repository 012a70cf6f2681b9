"""IUPAC naming metrics: BLEU-4 and METEOR (see `text_metrics`), exact match, and structure-level correctness.

Exact match ignores case and whitespace (`exact_match_normalized`): PubChem's reference names are lower-case.
Structure-level correctness (beyond the paper): each predicted name is parsed back with OPSIN (`py2opsin`, Java) and
its InChIKey compared with the target's, so a differently worded right name counts and a near-identical wrong one does
not. Reported over every predicted row, 0-100: the OPSIN parse rate, the full-InChIKey match rate and the connectivity
match rate (first InChIKey block: stereochemistry and charge ignored)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamo.pipeline_llamo import inchikey

from .text_metrics import MetricReport, MetricValue, TokenProtocol, UnavailableMetric, compute_text_metrics

OPSIN_CHUNK = 5000
_WHITESPACE = re.compile(r"\s+")
_HETEROATOM_LOCANT = re.compile(r"(?<![A-Za-z0-9])([nosp])(?=[\d']*[,-])")


def opsin_unavailable_reason() -> str | None:
    """Why OPSIN cannot run here (no py2opsin, no java), or None when it can."""
    if importlib.util.find_spec("py2opsin") is None:
        return "OPSIN needs the py2opsin package: pip install py2opsin"
    return "OPSIN needs Java: no `java` executable on PATH" if shutil.which("java") is None else None


def rule_based_name(smiles: str, iupac_nesting: bool = True) -> str | None:
    """The IUPAC name of `smiles` from `openclatura`'s rule-based namer, or None where it names nothing (it raises, or
    answers an empty name); with `iupac_nesting`, its nested parentheses as IUPAC nests them (`nest_enclosing_marks`).
    Time grows with the molecule (a few seconds for ~60 heavy atoms): callers bound its size."""
    import openclatura

    try:
        name = openclatura.name_smiles(smiles)
    except Exception:  # any failure of the namer means "no name", never a failed answer
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return nest_enclosing_marks(name.strip()) if iupac_nesting else name.strip()


def nest_enclosing_marks(name: str) -> str:
    """`name` with its parentheses nested in IUPAC's order (2013 recommendations, P-16.5.4), {[({[( )]})]}: a group
    holding no other keeps `( )`, one holding `( )` becomes `[ ]`, then `{ }`, then `( )` again, so
    "2-((2-hydroxyethyl)(methyl)amino)ethan-1-ol" becomes "2-[(2-hydroxyethyl)(methyl)amino]ethan-1-ol". Square
    brackets and braces already in the name (fusion, von Baeyer and spiro descriptors, ring assemblies) are kept as they
    are, with what they hold; a name with unbalanced marks is returned unchanged."""
    chars = list(name)
    groups: list[list[int]] = []  # per open parenthesis: its position, the deepest level inside it
    kept = 0  # how deep inside square brackets or braces
    for at, char in enumerate(name):
        if char in "[]{}":
            kept += 1 if char in "[{" else -1
        elif char == "(" and not kept:
            groups.append([at, 0])
        elif char == ")" and not kept:
            if not groups:
                return name
            start, inner = groups.pop()
            chars[start], chars[at] = ("()", "[]", "{}")[inner % 3]
            if groups:
                groups[-1][1] = max(groups[-1][1], inner + 1)
    return name if groups or kept else "".join(chars)


def opsin_spellings(name: str) -> tuple[str, str]:
    """A name as OPSIN reads it, then a second spelling to try when that does not parse. PubChem writes names
    lower-case with components separated by semicolons ("2-ethoxy-n,n-dimethyl-ethanamine;hydrochloride"); OPSIN wants
    one line (runs of whitespace and tabs, which start its identifier column, become one space), components separated
    by spaces, and heteroatom locants upper-case ("N,N-dimethyl", "O-acetyl"). Locants are upper-cased only in the
    second spelling, as a lone lower-case letter can also mean ortho / para ("o-xylene")."""
    first = _WHITESPACE.sub(" ", name.replace(";", " ")).strip()
    return first, _HETEROATOM_LOCANT.sub(lambda found: found.group(1).upper(), first)


def names_to_smiles(names: Sequence[str]) -> list[str | None]:
    """Parse chemical names with OPSIN, in batches (one Java start per `OPSIN_CHUNK` names), each as spelled by
    `opsin_spellings`: its second spelling is tried where the first does not parse; `None` where neither does.
    `RuntimeError` when OPSIN itself fails (not a single unparsable name)."""
    spellings = [opsin_spellings(name) for name in names]
    results = _opsin([first for first, _ in spellings])
    retry = [at for at, (first, second) in enumerate(spellings) if results[at] is None and second != first]
    for at, smiles in zip(retry, _opsin([spellings[at][1] for at in retry]), strict=True):
        results[at] = smiles
    return results


def _opsin(names: list[str]) -> list[str | None]:
    from py2opsin import py2opsin

    results: list[str | None] = []
    with tempfile.TemporaryDirectory(prefix="llamo-opsin-") as folder:
        for start in range(0, len(names), OPSIN_CHUNK):
            chunk = names[start : start + OPSIN_CHUNK]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # py2opsin warns about every unparsable name
                output = py2opsin(chunk, output_format="SMILES", tmp_fpath=str(Path(folder) / "names.txt"))
            if output is False or len(output) != len(chunk):
                raise RuntimeError(f"OPSIN failed on a batch of {len(chunk)} names (output: {str(output)[:200]})")
            results.extend(smiles or None for smiles in output)
    return results


def naming_metrics(
    target_smiles: Sequence[str],
    references: Sequence[str],
    predictions: Sequence[str],
    protocols: Sequence[TokenProtocol],
    wordnet: Any = None,
    wordnet_reason: str | None = None,
) -> tuple[MetricReport, dict[str, int]]:
    """BLEU-4 and METEOR per protocol, exact match (whitespace and case normalized) and the structure metrics (OPSIN
    parse rate and InChIKey match rates of predicted names against the target molecules), 0-100."""
    report = compute_text_metrics(
        references, predictions, protocols, wordnet, wordnet_reason, include=("bleu4", "meteor")
    )
    normalized = [[" ".join(name.split()).casefold() for name in names] for names in (predictions, references)]
    exact = sum(p == r for p, r in zip(*normalized, strict=True))
    report.metrics.append(MetricValue("exact_match_normalized", "exact_match", 100 * exact / len(references)))
    structure = {  # name: (type, the count it is the rate of)
        "parse_rate_opsin": ("parse_rate", "opsin_parsed"),
        "structure_match_opsin_inchikey": ("structure_match", "structure_matches"),
        "structure_match_opsin_inchikey_connectivity": ("structure_match", "connectivity_matches"),
    }
    if (reason := opsin_unavailable_reason()) is None:
        try:
            parsed = names_to_smiles(predictions)
        except RuntimeError as error:
            reason = str(error)
    if reason is not None:
        report.unavailable += [UnavailableMetric(name, kind, reason) for name, (kind, _) in structure.items()]
        return report, {"exact_matches": exact}
    keys = [(inchikey(smiles), inchikey(target)) for smiles, target in zip(parsed, target_smiles, strict=True)]
    counts = {
        "exact_matches": exact,
        "opsin_parsed": sum(p is not None for p, _ in keys),
        "structure_matches": sum(p is not None and p == t for p, t in keys),
        "connectivity_matches": sum(p is not None and t is not None and p[:14] == t[:14] for p, t in keys),
        "targets_without_inchikey": sum(t is None for _, t in keys),
    }
    report.metrics += [
        MetricValue(name, kind, 100 * counts[key] / len(predictions)) for name, (kind, key) in structure.items()
    ]
    return report, counts
