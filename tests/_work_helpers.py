"""A writer of synthetic WORK folders (index.csv, masks.csv, ingest.json, slices/, masks/) shared by the test helpers
that draw their own images and soft masks (layout and columns: ``medsoft_aug.workdir``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medsoft_aug.workdir import INDEX_COLUMNS, MASK_COLUMNS


class WorkWriter:
    def __init__(self, work: Path):
        self.work = Path(work)
        (self.work / "slices").mkdir(parents=True, exist_ok=True)
        (self.work / "masks").mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.mrows: list[dict] = []

    def add(self, sid: str, label: str, split: str, image: np.ndarray, mask: np.ndarray, **index_fields) -> None:
        """One sample: its slice and soft mask as .npy, an index row (extra columns from ``index_fields``) and an
        ok masks.csv row (``mask_source`` coords)."""
        np.save(self.work / "slices" / f"{sid}.npy", image)
        np.save(self.work / "masks" / f"{sid}.npy", mask)
        row = {k: "" for k in INDEX_COLUMNS}
        row.update(sample_id=sid, label=label, split=split, image=f"slices/{sid}.npy",
                   height=image.shape[0], width=image.shape[1], **index_fields)
        self.rows.append(row)
        mrow = {k: "" for k in MASK_COLUMNS}
        mrow.update(sample_id=sid, mask=f"masks/{sid}.npy", mask_source="coords", status="ok",
                    area_px=int((mask > 0.5).sum()), soft_sum=float(mask.sum()))
        self.mrows.append(mrow)

    def close(self, normal_class: str = "normal") -> Path:
        pd.DataFrame(self.rows, columns=INDEX_COLUMNS).to_csv(self.work / "index.csv", index=False)
        pd.DataFrame(self.mrows, columns=MASK_COLUMNS).to_csv(self.work / "masks.csv", index=False)
        (self.work / "ingest.json").write_text(json.dumps({"normal_class": normal_class}))
        return self.work
