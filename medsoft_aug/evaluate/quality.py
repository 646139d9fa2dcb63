"""Image quality (paper Table 1a): held-out real diseased samples (test split) are masked with their own soft
mask, inpainted with their own lesion description by the trained model (the balance engine), and compared with
the originals: PSNR and SSIM over the whole image and inside the mask (weighted by M_b), and FID between the
inpainted and the original sets.

FID features: Inception-v3 pool3 when ``inception_weights`` is given; otherwise the model's frozen medical image
encoder (BiomedCLIP, or the tiny test encoder), and ``fid_features`` in the output says which. Optionally
(``balance_out``) background fidelity of a balance run: PSNR outside the mask of each synthetic image against its
donor (pixel compositing makes it exact where M_b == 0, so it is reported as identical/``inf`` there).

Writes ``OUT/quality.json`` (summary), ``OUT/quality_samples.csv`` (per sample), ``OUT/inpainted/{id}.png``
(16-bit) and, with ``balance_out``, ``OUT/background_samples.csv``.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError, UsageError
from ..fsutil import atomic_write_csv, atomic_write_json, load_npy
from ..generate.writers import write_png16
from ..workdir import check_work, describe, load_pair, normal_class_of
from ..masks.soften import apply_mask_mode
from ..progress import ProgressFn, StepFn, batch_steps, report
from . import metrics as M
from .data import load_image, read_manifest, resolve

log = logging.getLogger("medsoft_aug.evaluate.quality")

# Inpainter: (images [(H, W)], masks [(H, W)], prompts, seeds, on_step) -> inpainted images [(H, W)] in [0, 1];
# on_step(done, total) is called after each denoising step (or None).
Inpainter = Callable[[list[np.ndarray], list[np.ndarray], list[str], list[int], StepFn], list[np.ndarray]]


@dataclass
class QualityResult:
    out: Path
    summary: dict[str, Any]          # the content of quality.json
    samples: pd.DataFrame            # per-sample metrics


def select_test_lesions(work: Path, normal_class: Optional[str] = None,
                        limit: Optional[int] = None) -> pd.DataFrame:
    """Test-split rows of WORK/index.csv with a diseased label and a usable soft mask (columns of index.csv plus
    ``mask``). Raises InputError when there are none."""
    index, masks = check_work(work)
    ncls = normal_class_of(work, normal_class)
    ok = masks[(masks["status"] == "ok") & (masks["mask"] != "")][["sample_id", "mask"]]
    rows = index[(index["split"] == "test") & (index["label"] != ncls)].merge(ok, on="sample_id", how="inner")
    if rows.empty:
        raise InputError(f"{work} has no diseased test-split samples with a soft mask: nothing to evaluate")
    rows = rows.sort_values("sample_id", kind="stable").reset_index(drop=True)
    return rows.head(limit) if limit else rows


def model_inpainter(model: Path, device: str, batch_size: int, steps: int, guidance: float,
                    trained: Any = None) -> tuple[Inpainter, Any, str, dict[str, Any]]:
    """The balance engine (``generate.runner.Generator.inpaint``, with the grid mapping the model was trained
    with) as one function call; also returns the loaded TrainedModel (for its encoder), the device it runs on
    and the mapping (``geometry.GridMapping.to_dict``)."""
    from ..generate.runner import Generator

    gen = Generator(model, device=device, batch_size=batch_size, steps=steps, guidance=guidance, trained=trained)
    return gen.inpaint, gen.trained, str(gen.device), gen.mapping.to_dict()


def fid_block(real: list[np.ndarray], fake: list[np.ndarray], inception_weights: Optional[Path], encoder: Any,
              device: str) -> dict[str, Any]:
    """FID between two image sets, with the features it used and a note on reliability."""
    from .features import encoder_features, inception_features, load_inception

    n = len(real)
    if inception_weights is not None:
        model = load_inception(inception_weights, device)
        fr, ff = inception_features(model, real), inception_features(model, fake)
        kind, note = "inception_v3", f"torchvision Inception-v3 pool3 (2048-d) from {Path(inception_weights).name}"
    elif encoder is not None:
        fr, ff = encoder_features(encoder, real), encoder_features(encoder, fake)
        tiny = str(getattr(encoder, "ref", "")) == "tiny"
        kind = "tiny_encoder" if tiny else "biomedclip"
        note = ("no --inception-weights given: FID on the model's medical image encoder features "
                f"({getattr(encoder, 'ref', '?')}, {fr.shape[1]}-d), not Inception-v3; not comparable with "
                "published FID values")
        if tiny:
            note += "; the tiny encoder is a random test model, so this FID is only a smoke test"
    else:
        return {"fid": None, "fid_features": "none",
                "fid_note": "no --inception-weights and the model has no image encoder (--no-msc): FID not computed"}
    if n < 2:
        return {"fid": None, "fid_features": kind, "fid_note": "FID needs at least 2 samples"}
    fid = M.fid_from_features(fr, ff)
    if n < fr.shape[1]:
        note += f"; only {n} samples for {fr.shape[1]}-d features: FID is biased and noisy at this size"
    return {"fid": fid, "fid_features": kind, "fid_note": note}


def background_fidelity(balance_out: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """PSNR outside the soft mask of each synthetic image of a balance OUT against its donor's image.

    ``strict``: pixels with M_b == 0 (the compositing makes them the donor's exactly, so ``inf`` is expected);
    ``weighted``: weights 1 - M_b (includes the soft ramp, where the blend legitimately differs).
    """
    manifest = balance_out / "manifest.csv"
    df = read_manifest(manifest)
    by_id = df.set_index("sample_id", drop=False)
    syn = df[df["origin"] == "synthetic"]
    if syn.empty:
        raise InputError(f"{manifest} has no synthetic rows: no background fidelity to measure")
    rows = []
    for _, r in syn.iterrows():
        sid, did = r["sample_id"], r["donor_id"]
        if did not in by_id.index:
            raise InputError(f"{sid}: donor {did} is not a row of {manifest}")
        if not r.get("mask"):
            raise InputError(f"{sid}: no soft mask listed in {manifest}")
        img = load_image(resolve(balance_out, r["image"]), sid)
        donor = load_image(resolve(balance_out, by_id.at[did, "image"]), did)
        m = np.clip(load_npy(resolve(balance_out, r["mask"])).astype(np.float32), 0, 1)
        if not (img.shape == donor.shape == m.shape):
            raise InputError(f"{sid}: image {img.shape}, donor {donor.shape} and mask {m.shape} shapes differ")
        strict = (m == 0).astype(np.float64)
        diff = np.abs(img.astype(np.float64) - donor)
        rows.append({"sample_id": sid, "donor_id": did, "label": r["label"],
                     "psnr_outside_strict": M.psnr(donor, img, weights=strict) if strict.any() else math.nan,
                     "psnr_outside_weighted": M.psnr(donor, img, weights=1.0 - m),
                     "max_abs_diff_outside_strict": float(diff[m == 0].max()) if strict.any() else math.nan})
    t = pd.DataFrame(rows)
    strict = t["psnr_outside_strict"].to_numpy()
    finite = strict[np.isfinite(strict)]
    weighted = t["psnr_outside_weighted"].to_numpy()
    wfin = weighted[np.isfinite(weighted)]
    summary = {
        "n": len(t),
        "n_identical_outside_mask": int(np.isinf(strict).sum()),
        "psnr_outside_strict_db": "inf" if finite.size == 0 else float(finite.min()),
        "max_abs_diff_outside_strict": float(np.nanmax(t["max_abs_diff_outside_strict"])),
        "psnr_outside_weighted_db": {"min": float(wfin.min()) if wfin.size else "inf",
                                     "mean": float(wfin.mean()) if wfin.size else "inf",
                                     "n_inf": int(np.isinf(weighted).sum())},
        "note": "strict = pixels with M_b == 0 (exactly the donor's by pixel compositing: 'inf' = identical); "
                "psnr_outside_strict_db is the worst sample when any differs; weighted = weights 1 - M_b, "
                "including the soft ramp where the blend changes pixels by design",
    }
    return summary, t


def evaluate_quality(work: str | Path, model: str | Path, out: str | Path, *,
                     inception_weights: Optional[str | Path] = None, balance_out: Optional[str | Path] = None,
                     steps: Optional[int] = None, guidance: Optional[float] = None, batch_size: int = 8,
                     limit: Optional[int] = None, seed: int = 0, device: str = "auto",
                     normal_class: Optional[str] = None, report_dir: Optional[str | Path] = None,
                     trained: Any = None, on_progress: ProgressFn = None) -> QualityResult:
    """Inpaint held-out diseased test samples with their own description and measure quality (see module doc).

    ``steps``/``guidance`` default to 50 and 7.5 (the paper's); ``trained`` may pass an already loaded
    TrainedModel instead of loading ``model``. Raises InputError/ModelError (exit 3) for a bad WORK, model,
    weights or balance folder; UsageError (exit 2) for bad options. Writes nothing when it fails.
    """
    # 1. Options and inputs, checked before the model loads.
    work, out = Path(work), Path(out)
    steps = 50 if steps is None else int(steps)
    guidance = 7.5 if guidance is None else float(guidance)
    if steps < 1 or batch_size < 1 or guidance < 0 or (limit is not None and limit < 1):
        raise UsageError("--steps, --batch-size and --limit must be >= 1, --guidance >= 0")
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise InputError(f"Inception weights {inception_weights} not found")
    if balance_out is not None and not (Path(balance_out) / "manifest.csv").is_file():
        raise InputError(f"{balance_out} has no manifest.csv: not a `medsoft-aug balance` output folder")
    rows = select_test_lesions(work, normal_class, limit)
    # 2. The balance engine with the model's grid mapping and mask mode.
    t0 = time.time()
    inpaint, tm, dev, geometry = model_inpainter(Path(model), device, batch_size, steps, guidance, trained)
    mask_mode = str(tm.meta.get("mask_mode", "soft"))
    created = not out.exists()
    try:
        # 3. Inpaint every test lesion with its own description; per-sample metrics.
        samples, originals, fakes = _inpaint_rows(work, rows, inpaint, normal_class_of(work, normal_class),
                                                  mask_mode, seed, batch_size, on_progress)
        t_inpaint = time.time() - t0
        # 4. Summary (means, FID, background fidelity of a balance run) and the files, written last.
        summary: dict[str, Any] = {
            "tool": "medsoft-aug evaluate quality", "version": __version__, "work": str(work), "model": str(model),
            "n_samples": len(samples), "steps": steps, "guidance": guidance, "seed": seed, "mask_mode": mask_mode,
            "geometry": geometry,
            **{k: M.mean_std(samples[k].replace([np.inf], np.nan).dropna().tolist())
               for k in ("psnr", "psnr_mask", "ssim", "ssim_mask")},
            "n_identical": int(np.isinf(samples["psnr"]).sum()),
            **fid_block(originals, fakes, Path(inception_weights) if inception_weights else None,
                        getattr(tm, "encoder", None), dev),
            "notes": QUALITY_NOTES}
        _write_outputs(out, samples, fakes, summary, balance_out, t_inpaint, t0)
    except BaseException:
        if created and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
        raise
    # 5. The result (and the report, when asked).
    result = QualityResult(out, _json_safe(summary), samples)
    if report_dir is not None:
        from .report import evaluate_report

        evaluate_report(report_dir, quality_out=out)
    return result


QUALITY_NOTES = ["psnr_mask / ssim_mask are weighted by the mask generation used (M_b, or M_b >= 0.5 for a "
                 "--mask-mode hard model); outside it the composite equals "
                 "the original, so whole-image values are higher than inside-mask values",
                 "images in [0, 1] after the ingest window; data_range = 1"]


def _inpaint_rows(work: Path, rows: pd.DataFrame, inpaint: Inpainter, ncls: str, mask_mode: str, seed: int,
                  batch_size: int, on_progress: ProgressFn) -> tuple[pd.DataFrame, list[np.ndarray],
                                                                     list[np.ndarray]]:
    """(per-sample metrics, originals, inpainted images) of the test lesions, batch by batch. The soft masks go
    to the engine (its window is the soft mask's, as in training); metrics use the mask generation used."""
    from ..generate.plan import derive_seed

    originals, fakes, recs = [], [], []
    n_batches = -(-len(rows) // batch_size)
    report(on_progress, "inpaint", 0, len(rows))
    for start in range(0, len(rows), batch_size):
        b = rows.iloc[start:start + batch_size]
        pairs = [load_pair(work, r["image"], r["mask"], r["sample_id"]) for _, r in b.iterrows()]
        prompts = [describe(str(d), str(lab), ncls) for d, lab in zip(b["description"], b["label"])]
        on_step = batch_steps(on_progress, "inpaint: denoising steps", start // batch_size, n_batches)
        outs = inpaint([p[0] for p in pairs], [p[1] for p in pairs], prompts,
                       [derive_seed(seed, s) for s in b["sample_id"]], on_step)
        for (_, r), (x0, soft), y, p in zip(b.iterrows(), pairs, outs, prompts):
            m = apply_mask_mode(soft, mask_mode)                      # the mask generation uses (hard: w/o SMIS)
            recs.append({"sample_id": r["sample_id"], "label": r["label"], "prompt": p,
                         "psnr": M.psnr(x0, y), "psnr_mask": M.psnr(x0, y, weights=m),
                         "ssim": M.ssim(x0, y), "ssim_mask": M.ssim(x0, y, weights=m),
                         "mask_area_px": float(m.sum())})
            originals.append(x0)
            fakes.append(y)
        report(on_progress, "inpaint", len(recs), len(rows))
    return pd.DataFrame(recs), originals, fakes


def _write_outputs(out: Path, samples: pd.DataFrame, fakes: list[np.ndarray], summary: dict[str, Any],
                   balance_out: Optional[str | Path], t_inpaint: float, t0: float) -> None:
    """OUT/inpainted/*.png, background_samples.csv (with ``balance_out``), quality_samples.csv, quality.json."""
    for sid, y in zip(samples["sample_id"], fakes):
        write_png16(out / "inpainted" / f"{sid}.png", y)
    if balance_out is not None:
        bg, bg_rows = background_fidelity(Path(balance_out))
        summary["background"] = bg
        atomic_write_csv(out / "background_samples.csv", bg_rows)
    summary["timing_s"] = {"inpaint": round(t_inpaint, 3), "total": round(time.time() - t0, 3)}
    atomic_write_csv(out / "quality_samples.csv", samples)
    atomic_write_json(out / "quality.json", _json_safe(summary))


def _json_safe(obj: Any) -> Any:
    """Infinite floats -> "inf" (JSON has no infinity); NaN -> None."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
