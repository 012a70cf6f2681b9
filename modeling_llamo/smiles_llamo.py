"""Reading SMILES input for LLaMo, and bounding it before and while RDKit parses it.

Cheap checks on the text (its length, the atoms and ring bonds it writes) refuse what would take RDKit too long
before it sees the string; `parse_smiles` then parses it with RDKit's default sanitization and `check_size` bounds the
parsed molecule's atoms. Errors name the input, shortened (`shorten_for_message`), and the position in a batch.

This file travels to the Hub as remote code: it imports only RDKit."""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem, rdBase

MAX_SMILES_LENGTH = 16_384
"""Longer strings are refused before RDKit sees them, whatever `max_atoms` is: 512 atoms at 32 characters each, far
above what real SMILES use (at most 7 per atom in ChEBI-20). RDKit's sanitization grows faster than linearly with
size, so this keeps one parse within seconds even with `max_atoms=None`."""

MESSAGE_CHARS = 80
"""How much of an input an error message shows (see `shorten_for_message`)."""

MAX_RING_BONDS_PER_ATOM = 12
"""An atom may carry at most this many ring-bond labels (ChEBI-20's SMILES carry at most 2). Dense graphs need many:
RDKit's ring perception and the ring merging of the motif rules take about a minute for a 50-atom clique."""

# One match per token of a SMILES that matters for its size: bracket atoms, then the organic subset (two-letter
# symbols before one-letter ones), and ring-bond labels. Bracket hydrogens without isotope get their own groups:
# RDKit's default parse removes those bonded to another atom (`bound_h`, not counted) and keeps a fragment made of
# hydrogens only (`[H+]`, `[H][H]`). A bracket cannot contain `[`, which keeps the scan linear even when unclosed.
_HYDROGEN = r"\[H(?![a-z])[^\[\]]*\]"
_SMILES_TOKEN = re.compile(
    rf"(?P<hydrogens>(?:^|(?<=\.))(?:{_HYDROGEN})+(?=\.|$))|(?P<bound_h>{_HYDROGEN})"
    r"|(?P<bracket>\[[^\[\]]*\])|(?P<atom>Cl|Br|[BCNOPSFI*bcnops])|(?P<ring>%\(\d+\)|%\d\d|\d)"
)


class OversizedMoleculeError(ValueError):
    """A molecule (or its SMILES text) over a size limit: its `size` over `limit`, in `unit`s ("atoms", "characters",
    "ring bonds", "ring bonds on one atom" or "rings")."""

    def __init__(self, message: str, size: int, limit: int, unit: str = "atoms") -> None:
        super().__init__(message)
        self.size, self.limit, self.unit = size, limit, unit

    def __reduce__(self) -> tuple:
        # the default pickling passes only the message back to __init__ (process pools send errors pickled)
        return type(self), (str(self), self.size, self.limit, self.unit)


