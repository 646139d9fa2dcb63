"""``demo``: the whole chain on the embedded phantom ``sample_data/`` with the tiny models, on a CPU.

    sample_data/ -> ingest -> masks build -> train (tiny) -> balance (ratio 1.0) -> contact sheet + manifest

DIR/
  sample_data/      only when the repository's sample_data/ is not found (non-editable install): regenerated
  work/             WORK (index.csv, slices, masks)
  model/            MODEL_DIR
  balanced/         OUT of balance (manifest.csv, balance.json, synthetic/, real/)
  contact_sheet.png donor | mask | synthetic, a few rows per class
  demo.json         summary: counts, timings, and per class the mean intensity inside the mask of the donors,
                    of the synthetic images and of the class's real training lesions

The last block is the check that the synthetic lesions are of their class: the mean inside the mask should move
from the donor's toward the class's real lesions (benign hemangioma-like: brighter; malignant: darker).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .errors import InputError
from .fsutil import atomic_write_json, load_npy
from .progress import ProgressFn, report

log = logging.getLogger("medsoft_aug.demo")

REPO_SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"

# Classifier-free guidance of the demo's sampling. The paper's 7.5 is for SD1.5; the 1.0M-parameter tiny base
# responds to the lesion description more weakly (a lesion is about one 16 x 16 latent pixel), so at 7.5 the
# lesions come out faint. Measured on sample_data with the shipped tiny base (models/tiny_base/README.md), mean
# inside the mask at guidance 7.5 / 15 / 20: benign 0.356 / 0.378 / 0.386 (donors 0.316, real benign lesions
# 0.384); malignant 0.302 / 0.295 / 0.293 (donors 0.319, real 0.294).
DEMO_GUIDANCE = 15.0


def find_sample_data(out: Path, on_progress: ProgressFn = None) -> Path:
    """The repository's ``sample_data/`` when present (editable install / checkout), else regenerate into out."""
    if (REPO_SAMPLE_DATA / "labels.csv").is_file():
        return REPO_SAMPLE_DATA
    dst = out / "sample_data"
    if not (dst / "labels.csv").is_file():
        from .sample_data import make_sample_data

        log.info("sample_data/ not found beside the package: regenerating it into %s", dst)
        make_sample_data(dst, on_progress=on_progress)
    return dst


