"""Layout and schemas of the artifacts each stage leaves in WORK/ (one stage, one set of files).

WORK/
  index.csv            one row per 2D sample (INDEX_COLUMNS), written by ``ingest``
  ingest.json          run record of ingest (options, versions, counts, failures, input hashes)
  slices/{id}.npy      float32 (H, W) in [0,1] after the recorded intensity window (samples from the same source
                       slice may share one file through hard links: never write into slices/ in place)
  seg/{id}.npy         float32 (H, W) label-map slice in the same grid (float64 when a label is not exact in float32)
  masks/{id}.npy       float32 (H, W) soft mask in [0,1], written by ``masks build``
  masks.csv            one row per sample (MASK_COLUMNS)
  masks.json           run record of ``masks build``

Paths inside CSVs are relative to WORK. Pixel coordinates ``x`` (column) and ``y`` (row) in index.csv are in the
ingested slice grid. ``geometry`` is a JSON string recording how the slice was taken from the source
(see ``medsoft_aug.ingest.slicing``) so outputs can be written back in native geometry and units.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .csvio import read_csv_strings
from .errors import InputError
from .fsutil import load_npy, sha256_file

INDEX_COLUMNS = [
    "sample_id",     # unique, filesystem-safe
    "patient_id",    # for patient-level splits (defaults to study_id)
    "study_id",
    "label",         # class name; the normal class is recorded in ingest.json ("normal_class")
    "split",         # train | val | test
    "image",         # slices/{id}.npy
    "seg",           # seg/{id}.npy or empty
    "level",         # vertebra level name (L3) or numeric label, or empty
    "x", "y",        # lesion/landmark pixel coordinates in the slice grid (column, row), or empty
    "description",   # lesion text, or empty
    "condition",     # rsna2024: condition name; generic: empty
    "severity",      # rsna2024: Normal/Mild | Moderate | Severe; generic: empty
    "source",        # source image path relative to --images
    "source_format", # dicom | dicom-series | nifti | raster
    "slice_index",   # index into the 3D volume along the sagittal axis, or empty for 2D
    "instance",      # DICOM instance number (rsna2024), or empty
    "series_id",     # DICOM series id (rsna2024), or empty
    "height", "width",
    "spacing_row", "spacing_col",   # mm per pixel in the slice grid
    "window_lo", "window_hi",       # intensity window mapped to [0, 1] (source units)
    "geometry",      # JSON string
]

MASK_COLUMNS = [
    "sample_id",
    "mask",          # masks/{id}.npy or empty when failed
    "mask_source",   # seg | coords
    "level",
    "area_px",       # sum of the hard mask before blurring
    "soft_sum",      # sum of the soft mask
    "sigma_mm", "box_mm", "dilate_mm",
    "status",        # ok | error
    "error",         # one-line problem when status == error
]


def read_index(work: str | Path) -> pd.DataFrame:
    path = Path(work) / "index.csv"
    if not path.is_file():
        raise InputError(f"{path} not found: run `medsoft-aug ingest` first")
    df = read_csv_strings(path, "index.csv", strip=False)  # empty, cut, non-UTF-8 -> InputError (exit 3)
    missing = [c for c in ("sample_id", "label", "split", "image") if c not in df.columns]
    if missing:
        raise InputError(f"{path} is missing columns: {', '.join(missing)}")
    return df


def read_masks(work: str | Path) -> pd.DataFrame:
    path = Path(work) / "masks.csv"
    if not path.is_file():
        raise InputError(f"{path} not found: run `medsoft-aug masks build` first")
    return read_csv_strings(path, "masks.csv", strip=False)


def _ingest_record(work: Path) -> dict:
    """WORK/ingest.json as a dict ({} when absent); InputError when it is not valid JSON."""
    path = work / "ingest.json"
    if not path.is_file():
        return {}
    try:
        rec = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not valid JSON ({type(e).__name__})") from None
    return rec if isinstance(rec, dict) else {}


def normal_class_of(work: str | Path, given: Optional[str] = None) -> str:
    """The normal class: ``given``, else ``normal_class`` from WORK/ingest.json, else "normal"."""
    if given:
        return given
    return str(_ingest_record(Path(work)).get("normal_class") or "normal")


def images_root_of(work: str | Path) -> Optional[Path]:
    """The source image folder ingest read (``options.images`` of ingest.json), or None when not recorded."""
    root = (_ingest_record(Path(work)).get("options") or {}).get("images")
    return Path(root) if root else None


def check_work(work: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """index.csv + masks.csv, checked to belong together (masks built from this very index)."""
    work = Path(work)
    if not work.is_dir():
        raise InputError(f"WORK folder {work} not found")
    index, masks = read_index(work), read_masks(work)
    rec = work / "masks.json"
    if rec.is_file():
        try:
            built_from = json.loads(rec.read_text("utf-8")).get("inputs", {}).get("index.csv")
        except ValueError:
            raise InputError(f"{rec} is not valid JSON") from None
        if built_from and built_from != sha256_file(work / "index.csv"):
            raise InputError(f"{work}/index.csv changed since the masks were built: rerun `medsoft-aug masks build`")
    stray = sorted(set(masks["sample_id"]) - set(index["sample_id"]))
    if stray:
        raise InputError(f"masks.csv lists {len(stray)} sample(s) not in index.csv (e.g. {stray[0]}): "
                         "rerun `medsoft-aug masks build`")
    return index, masks


def load_pair(work: str | Path, image: str, mask: str, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A sample's slice and soft mask (paths relative to WORK) as float32 (H, W) arrays clipped to [0, 1].

    Raises InputError naming the sample when a file is missing or unreadable or the shapes differ."""
    work = Path(work)
    if not image or not mask or not (work / image).is_file() or not (work / mask).is_file():
        raise InputError(f"{sample_id}: slice or soft mask file missing in WORK")
    try:
        img, msk = load_npy(work / image).astype(np.float32), load_npy(work / mask).astype(np.float32)
    except (OSError, ValueError) as e:
        raise InputError(f"{sample_id}: cannot read its slice or mask ({type(e).__name__})") from None
    if img.ndim != 2 or img.shape != msk.shape:
        raise InputError(f"{sample_id}: slice {img.shape} and mask {msk.shape} must be 2D and the same shape")
    return np.clip(img, 0, 1), np.clip(msk, 0, 1)


def describe(row_text: str, label: str, normal_class: str) -> str:
    """Conditioning text of a sample: "" for the normal class (the same empty text CFG's uncond uses), else the
    row's description, or its label name when it has none."""
    if label == normal_class:
        return ""
    return row_text.strip() or label.replace("_", " ")
