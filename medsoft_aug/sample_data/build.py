"""Study plan (classes, formats, lesions, descriptions) and the ``make_sample_data`` entry point."""
from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..fsutil import sha256_file
from ..progress import ProgressFn, report
from .phantom import (LUMBAR, Anatomy, Lesion, anatomy_to_display, display_to_volume, element_point,
                      random_anatomy, render_volume)
from .readme import readme_text
from .rsna import make_rsna
from .writers import (SeriesInfo, canonical_affine, nifti_gz_bytes, uid, write_bytes, write_dicom_series,
                      write_text)

log = logging.getLogger("medsoft_aug.sample_data")

LABEL_COLUMNS = ["sample_id", "patient_id", "image", "label", "seg", "level", "x", "y", "description", "slice"]
FRACTIONS = {"benign": 0.25, "malignant": 0.15}          # the rest is normal
NIFTI_ORIENTATIONS = ["RAS", "LPS", "PIR", "ASL"]
MANIFEST = "SHA256SUMS"


@dataclass
class Study:
    """Everything needed to render and write one study, plus its labels.csv row."""

    number: int               # 1-based
    sample_id: str
    patient_no: int
    label: str                # normal | benign | malignant
    fmt: str                  # dicom | nifti
    fmt_index: int            # index among studies of the same format (selects traps / orientations)
    anatomy: Anatomy
    level: str
    offsets: list[float]      # lateral slice offsets (mm), left to right
    description: str
    height_loss: float        # fraction of body height lost (malignant), else 0
    x: float = 0.0
    y: float = 0.0


def class_counts(n: int) -> dict[str, int]:
    """Deterministic class counts for ``n`` studies: ~25% benign, ~15% malignant, rest normal (>= 1 each, n >= 3)."""
    if n < 3:
        raise UsageError(f"n_studies must be at least 3 (got {n})")
    b = max(1, round(FRACTIONS["benign"] * n))
    m = max(1, round(FRACTIONS["malignant"] * n))
    return {"normal": n - b - m, "benign": b, "malignant": m}


BENIGN_WORDS = dict(
    margin=["Well-circumscribed", "Well-defined", "Sharply marginated", "Smoothly marginated"],
    shape=["round", "rounded", "oval"], signal=["hyperintense", "bright", "high-signal"],
    where=["in", "within", "centred in"], size=["measuring about", "approximately", "about"],
    dx=["consistent with hemangioma", "typical of a vertebral hemangioma", "likely a hemangioma",
        "compatible with an intraosseous hemangioma"])
MALIGNANT_WORDS = dict(
    margin=["Ill-defined", "Irregular", "Poorly marginated", "Infiltrative"],
    signal=["hypointense", "low-signal", "dark"], what=["marrow-replacing lesion", "lesion", "focal marrow lesion"],
    loss=["loss of", "reduction of"],
    dx=["suspicious for metastasis", "consistent with metastatic disease", "concerning for a metastatic deposit",
        "suggestive of metastasis"])


def _describe(rng: np.random.Generator, kind: str, level: str, size_mm: float, loss: float) -> str:
    """Radiology-style lesion text; ``size_mm`` is the lesion diameter, ``loss`` the height-loss fraction."""
    words = BENIGN_WORDS if kind == "benign" else MALIGNANT_WORDS
    w = {k: v[int(rng.integers(len(v)))] for k, v in words.items()}
    if kind == "benign":
        return (f"{w['margin']} {w['shape']} T2 {w['signal']} lesion {w['where']} the {level} vertebral body, "
                f"{w['size']} {size_mm:.0f} mm, {w['dx']}.")
    text = f"{w['margin']} T2 {w['signal']} {w['what']} in the {level} vertebral body, about {size_mm:.0f} mm"
    if loss > 0:
        text += f", with {w['loss']} about {loss * 100:.0f}% of the vertebral body height"
    return f"{text}, {w['dx']}."


