"""``masks build --preview FILE.png``: a contact sheet of image | image + soft-mask overlay per sample."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..viz import contact_sheet

PREVIEW_CAP = 24
PAIRS_PER_ROW = 4


def select_preview(samples: Sequence[tuple[str, str]], cap: int = PREVIEW_CAP) -> list[int]:
    """Choose up to ``cap`` samples to show, deterministically and spread over classes.

    samples: (sample_id, label) per candidate. Classes take turns (sorted by name); within a class samples are
    ordered by a hash of their id, so the choice does not depend on row order and is not just the first few
    studies. Returns indices into ``samples``, grouped by class.
    """
    by_class: dict[str, list[int]] = {}
    for i, (sid, label) in enumerate(samples):
        by_class.setdefault(str(label), []).append(i)
    queues = {c: sorted(ix, key=lambda i: hashlib.sha1(samples[i][0].encode()).hexdigest())
              for c, ix in by_class.items()}
    chosen: list[int] = []
    while len(chosen) < cap and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(chosen) < cap:
                chosen.append(queues[c].pop(0))
    return sorted(chosen, key=lambda i: (str(samples[i][1]), chosen.index(i)))


def write_preview(path: str | Path, items: Sequence[dict], load: Callable[[dict], tuple[np.ndarray, np.ndarray]]
                  ) -> Path:
    """Write the preview sheet. items: dicts with ``sample_id``, ``label``, ``caption``; ``load(item)`` returns
    (image (H, W) float [0,1], soft mask (H, W) float [0,1]). Each sample is a pair of cells: the image alone,
    then the image with the soft mask overlaid (red, weight = mask) and its 0.5 outline."""
    cells, overlays, captions = [], [], []
    for it in items:
        img, soft = load(it)
        cells += [img, img]
        overlays += [None, soft]
        captions += [f"{it['label']}\n{it['sample_id']}", it.get("caption", "")]
    per = 2 * PAIRS_PER_ROW
    rows = [cells[k:k + per] for k in range(0, len(cells), per)]
    ovs = [overlays[k:k + per] for k in range(0, len(overlays), per)]
    caps = [captions[k:k + per] for k in range(0, len(captions), per)]
    n_cols = max(len(r) for r in rows)
    col_labels = ["image", "soft mask (>=0.5 outlined)"][:2] * (n_cols // 2)
    return contact_sheet(rows, path, overlays=ovs, cell_labels=caps, col_labels=col_labels,
                         cell_size=(176, 176))
