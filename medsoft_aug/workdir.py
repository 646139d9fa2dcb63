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

from pathlib import Path

import pandas as pd

from .errors import InputError

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
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("sample_id", "label", "split", "image") if c not in df.columns]
    if missing:
        raise InputError(f"{path} is missing columns: {', '.join(missing)}")
    return df


def read_masks(work: str | Path) -> pd.DataFrame:
    path = Path(work) / "masks.csv"
    if not path.is_file():
        raise InputError(f"{path} not found: run `medsoft-aug masks build` first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)
