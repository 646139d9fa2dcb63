"""Per-sample decisions of ``masks build`` before any mask is computed, and the mask computation itself.

:func:`plan_all` decides each sample's source (its seg + level, or a box around x, y) and checks its paths stay
inside WORK; :func:`decide_numbering` fixes the label numbering of every seg; :func:`compute_mask` turns one
plan into its soft mask (Eq. 1); :func:`fingerprint` is what a rerun compares to reuse a mask.
"""
from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..errors import InputError, UsageError
from ..fsutil import sha256_bytes, sha256_file
from . import from_coords, from_seg
from .levels import NUMBERINGS, Level, parse_level
from .soften import dilate_mm as dilate_hard, soften

SOURCES = ("auto", "seg", "coords")


def _num(v: str) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _inside(work: Path, rel: str, what: str) -> Path:
    p = (work / rel).resolve()
    if not p.is_relative_to(work.resolve()):
        raise InputError(f"{what} path {rel!r} escapes WORK")
    if not p.is_file():
        raise InputError(f"{what} file {rel} not found")
    return p


def check_options(source: str, sigma_mm: float, box_mm: float, dilate_mm: float, numbering: str) -> None:
    if source not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    if numbering != "auto" and numbering not in NUMBERINGS:
        raise UsageError(f"--numbering must be auto or one of {', '.join(NUMBERINGS)}, got {numbering!r}")
    for name, v, positive in (("--sigma-mm", sigma_mm, False), ("--box-mm", box_mm, True),
                              ("--dilate-mm", dilate_mm, False)):
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise UsageError(f"{name} must be a {'positive' if positive else 'non-negative'} number of mm")


@dataclass
class SamplePlan:
    """Per-sample decision taken before any mask is computed."""

    source: str                      # seg | coords
    level: Optional[Level] = None
    x: Optional[float] = None
    y: Optional[float] = None
    spacing: Optional[tuple[float, float]] = None
    seg_path: Optional[Path] = None


def plan_sample(row: dict, work: Path, source: str) -> SamplePlan:
    x, y = _num(row.get("x", "")), _num(row.get("y", ""))
    xy = (x, y) if x is not None and y is not None else (None, None)
    sr, sc = _num(row.get("spacing_row", "")), _num(row.get("spacing_col", ""))
    spacing = (sr, sc) if sr and sc and sr > 0 and sc > 0 else None
    level, level_err = None, "no level"
    if str(row.get("level", "")).strip():
        # a level that names no vertebra (L99, a typo) is an error for this sample, never a silent box fallback
        level = parse_level(row["level"])
    has_seg = bool(str(row.get("seg", "")).strip())
    use = source
    if source == "auto":
        use = "seg" if has_seg and level is not None else "coords" if xy[0] is not None else ""
        if not use:
            why = "no seg" if not has_seg else level_err
            raise InputError(f"cannot place a mask: {why} and no x, y coordinates")
    if use == "seg":
        if not has_seg:
            raise InputError("no seg for this sample (--source seg)")
        if level is None:
            raise InputError(f"cannot choose a vertebra in the seg: {level_err}")
        return SamplePlan("seg", level, *xy, spacing, _inside(work, row["seg"], "seg"))
    if xy[0] is None:
        raise InputError("no x, y coordinates for a box mask (--source coords)")
    return SamplePlan("coords", level, *xy, spacing)


