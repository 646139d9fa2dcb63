"""A tiny RSNA-2024-shaped data set: train.csv, train_label_coordinates.csv, train_series_descriptions.csv and
``images/{study_id}/{series_id}/{instance}.dcm`` 2D sagittal instances (Sagittal T2/STIR and Sagittal T1 series).

Only the paper's sagittal conditions get coordinates (spinal canal stenosis on the T2 series' middle instance,
left/right neural foraminal narrowing on the T1 series' outermost left/right instances); subarticular columns of
train.csv are left empty (there is no axial series). x, y are (column, row) pixel coordinates in that instance.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .phantom import (_chain, anatomy_to_display, element_point, random_anatomy, render_volume,
                      stenosis_canal_centre)
from .writers import SeriesInfo, canonical_affine, uid, write_dicom_series, write_text

CONDITIONS = ["spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
              "left_subarticular_stenosis", "right_subarticular_stenosis"]
LEVELS = ["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"]
LEVEL_NAMES = ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
SEVERITIES = ["Normal/Mild", "Moderate", "Severe"]
NARROWING = {"Normal/Mild": 0.0, "Moderate": 0.35, "Severe": 0.6}
SIZE = (64, 64)
T2_OFFSETS = [-6.0, 0.0, 6.0]
T1_OFFSETS = [-13.0, -6.5, 0.0, 6.5, 13.0]


def _csv(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def make_rsna(out: Path, n_studies: int, seed: int) -> dict[str, int]:
    """Write the RSNA-2024-shaped folder under ``out`` (``out/images/...`` and the three CSVs)."""
    train = [["study_id", *[f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS]]]
    coords = [["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]]
    series = [["study_id", "series_id", "series_description"]]
    n_files = 0
    for k in range(1, n_studies + 1):
        rng = np.random.default_rng([seed, 1000 + k])
        study_id = int(rng.integers(10_000_000, 4_000_000_000))
        t2_id, t1_id = (int(v) for v in rng.integers(100_000_000, 4_000_000_000, size=2))
        an = random_anatomy(rng, SIZE)
        an.spacing *= 128 / SIZE[0]
        sev = {}
        for c in CONDITIONS[:3]:
            for lv, name in zip(LEVELS, LEVEL_NAMES):
                p = [0.55, 0.3, 0.15] if lv in ("l4_l5", "l5_s1") else [0.8, 0.15, 0.05]
                sev[(c, lv)] = SEVERITIES[int(rng.choice(3, p=p))]
                if c == "spinal_canal_stenosis":
                    an.stenosis[name] = NARROWING[sev[(c, lv)]]
                else:
                    side = c.split("_")[0]
                    an.foraminal[f"{name}:{side}"] = NARROWING[sev[(c, lv)]] + 0.1 * (sev[(c, lv)] != SEVERITIES[0])
        train.append([study_id, *[sev.get((c, lv), "") for c in CONDITIONS for lv in LEVELS]])
        key = f"rsna-{seed}-{k}"
        centre = (0.0, float(rng.uniform(-10, 10)), float(rng.uniform(-20, 20)))
        chain = {e.name: e for e in _chain(an)}
        for sid, desc, offs, contrast, te, tr, num in (
                (t2_id, "Sagittal T2/STIR", T2_OFFSETS, "T2", 100, 3500, 1),
                (t1_id, "Sagittal T1", T1_OFFSETS, "T1", 12, 550, 2)):
            series.append([study_id, sid, desc])
            img, _, _ = render_volume(an, offs, contrast, rng)
            spacing = (offs[1] - offs[0], an.spacing, an.spacing)
            aff = canonical_affine(len(offs), (SIZE[1], SIZE[0]), spacing, centre)
            info = SeriesInfo(patient_no=9000 + k, study_key=key, study_uid=uid(key, "study"),
                              series_uid=uid(key, "series", num), series_number=num, series_description=desc,
                              echo_time=te, repetition_time=tr)
            write_dicom_series(out / "images" / str(study_id) / str(sid), img, aff, info, name=lambda i: f"{i}.dcm")
            n_files += len(offs)
            for lv, name in zip(LEVELS, LEVEL_NAMES):
                e = chain[name]
                front = e.half_a + an.canal_gap
                if contrast == "T2":
                    q = element_point(an, name, (stenosis_canal_centre(an, name), 0.0))
                    x, y = anatomy_to_display(an, q)
                    coords.append([study_id, sid, len(offs) // 2 + 1, "Spinal Canal Stenosis", name,
                                   f"{x:.6f}", f"{y:.6f}"])
                else:
                    q = element_point(an, name, (front + an.canal_depth * 0.45, 0.0))
                    x, y = anatomy_to_display(an, q)
                    coords.append([study_id, sid, 1, "Left Neural Foraminal Narrowing", name, f"{x:.6f}", f"{y:.6f}"])
                    coords.append([study_id, sid, len(offs), "Right Neural Foraminal Narrowing", name,
                                   f"{x:.6f}", f"{y:.6f}"])
    write_text(out / "train.csv", _csv(train))
    write_text(out / "train_label_coordinates.csv", _csv(coords))
    write_text(out / "train_series_descriptions.csv", _csv(series))
    return {"studies": n_studies, "instances": n_files, "coordinates": len(coords) - 1}
