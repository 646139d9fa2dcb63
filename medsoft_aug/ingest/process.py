"""One sample: read its image (and label map), take the slice, check coordinates, normalize.

Only the most recently read image and label map are kept (``SampleReader``), so memory stays at one volume
however many studies there are; consecutive rows on the same volume (several slices or levels) reuse it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..errors import MedsoftError
from ..io.types import ImageData

if TYPE_CHECKING:
    from ..io.dicom import DicomVolume
from .normalize import ConstantImageError, normalize_slice
from .samples import SamplePathError, SampleSpec, resolve_under
from .slicing import apply_geometry, geometry_json, make_geometry, slice_spacing

log = logging.getLogger("medsoft_aug.ingest")


class SampleError(Exception):
    """A problem with one sample; becomes a listed failure (never printed with patient data)."""


class SampleReader:
    """Reads images under a root through ``medsoft_aug.io.reader.open_image``, caching only the last one per kind
    (a DICOM series or multi-frame file is opened from its headers; only the slices taken are decoded)."""

    def __init__(self, root: Path):
        self.root = root
        self._last: dict[bool, tuple[Path, Any]] = {}

    def read(self, rel: str, *, label_map: bool) -> ImageData | DicomVolume:
        """Image at ``rel`` (relative to the root); SampleError for escaping, missing or unreadable files."""
        what = "seg" if label_map else "image"
        try:
            path = resolve_under(self.root, rel)
        except SamplePathError as e:
            raise SampleError(f"{what} {e}") from None
        cached = self._last.get(label_map)
        if cached is not None and cached[0] == path:
            if isinstance(cached[1], SampleError):
                raise cached[1]
            return cached[1]
        self._last.pop(label_map, None)  # drop the previous volume before reading the next one
        if not path.exists():
            err = SampleError(f"{what} file not found: {rel}")
        else:
            from ..io.reader import open_image

            try:
                img = open_image(path, label_map=label_map)
            except MedsoftError as e:
                err = SampleError(f"cannot read {what} {rel}: {' '.join(str(e).split())}")
            except Exception as e:  # noqa: BLE001 - third-party decoders raise anything on damaged files
                err = SampleError(f"cannot read {what} {rel} ({type(e).__name__})")
            else:
                if img.ndim not in (2, 3):
                    err = SampleError(f"{what} {rel} has {img.ndim} dimensions; expected 2D or 3D")
                else:
                    self._last[label_map] = (path, img)
                    return img
        self._last[label_map] = (path, err)
        raise err

    def clear(self) -> None:
        self._last.clear()


def _plane(img: ImageData | DicomVolume, geom: dict[str, Any]) -> np.ndarray:
    """The sample's 2D pixels; a DICOM volume opened from its headers decodes only the slice taken."""
    return apply_geometry(img.array if isinstance(img, ImageData) else img, geom)


def _choose_slice(spec: SampleSpec, img: ImageData) -> Optional[int]:
    if img.ndim == 2:
        if spec.slice_index is not None:
            raise SampleError(f"slice {spec.slice_index} given but image {spec.image} is 2D")
        return None
    n = img.shape[0]
    if spec.slice_index is None:
        return n // 2
    if not 0 <= spec.slice_index < n:
        raise SampleError(f"slice {spec.slice_index} out of range: volume has {n} sagittal slices (0..{n - 1})")
    return spec.slice_index


def ingest_one(spec: SampleSpec, reader: SampleReader, window: tuple[float, float]) -> dict[str, Any]:
    """Process one sample. Returns ``image`` (float32 (H, W) in [0, 1]), ``seg`` (float32 (H, W) or None),
    ``warnings`` (reader warnings, one line each: e.g. a NIfTI whose sform and qform disagree) and the index
    fields (source_format, slice_index, height, width, spacing_row/col, window_lo/hi, geometry JSON).
    Raises SampleError for any per-sample problem."""
    if spec.problem:
        raise SampleError(spec.problem)
    img = reader.read(spec.image, label_map=False)
    idx = _choose_slice(spec, img)
    geom = make_geometry(img.shape, idx, img.affine)
    sl = _plane(img, geom)
    h, w = sl.shape
    if spec.x is not None and spec.y is not None:
        if not (0.0 <= spec.x < w and 0.0 <= spec.y < h):
            raise SampleError(f"coordinates x={spec.x:g}, y={spec.y:g} outside the {w}x{h} image (x < {w}, y < {h})")
    try:
        norm, lo, hi = normalize_slice(sl, window)
    except ConstantImageError as e:
        raise SampleError(f"{e} in image {spec.image}" + (f" slice {idx}" if idx is not None else "")) from None
    seg_slice = None
    if spec.seg:
        seg = reader.read(spec.seg, label_map=True)
        if seg.shape != img.shape:
            raise SampleError(f"seg shape {list(seg.shape)} does not match image shape {list(img.shape)}")
        if img.affine is not None and seg.affine is not None and not np.allclose(img.affine, seg.affine, atol=1e-3):
            log.warning("sample %s: seg and image affines differ (same shape); using the image grid", spec.sample_id)
        seg_slice = _plane(seg, geom)
        as32 = seg_slice.astype(np.float32)
        # float32 as WORK/ promises; float64 kept only when a label value is not exact in float32.
        seg_slice = as32 if np.array_equal(as32, seg_slice) else seg_slice.astype(np.float64)
    sp_row, sp_col = slice_spacing(img.spacing, geom)
    warnings = [f"image {spec.image}: {w}" for w in img.meta.get("warnings", ())]
    if spec.seg:
        warnings += [f"seg {spec.seg}: {w}" for w in seg.meta.get("warnings", ())]
    return {"warnings": warnings, "image": norm, "seg": seg_slice, "source_format": img.source_format, "slice_index": idx,
            "height": h, "width": w, "spacing_row": sp_row, "spacing_col": sp_col, "window_lo": lo,
            "window_hi": hi, "geometry": geometry_json(geom)}
