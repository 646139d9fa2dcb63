"""Contact sheets: a grid of images (with optional mask overlays and outlines) saved as one 8-bit RGB PNG.

Shared by every stage that shows a person what it did (masks preview, donor | mask | synthetic sheets).
Generic: cells are plain arrays; no knowledge of WORK folders or manifests.

Cell images
    (H, W) grayscale or (H, W, 3) RGB; float arrays are taken as [0, 1] (clipped; ``normalize=True`` stretches
    each cell's min..max instead), integer arrays as 0..255 (uint8) or stretched by their max for other
    integer types. ``None`` leaves a blank cell.
Overlays
    (H, W) float in [0, 1] (a soft mask) per cell, same shape as the cell image, or None. Drawn as the colour
    blended with weight ``overlay_alpha * mask``, plus (``outline=True``) a 1-pixel contour of ``mask >= 0.5``
    at display resolution.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .fsutil import atomic_path

Cell = Optional[np.ndarray]


def _to_unit(img: np.ndarray, normalize: bool) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else max(float(a.max(initial=0)), 1.0))
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if normalize:
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(a, 0.0, 1.0)


def _fit(shape: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int]:
    """(height, width) that fits ``shape`` into ``cell`` (height, width), keeping the aspect ratio."""
    h, w = shape
    scale = min(cell[0] / h, cell[1] / w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (H, W) or (H, W, C) array in [0, 1] to (height, width)."""
    if a.ndim == 2:
        im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
        return np.asarray(im.resize(size[::-1], Image.BILINEAR))
    return np.stack([_resize(a[..., k], size) for k in range(a.shape[2])], axis=-1)