def plan_studies(n_studies: int, seed: int) -> list[Study]:
    """Decide every study's class, format, anatomy, lesion and text (pure function of n_studies and seed)."""
    counts = class_counts(n_studies)
    perm = np.random.default_rng([seed, 0]).permutation(n_studies)
    labels = [""] * n_studies
    order = ["benign"] * counts["benign"] + ["malignant"] * counts["malignant"] + ["normal"] * counts["normal"]
    for lab, idx in zip(order, perm):
        labels[int(idx)] = lab
    # formats alternate within each class so every class has DICOM and NIfTI studies
    fmts, seen = [], {"normal": 0, "benign": 0, "malignant": 0}
    for lab in labels:
        start = 1 if lab == "malignant" else 0
        fmts.append("dicom" if (seen[lab] + start) % 2 == 0 else "nifti")
        seen[lab] += 1
    n_followup = n_studies // 12          # a few patients have two studies (patient-level splits)
    studies, fmt_seen = [], {"dicom": 0, "nifti": 0}
    # levels cycle L1..L5 within each class (from a seeded start) so every class covers every level
    start = {c: int(v) for c, v in zip(("normal", "benign", "malignant"),
                                        np.random.default_rng([seed, 0, 1]).integers(len(LUMBAR), size=3))}
    class_seen = {"normal": 0, "benign": 0, "malignant": 0}
    for i in range(n_studies):
        k = i + 1
        rng = np.random.default_rng([seed, k])
        an = random_anatomy(rng)
        n_sl = 7 if rng.uniform() < 0.2 else 5
        gap = float(rng.uniform(4.5, 5.5))
        offsets = [(j - n_sl // 2) * gap for j in range(n_sl)]
        label, loss, desc = labels[i], 0.0, ""
        level = LUMBAR[(start[label] + class_seen[label]) % len(LUMBAR)]
        class_seen[label] += 1
        if label == "normal":
            centre = (0.0, 0.0)
        else:
            a = an.body_a[level]
            if label == "benign":
                frac = float(rng.uniform(0.30, 0.45))
                harm = ((float(rng.uniform(0.0, 0.06)), float(rng.uniform(0, 6.28))),)
                contrast = float(rng.uniform(2.0, 2.4))
            else:
                frac = float(rng.uniform(0.36, 0.5))
                harm = tuple((float(rng.uniform(lo, hi)), float(rng.uniform(0, 6.28)))
                             for lo, hi in ((0.08, 0.16), (0.08, 0.15), (0.04, 0.09)))
                contrast = float(rng.uniform(0.3, 0.45))
                if class_seen[label] % 2 == 0:           # every second malignant study: height loss
                    loss = float(rng.uniform(0.2, 0.32))
                    an.body_h[level] *= 1 - loss
            radius = frac * a
            room_x = max(a - 1.5 - radius, 0.0)
            room_y = max(an.body_h[level] - 1.5 - radius, 0.0)
            centre = (float(rng.uniform(-0.5, 0.5) * room_x), float(rng.uniform(-0.5, 0.5) * room_y))
            an.lesion = Lesion(label, level, centre, float(rng.uniform(-1.5, 1.5)), radius, contrast, harm)
            desc = _describe(rng, label, level, 2 * radius, loss)
        x, y = anatomy_to_display(an, element_point(an, level, centre))
        patient = k if k <= n_studies - n_followup else k - (n_studies - n_followup)
        fmt = fmts[i]
        studies.append(Study(k, f"phantom_{k:03d}", patient, label, fmt, fmt_seen[fmt], an, level, offsets,
                             desc, loss, round(x, 1), round(y, 1)))
        fmt_seen[fmt] += 1
    return studies


def _dicom_traps(idx: int) -> dict[str, Any]:
    """Real-world DICOM traps by the study's index among DICOM studies."""
    traps: dict[str, Any] = {"reverse": idx % 2 == 1, "rle": idx % 4 != 0}
    if idx == 1:
        traps["photometric"] = "MONOCHROME1"
    if idx in (2, 5):
        traps.update(slope=2.0, intercept=-100.0)
    return traps


def render_study(st: Study, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """Render a study's display stacks: image float32 (n, H, W), labels uint8 (n, H, W), lesion bool (n, H, W).

    Also returns the generator, positioned where :func:`write_study` continues drawing from it.
    """
    rng = np.random.default_rng([seed, st.number, 1])
    display, labels, lesion = render_volume(st.anatomy, st.offsets, "T2", rng)
    return display, labels, lesion, rng


def write_study(root: Path, st: Study, seed: int) -> dict[str, str]:
    """Render one study and write its image (DICOM series folder or .nii.gz) and seg (.nii.gz) under ``root``."""
    display, labels, _, rng = render_study(st, seed)
    n, H, W = display.shape
    spacing = (st.offsets[1] - st.offsets[0], st.anatomy.spacing, st.anatomy.spacing)
    centre = (float(rng.uniform(-5, 5)), float(rng.uniform(-30, 0)), float(rng.uniform(-40, 40)))
    aff = canonical_affine(n, (W, H), spacing, centre)
    seg_vol = display_to_volume(labels)
    seg_rel = f"segs/{st.sample_id}_seg.nii.gz"
    if st.fmt == "nifti":
        ax = NIFTI_ORIENTATIONS[st.fmt_index % len(NIFTI_ORIENTATIONS)]
        img_rel = f"images/{st.sample_id}.nii.gz"
        vol = np.rint(display_to_volume(display))
        write_bytes(root / img_rel, nifti_gz_bytes(vol, aff, ax, "int16", "medsoft-aug phantom T2"))
        seg_dtype = "float64" if st.fmt_index == 1 else "uint8"     # VerSe stores float labels: a trap
        write_bytes(root / seg_rel, nifti_gz_bytes(seg_vol, aff, ax, seg_dtype, "VerSe labels"))
    else:
        img_rel = f"images/{st.sample_id}"
        key = f"{seed}-{st.sample_id}"
        traps = _dicom_traps(st.fmt_index)
        series_uid = "" if st.fmt_index == 3 else uid(key, "series")
        info = SeriesInfo(patient_no=st.patient_no, study_key=key, study_uid=uid(key, "study"),
                          series_uid=series_uid, series_number=2, series_description="SAG T2 TSE",
                          echo_time=100, repetition_time=3500, **traps)
        write_dicom_series(root / img_rel, display, aff, info)
        write_bytes(root / seg_rel, nifti_gz_bytes(seg_vol, aff, "PIR", "uint8", "VerSe labels"))
    return {"image": img_rel, "seg": seg_rel}


def _labels_csv(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([LABEL_COLUMNS, *rows])
    return buf.getvalue()


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise UsageError(f"{out} exists and is not an (empty or earlier) sample data folder; choose another path")


def make_sample_data(out: str | os.PathLike, *, n_studies: int = 32, seed: int = 0, rsna_studies: int = 3,
                     on_progress: ProgressFn = None) -> dict[str, Any]:
    """Generate the phantom data set into ``out`` (replaced as a whole; byte-for-byte deterministic).

    Writes ``labels.csv``, ``images/`` (DICOM series folders and .nii.gz volumes), ``segs/`` (VerSe-numbered
    label maps, .nii.gz in the image grid), ``rsna2024/`` (RSNA-2024-shaped CSVs and 2D instances),
    ``README.md`` and ``SHA256SUMS``. The folder is built beside ``out`` and swapped in at the end, so a failed
    run leaves ``out`` as it was. Returns a summary dict (counts, total bytes, path).
    """
    out = Path(out)
    if seed < 0 or rsna_studies < 0:
        raise UsageError(f"seed and rsna_studies must be >= 0 (got {seed}, {rsna_studies})")
    _check_out(out)
    studies = plan_studies(n_studies, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = []
        for j, st in enumerate(studies):
            paths = write_study(tmp, st, seed)
            rows.append([st.sample_id, f"PH{st.patient_no:04d}", paths["image"], st.label, paths["seg"], st.level,
                         f"{st.x:.1f}", f"{st.y:.1f}", st.description, ""])
            report(on_progress, "sample_data", j + 1, len(studies))
        write_text(tmp / "labels.csv", _labels_csv(rows))
        rsna = make_rsna(tmp / "rsna2024", rsna_studies, seed)
        counts = {c: sum(s.label == c for s in studies) for c in ("normal", "benign", "malignant")}
        formats = {f: sum(s.fmt == f for s in studies) for f in ("dicom", "nifti")}
        write_text(tmp / "README.md", readme_text(n_studies, seed, counts, formats, rsna))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = "".join(f"{sha256_file(p)}  {p.relative_to(tmp).as_posix()}\n" for p in files)
        write_text(tmp / MANIFEST, manifest)
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        for p in [tmp, *tmp.rglob("*")]:      # mkdtemp/mkstemp create private modes; make it a normal folder
            p.chmod(0o755 if p.is_dir() else 0o644)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("sample data written to %s (%d studies, %d bytes)", out, n_studies, total)
    return {"out": str(out), "n_studies": n_studies, "seed": seed, "classes": counts, "formats": formats,
            "rsna2024": rsna, "files": len(files) + 1, "total_bytes": total}
