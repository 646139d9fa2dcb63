"""Soft masks (Eq. 1 of MedSoft-Diffusion): ``M_b = G_sigma * M``, with sigma and dilation in millimetres.

Pure array -> array functions. Axis order is (row, col) everywhere; ``spacing = (spacing_row, spacing_col)``
in mm per pixel, so anisotropic pixels get a blur that is isotropic in millimetres.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Outside the image the mask is taken to continue as its edge value ("nearest"): a vertebra cut by the field
# of view stays fully masked at the border instead of fading towards it.
BLUR_MODE = "nearest"
BLUR_TRUNCATE = 4.0  # kernel radius in sigmas (scipy's default)
MASK_MODES = ("soft", "hard")
HARD_THRESHOLD = 0.5


def _check_spacing(spacing: tuple[float, float]) -> tuple[float, float]:
    sr, sc = (float(spacing[0]), float(spacing[1]))
    if not (np.isfinite(sr) and np.isfinite(sc) and sr > 0 and sc > 0):
        raise ValueError(f"pixel spacing must be two positive numbers (mm), got {spacing!r}")
    return sr, sc


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing: tuple[float, float]) -> np.ndarray:
    """Dilate a hard mask by a disc of ``radius_mm`` millimetres (an ellipse in pixels when spacing differs).

    mask: (H, W) bool. Returns (H, W) bool: every pixel whose centre lies within ``radius_mm`` (Euclidean,
    in mm) of a pixel centre of ``mask``. ``radius_mm <= 0`` returns a copy.
    """
    sr, sc = _check_spacing(spacing)
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    # Distance (mm) from each pixel to the nearest mask pixel; exact Euclidean distance transform.
    dist = ndimage.distance_transform_edt(~mask, sampling=(sr, sc))
    return dist <= radius_mm + 1e-9


def sigma_px(sigma_mm: float, spacing: tuple[float, float]) -> tuple[float, float]:
    """Gaussian sigma in pixels per axis (row, col) for a sigma of ``sigma_mm`` millimetres."""
    sr, sc = _check_spacing(spacing)
    return float(sigma_mm) / sr, float(sigma_mm) / sc


def soften(mask: np.ndarray, sigma_mm: float, spacing: tuple[float, float], *,
           dilate: float = 0.0) -> np.ndarray:
    """Eq. 1: hard mask -> (optional dilation by ``dilate`` mm) -> Gaussian blur of ``sigma_mm`` mm -> [0, 1].

    mask: (H, W) bool or {0,1}. spacing: (row, col) mm per pixel. ``sigma_mm = 0`` gives the (dilated) hard
    mask as float (no blur; the paper's "w/o SMIS" ablation is :func:`apply_mask_mode` "hard", applied to these
    soft masks by train and generation). Returns float32 (H, W) in [0, 1].
    """
    hard = dilate_mm(np.asarray(mask, dtype=bool), dilate, spacing)
    out = hard.astype(np.float32)
    if sigma_mm > 0 and hard.any():
        sig = sigma_px(sigma_mm, spacing)
        # Blur only the mask's bounding box plus the kernel radius (+1): outside it the result is exactly 0,
        # and inside it every kernel window sees the same values as on the whole image (zeros beyond the
        # crop, replicated only at true image borders), so this equals blurring the whole image.
        rows, cols = np.nonzero(hard.any(1))[0], np.nonzero(hard.any(0))[0]
        box = []
        for idx, s, n in ((rows, sig[0], hard.shape[0]), (cols, sig[1], hard.shape[1])):
            r = int(BLUR_TRUNCATE * s + 0.5) + 1
            box.append(slice(max(0, idx[0] - r), min(n, idx[-1] + r + 1)))
        out[tuple(box)] = ndimage.gaussian_filter(out[tuple(box)], sigma=sig, mode=BLUR_MODE,
                                                  truncate=BLUR_TRUNCATE)
    return np.clip(out, 0.0, 1.0, out=out)


def apply_mask_mode(mask, mode: str):
    """The one definition of the mask modes, used wherever a mask acts (train: the model-grid mask, I_m and the
    Eq. 6 latent weights; generation: I_m, the Eq. 7 latent blend and the pixel composite).

    ``soft``: M_b unchanged (SMIS, the paper). ``hard``: ``M_b >= 0.5`` as 0/1 (the paper's "w/o SMIS"
    ablation), applied to the soft mask resampled to the grid in use. ``mask``: a numpy array or torch tensor of
    any shape; returns the same type and dtype.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if mode == "soft":
        return mask
    hard = mask >= HARD_THRESHOLD
    return hard.astype(mask.dtype) if isinstance(mask, np.ndarray) else hard.to(mask.dtype)
