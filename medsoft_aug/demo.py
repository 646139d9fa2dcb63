"""``demo``: the whole chain on the embedded phantom ``sample_data/`` with the tiny models, on a CPU.

    sample_data/ -> ingest -> masks build -> train (tiny) -> balance (ratio 1.0) -> contact sheet + manifest

DIR/
  sample_data/      only when the repository's sample_data/ is not found (non-editable install): regenerated
  work/             WORK (index.csv, slices, masks)
  model/            MODEL_DIR
  balanced/         OUT of balance (manifest.csv, balance.json, synthetic/, real/)
  contact_sheet.png per class a real lesion, then every synthetic sample: donor (mask outlined) | synthetic,
                    whole slice and zoomed to the vertebra; donor id and the per-sample check per row
  demo.json         summary: counts, timings, per class the mean intensity inside the mask of the donors, of
                    the synthetic images and of the class's real training lesions, "k of n moved toward their
                    class", and every sample's evidence (``generate.evidence``)

The check that the synthetic lesions are of their class: the mean inside the mask should move from the donor's
toward the class's real lesions (benign hemangioma-like: brighter; malignant: darker), sample by sample.
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

# Classifier-free guidance of the demo: 5, below the paper's 7.5. With the other class's description as negative
# (DEMO_NEGATIVES) guidance pushes harder, and on the demo's base (tiny-128) 7.5 made benign lesions brighter than
# the real ones (mean inside the mask 0.425 against real benign lesions 0.384; 0.405 at 5; malignant 0.283 at both,
# real 0.294; 17 and 18 of 18 toward their class), measured on the demo's own rows. (Before the negatives the demo
# used 15: the tiny base fit on whole slices responded weakly to the text.)
DEMO_GUIDANCE = 5.0
# Grid mapping of the demo: the square around the mask (``geometry`` "crop", the product's default) with no
# margin (``crop_margin`` 0: the mask's longer side, front of the body to the spinous process, fills the 64 px
# grid; its short side keeps the neighbouring discs as context). The shipped tiny base is fit on exactly these
# crops (models/tiny_base/README.md), where a phantom lesion is 7-10 model pixels, about two latent pixels; on
# whole slices ("pad", the demo's mapping before) it was one latent pixel and the lesions came out faint.
DEMO_GEOMETRY = "crop"
# Base model of the demo: the tiny base refitted at 128 px on the same crops (models/tiny_base_128/README.md): a
# phantom lesion is 4-5 latent pixels there instead of 2, so lesions come out at the phantom's size with borders
# (at 64 px, "tiny", they were blurred blobs about twice as large); sampling costs about 2x, training 4x.
DEMO_BASE = "tiny-128"
DEMO_CROP_MARGIN = 0.0
# What classifier-free guidance steers away from (balance --negative-prompts): the other disease class's
# description. Measured by bench/negative_prompts.py (16 normal slices x 2 seeds, no MSC, donor blend, guidance 7.5):
# median lesion contrast benign +0.22 -> +0.41, malignant -0.07 -> -0.12; malignant samples with a clear dark focus
# (contrast below -0.05) 24 -> 32 of 32 (bench/RESULTS.md).
DEMO_NEGATIVES = "other-classes"
# Candidates per sample (balance --candidates K): 1. Every sample is still scored by the classifier scorer (its
# class_score in the manifest; floor 0 keeps all). With tiny-128 and the negatives K = 3 measured 18 of 18 too,
# at 2.2x the sampling time (the demo would take over 2 minutes on a 2-core CPU); selection did not clearly help
# downstream either (README, "Does it help?").
DEMO_CANDIDATES = 1


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


def _synthetic_rows(work: Path, balanced: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    man = pd.read_csv(balanced / "manifest.csv", dtype=str, keep_default_na=False)
    index = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    masks = pd.read_csv(work / "masks.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    return man[man["origin"] == "synthetic"], index, masks


def _real_lesions(work: Path, index: pd.DataFrame, masks: pd.DataFrame, label: str) -> list[str]:
    """Training-split rows of ``label`` with an ok mask, in sample_id order."""
    real = index[(index["label"] == label) & (index["split"] == "train")]
    return [sid for sid in sorted(real.index) if sid in masks.index and masks.loc[sid, "status"] == "ok"]


def evidence_report(work: Path, balanced: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per disease class: the class means inside the mask (donors, synthetic images, real training lesions) and
    the per-sample check that ``balance`` recorded in the manifest (``generate.evidence``: "k of n moved toward
    their class"); and the per-sample rows."""
    from .generate.evidence import EVIDENCE_FIELDS, summarize

    syn, _, _ = _synthetic_rows(work, balanced)
    refs = json.loads((balanced / "balance.json").read_text()).get("selection", {}).get("reference_means", {})
    samples = [{"label": r["label"], "sample_id": r["sample_id"], "donor_id": r["donor_id"],
                "candidates": r["candidates"], "candidate_scores": r["candidate_scores"], "chosen": r["chosen"],
                **{f: _value(r[f]) for f in EVIDENCE_FIELDS}} for _, r in syn.iterrows()]
    out: dict[str, dict[str, Any]] = {}
    for label, ev in summarize(samples).items():
        rows = [e for e in samples if e["label"] == label]
        d, s = float(np.mean([e["donor_mean"] for e in rows])), float(np.mean([e["synthetic_mean"] for e in rows]))
        ref = refs.get(label)
        out[label] = {**ev, "donor_mean": d, "synthetic_mean": s,
                      "real_lesion_mean": ref if ref is not None else float("nan"), "shift": s - d,
                      "expected_sign": float(np.sign(ref - d)) if ref is not None else 0.0,
                      "moves_toward_real": ref is not None and abs(s - ref) < abs(d - ref)}
    return out, samples


