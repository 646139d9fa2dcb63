"""Intensity normalization that records what it did: a robust percentile window mapped to float32 [0, 1].

The window is computed on the 2D slice that becomes the sample (not on the whole volume): each sample is
self-contained, 2D and 3D sources are treated alike, and structures outside the slice (e.g. bright fat far
lateral) cannot compress the slice's contrast. ``window_lo``/``window_hi`` are recorded in source units so
``x_src = window_lo + x * (window_hi - window_lo)`` inverts the mapping inside the window.
"""
from __future__ import annotations

import numpy as np


class ConstantImageError(ValueError):
    """The slice has no intensity range inside the window (blank or constant image)."""


def percentile_window(array: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    """(lo, hi) intensity percentiles of the finite pixels of ``array`` (numpy's linear interpolation).

    Raises ConstantImageError when there are no finite pixels or lo == hi.
    """
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        raise ConstantImageError("image has no finite pixel values")
    lo, hi = np.percentile(finite.astype(np.float64), [lo_pct, hi_pct])
    if not hi > lo:
        # A tight window on a mostly-flat image (e.g. large black background): fall back to the full range.
        lo, hi = float(finite.min()), float(finite.max())
        if not hi > lo:
            raise ConstantImageError("image is constant (no intensity range)")
    return float(lo), float(hi)


def apply_window(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 1]`` with clipping; non-finite pixels become 0. Returns float32 (H, W)."""
    out = (array.astype(np.float64) - lo) / (hi - lo)
    out = np.clip(out, 0.0, 1.0)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


def normalize_slice(array: np.ndarray, window: tuple[float, float] = (0.5, 99.5)) -> tuple[np.ndarray, float, float]:
    """Percentile-window ``array`` (2D, source units) to float32 [0, 1]; returns (normalized, window_lo, window_hi)."""
    lo, hi = percentile_window(array, window[0], window[1])
    return apply_window(array, lo, hi), lo, hi
