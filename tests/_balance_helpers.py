"""Helpers for the balance/engine/manifest/demo tests: synthetic WORK folders and tiny diffusers models."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from medsoft_aug.workdir import INDEX_COLUMNS, MASK_COLUMNS


def make_index(counts: dict[str, int], *, split_counts: Optional[dict[str, dict[str, int]]] = None,
               descriptions: Optional[dict[str, list[str]]] = None) -> pd.DataFrame:
    """index.csv-shaped frame: ``counts[label]`` train rows per class (+ extra rows per split), all strings."""
    rows = []
    split_counts = {"train": counts, **(split_counts or {})}
    for split, cnt in split_counts.items():
        for label, n in cnt.items():
            for i in range(n):
                sid = f"{split}-{label}-{i:03d}"
                r = {c: "" for c in INDEX_COLUMNS}
                descs = (descriptions or {}).get(label) or [""]
                r.update(sample_id=sid, patient_id=f"p-{sid}", study_id=f"s-{sid}", label=label, split=split,
                         image=f"slices/{sid}.npy", level="L3", description=descs[i % len(descs)],
                         height="40", width="48")
                rows.append(r)
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def make_masks(index: pd.DataFrame, bad: tuple[str, ...] = ()) -> pd.DataFrame:
    rows = []
    for sid in index["sample_id"]:
        r = {c: "" for c in MASK_COLUMNS}
        ok = sid not in bad
        r.update(sample_id=sid, mask=f"masks/{sid}.npy" if ok else "", status="ok" if ok else "error",
                 error="" if ok else "empty mask")
        rows.append(r)
    return pd.DataFrame(rows, columns=MASK_COLUMNS)


def write_work(work: Path, counts: dict[str, int], *, split_counts=None, descriptions=None, seed: int = 0,
               shape: tuple[int, int] = (40, 48)) -> Path:
    """A complete synthetic WORK folder: index.csv, ingest.json, slices/*.npy, masks/*.npy, masks.csv."""
    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    idx = make_index(counts, split_counts=split_counts, descriptions=descriptions)
    h, w = shape
    idx["height"], idx["width"] = str(h), str(w)
    idx["spacing_row"], idx["spacing_col"] = "1.0", "1.0"
    (work / "slices").mkdir(exist_ok=True)
    (work / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    for sid in idx["sample_id"]:
        np.save(work / "slices" / f"{sid}.npy", rng.uniform(0.2, 0.8, size=(h, w)).astype(np.float32))
        cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
        m = np.exp(-(((yy - cy) / 5.0) ** 2 + ((xx - cx) / 6.0) ** 2))
        m[m < 0.05] = 0.0
        np.save(work / "masks" / f"{sid}.npy", m.astype(np.float32))
    idx.to_csv(work / "index.csv", index=False)
    make_masks(idx).to_csv(work / "masks.csv", index=False)
    (work / "ingest.json").write_text(json.dumps({"normal_class": "normal"}))
    return work


# ---- tiny diffusers models (as in diffusers' inpaint tests: block_out_channels=(32, 64), 64 px) --------------
MSC_DIM = 16
TEXT_DIM = 32


def tiny_unet_vae(seed: int = 0):
    """A tiny UNet2DConditionModel with the project's decoupled cross-attention adapter (e_MSC of dim 16, W'_v
    randomised so e_MSC matters) + a tiny VAE + a DDIM scheduler."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from medsoft_aug.models.adapter import adapter_parameters, install_adapter

    torch.manual_seed(seed)
    bo = (32, 64)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=bo,
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=8, norm_num_groups=8)
    install_adapter(unet, MSC_DIM)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(unet):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=bo, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return unet.eval(), vae.eval(), sched


def train_tiny_model_dir(root: Path) -> Path:
    """A real MODEL_DIR written by the real ``train`` stage (tiny base and encoder, 2 steps per stage, CPU) on a
    small synthetic WORK; returns ``root/model``. Built once per test session (conftest ``tiny_model_dir``)."""
    from medsoft_aug.train.stage import train

    work = write_work(root / "work", {"normal": 4, "benign": 2, "malignant": 2},
                      descriptions={"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]})
    with one_thread():
        train(work, root / "model", max_steps=2, device="cpu", batch_size=2)
    return root / "model"


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread (on the shared 2-core test machine, 2 OpenMP threads under load are ~50x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