def _value(v: str) -> Any:
    """A manifest cell back to a number / bool / None."""
    if v in ("", None):
        return None
    if v in ("True", "False"):
        return v == "True"
    return float(v)


def _zoom(img: np.ndarray, mask: np.ndarray, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A square crop around the mask (M_b > 0.05) with ``margin`` of its size on each side, shifted to stay
    inside the slice (so every zoom cell is filled, no dead band); the whole slice when the mask is empty."""
    ys, xs = np.nonzero(mask > 0.05)
    if not len(ys):
        return img, mask
    side = min(int(round(max(ys.max() - ys.min(), xs.max() - xs.min(), 4) * (1 + 2 * margin))) + 1,
               *img.shape)
    y0 = int(np.clip(round((ys.min() + ys.max() + 1 - side) / 2), 0, img.shape[0] - side))
    x0 = int(np.clip(round((xs.min() + xs.max() + 1 - side) / 2), 0, img.shape[1] - side))
    return img[y0:y0 + side, x0:x0 + side], mask[y0:y0 + side, x0:x0 + side]


def _contact_sheet(work: Path, balanced: Path, path: Path, samples: list[dict[str, Any]],
                   per_class: Optional[int] = None) -> Path:
    """Per disease class: one real training lesion, then the synthetic samples (all, or the first
    ``per_class``); columns: the slice with the mask outlined, the synthetic image (for the real lesion: the slice
    without the outline, so that real and synthetic lesions stand in the same column), and both zoomed to the
    vertebra."""
    from PIL import Image

    from .viz import contact_sheet

    syn, index, masks = _synthetic_rows(work, balanced)
    by_id = {e["sample_id"]: e for e in samples}
    rows, overlays, labels = [], [], []
    for label, grp in syn.groupby("label"):
        real = _real_lesions(work, index, masks, str(label))
        if real:
            img, mask = load_npy(work / index.loc[real[0], "image"]), load_npy(work / masks.loc[real[0], "mask"])
            zi, zm = _zoom(img, mask)
            rows.append([img, img, zi, zi])            # outlined, then as is: beside the synthetic columns
            overlays.append([mask, None, zm, None])
            labels.append(f"REAL {label}\n{real[0]}\n(for comparison)")
        for k, (_, r) in enumerate((grp if per_class is None else grp.head(per_class)).iterrows()):
            mask = load_npy(balanced / r["mask"])
            donor = load_npy(work / index.loc[r["donor_id"], "image"])
            synth = np.asarray(Image.open(balanced / r["image"])).astype(np.float32) / 65535.0
            (zd, zm), (zs, _) = _zoom(donor, mask), _zoom(synth, mask)
            rows.append([donor, synth, zd, zs])
            overlays.append([mask, None, zm, None])
            ev = by_id.get(r["sample_id"], {})
            check = {True: "moved toward class", False: "NOT toward class"}.get(ev.get("toward_class"), "")
            labels.append(f"{r['sample_id']} ({k + 1} of {len(grp)})\ndonor {r['donor_id']}\n"
                          f"mask mean {ev.get('mean_change', float('nan')):+.3f}\n{check}")
    shown = "all synthetic samples" if per_class is None else f"the first {per_class} synthetic samples"
    legend = ("red outline: soft mask M_b >= 0.5 (red tint: M_b), the region that is inpainted; outside it the "
              "synthetic image is the donor's.\n"
              f"Rows: per class one real training lesion, then {shown} (n of N per class); "
              "every sample's check: demo.json")
    return contact_sheet(rows, path, overlays=overlays, row_labels=labels, cell_size=(128, 128), legend=legend,
                         col_labels=["donor / real (mask)", "synthetic / real", "donor, zoom", "synthetic / real, zoom"])


def demo(out: str | Path = "demo_out", *, train_steps: int = 300, steps: int = 50, guidance: float = DEMO_GUIDANCE,
         seed: int = 0, device: str = "cpu", threads: Optional[int] = 1, blend: str = "donor",
         candidates: int = DEMO_CANDIDATES, scorer: str = "classifier", negative_prompts: str = DEMO_NEGATIVES,
         on_progress: ProgressFn = None) -> dict[str, Any]:
    """Run ingest -> masks -> train -> balance (ratio 1.0) on the sample data into ``out``; return a summary.

    Reruns reuse every stage's outputs (each stage skips finished work). ``train_steps``: optimizer steps of each
    training stage (MSC and SMIS); ``steps``/``guidance``: DDIM sampling (guidance above the paper's 7.5 by
    default: see ``DEMO_GUIDANCE``); ``threads``: torch CPU threads for the
    run (default 1: the tiny models gain little from more, and on a 2-core CPU shared with other jobs two
    threads were 6x slower, 3 min 44 s vs 36 s; None = torch's default). ``blend``: Eq. 7's kept latent,
    ``donor`` = VAE(x0) by default here: with the paper's VAE(I_m) (``masked``, the ``balance`` default) the tiny
    model darkens every inpainted region whatever the class (measured; see engine.SamplingOptions).
    ``candidates``/``scorer``: ``balance``'s post-selection (``DEMO_CANDIDATES``), with floor 0 so that every
    planned sample is kept (the per-sample check then says how many are right). ``negative_prompts``: what
    CFG steers away from (``DEMO_NEGATIVES``: the other class's description; ``none``: the empty text).
    """
    import torch

    n_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _demo(Path(out), train_steps, steps, guidance, seed, device, (blend, negative_prompts),
                     (candidates, scorer), on_progress)
    finally:
        torch.set_num_threads(n_threads)


def _demo(out: Path, train_steps: int, steps: int, guidance: float, seed: int, device: str,
          sampling: tuple[str, str], selection: tuple[int, str], on_progress: ProgressFn) -> dict[str, Any]:
    from . import api

    blend, negatives = sampling
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
    api.train(work, model, max_steps=train_steps, seed=seed, device=device, base_model=DEMO_BASE,
              geometry=DEMO_GEOMETRY,
              crop_margin=DEMO_CROP_MARGIN, on_progress=on_progress)
    lap("train", t)
    t = time.time()
    res = api.balance(work, model, balanced, target_ratio=1.0, steps=steps, guidance=guidance, seed=seed,
                      device=device, blend=blend, negative_prompts=negatives, candidates=selection[0],
                      scorer=selection[1], min_score=0.0, on_progress=on_progress)
    lap("balance", t)
    t = time.time()
    if not (balanced / "manifest.csv").is_file():
        raise InputError(f"balance wrote no manifest in {balanced}")
    intensity, samples = evidence_report(work, balanced)
    sheet = _contact_sheet(work, balanced, out / "contact_sheet.png", samples)
    lap("report", t)
    summary = {"out": str(out), "sample_data": str(data), "work": str(work), "model": str(model),
               "manifest": str(balanced / "manifest.csv"), "contact_sheet": str(sheet),
               "counts_before": res["counts_before"], "counts_after": res["counts_after"],
               "generated": res["generated"], "base_model": DEMO_BASE, "blend": blend, "guidance": guidance,
               "negative_prompts": negatives,
               "candidates": selection[0], "scorer": selection[1],
               "intensity_inside_mask": intensity,
               "samples": samples, "timings_s": times, "total_s": round(time.time() - t0, 2)}
    atomic_write_json(out / "demo.json", summary)
    return summary
