"""The evaluation report: ``metrics.json``, ``summary.md`` and pictures (F1 bars, ROC curves, confusion matrices,
donor | mask | synthetic contact sheets per class), from the outputs of ``evaluate classify`` / ``quality`` and
a manifest. Every file is written atomically."""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import atomic_path, atomic_write_text
from . import charts
from .data import load_image, read_manifest, resolve

log = logging.getLogger("medsoft_aug.evaluate.report")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower() or "class"


def _save(img, path: Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{path} not found: run `medsoft-aug evaluate {what}` first")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path} is not valid JSON") from None


def _fmt(v: Optional[dict]) -> str:
    if not v or v.get("mean") is None:
        return "n/a"
    return f"{v['mean']:.3f} ± {v['std']:.3f}"


# ------------------------------------------------------------------------------------------------ classify
def classify_figures(classify_out: Path, report_dir: Path) -> tuple[list[Path], list[str]]:
    """F1 bars, ROC curves and confusion matrices from a classify OUT folder; returns (files, markdown lines)."""
    metrics = _read_json(classify_out / "metrics.json", "classify")
    info = _read_json(classify_out / "classify.json", "classify")
    pred_path = classify_out / "predictions.csv"
    if not pred_path.is_file():
        raise InputError(f"{pred_path} not found: run `medsoft-aug evaluate classify` first")
    preds = pd.read_csv(pred_path, dtype={"sample_id": str, "label": str, "pred": str, "method": str})
    classes: list[str] = info["class_names"]
    methods = list(metrics)
    files = []
    atomic_write_text(report_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    files.append(report_dir / "metrics.json")
    f1 = [metrics[m]["f1"] for m in methods]
    files.append(_save(charts.bar_chart(methods, [v["mean"] for v in f1], [v["std"] for v in f1],
                                        f"Macro F1 on the real test split (mean ± std, {len(info['per_seed'][methods[0]])} seeds)",
                                        ylabel="F1"), report_dir / "f1_by_method.png"))
    # ROC: predictions pooled over seeds; binary -> class 1 vs 0, else one panel per class (one-vs-rest).
    panels = []
    pos_classes = [classes[1]] if len(classes) == 2 else classes
    for c in pos_classes:
        curves = []
        for m in methods:
            d = preds[preds["method"] == m]
            y = (d["label"] == c).to_numpy().astype(int)
            if 0 < y.sum() < len(y):
                from .metrics import roc_points

                fpr, tpr = roc_points(y, d[f"prob_{c}"].to_numpy())
                curves.append((f"{m} (AUC {float(np.trapezoid(tpr, fpr)):.3f})", fpr, tpr))
        title = f"ROC: {c}" + (" vs rest" if len(classes) > 2 else f" vs {classes[0]}") + " (seeds pooled)"
        panels.append(charts.line_chart(curves, title, "false positive rate", "true positive rate"))
    files.append(_save(charts.hstack(panels), report_dir / "roc.png"))
    cms = []
    for m in methods:
        d = preds[preds["method"] == m]
        cm = np.zeros((len(classes), len(classes)), int)
        idx = {c: i for i, c in enumerate(classes)}
        for t, p in zip(d["label"], d["pred"]):
            cm[idx[t], idx[p]] += 1
        cms.append(charts.confusion_image(cm, classes, f"{m} (all seeds)"))
    files.append(_save(charts.hstack(cms), report_dir / "confusion.png"))

    names = ("auc", "accuracy", "precision", "recall", "f1")
    md = ["## Downstream classification (real test split only)", "",
          f"Classes: {', '.join(classes)}; test samples: {info['n_test']} "
          f"({', '.join(f'{k} {v}' for k, v in info['test_class_counts'].items())}); "
          f"real training samples: {info['n_real_train']}; synthetic used: {info['n_synthetic_used']}; "
          f"seeds: {len(info['per_seed'][methods[0]])}; epochs: {info['options']['epochs']}; "
          f"resolution: {info['options']['resolution']}.", "",
          "| method | " + " | ".join(names) + " | draws/epoch |", "|---" * (len(names) + 2) + "|"]
    for m in methods:
        md.append(f"| {m} | " + " | ".join(_fmt(metrics[m][n]) for n in names)
                  + f" | {info['methods'][m]['n_draws_per_epoch']} |")
    base, ms = metrics.get("baseline", {}).get("f1", {}), metrics.get("medsoft", {}).get("f1", {})
    if base.get("mean") is not None and ms.get("mean") is not None:
        from .metrics import compare

        md += ["", f"medsoft vs baseline, macro F1: {ms['mean'] - base['mean']:+.3f} -> {compare(ms, base)} "
               "(better/worse only when the means differ by more than the sum of their seed stds)."]
    md += ["", "![F1 by method](f1_by_method.png)", "", "![ROC curves](roc.png)", "",
           "![Confusion matrices](confusion.png)", ""]
    return files, md


# ------------------------------------------------------------------------------------------------ quality
def quality_lines(quality_out: Path, report_dir: Path) -> tuple[list[Path], list[str]]:
    q = _read_json(quality_out / "quality.json", "quality")
    atomic_write_text(report_dir / "quality.json", json.dumps(q, indent=2, default=str) + "\n")
    md = ["## Image quality (held-out diseased test samples inpainted with their own description)", ""]
    for k in ("n_samples", "fid", "fid_features", "fid_note", "psnr", "psnr_mask", "ssim", "ssim_mask"):
        if k in q:
            v = q[k]
            md.append(f"- {k}: {_fmt(v) if isinstance(v, dict) else v}")
    bg = q.get("background")
    if bg:
        md.append(f"- background fidelity (synthetic vs donor, outside the mask): {json.dumps(bg)}")
    files = [report_dir / "quality.json"]
    sheet = _quality_sheet(quality_out, q, report_dir)
    if sheet is not None:
        files.append(sheet)
        md += ["", f"![original | mask | inpainted]({sheet.name})"]
    return files, md + [""]


def _quality_sheet(quality_out: Path, q: dict, report_dir: Path, n: int = 8) -> Optional[Path]:
    """original | soft mask | inpainted for the first ``n`` samples (originals and masks read from WORK)."""
    from ..viz import contact_sheet

    samples_csv, work = quality_out / "quality_samples.csv", Path(q.get("work", ""))
    if not samples_csv.is_file() or not (work / "index.csv").is_file() or not (work / "masks.csv").is_file():
        log.warning("quality sheet skipped: per-sample results or WORK (%s) not found", work)
        return None
    s = pd.read_csv(samples_csv, dtype={"sample_id": str}).head(n)
    idx = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    msk = pd.read_csv(work / "masks.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    rows, overlays, labels = [], [], []
    for _, r in s.iterrows():
        sid = r["sample_id"]
        fake = quality_out / "inpainted" / f"{sid}.png"
        if sid not in idx.index or sid not in msk.index or not fake.is_file():
            continue
        x0 = np.clip(np.load(work / idx.at[sid, "image"], allow_pickle=False).astype(np.float32), 0, 1)
        m = np.clip(np.load(work / msk.at[sid, "mask"], allow_pickle=False).astype(np.float32), 0, 1)
        rows.append([x0, x0, load_image(fake, sid)])
        overlays.append([None, m, None])
        labels.append(f"{sid}\nPSNR_m {r['psnr_mask']:.1f} SSIM_m {r['ssim_mask']:.2f}")
    if not rows:
        return None
    return contact_sheet(rows, report_dir / "quality_samples.png", row_labels=labels,
                         col_labels=["original", "soft mask", "inpainted"], overlays=overlays)


# ------------------------------------------------------------------------------------------------ contact sheets
def contact_sheets(manifest: Path, report_dir: Path, per_class: int = 6) -> tuple[list[Path], list[str]]:
    """One sheet per synthetic class: rows of donor | soft mask (overlay) | synthetic, the first ``per_class``
    synthetic rows by sample_id."""
    from ..viz import contact_sheet

    df = read_manifest(manifest)
    mdir = manifest.parent
    by_id = df.set_index("sample_id", drop=False)
    syn = df[df["origin"] == "synthetic"].sort_values("sample_id")
    files, md = [], ["## Synthetic samples (donor | mask | synthetic)", ""]
    if syn.empty:
        return files, md + ["The manifest has no synthetic rows.", ""]
    for label, grp in syn.groupby("label", sort=True):
        rows, overlays, labels = [], [], []
        for _, r in grp.head(per_class).iterrows():
            synth = load_image(resolve(mdir, r["image"]), r["sample_id"])
            donor = (load_image(resolve(mdir, by_id.at[r["donor_id"], "image"]), r["donor_id"])
                     if r.get("donor_id") in by_id.index else None)
            mask = (np.clip(np.load(resolve(mdir, r["mask"]), allow_pickle=False).astype(np.float32), 0, 1)
                    if r.get("mask") and resolve(mdir, r["mask"]).is_file() else None)
            base = donor if donor is not None else synth
            rows.append([donor, base if mask is not None else None, synth])
            overlays.append([None, mask if mask is not None and mask.shape == base.shape else None, None])
            labels.append(f"{r['sample_id']} <- {r.get('donor_id', '')}")
        path = report_dir / f"contact_{_slug(label)}.png"
        contact_sheet(rows, path, row_labels=labels, col_labels=["donor", "soft mask", "synthetic"],
                      overlays=overlays, cell_size=(160, 160))
        files.append(path)
        md += [f"### {label}", "", f"![{label}]({path.name})", ""]
    return files, md


def write_report(report_dir: str | Path, classify_out: Optional[str | Path] = None,
                 quality_out: Optional[str | Path] = None, manifest: Optional[str | Path] = None) -> list[Path]:
    """Write the report folder from whichever inputs are given; returns the files written (summary.md last)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    md = ["# medsoft-aug evaluation report", ""]
    if classify_out is not None:
        f, lines = classify_figures(Path(classify_out), report_dir)
        files += f
        md += lines
        if manifest is None:
            info = _read_json(Path(classify_out) / "classify.json", "classify")
            manifest = info.get("manifest")
    if quality_out is not None:
        f, lines = quality_lines(Path(quality_out), report_dir)
        files += f
        md += lines
    if manifest is not None and Path(manifest).is_file():
        f, lines = contact_sheets(Path(manifest), report_dir)
        files += f
        md += lines
    atomic_write_text(report_dir / "summary.md", "\n".join(md) + "\n")
    files.append(report_dir / "summary.md")
    log.info("report written to %s (%d files)", report_dir, len(files))
    return files
