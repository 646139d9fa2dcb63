"""Helpers for the masks tests: synthetic WORK folders written directly (index.csv + npy files)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from medsoft_aug.workdir import INDEX_COLUMNS


def phantom_seg(shape=(96, 80), labels=(20, 21, 22, 23, 24), disc_offset: Optional[int] = 100,
                dtype=np.float32) -> np.ndarray:
    """Sagittal-like label slice: a column of vertebral bodies (rows stacked top to bottom) with the given
    labels, and (when disc_offset is set) a disc label = upper vertebra + disc_offset between neighbours."""
    h, w = shape
    seg = np.zeros(shape, dtype=dtype)
    n = len(labels)
    step = h // (n + 1)
    for k, lab in enumerate(labels):
        r0 = step // 2 + k * step
        seg[r0:r0 + step - 4, w // 4: 3 * w // 4] = lab
        if disc_offset is not None and k < n - 1:
            seg[r0 + step - 4:r0 + step, w // 4 + 2: 3 * w // 4 - 2] = lab + disc_offset
    return seg


def make_work(root: Path, samples: list[dict], *, seed: int = 0) -> Path:
    """Write WORK/index.csv and slices/seg npy files.

    samples: dicts with ``sample_id`` and optionally ``label`` (default normal), ``shape``, ``seg`` (array or
    None), ``level``, ``x``, ``y``, ``spacing`` (row, col) and any other INDEX_COLUMNS value (strings).
    Slices are random float32 images in [0, 1] from a seeded generator.
    """
    rng = np.random.default_rng(seed)
    work = Path(root)
    (work / "slices").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in samples:
        sid = s["sample_id"]
        seg = s.get("seg")
        shape = tuple(s.get("shape", seg.shape if seg is not None else (64, 64)))
        img = rng.random(shape, dtype=np.float32)
        np.save(work / "slices" / f"{sid}.npy", img)
        row = {c: "" for c in INDEX_COLUMNS}
        sp = s.get("spacing", (1.0, 1.0))
        row.update(sample_id=sid, patient_id=sid, study_id=sid, label=s.get("label", "normal"), split="train",
                   image=f"slices/{sid}.npy", height=str(shape[0]), width=str(shape[1]),
                   spacing_row="" if sp is None else repr(float(sp[0])),
                   spacing_col="" if sp is None else repr(float(sp[1])))
        if seg is not None:
            (work / "seg").mkdir(exist_ok=True)
            np.save(work / "seg" / f"{sid}.npy", seg)
            row["seg"] = f"seg/{sid}.npy"
        for k in ("level", "x", "y"):
            if s.get(k) is not None:
                row[k] = str(s[k])
        if "split" in s:
            row["split"] = s["split"]
        rows.append(row)
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(work / "index.csv", index=False)
    return work
