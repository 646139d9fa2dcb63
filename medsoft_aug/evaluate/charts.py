"""Small, legible charts drawn with Pillow only (no matplotlib): bar chart with error bars, ROC curves,
confusion matrices, and image grids. Each function returns a ``PIL.Image`` (RGB)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)


def font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1 without a scalable default font
        return ImageFont.load_default()


def _text(d: ImageDraw.ImageDraw, xy: tuple[float, float], s: str, size: int = 14, fill=BLACK,
          anchor: str = "la") -> None:
    d.text(xy, s, fill=fill, font=font(size), anchor=anchor)


def _axes(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], ymin: float, ymax: float, nticks: int = 5,
          xlabel: str = "", ylabel: str = "", fmt: str = "{:.1f}") -> None:
    """Frame, horizontal grid lines with y tick labels, and axis labels inside ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    for i in range(nticks + 1):
        v = ymin + (ymax - ymin) * i / nticks
        y = y1 - (y1 - y0) * i / nticks
        d.line([(x0, y), (x1, y)], fill=GRID)
        _text(d, (x0 - 6, y), fmt.format(v), 12, anchor="rm")
    d.rectangle(box, outline=BLACK)
    if xlabel:
        _text(d, ((x0 + x1) / 2, y1 + 28), xlabel, 14, anchor="mt")
    if ylabel:
        _text(d, (x0 - 48, y0 - 22), ylabel, 14, anchor="la")


def bar_chart(labels: Sequence[str], means: Sequence[Optional[float]], stds: Sequence[Optional[float]],
              title: str, ylabel: str = "", ymax: float = 1.0) -> Image.Image:
    """Vertical bars with +-std error bars and the value printed above each bar; None is drawn as 'n/a'."""
    w, h = 120 + 110 * len(labels), 420
    im = Image.new("RGB", (w, h), WHITE)
    d = ImageDraw.Draw(im)
    box = (70, 50, w - 30, h - 70)
    _text(d, (w / 2, 14), title, 18, anchor="mt")
    _axes(d, box, 0.0, ymax, ylabel=ylabel)
    x0, y0, x1, y1 = box
    slot = (x1 - x0) / max(1, len(labels))
    scale = lambda v: y1 - (y1 - y0) * min(max(v, 0.0), ymax) / ymax  # noqa: E731
    for i, (lab, m, s) in enumerate(zip(labels, means, stds)):
        cx = x0 + slot * (i + 0.5)
        if m is None:
            _text(d, (cx, y1 - 20), "n/a", 14, anchor="mm")
        else:
            d.rectangle([cx - slot * 0.3, scale(m), cx + slot * 0.3, y1], fill=PALETTE[i % len(PALETTE)])
            if s:
                d.line([(cx, scale(m - s)), (cx, scale(m + s))], fill=BLACK, width=2)
                for v in (m - s, m + s):
                    d.line([(cx - 8, scale(v)), (cx + 8, scale(v))], fill=BLACK, width=2)
            _text(d, (cx, scale(m + (s or 0)) - 6), f"{m:.3f}", 13, anchor="mb")
        _text(d, (cx, y1 + 8), lab, 14, anchor="mt")
    return im


def line_chart(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
               diagonal: bool = True, size: int = 420) -> Image.Image:
    """Curves (name, x (P,), y (P,)) in the unit square, with a legend; ``diagonal`` draws the chance line."""
    w, h = size + 200, size
    im = Image.new("RGB", (w, h), WHITE)
    d = ImageDraw.Draw(im)
    box = (70, 50, size - 20, h - 60)
    x0, y0, x1, y1 = box
    _text(d, (w / 2, 14), title, 18, anchor="mt")
    _axes(d, box, 0.0, 1.0, xlabel=xlabel, ylabel=ylabel)
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        _text(d, (x, y1 + 6), f"{i / 5:.1f}", 12, anchor="mt")
    px = lambda x, y: (x0 + (x1 - x0) * float(x), y1 - (y1 - y0) * float(y))  # noqa: E731
    if diagonal:
        d.line([px(0, 0), px(1, 1)], fill=(170, 170, 170), width=1)
    for i, (name, xs, ys) in enumerate(curves):
        col = PALETTE[i % len(PALETTE)]
        pts = [px(x, y) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=3)
        ly = y0 + 10 + 24 * i
        d.line([(x1 + 16, ly), (x1 + 40, ly)], fill=col, width=4)
        _text(d, (x1 + 46, ly), name, 13, anchor="lm")
    return im


