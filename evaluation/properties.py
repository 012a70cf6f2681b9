"""Property QA metrics (QM9 HOMO, LUMO, HOMO-LUMO gap, in Hartree): MAE beside the valid-answer ratio.

An answer is valid when it holds exactly one number standing on its own ("The HOMO is -0.2345 Hartree."; digits in a
word or formula such as "C6H6" are no number). Invalid answers are left out of the MAE but counted: the valid ratio,
over every property question with a target (a row the model could not be asked is invalid), is reported beside it.
Reported: `mae_<property>_<unit>` and the pooled `mae_<unit>`, beside `valid_ratio_<property>` / `valid_ratio`."""

from __future__ import annotations

import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .text_metrics import MetricReport, MetricValue, UnavailableMetric

# a number not glued to a word, another number or a hyphenated name: "C6H6", "1.2.3", "2-methyl" hold none
_NUMBER = re.compile(r"(?<![\w.+-])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?!\.?\w|-\w)")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})
DEFAULT_UNIT = "Hartree"


def parse_number(text: str | None) -> float | None:
    """The number `text` essentially is: its only standalone number, if finite (a Unicode minus sign is read as
    '-'); None when it holds no such number or more than one."""
    found = _NUMBER.findall(text.translate(_MINUS_SIGNS)) if text else []
    if len(found) != 1:
        return None
    value = float(found[0])
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class PropertyTarget:
    """What a property row asks for: the property, its true value and unit."""

    property: str
    value: float
    unit: str = DEFAULT_UNIT


def property_target(metadata: dict[str, Any], reference: str, question: str = "") -> PropertyTarget | None:
    """The row's target: `metadata` `{"property", "value", "unit"}` first; else the number in the reference answer,
    and the property named in the question. None when no value can be found."""
    value = metadata.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= sys.float_info.max:
        value = parse_number(reference)  # no usable value: not a number, NaN, infinite, or beyond a float's range
    if value is None:
        return None
    name = str(metadata.get("property") or question).lower()  # as a key: `homo`, `lumo`, `gap`, else the name's words
    known = next((key for key in ("gap", "lumo", "homo") if key in name), None)
    key = known or re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "unknown"
    return PropertyTarget(key, float(value), str(metadata.get("unit") or DEFAULT_UNIT))


def property_metrics(
    targets: Sequence[PropertyTarget], predictions: Sequence[str | None]
) -> tuple[MetricReport, dict[str, Any]]:
    """MAE per property and overall over valid answers, with the valid ratio (0-100) beside each; counts of valid
    and invalid answers. A `None` prediction is a row left unanswered (counted as invalid, and as `unanswered`)."""
    if len(targets) != len(predictions):
        raise ValueError(f"Got {len(targets)} targets and {len(predictions)} predictions.")
    errors: dict[str, list[float]] = defaultdict(list)
    rows, unanswered, units = Counter(), Counter(), {}
    for target, prediction in zip(targets, predictions, strict=True):
        rows[target.property] += 1
        unanswered[target.property] += prediction is None
        units.setdefault(target.property, target.unit)
        if (value := parse_number(prediction)) is not None:
            errors[target.property].append(abs(value - target.value))

    report = MetricReport()
    counts: dict[str, Any] = {"per_property": {}}
    groups = [(key, f"_{key}", errors[key], rows[key], unanswered[key], units[key]) for key in sorted(rows)]
    pooled = [error for key in sorted(rows) for error in errors[key]]
    unit = next(iter(units.values())) if len(set(units.values())) == 1 else "mixed units"
    groups.append(("all", "", pooled, len(targets), sum(unanswered.values()), unit))
    for key, suffix, found, total, missing, group_unit in groups:
        name = f"mae{suffix}_{re.sub(r'[^a-z0-9]+', '_', group_unit.lower())}"
        if found:
            mae = sum(error / len(found) for error in found)  # no overflow to inf for huge (finite) answers
            report.metrics.append(MetricValue(name, "mae", mae, unit=group_unit))
        else:
            report.unavailable.append(UnavailableMetric(name, "mae", f"no valid answer among {total} rows"))
        report.metrics.append(MetricValue(f"valid_ratio{suffix}", "valid_ratio", 100 * len(found) / total))
        entry = dict(rows=total, valid=len(found), invalid=total - len(found), unanswered=missing, unit=group_unit)
        counts["per_property"][key] = entry
    counts.update(counts["per_property"].pop("all"))  # the pooled counts stand at the top level
    return report, counts