def shorten_for_message(value: object, limit: int = MESSAGE_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters for an error message, saying how long the value was when cut.

    Only the head of a long string is ever converted, so a 10 MB input costs no more than a short one."""
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[: limit + 1])
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{text[:limit]}... ({len(value)} {unit})"
    short = reprlib.Repr()  # containers and the strings inside them cut
    short.maxstring = short.maxother = limit
    try:
        text = short.repr(value)
    except Exception:  # a broken __repr__ must not hide the error being reported
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit + 2 else f"{text[:limit]}..."


@dataclass(frozen=True)
class SmilesText:
    """What the text of a SMILES says about its size and its bracket atoms, read without parsing it.

    Attributes:
        atoms: atoms written (see `count_smiles_atoms`).
        ring_bonds: ring-bond labels written, halved.
        most_ring_bonds_on_one_atom: the longest run of ring-bond labels after one atom.
        bracket_atoms: indices, in writing order, of the atoms written in brackets.
        chiral_atoms: indices of the bracket atoms that hold a `@`.
        hydrogens: a bracket hydrogen is written (RDKit may remove it, so writing order is not atom order).
        directional_bonds: a `/` or `\\` is written (double-bond stereo).
        dative_bonds: a `<` or `>` is written (dative bonds, `->` and `<-`).
        plain: the whole string is one word, so no CXSMILES extension adds to what the atoms say."""

    atoms: int
    ring_bonds: int
    most_ring_bonds_on_one_atom: int
    bracket_atoms: tuple[int, ...] = ()
    chiral_atoms: tuple[int, ...] = ()
    hydrogens: bool = False
    directional_bonds: bool = True
    dative_bonds: bool = True
    plain: bool = False


@lru_cache(maxsize=8)
def read_smiles_text(smiles: str) -> SmilesText:
    # Cached for a handful of strings only: `parse_smiles` and the featurization of the molecule it returns read the
    # same text one after the other.
    words = smiles.split(None, 1)
    atoms = labels = most = current = 0
    brackets: list[int] = []
    chiral: list[int] = []
    hydrogens = False
    for hydrogen_fragment, _, bracket, atom, ring in _SMILES_TOKEN.findall(words[0] if words else ""):
        if ring:
            labels += 1
            current += 1
            most = max(most, current)
            continue
        current = 0
        if atom:
            atoms += 1
        elif bracket:
            brackets.append(atoms)
            if "@" in bracket:
                chiral.append(atoms)
            atoms += 1
        else:
            hydrogens = True
            atoms += hydrogen_fragment.count("[")
    plain = len(words) == 1 and len(words[0]) == len(smiles)
    directional = "/" in smiles or "\\" in smiles
    dative = "<" in smiles or ">" in smiles
    return SmilesText(atoms, labels // 2, most, tuple(brackets), tuple(chiral), hydrogens, directional, dative, plain)


def count_smiles_atoms(smiles: str) -> int:
    """The atoms written in a SMILES string, counted on its text without parsing it.

    For a valid SMILES this equals RDKit's `GetNumAtoms()` after its default parse, except that bracket hydrogens
    without isotope bonded to other atoms are not counted, as RDKit removes them; it keeps a few (a stereo
    `[H]/C=C`), so the count is a lower bound, never more than RDKit's. Text after the first whitespace (a name or
    CXSMILES extension) is not part of the molecule."""
    return read_smiles_text.__wrapped__(smiles).atoms


def ring_allowance(num_atoms: int) -> int:
    """A molecule may write at most `2 * atoms + 16` ring bonds and have as many rings: no real molecule comes close
    (ChEBI-20's densest, cubane, has 5 ring bonds for 8 atoms), while the merging of rings takes quadratic time."""
    return 2 * num_atoms + 16


def position_text(index: int | None) -> str:
    """`" at index N"` for a molecule of a batch, `""` for a single one: where error messages say it was."""
    return f" at index {index}" if index is not None else ""


def _over_limit(what: str, size: int, limit: int, unit: str, shown: str) -> OversizedMoleculeError:
    """`what` (the molecule and its `size` in `unit`s), over the `limit`: `shown` (the input, and any advice)."""
    return OversizedMoleculeError(f"{what}, over the limit of {limit}: {shown}", size, limit, unit)


def oversized_error(
    where: str, num_atoms: int, max_atoms: int, shown: str, at_least: bool = False
) -> OversizedMoleculeError:
    """The error of a molecule over `max_atoms`; `at_least` when only part of its SMILES was counted."""
    what = f"Molecule{where} has {'at least ' if at_least else ''}{num_atoms} atoms"
    return _over_limit(what, num_atoms, max_atoms, "atoms", f"{shown} (raise `max_atoms` to accept it).")


def parse_smiles(smiles: str, index: int | None = None, max_atoms: int | None = None) -> Chem.Mol:
    """Parse a SMILES string with RDKit's default sanitization, raising a `ValueError` that names the input.

    Cheap checks before RDKit refuse what is not a SMILES (non-strings, blank text, NUL, lone surrogates) and, with
    `OversizedMoleculeError`, SMILES over `max_atoms` atoms (`count_smiles_atoms`), `MAX_SMILES_LENGTH` characters or
    the ring limits (`MAX_RING_BONDS_PER_ATOM`, `ring_allowance`). The exact atom count is left to `check_size`."""
    where = position_text(index)
    if not isinstance(smiles, str):
        raise ValueError(f"SMILES{where} must be a string, got {type(smiles).__name__}: {shorten_for_message(smiles)}")
    if not smiles or smiles.isspace():
        raise ValueError(f"Empty SMILES{where}: a molecule needs at least one atom.")
    # atoms are counted on the first `MAX_SMILES_LENGTH` characters only, so any length costs the same
    text = read_smiles_text(smiles[:MAX_SMILES_LENGTH])
    too_long = len(smiles) > MAX_SMILES_LENGTH
    if max_atoms is not None and text.atoms > max_atoms:
        raise oversized_error(where, text.atoms, max_atoms, shorten_for_message(smiles), at_least=too_long)
    if too_long:
        what = f"SMILES{where} has {len(smiles)} characters"
        raise _over_limit(what, len(smiles), MAX_SMILES_LENGTH, "characters", shorten_for_message(smiles))
    most, allowed = text.most_ring_bonds_on_one_atom, ring_allowance(text.atoms)
    if most > MAX_RING_BONDS_PER_ATOM:
        what = f"SMILES{where} gives one atom {most} ring bonds"
        raise _over_limit(what, most, MAX_RING_BONDS_PER_ATOM, "ring bonds on one atom", shorten_for_message(smiles))
    if text.ring_bonds > allowed:
        what = f"SMILES{where} writes {text.ring_bonds} ring bonds for {text.atoms} atoms"
        raise _over_limit(what, text.ring_bonds, allowed, "ring bonds", shorten_for_message(smiles))
    problem = "it contains a NUL character" if "\x00" in smiles else None  # RDKit would silently stop reading there
    try:
        smiles.encode("utf-8")
    except UnicodeEncodeError:
        problem = problem or "it is not valid Unicode text"
    if problem is None:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(smiles)
        problem = "RDKit could not read or sanitize it" if mol is None else None
    if problem is not None:
        raise ValueError(f"Unparsable SMILES{where}: {shorten_for_message(smiles)} ({problem}).")
    if mol.GetNumAtoms() == 0:
        raise ValueError(f"SMILES{where} has no atoms: {shorten_for_message(smiles)}")
    rings, allowed = mol.GetRingInfo().NumRings(), ring_allowance(mol.GetNumAtoms())
    if rings > allowed:  # merging rings takes quadratic time
        what = f"Molecule{where} has {rings} rings for {mol.GetNumAtoms()} atoms"
        raise _over_limit(what, rings, allowed, "rings", shorten_for_message(smiles))
    return mol


def check_size(mol: Chem.Mol, max_atoms: int | None, smiles: str | Chem.Mol, index: int | None = None) -> None:
    """Raise an `OversizedMoleculeError` naming the molecule when it has more than `max_atoms` atoms."""
    if max_atoms is None or mol.GetNumAtoms() <= max_atoms:
        return
    if isinstance(smiles, str):
        shown = shorten_for_message(smiles)
    else:  # a SMILES of the molecule's first atoms: writing a whole huge molecule would take minutes
        atoms = min(mol.GetNumAtoms(), MESSAGE_CHARS)
        shown = shorten_for_message(Chem.MolFragmentToSmiles(mol, atomsToUse=list(range(atoms)), canonical=False))
        shown += f" (its first {atoms} atoms)" if atoms < mol.GetNumAtoms() else ""
    raise oversized_error(position_text(index), mol.GetNumAtoms(), max_atoms, shown)
