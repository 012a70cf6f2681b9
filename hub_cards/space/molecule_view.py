"""What the demo shows of a molecule: its parse, LLaMo's motif groups, a 2D drawing with the groups highlighted, and
an HTML listing of the groups. No browser and no model needed."""

from __future__ import annotations

import colorsys
import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rdkit import Chem
from rdkit.Chem.Draw import rdMolDraw2D

from llamo.chat_template_llamo import DEFAULT_MAX_ATOMS
from llamo.featurization_llamo import functional_groups
from llamo.smiles_llamo import OversizedMoleculeError, check_size, parse_smiles

from .group_names import group_names

Color = tuple[float, float, float]

EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("Caffeine", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"),
    ("Testosterone (a steroid)", "C[C@]12CC[C@H]3[C@@H](CCC4=CC(=O)CC[C@]34C)[C@@H]1CC[C@@H]2O"),
    ("Glucose (a sugar)", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"),
    ("Sodium acetate (a salt)", "CC(=O)[O-].[Na+]"),
    ("Methane (no groups)", "C"),
)
MAX_SMILES_CHARS = 5000
"""Longer input is refused before RDKit sees it."""
HIGHLIGHT_MAX_ATOMS = 200
"""Larger molecules are drawn without group highlights, which keeps drawing fast."""
ATOM_INDEX_MAX_ATOMS = 80
"""Atom indices (the numbers of the group listing) are written on drawings of molecules up to this size."""
DRAWING_SIZE = (520, 380)

# Distinct, light enough to keep atom labels readable; beyond them, colours are spread around the hue circle.
_PALETTE: tuple[Color, ...] = (
    (0.96, 0.55, 0.50),
    (0.47, 0.71, 0.95),
    (0.55, 0.85, 0.52),
    (0.98, 0.78, 0.38),
    (0.78, 0.60, 0.93),
    (0.45, 0.86, 0.84),
    (0.97, 0.62, 0.82),
    (0.80, 0.80, 0.45),
    (0.70, 0.72, 0.78),
    (0.99, 0.68, 0.56),
)
_BOND_ORDER = ("single", "double", "triple", "aromatic", "other")


@dataclass(frozen=True)
class MotifGroup:
    """One functional group of LLaMo's motif tokens (row `index` of the processor's `motif_features`), with its
    chemical names (`group_names`; empty where no rule knows the group)."""

    index: int
    atoms: tuple[int, ...]
    description: str
    color: Color
    names: tuple[str, ...] = ()


@dataclass
class MoleculeView:
    """A molecule as the demo shows it, or the reason it cannot be shown (`error`, a message for the page)."""

    smiles: str
    mol: Chem.Mol | None = None
    groups: list[MotifGroup] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_atoms(self) -> int:
        return self.mol.GetNumAtoms() if self.mol is not None else 0


def group_palette(count: int) -> list[Color]:
    """`count` distinct highlight colours: the fixed palette first, then evenly spread hues."""
    extra = max(0, count - len(_PALETTE))
    return [*_PALETTE[:count], *(colorsys.hsv_to_rgb(step / extra, 0.45, 0.97) for step in range(extra))]


def _inner_bonds(mol: Chem.Mol, atoms: Sequence[int]) -> list[Chem.Bond]:
    members = set(atoms)
    return [bond for bond in mol.GetBonds() if bond.GetBeginAtomIdx() in members and bond.GetEndAtomIdx() in members]


def describe_group(mol: Chem.Mol, atoms: Sequence[int]) -> str:
    """A group's heavy-atom formula (carbon first, charge appended), its inner bonds and whether it is a ring system."""
    symbols = Counter(mol.GetAtomWithIdx(atom).GetSymbol() for atom in atoms)
    order = sorted(symbols, key=lambda symbol: (symbol != "C", symbol))
    formula = "".join(f"{symbol}{symbols[symbol] if symbols[symbol] > 1 else ''}" for symbol in order)
    charge = sum(mol.GetAtomWithIdx(atom).GetFormalCharge() for atom in atoms)
    parts = [formula + (f" (charge {charge:+d})" if charge else "")]
    bonds = _inner_bonds(mol, atoms)
    counts = Counter(kind if (kind := str(bond.GetBondType()).lower()) in _BOND_ORDER else "other" for bond in bonds)
    if bonds:
        listed = ", ".join(f"{counts[name]} {name}" for name in _BOND_ORDER if counts[name])
        parts.append(listed + (" bond" if len(bonds) == 1 else " bonds"))
    else:
        parts.append("a single atom")
    if any(bond.IsInRing() for bond in bonds):
        parts.append("aromatic ring system" if counts["aromatic"] else "ring system")
    return "; ".join(parts)


def read_molecule(smiles: str, max_atoms: int | None) -> Chem.Mol:
    """The molecule of `smiles` within `max_atoms`, size bounds checked before RDKit parses the text: a `ValueError`
    if unparsable, an `OversizedMoleculeError` over a size limit."""
    mol = parse_smiles(smiles, max_atoms=max_atoms)
    check_size(mol, max_atoms, smiles)
    return mol


def load_molecule(smiles: str, max_atoms: int | None = DEFAULT_MAX_ATOMS) -> MoleculeView:
    """Parse `smiles` and find its groups (in the processor's motif-row order, each with a colour and chemical names);
    a bad or oversized molecule gives a view whose `error` says why, quoting at most the head of the input."""
    smiles = smiles.strip() if isinstance(smiles, str) else ""
    if len(smiles) > MAX_SMILES_CHARS:
        return MoleculeView(
            smiles, error=f"This SMILES has {len(smiles)} characters; the demo reads at most {MAX_SMILES_CHARS}."
        )
    try:
        mol = read_molecule(smiles, max_atoms)
    except ValueError as error:  # unparsable, or over RDKit's input bounds or the atom limit
        if not isinstance(error, OversizedMoleculeError) or error.unit != "atoms":  # the parser's short message
            return MoleculeView(smiles, error=str(error))
        limit = f"the model accepts at most {error.limit} (its processor's max_atoms)"
        return MoleculeView(smiles, error=f"This molecule has {error.size} atoms; {limit}.")
    atom_sets = functional_groups(mol)
    found = zip(atom_sets, group_palette(len(atom_sets)), group_names(mol, atom_sets), strict=True)
    groups = [
        MotifGroup(index, tuple(sorted(atoms)), describe_group(mol, atoms), color, names)
        for index, (atoms, color, names) in enumerate(found)
    ]
    return MoleculeView(smiles, mol, groups)


def highlight_colors(groups: Sequence[MotifGroup], weights: Sequence[float] | None = None) -> list[Color]:
    """Each group's drawing colour; with attention `weights`, faded towards white by the group's share of the
    largest weight (faint for groups the motif queries ignore)."""
    if weights is None or len(weights) != len(groups) or max(weights, default=0.0) <= 0:
        return [group.color for group in groups]
    top = max(weights)
    return [
        tuple(1.0 - (0.12 + 0.88 * weight / top) * (1.0 - channel) for channel in group.color)
        for group, weight in zip(groups, weights, strict=True)
    ]


def draw_molecule_svg(
    mol: Chem.Mol,
    groups: Sequence[MotifGroup] = (),
    weights: Sequence[float] | None = None,
    size: tuple[int, int] = DRAWING_SIZE,
    atom_indices: bool = True,
) -> str:
    """An SVG drawing of `mol` (without XML declaration, ready to embed in HTML), each group highlighted in its
    colour (shaded by attention `weights` if given). Molecules over `HIGHLIGHT_MAX_ATOMS` are drawn plain, and atom
    indices are written (with `atom_indices`) up to `ATOM_INDEX_MAX_ATOMS` atoms."""
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    options = drawer.drawOptions()
    options.addAtomIndices = atom_indices and mol.GetNumAtoms() <= ATOM_INDEX_MAX_ATOMS
    options.annotationFontScale = 0.6
    prepared = rdMolDraw2D.PrepareMolForDrawing(mol, addChiralHs=False)
    if groups and mol.GetNumAtoms() <= HIGHLIGHT_MAX_ATOMS:
        atom_map: dict[int, list[Color]] = {}
        bond_map: dict[int, list[Color]] = {}
        for group, color in zip(groups, highlight_colors(groups, weights), strict=True):
            for atom in group.atoms:
                atom_map.setdefault(atom, []).append(color)
            for bond in _inner_bonds(mol, group.atoms):
                bond_map.setdefault(bond.GetIdx(), []).append(color)
        drawer.DrawMoleculeWithHighlights(prepared, "", atom_map, bond_map, {}, {})
    else:
        drawer.DrawMolecule(prepared)
    drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    return svg[svg.index("<svg") :]


def drawing_html(view: MoleculeView, weights: Sequence[float] | None = None) -> str:
    """The page's drawing panel for a valid view: the SVG and a caption (with a note when highlights are skipped)."""
    svg = draw_molecule_svg(view.mol, view.groups, weights)
    caption = f"{html.escape(Chem.MolToSmiles(view.mol))} &middot; {view.num_atoms} atoms"
    if view.groups and view.num_atoms > HIGHLIGHT_MAX_ATOMS:
        caption += f" &middot; groups not highlighted (over {HIGHLIGHT_MAX_ATOMS} atoms)"
    return (
        f'<div class="llamo-drawing" style="max-width:{DRAWING_SIZE[0]}px">{svg}'
        f'<div class="llamo-caption" style="font-size:0.85em;opacity:0.8">{caption}</div></div>'
    )


def groups_table_html(groups: Sequence[MotifGroup], weights: Sequence[float] | None = None) -> str:
    """An HTML table of the groups: colour, index, atoms, chemical names, description and, if given, motif attention."""
    if not groups:
        return (
            '<p class="llamo-no-groups">No functional groups: LLaMo\'s rule set finds none in this molecule, so the '
            "motif tokens are the projector's raw motif queries (there is no motif attention to show).</p>"
        )
    with_weights = weights is not None and len(weights) == len(groups)
    header = "<th></th><th>Group</th><th>Atoms</th><th>Chemical group</th><th>Description</th>"
    header += "<th>Motif attention</th>" if with_weights else ""
    rows = []
    for position, group in enumerate(groups):
        color = "#" + "".join(f"{round(channel * 255):02x}" for channel in group.color)
        swatch = f'<span style="display:inline-block;width:1em;height:1em;background:{color}"></span>'
        names = html.escape(", ".join(group.names)) if group.names else "&ndash;"
        cells = [swatch, str(group.index), ", ".join(map(str, group.atoms)), names, html.escape(group.description)]
        if with_weights:
            share = float(weights[position])
            bar = f'<span style="display:inline-block;height:0.7em;width:{share * 6:.2f}em;background:#888"></span>'
            cells.append(f"{share:.3f} {bar}")
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f'<table class="llamo-groups"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def message_html(text: str, kind: str = "error") -> str:
    """A visible message box for the page (`kind` "error" or "info"), with `text` escaped."""
    color, label = ("#b00020", "Error: ") if kind == "error" else ("#555", "")
    return f'<div class="llamo-{kind}" style="color:{color};font-weight:500">{label}{html.escape(text)}</div>'
