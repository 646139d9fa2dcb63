"""PNG / TIFF reader: 8- and 16-bit grayscale (and 32-bit int / float TIFF), RGB -> luminance, palette -> L.

Spacing: (1.0, 1.0) mm unless the file records a physical resolution (PNG pHYs in metres, TIFF
X/YResolution in inches or centimetres). 72 and 96 dpi are the defaults image editors write without meaning
anything physical, so they are ignored. ``meta["spacing_source"]`` says which rule applied.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from .nifti import label_array
from .types import ImageData

log = logging.getLogger("medsoft_aug.io.raster")

RASTER_SUFFIXES = (".png", ".tif", ".tiff")
_SCREEN_DPI = (72.0, 96.0)
#: ITU-R BT.601 luma weights, the ones Pillow's ``convert("L")`` uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def read_raster(path: str | Path, *, label_map: bool = False) -> ImageData:
    """Read a 2D PNG or TIFF.

    Args:
        path: the image file (read only).
        label_map: palette images return their palette indices, gray images their values (float32 if exact);
            an RGB label map is accepted only when its three channels are equal.

    Returns:
        ImageData with ``array`` (rows, cols) float32 as stored (row 0 = top) - RGB(A) as BT.601 luminance,
        palette as its luminance - ``spacing`` (row_mm, col_mm), ``affine`` None, ``source_format="raster"``,
        meta ``mode`` (Pillow mode), ``bit_depth``, ``spacing_source`` ("dpi" | "default").

    Raises:
        InputError: missing, unreadable or truncated file, multi-page TIFF, unsupported mode.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            n_frames = int(getattr(im, "n_frames", 1))
            im.load()
            mode = im.mode
            info = dict(im.info)
            dpi = _dpi(im)
            if mode == "P" and not label_map:
                im = im.convert("RGBA" if "transparency" in info else "RGB")
            raw = np.array(im)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise InputError(f"{path.name}: cannot read image ({type(e).__name__}: {_one_line(e)})") from e
    if n_frames > 1:
        raise InputError(f"{path.name}: multi-page image ({n_frames} pages); give one 2D image per file")
    arr, bit_depth = _to_gray(raw, mode, path.name, label_map)
    meta = {"mode": mode, "bit_depth": bit_depth}
    spacing, meta["spacing_source"] = _spacing(dpi)
    if label_map:
        arr, meta["label_dtype"] = label_array(arr)
    else:
        arr = np.asarray(arr, dtype=np.float32)
    return ImageData(array=np.ascontiguousarray(arr), spacing=spacing, affine=None, source_format="raster",
                     meta=meta)


def _to_gray(raw: np.ndarray, mode: str, name: str, label_map: bool) -> tuple[np.ndarray, int]:
    """(rows, cols) gray values from a Pillow array; returns (array, bits per sample of the source)."""
    if raw.ndim == 2:
        if raw.dtype == bool:
            return raw.astype(np.uint8), 1
        return raw, int(raw.dtype.itemsize * 8)
    if raw.ndim == 3 and raw.shape[2] in (2, 3, 4):
        if raw.shape[2] == 2:        # LA: drop alpha
            return raw[..., 0], int(raw.dtype.itemsize * 8)
        rgb = raw[..., :3]
        if label_map:
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise InputError(f"{name}: colour image ({mode}) cannot be used as a label map; "
                                 "save labels as grayscale or palette indices")
            return rgb[..., 0], int(raw.dtype.itemsize * 8)
        return rgb.astype(np.float64) @ _LUMA, int(raw.dtype.itemsize * 8)
    raise InputError(f"{name}: unsupported image layout (mode {mode}, shape {tuple(raw.shape)})")


def _dpi(im) -> tuple[float, float] | None:
    """(x_dpi, y_dpi) recorded with a physical unit, else None.

    TIFF: X/YResolution tags with ResolutionUnit inch (2) or cm (3) read from the tags themselves (Pillow reports
    a made-up 1 dpi when the tags are absent). PNG: Pillow's ``dpi``, set only for a pHYs chunk in metres.
    """
    try:
        if im.format == "TIFF":
            tags = im.tag_v2
            if 282 not in tags or 283 not in tags:
                return None
            unit = int(tags.get(296, 2))
            factor = {2: 1.0, 3: 2.54}.get(unit)
            return (float(tags[282]) * factor, float(tags[283]) * factor) if factor else None
        dpi = im.info.get("dpi")
        return (float(dpi[0]), float(dpi[1])) if dpi is not None else None
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError):
        return None


def _spacing(dpi: tuple[float, float] | None) -> tuple[tuple[float, float], str]:
    """(row_mm, col_mm) from (x_dpi, y_dpi); 72/96 dpi editor defaults and missing values give (1, 1)."""
    if dpi is None:
        return (1.0, 1.0), "default"
    xdpi, ydpi = dpi
    if not (xdpi > 0 and ydpi > 0 and np.isfinite(xdpi) and np.isfinite(ydpi)):
        return (1.0, 1.0), "default"
    if any(abs(xdpi - d) < 0.05 for d in _SCREEN_DPI) and any(abs(ydpi - d) < 0.05 for d in _SCREEN_DPI):
        return (1.0, 1.0), "default"
    return (25.4 / ydpi, 25.4 / xdpi), "dpi"


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text[:limit] if text else "no detail"
