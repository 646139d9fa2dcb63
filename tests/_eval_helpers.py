"""Helpers for the evaluate tests: tiny synthetic manifests with images on disk (16-bit PNG and .npy).

Classes: ``normal`` (textured background), ``benign`` (bright blob), ``malignant`` (dark blob). Synthetic rows
inpaint the class's blob into a normal training donor inside a soft mask, so the donor relation is real.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _work_helpers import WorkWriter

CLASSES = ("normal", "benign", "malignant")


@pytest.fixture(autouse=True, scope="module")
def eval_one_thread():
    """One torch thread per test module (import this fixture into a module to use it): on the shared 2-core
    machine two intra-op threads spinning against other processes make ResNet-18 training ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.35 + 0.15 * np.sin(6 * yy + rng.uniform(0, 3)) + 0.05 * rng.normal(size=(size, size))
    return np.clip(img, 0, 1).astype(np.float32)


def soft_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    r = size * rng.uniform(0.12, 0.18)
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((r * 1.4 - d) / (r * 0.8), 0, 1).astype(np.float32)   # 1 inside, soft ramp, 0 outside


def lesion(img: np.ndarray, mask: np.ndarray, label: str) -> np.ndarray:
    if label == "normal":
        return img
    target = 0.95 if label == "benign" else 0.02
    return (img * (1 - mask) + target * mask).astype(np.float32)


def save_png16(path: Path, img: np.ndarray) -> None:
    Image.fromarray(np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)).save(path)


def make_manifest(root: Path, n_train: dict[str, int] | None = None, n_test: dict[str, int] | None = None,
                  n_synth: dict[str, int] | None = None, size: int = 32, seed: int = 0,
                  extra_rows: list[dict] | None = None) -> Path:
    """Write ``root/manifest.csv`` + images; returns the manifest path. Patients: one per real sample."""
    n_train = n_train if n_train is not None else {"normal": 12, "benign": 4, "malignant": 4}
    n_test = n_test if n_test is not None else {"normal": 4, "benign": 3, "malignant": 3}
    n_synth = n_synth if n_synth is not None else {"benign": 8, "malignant": 8}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows, k = [], 0
    donors: list[tuple[str, np.ndarray]] = []
    for split, counts in (("train", n_train), ("test", n_test)):
        for label, n in counts.items():
            for _ in range(n):
                sid = f"s{k:03d}"
                k += 1
                base, m = _background(rng, size), soft_mask(rng, size)
                img = lesion(base, m, label)
                rel = f"images/{sid}.png" if k % 2 else f"images/{sid}.npy"
                save_png16(root / rel, img) if rel.endswith(".png") else np.save(root / rel, img)
                rows.append({"sample_id": sid, "patient_id": f"p{sid}", "split": split, "label": label,
                             "origin": "real", "image": rel, "mask": "", "donor_id": ""})
                if split == "train" and label == "normal":
                    donors.append((sid, img))
    for label, n in n_synth.items():
        for j in range(n):
            did, dimg = donors[j % len(donors)]
            sid = f"syn_{label}_{j:03d}"
            m = soft_mask(rng, size)
            save_png16(root / f"images/{sid}.png", lesion(dimg, m, label))
            np.save(root / f"masks/{sid}.npy", m)
            rows.append({"sample_id": sid, "patient_id": f"p{did}", "split": "train", "label": label,
                         "origin": "synthetic", "image": f"images/{sid}.png", "mask": f"masks/{sid}.npy",
                         "donor_id": did})
    rows.extend(extra_rows or [])
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_work(work: Path, n_train: dict[str, int] | None = None, n_test: int = 2, size: int = 40,
              seed: int = 0) -> Path:
    """A WORK folder (index.csv, masks.csv, ingest.json, slices/, masks/) with train and test rows per class; the
    lesions of benign/malignant rows are drawn inside their soft masks, with a description."""
    n_train = n_train or {"normal": 4, "benign": 2, "malignant": 2}
    rng = np.random.default_rng(seed)
    out = WorkWriter(work)
    for split, counts in (("train", n_train), ("test", {c: n_test for c in CLASSES})):
        for label in CLASSES:
            for i in range(counts.get(label, 0)):
                sid = f"{split}_{label}_{i}"
                m = soft_mask(rng, size)
                img = lesion(_background(rng, size), m, label)
                out.add(sid, label, split, img, m, patient_id=f"p_{sid}", study_id=f"st_{sid}",
                        spacing_row=1.0, spacing_col=1.0,
                        description="" if label == "normal" else f"{label} lesion of the vertebral body")
    return out.close()
