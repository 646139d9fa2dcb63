"""Hard masks from a 2D label-map slice: choose a vertebra (or disc) by level in a known numbering.

Numberings and level strings: :mod:`medsoft_aug.masks.levels`. Rules (also in the README):

* vertebra (``L3``): the vertebra's label(s) (VerSe: body + endplate label; TotalSegmentator ``total``: S1 falls
  back to the sacrum label 25 when 26 is absent).
* disc (``L4/L5``): the disc label when the numbering has one and it is present in the slice (VerSe
  upper + 100); otherwise the union of the two adjacent vertebrae (those of them present in the slice).
* numeric label (``22``): that label value, whatever the numbering.
* ``totalseg-mr`` (all vertebrae = 19, all discs = 20): the connected component of 19 (20 for a disc level)
  nearest to the row's x, y (distance in mm); without x, y a level cannot be chosen: error.

An empty result is an error (InputError), never an all-zero mask.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from ..errors import InputError
from . import levels as lv
from .levels import Level

LABEL_TOLERANCE = 0.05  # float label maps (VerSe stores float64): values must be this close to an integer

_VERSE_OK = set(range(1, 29)) | set(range(101, 129)) | set(range(201, 229))
TOTAL_MAX = 117    # TotalSegmentator `total` v2: labels 1..117
TOTAL_MR_MAX = 56  # TotalSegmentator `total_mr` v2: labels 1..56


def integer_labels(seg: np.ndarray) -> np.ndarray:
    """Float or integer label slice (H, W) -> int32 labels. Raises InputError on NaN, negative or fractional
    values (a label map resampled with interpolation rather than nearest neighbour)."""
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise InputError(f"seg slice has {seg.ndim} dimensions, expected 2")
    if np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool:
        lab = seg.astype(np.int64)
    else:
        if not np.isfinite(seg).all():
            raise InputError("seg slice contains NaN or infinite values")
        lab = np.rint(seg)
        if np.abs(seg - lab).max(initial=0.0) > LABEL_TOLERANCE:
            raise InputError("seg slice has non-integer label values (was it resampled with interpolation?)")
        lab = lab.astype(np.int64)
    if lab.min(initial=0) < 0:
        raise InputError("seg slice has negative label values")
    return lab.astype(np.int32)


def label_set(labels: np.ndarray) -> set[int]:
    """Non-zero label values present in an integer label slice."""
    if labels.size and 0 <= labels.min() and labels.max() < 65536:
        counts = np.bincount(labels.ravel())  # much faster than np.unique for small label values
        return {int(v) for v in np.flatnonzero(counts) if v != 0}
    return {int(v) for v in np.unique(labels) if v != 0}


def _longest_run(values: set[int]) -> int:
    best = run = 0
    prev = None
    for v in sorted(values):
        run = run + 1 if prev is not None and v == prev + 1 else 1
        best, prev = max(best, run), v
    return best


def guess_numbering(present: set[int]) -> tuple[Optional[str], str]:
    """Decide the numbering of a label slice from the label values present.

    Returns (numbering or None when ambiguous, reason). Rules, in order:
    VerSe when every value is a VerSe value (1-28, 101-128, 201-228) and either some value is >= 118 (beyond
    TotalSegmentator's range) or at least two disc/endplate labels sit on a vertebra present (l-100 or l-200);
    otherwise, when some value is outside the VerSe set: ``totalseg`` if any is in 57..117 (beyond total_mr);
    ``totalseg-mr`` if 19 (vertebrae) is present with 20 (discs) or 21 (cord) and no two consecutive labels
    in 26..50 (TotalSegmentator's per-level vertebrae); ``totalseg`` if such a run exists and 19 is absent.
    Anything else (e.g. only values 1..28, which all three numberings use) is ambiguous.
    """
    s = {v for v in present if v != 0}
    if not s:
        return None, "no labels in slice"
    if s <= _VERSE_OK:
        if max(s) >= TOTAL_MAX + 1:
            return "verse", "values >= 118 (VerSe discs/endplates)"
        pairs = [v for v in s if v > 100 and (v % 100) in s]
        if len(pairs) >= 2:
            return "verse", "disc/endplate labels = vertebra label + 100/200"
        return None, "all values fit VerSe and TotalSegmentator numberings"
    if max(s) > TOTAL_MAX:
        return None, "values beyond every known numbering"
    if any(TOTAL_MR_MAX < v <= TOTAL_MAX for v in s):
        return "totalseg", "values 57..117 (TotalSegmentator total)"
    run = _longest_run({v for v in s if 26 <= v <= 50})
    if lv.TOTALSEG_MR_VERTEBRAE in s and (20 in s or 21 in s) and run < 2:
        return "totalseg-mr", "one vertebrae class 19 with discs/cord (TotalSegmentator total_mr)"
    if run >= 2 and lv.TOTALSEG_MR_VERTEBRAE not in s:
        return "totalseg", "consecutive per-level vertebra labels in 26..50 (TotalSegmentator total)"
    return None, "values fit both TotalSegmentator numberings"


def _nearest_component(binary: np.ndarray, x: float, y: float, spacing: tuple[float, float]) -> np.ndarray:
    comps, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(binary)
    rr, cc = np.nonzero(comps)
    d2 = ((rr - y) * spacing[0]) ** 2 + ((cc - x) * spacing[1]) ** 2
    # Per component: minimum squared distance (mm^2) from (x, y) to any of its pixel centres.
    best = np.full(n + 1, np.inf)
    np.minimum.at(best, comps[rr, cc], d2)
    return comps == int(np.argmin(best))


def hard_mask_from_seg(labels: np.ndarray, level: Level, numbering: str, *, x: Optional[float] = None,
                       y: Optional[float] = None, spacing: tuple[float, float] = (1.0, 1.0)
                       ) -> tuple[np.ndarray, str]:
    """Hard mask (H, W) bool of ``level`` in an integer label slice, and a note saying what was used.

    labels: (H, W) int (see :func:`integer_labels`). numbering: one of ``levels.NUMBERINGS``. x, y: column/row
    of the lesion or landmark (needed for ``totalseg-mr``). spacing: (row, col) mm. Raises InputError when the
    result would be empty or the level cannot be chosen.
    """
    present = label_set(labels)
    if level.kind == "label":
        mask = labels == level.label
        if not mask.any():
            raise InputError(f"label {level.label} is not in the seg slice")
        return mask, f"label {level.label}"

    if numbering == "totalseg-mr":
        cls = lv.TOTALSEG_MR_DISCS if level.kind == "disc" else lv.TOTALSEG_MR_VERTEBRAE
        what = "discs" if level.kind == "disc" else "vertebrae"
        if x is None or y is None:
            raise InputError(f"seg uses total_mr numbering (all {what} in one class {cls}): level "
                             f"{level.text} cannot be chosen without x, y coordinates")
        if cls not in present:
            raise InputError(f"total_mr class {cls} ({what}) is not in the seg slice")
        return _nearest_component(labels == cls, x, y, spacing), f"total_mr class {cls} component nearest x,y"

    if level.kind == "vertebra":
        return _vertebra(labels, present, level.upper, numbering)

    disc = lv.disc_label(level.upper, numbering)
    if disc is not None and disc in present:
        return labels == disc, f"disc label {disc}"
    mask = np.zeros(labels.shape, bool)
    used = []
    for name in (level.upper, level.lower):
        try:
            m, note = _vertebra(labels, present, name, numbering)
        except InputError:
            continue
        mask |= m
        used.append(note)
    if not used:
        raise InputError(f"neither {level.upper} nor {level.lower} ({numbering}) is in the seg slice"
                         + ("" if disc is None else f", nor disc label {disc}"))
    return mask, "union of adjacent vertebrae " + " + ".join(used)


def _vertebra(labels: np.ndarray, present: set[int], name: str, numbering: str) -> tuple[np.ndarray, str]:
    want = lv.vertebra_labels(name, numbering)
    if numbering == "totalseg" and name == "S1" and want[0] not in present:
        want = [lv.TOTALSEG_SACRUM]
    hits = [v for v in want if v in present]
    if not hits:
        raise InputError(f"level {name} ({numbering} label {want[0]}) is not in the seg slice")
    return np.isin(labels, hits), f"{name}={'+'.join(map(str, hits))}"
