"""Hard masks from a point: a square box of ``box_mm`` millimetres centred on (x = column, y = row)."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_point(shape: tuple[int, int], x: float, y: float) -> None:
    """Raise InputError unless (x, y) lies on the image: pixel (r, c) covers [c-0.5, c+0.5) x [r-0.5, r+0.5)."""
    h, w = shape
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InputError("coordinates x, y are not numbers")
    if not (-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
        raise InputError(f"coordinates x={x:g}, y={y:g} are outside the {h}x{w} image")


def box_mask(shape: tuple[int, int], x: float, y: float, box_mm: float,
             spacing: tuple[float, float]) -> np.ndarray:
    """Square box of side ``box_mm`` mm centred on (x, y), clipped to the image.

    shape: (H, W). x: column, y: row (pixel units, pixel centres at integers). spacing: (row, col) mm/px.
    A pixel belongs to the box when its centre does: ``|c - x| * spacing_col <= box_mm / 2`` and likewise for
    rows. Returns (H, W) bool. Raises InputError when (x, y) is off the image or the box covers no pixel centre.
    """
    check_point(shape, x, y)
    sr, sc = float(spacing[0]), float(spacing[1])
    if not (sr > 0 and sc > 0):
        raise InputError("pixel spacing is missing or not positive")
    if not box_mm > 0:
        raise InputError(f"box size {box_mm:g} mm is not positive")
    half = box_mm / 2.0 + 1e-9
    rows = np.abs(np.arange(shape[0]) - y) * sr <= half
    cols = np.abs(np.arange(shape[1]) - x) * sc <= half
    mask = rows[:, None] & cols[None, :]
    if not mask.any():
        raise InputError(f"a {box_mm:g} mm box at x={x:g}, y={y:g} covers no pixel centre "
                         f"(spacing {sr:g} x {sc:g} mm): use a larger --box-mm")
    return mask