def _outline(mask: np.ndarray) -> np.ndarray:
    """1-pixel inner contour of a bool mask (mask pixels with a 4-neighbour outside the mask)."""
    m = np.pad(mask, 1, mode="edge")
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def render_cell(img: np.ndarray, size: tuple[int, int], *, overlay: Optional[np.ndarray] = None,
                color: tuple[int, int, int] = (255, 64, 32), alpha: float = 0.35, outline: bool = True,
                normalize: bool = False) -> np.ndarray:
    """One cell as uint8 (h, w, 3), resized to fit ``size`` = (height, width) keeping the aspect ratio."""
    a = _to_unit(img, normalize)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"cell image must be (H, W) or (H, W, 3), got shape {np.shape(img)}")
    out_size = _fit(a.shape[:2], size)
    a = _resize(a, out_size)
    if overlay is not None:
        m = np.asarray(overlay, dtype=np.float32)
        if m.shape != np.shape(img)[:2]:
            raise ValueError(f"overlay shape {m.shape} differs from image shape {np.shape(img)[:2]}")
        m = np.clip(_resize(np.clip(np.nan_to_num(m), 0, 1), out_size), 0.0, 1.0)[..., None]
        col = np.asarray(color, np.float32) / 255.0
        a = a * (1 - alpha * m) + col * (alpha * m)
        if outline:
            a[_outline(m[..., 0] >= 0.5)] = col
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_contact_sheet(rows: Sequence[Sequence[Cell]], *, row_labels: Optional[Sequence[str]] = None,
                         col_labels: Optional[Sequence[str]] = None,
                         cell_labels: Optional[Sequence[Sequence[Optional[str]]]] = None,
                         overlays: Optional[Sequence[Sequence[Optional[np.ndarray]]]] = None,
                         outline: bool = True, cell_size: tuple[int, int] = (160, 160),
                         overlay_color: tuple[int, int, int] = (255, 64, 32), overlay_alpha: float = 0.35,
                         normalize: bool = False, pad: int = 4, legend: Optional[str] = None) -> np.ndarray:
    """Lay out a grid of cells; returns the sheet as uint8 (H, W, 3).

    rows[i][j]: cell image or None. row_labels: one per row (left margin, "\n" for several lines; the margin is
    as wide as the longest line); col_labels: one per column (top); cell_labels[i][j]: caption under a cell
    ("\n" for several lines); overlays[i][j]: soft mask for that cell or None. legend: text above the grid
    (e.g. what the outline means). cell_size: (height, width) in output pixels of each cell box. Rows may have
    different lengths.
    """
    if not rows:
        raise ValueError("contact sheet needs at least one row")
    n_cols = max(len(r) for r in rows)
    font = ImageFont.load_default()
    line_h = 12
    n_lines = max((str(t).count("\n") + 1 for r in (cell_labels or []) for t in r if t), default=0)
    cap_h = line_h * n_lines + 2 if n_lines else 0
    left = 8 + max((_text_width(font, ln) for s in row_labels for ln in str(s).split("\n")), default=0) \
        if row_labels else 0
    head = (line_h * (str(legend).count("\n") + 1) + 6) if legend else 0
    top = head + (line_h + 6 if col_labels else 0)
    ch, cw = cell_size
    width = left + n_cols * (cw + pad) + pad
    height = top + len(rows) * (ch + cap_h + pad) + pad
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if legend:
        draw.multiline_text((4, 3), str(legend), fill=(255, 220, 120), font=font, spacing=2)
    for j, text in enumerate(col_labels or []):
        draw.text((left + pad + j * (cw + pad), head + 3), str(text), fill=(230, 230, 230), font=font)
    for i, row in enumerate(rows):
        y0 = top + pad + i * (ch + cap_h + pad)
        if row_labels and i < len(row_labels):
            text = str(row_labels[i])
            y_text = y0 + ch // 2 - (line_h * (text.count("\n") + 1)) // 2
            draw.multiline_text((4, y_text), text, fill=(230, 230, 230), font=font, spacing=2)
        for j, img in enumerate(row):
            x0 = left + pad + j * (cw + pad)
            if img is not None:
                ov = overlays[i][j] if overlays is not None and j < len(overlays[i]) else None
                cell = render_cell(img, cell_size, overlay=ov, color=overlay_color, alpha=overlay_alpha,
                                   outline=outline, normalize=normalize)
                h, w = cell.shape[:2]
                sheet.paste(Image.fromarray(cell), (x0 + (cw - w) // 2, y0 + (ch - h) // 2))
            if cell_labels is not None and j < len(cell_labels[i]) and cell_labels[i][j]:
                lines = [ln[: max(4, cw // 6)] for ln in str(cell_labels[i][j]).split("\n")]
                draw.multiline_text((x0, y0 + ch + 1), "\n".join(lines), fill=(200, 200, 200), font=font,
                                    spacing=1)
    return np.asarray(sheet)


def _text_width(font, text: str) -> int:
    return int(round(font.getlength(text))) if hasattr(font, "getlength") else 6 * len(text)


def contact_sheet(rows: Sequence[Sequence[Cell]], path: str | os.PathLike, *,
                  row_labels: Optional[Sequence[str]] = None, col_labels: Optional[Sequence[str]] = None,
                  cell_labels: Optional[Sequence[Sequence[Optional[str]]]] = None,
                  overlays: Optional[Sequence[Sequence[Optional[np.ndarray]]]] = None, outline: bool = True,
                  cell_size: tuple[int, int] = (160, 160), overlay_color: tuple[int, int, int] = (255, 64, 32),
                  overlay_alpha: float = 0.35, normalize: bool = False, pad: int = 4,
                  legend: Optional[str] = None) -> Path:
    """Render a contact sheet (arguments as in :func:`render_contact_sheet`) and write it atomically as an
    8-bit RGB PNG at ``path`` (parent folders are created). Returns the path.

    Example (donor | mask | synthetic per row)::

        contact_sheet([[donor, donor, synth], ...], "sheet.png", overlays=[[None, soft, soft], ...],
                      col_labels=["donor", "mask", "synthetic"], row_labels=["s001", ...])
    """
    arr = render_contact_sheet(rows, row_labels=row_labels, col_labels=col_labels, cell_labels=cell_labels,
                               overlays=overlays, outline=outline, cell_size=cell_size,
                               overlay_color=overlay_color, overlay_alpha=overlay_alpha, normalize=normalize,
                               pad=pad, legend=legend)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