def confusion_image(cm: np.ndarray, class_names: Sequence[str], title: str, cell: int = 64) -> Image.Image:
    """Confusion matrix (K, K) of counts (rows = true class, columns = predicted), shaded by row fraction."""
    k = len(class_names)
    left, top = 110, 70
    w, h = left + cell * k + 20, top + cell * k + 40
    im = Image.new("RGB", (w, h), WHITE)
    d = ImageDraw.Draw(im)
    _text(d, (w / 2, 10), title, 16, anchor="mt")
    _text(d, (left + cell * k / 2, 34), "predicted", 13, anchor="mt")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    for i in range(k):
        _text(d, (left - 6, top + cell * (i + 0.5)), class_names[i][:12], 12, anchor="rm")
        _text(d, (left + cell * (i + 0.5), top - 4), class_names[i][:9], 11, anchor="mb")
        for j in range(k):
            shade = int(255 - 200 * frac[i, j])
            col = (shade, shade, 255)
            box = [left + cell * j, top + cell * i, left + cell * (j + 1), top + cell * (i + 1)]
            d.rectangle(box, fill=col, outline=BLACK)
            _text(d, (box[0] + cell / 2, box[1] + cell / 2), str(int(cm[i, j])), 15,
                  fill=WHITE if frac[i, j] > 0.6 else BLACK, anchor="mm")
    _text(d, (8, top + cell * k + 12), "rows: true class", 12)
    return im


def hstack(images: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Side by side on a white background, top-aligned."""
    w = sum(i.width for i in images) + gap * (len(images) - 1)
    h = max(i.height for i in images)
    out = Image.new("RGB", (w, h), WHITE)
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + gap
    return out


def gray_tile(arr: np.ndarray, size: int) -> Image.Image:
    """(H, W) in [0, 1] -> RGB tile of ``size`` x ``size`` (aspect kept, padded black)."""
    a = np.clip(np.asarray(arr, np.float32), 0, 1)
    im = Image.fromarray(np.round(a * 255).astype(np.uint8), mode="L")
    im.thumbnail((size, size), Image.Resampling.BILINEAR) if max(im.size) > size else None
    if max(im.size) < size:
        s = size / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (size, size), BLACK)
    tile.paste(im.convert("RGB"), ((size - im.width) // 2, (size - im.height) // 2))
    return tile


def image_grid(rows: Sequence[Sequence[np.ndarray]], col_titles: Sequence[str], title: str,
               row_labels: Sequence[str] = (), tile: int = 128) -> Image.Image:
    """Grid of grayscale arrays (rows x columns) with column titles and optional row labels."""
    left = 110 if row_labels else 8
    ncol = max(len(r) for r in rows) if rows else len(col_titles)
    w, h = left + (tile + 6) * ncol + 4, 64 + (tile + 6) * len(rows)
    im = Image.new("RGB", (w, h), WHITE)
    d = ImageDraw.Draw(im)
    _text(d, (w / 2, 8), title, 16, anchor="mt")
    for j, t in enumerate(col_titles):
        _text(d, (left + (tile + 6) * j + tile / 2, 50), t, 13, anchor="mb")
    for i, r in enumerate(rows):
        y = 58 + (tile + 6) * i
        if i < len(row_labels):
            _text(d, (left - 6, y + tile / 2), row_labels[i][:14], 11, anchor="rm")
        for j, arr in enumerate(r):
            im.paste(gray_tile(arr, tile), (left + (tile + 6) * j, y))
    return im
