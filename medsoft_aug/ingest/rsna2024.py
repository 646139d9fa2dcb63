"""The Kaggle "RSNA 2024 Lumbar Spine Degenerative Classification" layout.

Files: ``train.csv`` (``--labels``: ``study_id`` + ``{condition}_{level}`` severity columns, values
``Normal/Mild``, ``Moderate``, ``Severe`` or empty), ``train_label_coordinates.csv`` (``study_id, series_id,
instance_number, condition, level, x, y``) and ``train_series_descriptions.csv`` (``study_id, series_id,
series_description``), the latter two beside train.csv unless named. Images: ``{study_id}/{series_id}/
{instance_number}.dcm`` under --images.

Each coordinate row of a selected condition is one sample on that DICOM instance. Class naming:
``Normal/Mild`` -> the normal class (``normal`` by default); otherwise ``{condition}_{severity}`` in snake case,
e.g. ``spinal_canal_stenosis_moderate``, ``left_neural_foraminal_narrowing_severe``. ``patient_id`` = ``study_id``.
Rows whose study is absent from train.csv or whose severity cell is empty are skipped and counted.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError, UsageError
from .samples import SampleSpec, make_unique, read_csv_table, require_columns

CONDITIONS = ("spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
              "left_subarticular_stenosis", "right_subarticular_stenosis")
DEFAULT_CONDITIONS = ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
                      "spinal_canal_stenosis")
LEVELS = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
SEVERITIES = {"Normal/Mild": None, "Moderate": "moderate", "Severe": "severe"}
COORD_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
SERIES_COLUMNS = ["study_id", "series_id", "series_description"]


def slug(text: str) -> str:
    """``Spinal Canal Stenosis`` -> ``spinal_canal_stenosis``; ``L4/L5`` -> ``l4_l5``."""
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def resolve_conditions(conditions: Optional[Sequence[str]]) -> tuple[str, ...]:
    """Validate ``--conditions`` (snake case or the CSV's display names, comma-separated allowed)."""
    if not conditions:
        return DEFAULT_CONDITIONS
    out: list[str] = []
    for item in conditions:
        for part in str(item).split(","):
            if not part.strip():
                continue
            c = slug(part)
            if c not in CONDITIONS:
                raise UsageError(f"unknown condition {part.strip()!r}; choose from {', '.join(CONDITIONS)}")
            if c not in out:
                out.append(c)
    if not out:
        raise UsageError("--conditions is empty")
    return tuple(out)


def class_name(condition: str, severity: str, normal_class: str) -> Optional[str]:
    """Class of a (condition, severity) pair; None for an unknown severity value."""
    if severity not in SEVERITIES:
        return None
    sev = SEVERITIES[severity]
    return normal_class if sev is None else f"{condition}_{sev}"


@dataclass
class RsnaInputs:
    labels: Path
    coords: Path
    series_descriptions: Path
    skipped: dict[str, int] = field(default_factory=dict)


def default_paths(labels: Path, coords: Optional[Path], series_descriptions: Optional[Path]) -> RsnaInputs:
    return RsnaInputs(labels=labels, coords=coords or labels.parent / "train_label_coordinates.csv",
                      series_descriptions=series_descriptions or labels.parent / "train_series_descriptions.csv")


def parse_rsna2024(inputs: RsnaInputs, *, conditions: Optional[Sequence[str]] = None,
                   normal_class: str = "normal") -> list[SampleSpec]:
    """Parse the three CSVs into sample specs (one per coordinate row of a selected condition).

    Fills ``inputs.skipped`` with counts: ``empty_severity``, ``study_not_in_labels``, ``other_condition``.
    """
    conds = resolve_conditions(conditions)
    severity, desc, coords = _read_tables(inputs, conds)
    skipped = {"empty_severity": 0, "study_not_in_labels": 0, "other_condition": 0}
    specs: list[SampleSpec] = []
    for i, r in enumerate(coords[COORD_COLUMNS].to_dict("records"), start=1):
        cond = slug(r["condition"])
        if cond not in conds:
            skipped["other_condition"] += 1
            continue
        if r["study_id"] not in severity:
            skipped["study_not_in_labels"] += 1
            continue
        spec = _coordinate_spec(r, i, cond, severity[r["study_id"]], desc, normal_class)
        if spec is None:
            skipped["empty_severity"] += 1
            continue
        specs.append(spec)
    for s, uid in zip(specs, make_unique([s.sample_id for s in specs])):
        s.sample_id = uid
    inputs.skipped = skipped
    return specs


def _read_tables(inputs: RsnaInputs, conds: Sequence[str]) -> tuple[dict, dict, Any]:
    """(severity per study: {column: value}, series description per (study, series), the coordinates table)."""
    train = read_csv_table(inputs.labels, "labels CSV")
    require_columns(train, ["study_id"], "labels CSV", inputs.labels)
    need = [f"{c}_{slug(lv)}" for c in conds for lv in LEVELS]
    require_columns(train, need, "labels CSV", inputs.labels)
    coords = read_csv_table(inputs.coords, "coordinates CSV")
    require_columns(coords, COORD_COLUMNS, "coordinates CSV", inputs.coords)
    series = read_csv_table(inputs.series_descriptions, "series descriptions CSV")
    require_columns(series, SERIES_COLUMNS, "series descriptions CSV", inputs.series_descriptions)
    severity: dict[str, dict[str, str]] = {}
    for i, rec in enumerate(train[["study_id", *need]].to_dict("records"), start=1):
        sid = rec.pop("study_id")
        if sid in severity:
            raise InputError(f"labels CSV {inputs.labels.name}: study_id {sid} is repeated (row {i})")
        severity[sid] = rec
    desc = {(r["study_id"], r["series_id"]): r["series_description"]
            for r in series[SERIES_COLUMNS].to_dict("records")}
    return severity, desc, coords


def _coordinate_spec(r: dict, i: int, cond: str, severity: dict[str, str], desc: dict,
                     normal_class: str) -> Optional[SampleSpec]:
    """The sample of coordinate row ``r`` (data row ``i``); None when its severity is empty. Invalid values
    become the spec's ``problem`` (a per-sample failure)."""
    study, series_id, level = r["study_id"], r["series_id"], r["level"]
    problems = []
    if level not in LEVELS:
        problems.append(f"level {level!r} is not one of {', '.join(LEVELS)}")
        sev = ""
    else:
        sev = severity[f"{cond}_{slug(level)}"]
        if sev == "":
            return None
    label = class_name(cond, sev, normal_class) if sev else ""
    if sev and label is None:
        problems.append(f"severity {sev!r} is not one of {', '.join(SEVERITIES)}")
    inst = r["instance_number"]
    if not re.fullmatch(r"\d+", inst or ""):
        problems.append(f"instance_number {inst!r} is not a positive integer")
    for name in ("study_id", "series_id"):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", r[name] or ""):
            problems.append(f"{name} {r[name]!r} is not a plain identifier")
    xy = [_finite(r[name], name, problems) for name in ("x", "y")]
    sd = desc.get((study, series_id), "")
    text = ""
    if label and label != normal_class:
        text = f"{SEVERITIES[sev]} {cond.replace('_', ' ')} at {level}" + (f" ({sd})" if sd else "")
    return SampleSpec(
        sample_id=re.sub(r"[^A-Za-z0-9._-]+", "_", f"{study}_{series_id}_{inst}_{cond}_{slug(level)}"),
        label=label or "", image=f"{study}/{series_id}/{int(inst) if inst.isdigit() else inst}.dcm",
        patient_id=study, study_id=study, row=i, level=level, x=xy[0], y=xy[1], description=text,
        condition=cond, severity=sev, instance=inst, series_id=series_id, problem="; ".join(problems))


def _finite(text: str, name: str, problems: list[str]) -> Optional[float]:
    """``text`` as a finite float, else None with a problem noted."""
    try:
        v = float(text)
        if not math.isfinite(v):
            raise ValueError
        return v
    except ValueError:
        problems.append(f"{name} {text!r} is not a number")
        return None