def _read_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    """np.load without pickles; an unreadable or corrupt file becomes an InputError naming it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{what} file {path.name} is unreadable ({type(e).__name__})") from e


def image_shape(work: Path, row: dict) -> tuple[int, int]:
    arr = _read_npy(_inside(work, row["image"], "image"), "image", mmap=True)
    if arr.ndim != 2:
        raise InputError(f"slice has {arr.ndim} dimensions, expected 2")
    return int(arr.shape[0]), int(arr.shape[1])


def _hard_mask(plan: SamplePlan, shape: tuple[int, int], numbering: str, box_mm: float) -> tuple[np.ndarray, str]:
    if plan.source == "coords":
        if plan.spacing is None:
            raise InputError("pixel spacing (spacing_row, spacing_col) missing: cannot size a box in mm")
        return from_coords.box_mask(shape, plan.x, plan.y, box_mm, plan.spacing), "box"
    labels = from_seg.integer_labels(_read_npy(plan.seg_path, "seg"))
    if labels.shape != shape:
        raise InputError(f"seg shape {labels.shape[0]}x{labels.shape[1]} does not match image shape "
                         f"{shape[0]}x{shape[1]}")
    if plan.x is not None:
        from_coords.check_point(shape, plan.x, plan.y)
    return from_seg.hard_mask_from_seg(labels, plan.level, numbering, x=plan.x, y=plan.y,
                                       spacing=plan.spacing or (1.0, 1.0))


def _auto_numbering(plans: dict[str, SamplePlan]) -> tuple[dict[str, str], dict[str, Any]]:
    """numbering="auto": a per-sample guess from the label values of its seg slice; ambiguous slices take the
    majority of the confident guesses in this run, else VerSe."""
    guesses: dict[str, Optional[str]] = {}
    reasons: collections.Counter = collections.Counter()
    for sid, p in plans.items():
        try:
            present = from_seg.label_set(from_seg.integer_labels(_read_npy(p.seg_path, "seg")))
        except InputError:
            present = set()
        guesses[sid], why = from_seg.guess_numbering(present)
        reasons[why] += 1
    confident = collections.Counter(g for g in guesses.values() if g)
    fallback = sorted(confident.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if confident else "verse"
    decided = {sid: g or fallback for sid, g in guesses.items()}
    record = {"requested": "auto", "fallback_for_ambiguous": fallback,
              "ambiguous": sum(1 for g in guesses.values() if not g),
              "decided": dict(collections.Counter(decided.values())), "reasons": dict(reasons)}
    return decided, record


def fingerprint(row: dict, plan: SamplePlan, shape: tuple[int, int], numbering: str, opts: dict) -> str:
    keys = ("image", "seg", "level", "x", "y", "spacing_row", "spacing_col")
    data = {"row": {k: row.get(k, "") for k in keys}, "shape": shape, "source": plan.source,
            "numbering": numbering if plan.source == "seg" else "", "opts": opts, "version": __version__,
            "seg_sha": sha256_file(plan.seg_path) if plan.seg_path else ""}
    return sha256_bytes(json.dumps(data, sort_keys=True).encode())[:20]


def plan_all(rows: list[dict], work: Path, source: str) -> tuple[dict[str, SamplePlan], dict[str, str]]:
    plans: dict[str, SamplePlan] = {}
    errors: dict[str, str] = {}
    for row in rows:
        sid = str(row["sample_id"])
        try:
            if not _safe_id(sid):
                raise InputError("sample_id is not a safe file name")
            plans[sid] = plan_sample(row, work, source)
        except InputError as e:
            errors[sid] = str(e)
    return plans, errors


def decide_numbering(plans: dict[str, SamplePlan], numbering: str) -> tuple[dict[str, str], dict[str, Any]]:
    seg_plans = {s: p for s, p in plans.items() if p.source == "seg"}
    if numbering == "auto":
        return _auto_numbering(seg_plans)
    return ({s: numbering for s in seg_plans},
            {"requested": numbering, "decided": {numbering: len(seg_plans)} if seg_plans else {}})


def compute_mask(plan: SamplePlan, shape: tuple[int, int], numbering: str, sigma_mm: float, box_mm: float,
             dilate_mm: float) -> tuple[np.ndarray, int, str]:
    """Soft mask (H, W) float32, hard-mask area (px, after dilation) and what the hard mask was made of."""
    if plan.spacing is None and (sigma_mm > 0 or dilate_mm > 0):
        raise InputError("pixel spacing (spacing_row, spacing_col) missing: cannot blur in mm")
    hard, note = _hard_mask(plan, shape, numbering, box_mm)
    spacing = plan.spacing or (1.0, 1.0)
    hard = dilate_hard(hard, dilate_mm, spacing)
    if not hard.any():
        raise InputError("mask is empty")
    return soften(hard, sigma_mm, spacing), int(hard.sum()), "box" if plan.source == "coords" else _kind(note)


def _safe_id(sid: str) -> bool:
    return bool(sid) and sid not in (".", "..") and not any(c in sid for c in "/\\\0")


def _kind(note: str) -> str:
    for k in ("disc label", "union of adjacent vertebrae", "total_mr class", "label"):
        if note.startswith(k):
            return k
    return "vertebra"
