"""Reading a balance manifest and its images for evaluation.

The manifest (``OUT/manifest.csv`` of ``medsoft-aug balance``) has one row per real sample (all splits) and per
synthetic sample; ``image`` and ``mask`` paths are relative to the manifest's folder. Images are PNG (16-bit or
8-bit grayscale), TIFF or ``.npy`` float32; all are returned as float32 (H, W) in [0, 1].
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..manifest import read_manifest as _read_manifest_csv

log = logging.getLogger("medsoft_aug.evaluate.data")

REQUIRED_COLUMNS = ("sample_id", "split", "label", "origin", "image")
ORIGINS = ("real", "synthetic")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest: required columns, known ``origin`` values, unique ids, ``donor_id`` for
    synthetic rows. Raises :class:`InputError` (exit 3) naming the problem."""
    path = Path(path)
    df = _read_manifest_csv(path, required=REQUIRED_COLUMNS)
    if df.empty:
        raise InputError(f"manifest {path} has no rows")
    bad = sorted(set(df["origin"]) - set(ORIGINS))
    if bad:
        raise InputError(f"manifest {path}: unknown origin value(s) {bad[:3]} (expected real or synthetic)")
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise InputError(f"manifest {path}: duplicate sample_id {dup.iloc[0]}")
    empty = df[(df["label"] == "") | (df["image"] == "") | (df["sample_id"] == "")]
    if len(empty):
        raise InputError(f"manifest {path}: sample {empty['sample_id'].iloc[0] or '(row ' + str(empty.index[0]) + ')'} "
                         "has an empty sample_id, label or image")
    if (df["origin"] == "synthetic").any() and "donor_id" not in df.columns:
        raise InputError(f"manifest {path} has synthetic rows but no donor_id column")
    return df


def load_image(path: str | Path, sample_id: str = "") -> np.ndarray:
    """Load one image as float32 (H, W) in [0, 1]. Raises :class:`InputError` naming the sample."""
    path = Path(path)
    name = sample_id or path.name
    if not path.is_file():
        raise InputError(f"{name}: image file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False).astype(np.float32)
        elif suffix in (".png", ".tif", ".tiff"):
            arr = _load_raster(path)
        else:
            raise InputError(f"{name}: unsupported image format {suffix!r} for evaluation (use PNG or .npy)")
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"{name}: cannot read image {path.name} ({type(e).__name__})") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2D image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: image {path.name} has non-finite values")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _load_raster(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        if mode in ("RGB", "RGBA", "LA", "P"):
            return np.asarray(im.convert("L"), np.float32) / 255.0
        arr = np.asarray(im)
    if mode == "L" or arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if mode == "F" or arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if mode == "1":
        return arr.astype(np.float32)
    return arr.astype(np.float32) / 65535.0  # I;16, I;16B, I (16-bit PNGs opened as 32-bit int)


def resolve(manifest_dir: Path, rel: str) -> Path:
    """A manifest path (relative to the manifest's folder, or absolute)."""
    p = Path(rel)
    return p if p.is_absolute() else manifest_dir / p


def to_square_tensor(img: np.ndarray, resolution: int):
    """Zero-pad (H, W) to a centred square, resize (bilinear, antialiased) to (1, R, R) float32 torch tensor."""
    import torch
    import torch.nn.functional as F

    h, w = img.shape
    s = max(h, w)
    sq = np.zeros((s, s), np.float32)
    top, left = (s - h) // 2, (s - w) // 2
    sq[top:top + h, left:left + w] = img
    t = torch.from_numpy(sq)[None, None]
    if s != resolution:
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=s > resolution)
    return t[0].clamp_(0.0, 1.0)
