"""The native-grid <-> model-grid mapping shared by train, balance and evaluate quality (one place, below the stages).

A slice (H, W) and its soft mask M_b go to the model grid (R, R) through a square window of the native grid, so
anatomy is never stretched, and come back through the same window:

- ``crop`` (default): a square of side ``s = max(bbox_h, bbox_w) * (1 + 2 * margin)`` (at least 8 px, at most
  ``max(H, W)``) centred on the bounding box of ``M_b > 0`` (the idea of diffusers' ``padding_mask_crop``),
  shifted to stay inside the slice when it fits; more model pixels on the lesion, any image size.
- ``pad``: the whole slice, centred in a square of side ``max(H, W)`` (no crop).

Where the window reaches outside the slice, the image repeats its edge pixels and the mask is 0. The window ``s x s`` is resized to ``R x R``
(image: bilinear, antialiased; mask: area-averaged when shrinking, bilinear when enlarging). Back: the model-grid
image is resized to ``s x s`` (bilinear, antialiased), the part inside the slice is taken, and the soft blend
``x0 * (1 - M_b) + decoded * M_b`` is done at the native grid with the donor's own mask, so every pixel outside
the window or with ``M_b == 0`` is the donor's exactly. The window is an integer box in native pixels: it is
recorded per sample, and the mapping itself (mode, margin, resolution) in MODEL_DIR and balance.json.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:        # torch is imported where tensors are made: `balance --dry-run` reads MODES without it
    import torch

log = logging.getLogger("medsoft_aug.geometry")

MODES = ("crop", "pad")
MIN_SIDE = 8


@dataclass(frozen=True)
class Window:
    """A square window of the native grid: rows ``top .. top + side``, columns ``left .. left + side`` (it may
    reach outside the slice, where it reads zeros)."""

    top: int
    left: int
    side: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class View:
    """One sample on the model grid: ``image`` and ``mask`` (1, R, R) float32 in [0, 1] and the window they show."""

    image: torch.Tensor
    mask: torch.Tensor
    window: Window


@dataclass(frozen=True)
class GridMapping:
    """How slices reach the model grid: ``mode`` crop | pad, ``margin`` (crop only: context on each side of the
    mask's bounding box, as a fraction of its longer side) and the model ``resolution`` R."""

    resolution: int
    mode: str = "crop"
    margin: float = 0.25

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"geometry mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not (int(self.resolution) == self.resolution and self.resolution >= 8):
            raise ValueError(f"model resolution must be an integer >= 8, got {self.resolution!r}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"crop margin must be >= 0, got {self.margin!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "margin": float(self.margin), "resolution": int(self.resolution)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GridMapping":
        return cls(resolution=int(d["resolution"]), mode=str(d.get("mode", "crop")),
                   margin=float(d.get("margin", 0.25)))

    # -- native -> model ------------------------------------------------------------------------------------
    def window(self, mask: np.ndarray) -> Window:
        """The square window for a soft mask (H, W) (``pad`` mode, or an empty mask: the whole slice)."""
        h, w = mask.shape
        big = max(h, w)
        rows, cols = np.nonzero(np.asarray(mask) > 0)
        if self.mode == "pad" or rows.size == 0:
            return Window((h - big) // 2, (w - big) // 2, big)
        y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        need = max(y1 - y0, x1 - x0)
        side = min(big, max(need, MIN_SIDE, int(math.ceil(need * (1 + 2 * self.margin)))))
        return Window(_start(y0, y1, side, h), _start(x0, x1, side, w), side)

    def to_model(self, image: np.ndarray, mask: np.ndarray, window: Optional[Window] = None) -> View:
        """(H, W) slice and soft mask -> :class:`View` on the model grid (window from the mask unless given)."""
        win = window or self.window(mask)
        img = _resize(_take(image, win, "edge"), self.resolution, "image")
        msk = _resize(_take(mask, win, "zero"), self.resolution, "mask")
        return View(img[0].clamp_(0, 1), msk[0].clamp_(0, 1), win)

    # -- model -> native ------------------------------------------------------------------------------------
    def to_native(self, model_image: torch.Tensor, window: Window, shape: tuple[int, int]) -> np.ndarray:
        """A model-grid image (..., R, R) -> (H, W) float32: resized to the window and placed in it; pixels
        outside the window are NaN (nothing was generated there)."""
        import torch.nn.functional as F

        t = model_image.detach().float().cpu().reshape(1, 1, *model_image.shape[-2:])
        if tuple(t.shape[-2:]) != (window.side, window.side):
            t = F.interpolate(t, size=(window.side, window.side), mode="bilinear", antialias=True,
                              align_corners=False)
        win = t[0, 0].numpy().astype(np.float32)
        out = np.full(shape, np.nan, dtype=np.float32)
        (r0, r1, c0, c1), (wr0, wc0) = _overlap(window, shape)
        out[r0:r1, c0:c1] = win[wr0:wr0 + r1 - r0, wc0:wc0 + c1 - c0]
        return out

    def composite(self, donor: np.ndarray, mask: np.ndarray, model_image: torch.Tensor,
                  window: Window) -> np.ndarray:
        """Soft blend at the native grid, ``donor * (1 - M_b) + decoded * M_b`` where ``M_b > 0`` inside the
        window; every other pixel is the donor's exactly. Returns float32 (H, W) in [0, 1]."""
        x0 = np.asarray(donor, dtype=np.float32)
        m = np.asarray(mask, dtype=np.float32)
        (r0, r1, c0, c1), _ = _overlap(window, x0.shape)
        dec = self.to_native(model_image, window, x0.shape)[r0:r1, c0:c1]
        out = x0.copy()
        out[r0:r1, c0:c1] = composite(x0[r0:r1, c0:c1], dec, m[r0:r1, c0:c1])
        return out


def composite(x0: np.ndarray, decoded: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixel-space soft blend ``x0 * (1 - M_b) + decoded * M_b`` of same-shape arrays: exactly ``x0`` where
    ``M_b == 0`` (non-finite decoded values count as 0, or 1 for +inf); float32 in [0, 1]."""
    x0 = np.asarray(x0, dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)
    dec = np.nan_to_num(np.asarray(decoded, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(x0 * (1.0 - m) + dec * m, 0.0, 1.0).astype(np.float32)


def mapping_for_model(meta: dict[str, Any], mode: Optional[str] = None, margin: Optional[float] = None,
                      resolution: Optional[int] = None) -> GridMapping:
    """The mapping a MODEL_DIR was trained with (``geometry`` and ``resolution`` of its medsoft_model.json), with
    the given overrides; a warning names each override that differs from the trained value."""
    rec = dict(meta.get("geometry") or {})
    if not rec:
        log.warning("the model records no grid mapping (trained by an earlier medsoft-aug, which stretched slices "
                    "to a square): using the default crop mapping; retrain for a matching model")
    trained = GridMapping.from_dict({"resolution": int(meta["resolution"]), **rec}).to_dict()
    given = {"mode": mode, "margin": None if margin is None else float(margin),
             "resolution": None if resolution is None else int(resolution)}
    changed = {k: v for k, v in given.items() if v is not None and v != trained[k]}
    for key, value in changed.items():
        log.warning("generating with %s %s although the model was trained with %s", key, value, trained[key])
    return GridMapping.from_dict({**trained, **changed})


def _start(lo: int, hi: int, side: int, size: int) -> int:
    """First index of a window of ``side`` centred on [lo, hi), shifted inside [0, size) when it fits there."""
    start = (lo + hi - side) // 2
    if side <= size:
        return min(max(start, 0), size - side)
    return (size - side) // 2


def _overlap(win: Window, shape: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """(rows r0:r1 and columns c0:c1 of the slice inside the window), (their offset inside the window)."""
    h, w = shape
    r0, r1 = max(win.top, 0), min(win.top + win.side, h)
    c0, c1 = max(win.left, 0), min(win.left + win.side, w)
    return (r0, r1, c0, c1), (r0 - win.top, c0 - win.left)


def _take(arr: np.ndarray, win: Window, pad: str) -> np.ndarray:
    """The window's pixels of ``arr`` (H, W) as (side, side) float32; where the window reaches outside the slice,
    ``pad`` = "edge" repeats the nearest slice pixel (images), "zero" puts 0 (masks)."""
    (r0, r1, c0, c1), (wr0, wc0) = _overlap(win, arr.shape)
    part = np.asarray(arr[r0:r1, c0:c1], dtype=np.float32)
    widths = ((wr0, win.side - wr0 - (r1 - r0)), (wc0, win.side - wc0 - (c1 - c0)))
    return np.pad(part, widths, mode="edge") if pad == "edge" else np.pad(part, widths)


def _resize(square: np.ndarray, resolution: int, kind: str) -> torch.Tensor:
    """(s, s) -> (1, 1, R, R): image bilinear antialiased; mask area-averaged when shrinking, else bilinear."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32))[None, None]
    if t.shape[-1] == resolution:
        return t
    size = (resolution, resolution)
    if kind == "mask" and t.shape[-1] >= resolution:
        return F.interpolate(t, size=size, mode="area")
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=kind == "image")
