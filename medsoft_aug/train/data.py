"""Training samples from a WORK folder: slice + soft mask + lesion text, on the model grid.

Each item is a dict::

    image      (1, R, R) float32 in [0, 1]   the ingested slice x0 through the grid mapping (``geometry``:
                                             a square crop around the mask, or the padded slice; no distortion)
    soft_mask  (1, R, R) float32 in [0, 1]   M_b through the same window; in ``hard`` mode
                                             ``masks.soften.apply_mask_mode`` (M_b >= 0.5 as 0/1) - the paper's
                                             "w/o SMIS" ablation (the window is the soft mask's either way)
    text       str                           the row's description; a diseased row without one uses its label
                                             name; normal rows use "" (the same empty text CFG's uncond uses)
    label, sample_id  str;  index  int       position in the dataset (used for per-sample caches)

The mapping is the one generation uses (recorded in MODEL_DIR by ``train``), so the model sees lesions at the
same scale and placement in training and in ``balance``.
``vae_input`` turns the (B, 1, R, R) [0, 1] images into the VAE's (B, 3, R, R) [-1, 1].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from ..fsutil import load_npy
from ..geometry import GridMapping
from ..masks.soften import MASK_MODES, apply_mask_mode
from ..workdir import describe, normal_class_of, read_index, read_masks

log = logging.getLogger("medsoft_aug.train.data")

MaskMode = Literal["soft", "hard"]


def vae_input(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grayscale in [0, 1] -> (B, 3, H, W) in [-1, 1] (the VAE's input range)."""
    return (image * 2 - 1).expand(-1, 3, -1, -1)


class SliceDataset(torch.utils.data.Dataset):
    """Rows of WORK/index.csv of one split that have a usable mask in masks.csv (status ok, file present)."""

    def __init__(self, work: str | Path, split: str = "train", resolution: int = 64, mask_mode: MaskMode = "soft",
                 diseased_only: bool = False, normal_class: str | None = None, mapping: GridMapping | None = None):
        if mask_mode not in MASK_MODES:
            raise InputError(f"mask mode must be soft or hard, got {mask_mode!r}")
        if resolution < 8 or resolution % 8:
            raise InputError(f"resolution must be a positive multiple of 8, got {resolution}")
        self.work = Path(work)
        self.split, self.resolution, self.mask_mode = split, int(resolution), mask_mode
        self.mapping = mapping or GridMapping(self.resolution)
        if self.mapping.resolution != self.resolution:
            raise InputError(f"mapping resolution {self.mapping.resolution} differs from {self.resolution}")
        self.normal_class = normal_class_of(work, normal_class)
        index, masks = read_index(work), read_masks(work)
        for col in ("sample_id", "mask"):
            if col not in masks.columns:
                raise InputError(f"{self.work / 'masks.csv'} is missing column {col}")
        status = masks["status"] if "status" in masks.columns else "ok"
        ok = masks[(masks["mask"] != "") & (status == "ok")].drop_duplicates("sample_id")
        rows = index[index["split"] == split].merge(ok[["sample_id", "mask"]], on="sample_id", how="inner")
        if diseased_only:
            rows = rows[rows["label"] != self.normal_class]
        rows = rows.sort_values("sample_id", kind="stable").reset_index(drop=True)
        desc = rows["description"] if "description" in rows.columns else [""] * len(rows)
        self.sample_ids: list[str] = rows["sample_id"].tolist()
        self.labels: list[str] = rows["label"].tolist()
        self.texts = [describe(d, lab, self.normal_class) for d, lab in zip(desc, self.labels)]
        self._images = rows["image"].tolist()
        self._masks = rows["mask"].tolist()
        log.debug("%s split: %d samples with masks", split, len(self))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> dict:
        sid = self.sample_ids[i]
        try:
            image = load_npy(self.work / self._images[i])
            mask = load_npy(self.work / self._masks[i])
        except (OSError, ValueError) as e:
            raise InputError(f"{sid}: cannot read its slice or mask ({type(e).__name__})") from e
        if image.ndim != 2 or mask.shape != image.shape:
            raise InputError(f"{sid}: slice {image.shape} and mask {mask.shape} must be 2D and the same shape")
        view = self.mapping.to_model(np.clip(image, 0, 1), np.clip(mask, 0, 1))
        img, msk = view.image, apply_mask_mode(view.mask, self.mask_mode)
        return {"image": img, "soft_mask": msk, "text": self.texts[i], "label": self.labels[i],
                "sample_id": sid, "index": i}


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings as lists, indices as a LongTensor."""
    return {"image": torch.stack([it["image"] for it in items]),
            "soft_mask": torch.stack([it["soft_mask"] for it in items]),
            "text": [it["text"] for it in items], "label": [it["label"] for it in items],
            "sample_id": [it["sample_id"] for it in items],
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}


def ordered_batches(dataset, batch_size: int, num_workers: int = 0, pin: bool = False):
    """Batches of ``batch_size`` items in dataset order (the last one smaller), collated; read by ``num_workers``
    loader processes (0: in this process), pinned for non-blocking copies to a GPU when ``pin``."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin)
