"""The generic labels-CSV layout: one row per 2D sample.

Columns: required ``image`` (relative to --images: ``.dcm`` file, DICOM series folder, ``.nii``/``.nii.gz``,
``.png``/``.tif``) and ``label``; optional ``sample_id``, ``patient_id``, ``slice`` (sagittal index into a 3D
volume; default: the middle slice), ``seg`` (label map on the same grid), ``level``, ``x``, ``y`` (pixel
coordinates, column and row, in the ingested slice grid), ``description``, ``split`` (train/val/test).

Defaults: ``sample_id`` = the image path (+ ``_s{slice}``) made filesystem-safe and unique; ``study_id`` = the
image path; ``patient_id`` = ``study_id``. Row problems (bad numbers, half a coordinate pair, empty label) become
per-sample failures; table problems (missing file or columns, bad split values, repeated or unsafe sample ids)
are fatal InputErrors.
"""
from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .samples import (SampleSpec, check_unique_given, make_unique, read_csv_table, require_columns,
                      safe_id_from_path)
from .splits import SPLITS

REQUIRED = ["image", "label"]
log = logging.getLogger("medsoft_aug.ingest")

OPTIONAL = ["sample_id", "patient_id", "slice", "seg", "level", "x", "y", "description", "split"]


def _number_or_problem(text: str, name: str, *, integer: bool = False) -> tuple[Optional[float], str]:
    """Parse an optional CSV number: (value or None when empty, "" or a one-line problem)."""
    if text == "":
        return None, ""
    try:
        v = float(text)
    except ValueError:
        return None, f"{name} {text!r} is not a number"
    if not math.isfinite(v):
        return None, f"{name} {text!r} is not {'an integer' if integer else 'finite'}"
    if integer:
        if v != int(v):
            return None, f"{name} {text!r} is not an integer"
        return int(v), ""
    return v, ""


def unknown_column_warnings(columns: list[str]) -> list[str]:
    """One message per column the generic layout does not read, naming the closest known column (difflib):
    a typo such as ``levle`` would otherwise turn seg masks into boxes without a word."""
    known = REQUIRED + OPTIONAL
    out = []
    for c in columns:
        if c in known:
            continue
        near = difflib.get_close_matches(c.lower(), known, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else f"; known columns: {', '.join(known)}"
        out.append(f"labels CSV column {c!r} is not a known column and is ignored{hint}")
    return out


def _warn_unknown(columns: list[str], notes: Optional[list[dict[str, str]]]) -> None:
    for w in unknown_column_warnings(columns):
        log.warning("%s", w)
        if notes is not None:
            notes.append({"sample_id": "", "warning": w})


def parse_generic(labels: Path, notes: Optional[list[dict[str, str]]] = None) -> list[SampleSpec]:
    """Parse a generic labels CSV into sample specs (no image is opened).

    Unknown columns are warned about (logged, and appended to ``notes`` as ``{"sample_id": "", "warning": ...}``
    for the run record)."""
    df = read_csv_table(labels, "labels CSV")
    require_columns(df, REQUIRED, "labels CSV", labels)
    _warn_unknown(list(df.columns), notes)
    if len(df) == 0:
        raise InputError(f"labels CSV {labels.name} has no rows")
    cols = {c: (df[c].tolist() if c in df.columns else [""] * len(df)) for c in REQUIRED + OPTIONAL}
    if "patient_id" not in df.columns:
        log.warning("labels CSV has no patient_id column: each image path counts as its own patient for the "
                    "split; add patient_id when a patient has several images")

    if "split" in df.columns and any(cols["split"]):
        for i, s in enumerate(cols["split"], start=1):
            if s not in SPLITS:
                raise InputError(f"labels CSV row {i}: split {s!r} is not one of {', '.join(SPLITS)} "
                                 "(give a split on every row or leave the column out)")

    specs: list[SampleSpec] = []
    for i in range(len(df)):
        get = lambda c: cols[c][i]  # noqa: E731
        problems = []
        slice_index, p = _number_or_problem(get("slice"), "slice", integer=True)
        problems.append(p)
        x, p = _number_or_problem(get("x"), "x")
        problems.append(p)
        y, p = _number_or_problem(get("y"), "y")
        problems.append(p)
        if (get("x") == "") != (get("y") == ""):
            problems.append("give both x and y or neither")
        if not get("label"):
            problems.append("empty label")
        if not get("image"):
            problems.append("empty image path")
        study = get("image").replace("\\", "/")
        specs.append(SampleSpec(
            sample_id=get("sample_id"), label=get("label"), image=get("image"),
            patient_id=get("patient_id") or study, study_id=study, row=i + 1, seg=get("seg"),
            slice_index=slice_index, level=get("level"), x=x, y=y, description=get("description"),
            split=get("split"), problem="; ".join(p for p in problems if p)))

    given = [s.sample_id for s in specs]
    if all(given):
        check_unique_given(given, "labels CSV")
    else:
        if any(given):
            check_unique_given([g for g in given if g], "labels CSV")
        derived = [s.sample_id or safe_id_from_path(s.image or f"row{s.row}", s.slice_index) for s in specs]
        n_given = sum(1 for g in given if g)
        # Given ids win; derived ones are made unique against them and each other.
        uniq = make_unique([g for g in given if g] + [d for d, g in zip(derived, given) if not g])
        it = iter(uniq[n_given:])
        for s in specs:
            if not s.sample_id:
                s.sample_id = next(it)
    return specs
