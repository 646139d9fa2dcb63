"""Vertebra level names <-> numeric labels of the label-map numberings the tool understands.

Numberings (``numbering`` option of ``masks build``):

``verse``  VerSe / TPTBox (``TPTBox/core/vert_constants.py``): C1-C7 = 1-7, T1-T12 = 8-19, L1-L6 = 20-25,
           S1 (sacrum) = 26, T13 = 28. Intervertebral disc = label of the vertebra above + 100 (L4/L5 = 123);
           endplate = vertebra + 200. A vertebra mask includes its endplate labels (+200), which TPTBox carves
           out of the vertebral body.
``totalseg``  TotalSegmentator ``total`` v2 (CT): sacrum = 25, S1 = 26, L5..L1 = 27..31, T12..T1 = 32..43,
           C7..C1 = 44..50. No disc labels; no L6 / T13.
``totalseg-mr``  TotalSegmentator ``total_mr``: 18 sacrum, 19 = all vertebrae in one class, 20 = all discs.
           A level cannot be chosen by label: the connected component nearest to the row's x, y is used.

Level strings accepted (case-insensitive): a vertebra (``L3``, ``T12``, ``C5``, ``S1``, ``sacrum``), a disc
between two adjacent vertebrae (``L4/L5``, ``L4-L5``, ``L4_L5``, ``L4/5``, ``L5-S1``), or a numeric label
(``22``, ``22.0``) used as is, whatever the numbering.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError

NUMBERINGS = ("verse", "totalseg", "totalseg-mr")

# Cranio-caudal order; T13 and L6 are transitional vertebrae present in some spines only.
ORDER = ([f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + ["T13"]
         + [f"L{i}" for i in range(1, 7)] + ["S1"])
_OPTIONAL = {"T13", "L6"}

VERSE: dict[str, int] = {**{f"C{i}": i for i in range(1, 8)}, **{f"T{i}": 7 + i for i in range(1, 13)},
                         **{f"L{i}": 19 + i for i in range(1, 7)}, "S1": 26, "T13": 28}
TOTALSEG: dict[str, int] = {"S1": 26, **{f"L{i}": 32 - i for i in range(1, 6)},
                            **{f"T{i}": 44 - i for i in range(1, 13)}, **{f"C{i}": 51 - i for i in range(1, 8)}}
TOTALSEG_SACRUM = 25
TOTALSEG_MR_VERTEBRAE = 19
TOTALSEG_MR_DISCS = 20
VERSE_DISC_OFFSET = 100
VERSE_ENDPLATE_OFFSET = 200

_VERT_RE = re.compile(r"^([CTLS])(\d{1,2})$")
_DISC_RE = re.compile(r"^([CTLS])(\d{1,2})\s*[-/_\s]\s*([CTLS])?(\d{1,2})$")


@dataclass(frozen=True)
class Level:
    """A parsed level: ``kind`` is ``vertebra`` (``upper`` set), ``disc`` (``upper`` and ``lower``), or
    ``label`` (``label`` set: a numeric label value used as is)."""

    kind: str
    upper: Optional[str] = None
    lower: Optional[str] = None
    label: Optional[int] = None
    text: str = ""


def parse_level(text: str) -> Level:
    """Parse a level string (see module docstring). Raises InputError naming the text when it is not one."""
    raw = str(text).strip()
    if not raw:
        raise InputError("level is empty")
    s = raw.upper().replace(" ", "")
    if s == "SACRUM":
        return Level("vertebra", upper="S1", text=raw)
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is not None:
        if v != round(v) or v <= 0:
            raise InputError(f"level {raw!r} is not a positive integer label")
        return Level("label", label=int(round(v)), text=raw)
    m = _VERT_RE.match(s)
    if m:
        name = f"{m.group(1)}{int(m.group(2))}"
        if name not in ORDER:
            raise InputError(f"level {raw!r} is not a known vertebra (C1-C7, T1-T13, L1-L6, S1)")
        return Level("vertebra", upper=name, text=raw)
    m = _DISC_RE.match(s)
    if m:
        upper = f"{m.group(1)}{int(m.group(2))}"
        lower = f"{m.group(3) or m.group(1)}{int(m.group(4))}"
        if upper not in ORDER or lower not in ORDER:
            raise InputError(f"level {raw!r} names an unknown vertebra")
        iu, il = ORDER.index(upper), ORDER.index(lower)
        skipped = ORDER[iu + 1:il]
        if il <= iu or any(n not in _OPTIONAL for n in skipped):
            raise InputError(f"level {raw!r} is not a disc between two adjacent vertebrae")
        return Level("disc", upper=upper, lower=lower, text=raw)
    raise InputError(f"level {raw!r} is not a vertebra (L3), a disc (L4/L5) or a numeric label")


def vertebra_labels(name: str, numbering: str) -> list[int]:
    """Label values making up vertebra ``name`` in ``numbering`` (``verse`` adds the endplate label).

    Raises InputError when the numbering has no label for it (e.g. L6 in TotalSegmentator, any level in
    ``totalseg-mr``)."""
    if numbering == "verse":
        if name not in VERSE:
            raise InputError(f"vertebra {name} has no VerSe label")
        return [VERSE[name], VERSE[name] + VERSE_ENDPLATE_OFFSET]
    if numbering == "totalseg":
        if name not in TOTALSEG:
            raise InputError(f"vertebra {name} has no label in TotalSegmentator `total` numbering")
        return [TOTALSEG[name]]
    raise InputError(f"numbering {numbering!r} has no per-vertebra labels")


def disc_label(upper: str, numbering: str) -> Optional[int]:
    """Label of the disc below vertebra ``upper`` (VerSe: vertebra + 100), or None when the numbering has none."""
    if numbering == "verse" and upper in VERSE:
        return VERSE[upper] + VERSE_DISC_OFFSET
    return None


def describe_labels(level: Level, numbering: str) -> str:
    """Short human text of the labels a level maps to, for messages (e.g. ``L3 = VerSe 22``)."""
    if level.kind == "label":
        return f"label {level.label}"
    if level.kind == "vertebra":
        try:
            return f"{level.upper} = {numbering} {vertebra_labels(level.upper, numbering)[0]}"
        except InputError:
            return f"{level.upper}"
    return f"{level.upper}/{level.lower}"