def masked_mean(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``image`` weighted by the soft mask (both (H, W))."""
    w = mask.astype(np.float64)
    return float((image.astype(np.float64) * w).sum() / max(w.sum(), 1e-12))


def intensity_report(work: Path, balanced: Path, normal_class: str) -> dict[str, dict[str, Any]]:
    """Per disease class: mask-weighted mean intensity of donors, synthetic images and real train lesions."""
    from PIL import Image

    man = pd.read_csv(balanced / "manifest.csv", dtype=str, keep_default_na=False)
    index = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    masks = pd.read_csv(work / "masks.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    out: dict[str, dict[str, Any]] = {}
    syn = man[man["origin"] == "synthetic"]
    for label, grp in syn.groupby("label"):
        donor_m, syn_m = [], []
        for _, r in grp.iterrows():
            mask = load_npy(balanced / r["mask"])
            img = np.asarray(Image.open(balanced / r["image"])).astype(np.float64) / 65535.0
            donor = load_npy(work / index.loc[r["donor_id"], "image"])
            donor_m.append(masked_mean(donor, mask))
            syn_m.append(masked_mean(img, mask))
        real = index[(index["label"] == label) & (index["split"] == "train")]
        real_m = [masked_mean(load_npy(work / row["image"]), load_npy(work / masks.loc[sid, "mask"]))
                  for sid, row in real.iterrows() if sid in masks.index and masks.loc[sid, "status"] == "ok"]
        d, s = float(np.mean(donor_m)), float(np.mean(syn_m))
        rl = float(np.mean(real_m)) if real_m else float("nan")
        out[str(label)] = {"n": len(grp), "donor_mean": d, "synthetic_mean": s, "real_lesion_mean": rl,
                           "shift": s - d, "expected_sign": float(np.sign(rl - d)) if real_m else 0.0,
                           "moves_toward_real": bool(real_m) and abs(s - rl) < abs(d - rl)}
    return out


def _contact_sheet(work: Path, balanced: Path, path: Path, per_class: int = 3) -> Path:
    from PIL import Image

    from .viz import contact_sheet

    man = pd.read_csv(balanced / "manifest.csv", dtype=str, keep_default_na=False)
    index = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    rows, overlays, labels = [], [], []
    for label, grp in man[man["origin"] == "synthetic"].groupby("label"):
        for _, r in grp.head(per_class).iterrows():
            mask = load_npy(balanced / r["mask"])
            donor = load_npy(work / index.loc[r["donor_id"], "image"])
            synth = np.asarray(Image.open(balanced / r["image"])).astype(np.float32) / 65535.0
            rows.append([donor, donor, synth])
            overlays.append([None, mask, None])
            labels.append(f"{label}: {r['sample_id']}")
    return contact_sheet(rows, path, overlays=overlays, row_labels=labels,
                         col_labels=["donor", "soft mask", "synthetic"])


def demo(out: str | Path = "demo_out", *, train_steps: int = 300, steps: int = 50, guidance: float = DEMO_GUIDANCE,
         seed: int = 0, device: str = "cpu", threads: Optional[int] = 1, blend: str = "donor",
         on_progress: ProgressFn = None) -> dict[str, Any]:
    """Run ingest -> masks -> train -> balance (ratio 1.0) on the sample data into ``out``; return a summary.

    Reruns reuse every stage's outputs (each stage skips finished work). ``train_steps``: optimizer steps of each
    training stage (MSC and SMIS); ``steps``/``guidance``: DDIM sampling (guidance above the paper's 7.5 by
    default: see ``DEMO_GUIDANCE``); ``threads``: torch CPU threads for the
    run (default 1: the tiny models gain little from more, and on a 2-core CPU shared with other jobs two
    threads were 6x slower, 3 min 44 s vs 36 s; None = torch's default). ``blend``: Eq. 7's kept latent,
    ``donor`` = VAE(x0) by default here: with the paper's VAE(I_m) (``masked``, the ``balance`` default) the tiny
    model darkens every inpainted region whatever the class (measured; see engine.SamplingOptions).
    """
    import torch

    n_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _demo(Path(out), train_steps, steps, guidance, seed, device, blend, on_progress)
    finally:
        torch.set_num_threads(n_threads)


def _demo(out: Path, train_steps: int, steps: int, guidance: float, seed: int, device: str, blend: str,
          on_progress: ProgressFn) -> dict[str, Any]:
    from . import api

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times: dict[str, float] = {}
    data = find_sample_data(out, on_progress)
    work, model, balanced = out / "work", out / "model", out / "balanced"

    def lap(name: str, t: float) -> None:
        times[name] = round(time.time() - t, 2)
        report(on_progress, "demo", len(times), 5)

    t = time.time()
    api.ingest(data / "labels.csv", data, work, on_progress=on_progress)
    lap("ingest", t)
    t = time.time()
    api.build_masks(work, on_progress=on_progress)
    lap("masks", t)
    t = time.time()
    api.train(work, model, max_steps=train_steps, seed=seed, device=device, on_progress=on_progress)
    lap("train", t)
    t = time.time()
    res = api.balance(work, model, balanced, target_ratio=1.0, steps=steps, guidance=guidance, seed=seed,
                      device=device, blend=blend, on_progress=on_progress)
    lap("balance", t)
    t = time.time()
    if not (balanced / "manifest.csv").is_file():
        raise InputError(f"balance wrote no manifest in {balanced}")
    sheet = _contact_sheet(work, balanced, out / "contact_sheet.png")
    intensity = intensity_report(work, balanced, res["normal_class"])
    lap("report", t)
    summary = {"out": str(out), "sample_data": str(data), "work": str(work), "model": str(model),
               "manifest": str(balanced / "manifest.csv"), "contact_sheet": str(sheet),
               "counts_before": res["counts_before"], "counts_after": res["counts_after"],
               "generated": res["generated"], "blend": blend, "guidance": guidance, "intensity_inside_mask": intensity,
               "timings_s": times, "total_s": round(time.time() - t0, 2)}
    atomic_write_json(out / "demo.json", summary)
    return summary
