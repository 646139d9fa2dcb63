"""The evaluation report (``evaluate report`` and ``--report``): ``summary.md`` with the paper's Table 1b layout,
per-class rows, paired verdicts, pictures (per-class F1 bars, ROC per class, confusion matrices, and for each
generated method a donor | mask | synthetic contact sheet), from the outputs of ``evaluate classify`` /
``quality`` and the manifests. Every file is written atomically."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from ..errors import InputError, UsageError
from ..fsutil import atomic_write_text
from . import charts
from .data import load_image, read_manifest, resolve

log = logging.getLogger("medsoft_aug.evaluate.report")
TABLE = (("auc", "AUC"), ("accuracy", "Acc"), ("precision", "Pre"), ("recall", "Rec"), ("f1", "F1"),
         ("minority_f1", "minority F1"))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower() or "class"


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
def table_1b(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown in the layout of the paper's Table 1b (methods as rows; AUC, Acc, Pre, Rec, F1, plus minority
    F1), means +- std over seeds; per column the best mean in **bold**, the second best <u>underlined</u>."""
    methods = list(metrics)
    rank: dict[str, dict[str, int]] = {}
    for key, _ in TABLE:
        means = sorted({metrics[m][key]["mean"] for m in methods if metrics[m][key]["mean"] is not None},
                       reverse=True)
        rank[key] = {m: means.index(metrics[m][key]["mean"]) for m in methods
                     if metrics[m][key]["mean"] is not None}
    lines = ["| Method | " + " | ".join(h for _, h in TABLE) + " |", "|---" * (len(TABLE) + 1) + "|"]
    for m in methods:
        cells = []
        for key, _ in TABLE:
            cell, r = _fmt(metrics[m][key]), rank[key].get(m)
            cells.append(f"**{cell}**" if r == 0 else f"<u>{cell}</u>" if r == 1 else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def per_class_rows(metrics: Mapping[str, Mapping[str, Any]], class_names: list[str],
                   minority: list[str]) -> list[str]:
    """Markdown: one row per (class, method) with precision, recall and F1 (mean +- std over seeds)."""
    lines = ["| class | method | precision | recall | F1 |", "|---|---|---|---|---|"]
    for c in class_names:
        for m in metrics:
            pc = metrics[m]["per_class"][c]
            tag = f"{c} (disease)" if c in minority else c
            lines.append(f"| {tag} | {m} | {_fmt(pc['precision'])} | {_fmt(pc['recall'])} | {_fmt(pc['f1'])} |")
    return lines


def verdict_rows(comparisons: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per pair of methods, the paired test on minority F1 and on macro F1."""
    by_pair: dict[tuple[str, str], dict[str, dict]] = {}
    for c in comparisons:
        by_pair.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    cell = lambda c: ("n/a" if c["mean_diff"] is None else  # noqa: E731
                      f"{c['mean_diff']:+.3f} (p {'n/a' if c['p'] is None else format(c['p'], '.3f')}): "
                      f"**{c['verdict']}**")
    lines = ["| A vs B | minority F1: A - B | macro F1: A - B |", "|---|---|---|"]
    for (a, b), d in by_pair.items():
        lines.append(f"| {a} vs {b} | {cell(d['minority_f1'])} | {cell(d['f1'])} |")
    return lines


def classify_figures(classify_out: Path, report_dir: Path) -> tuple[list[Path], list[str]]:
    """Table 1b, per-class rows, verdicts, F1 bars, ROC per class and confusion matrices from a classify OUT
    folder; returns (files written, markdown lines)."""
    metrics = _read_json(classify_out / "metrics.json", "classify")
    info = _read_json(classify_out / "classify.json", "classify")
    pred_path = classify_out / "predictions.csv"
    if not pred_path.is_file():
        raise InputError(f"{pred_path} not found: run `medsoft-aug evaluate classify` first")
    preds = pd.read_csv(pred_path, dtype={"sample_id": str, "label": str, "pred": str, "method": str})
    classes, methods = info["class_names"], list(metrics)
    minority, n_seeds = info.get("minority_classes", classes[1:]), len(info["per_seed"][methods[0]])
    atomic_write_text(report_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    files = [report_dir / "metrics.json",
             charts.save_png(charts.f1_bars(metrics, classes, minority, n_seeds), report_dir / "f1_per_class.png"),
             charts.save_png(charts.roc_panels(preds, classes, methods), report_dir / "roc.png"),
             charts.save_png(charts.confusion_panels(preds, classes, methods), report_dir / "confusion.png")]
    o = info["options"]
    aug = metrics.get("classical", {}).get("augmentation")
    md = ["## Downstream classification (Table 1b layout; real test split only)", "",
          f"Classes: {', '.join(classes)} (normal class: {info.get('normal_class', 'n/a')}); test samples: "
          f"{info['n_test']} ({', '.join(f'{k} {v}' for k, v in info['test_class_counts'].items())}); real "
          f"training samples: {info['n_real_train']}; synthetic used: "
          + ", ".join(f"{n} {v['n_synthetic_used']}" for n, v in info.get("manifests", {}).items())
          + f"; ResNet-18, {n_seeds} seeds x {o['epochs']} epochs at {o['resolution']} px.", "",
          *table_1b(metrics), "", "Per class:", "", *per_class_rows(metrics, classes, minority), "",
          f"Paired comparisons: {info.get('paired_test', '')}.", "", *verdict_rows(info.get("comparisons", [])), ""]
    if aug:
        md += [f"Classical augmentation ({aug['library']}, no flips): rotation ±{aug['rotation_deg']}°, scale "
               f"{aug['scale']}, translation ±{aug['translate']:.0%}, gamma {aug['gamma']}, contrast "
               f"{aug['contrast']}, brightness {aug['brightness']}, noise sigma {aug['noise_sigma']}.", ""]
    md += ["![F1 per class](f1_per_class.png)", "", "![ROC per class](roc.png)", "",
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
def contact_sheets(manifests: Mapping[str, Path], report_dir: Path, per_class: int = 4) -> tuple[list[Path], list[str]]:
    """One sheet per generated method (manifest): rows of donor | mask (overlay) | synthetic, zoomed on the mask,
    the first ``per_class`` synthetic rows of each class by sample_id."""
    files, md = [], ["## Synthetic samples per method (donor | mask | synthetic)", ""]
    for name, manifest in manifests.items():
        path = report_dir / f"contact_{_slug(name)}.png"
        if _method_sheet(Path(manifest), path, name, per_class):
            files.append(path)
            md += [f"### {name}", "", f"![{name}]({path.name})", ""]
        else:
            md += [f"### {name}", "", "The manifest has no synthetic rows.", ""]
    return files, md


def _method_sheet(manifest: Path, path: Path, name: str, per_class: int) -> bool:
    from ..viz import contact_sheet

    df = read_manifest(manifest)
    mdir, by_id = manifest.parent, df.set_index("sample_id", drop=False)
    syn = df[df["origin"] == "synthetic"].sort_values("sample_id")
    rows, overlays, labels = [], [], []
    for label, grp in syn.groupby("label", sort=True):
        for _, r in grp.head(per_class).iterrows():
            synth = load_image(resolve(mdir, r["image"]), r["sample_id"])
            donor = (load_image(resolve(mdir, by_id.at[r["donor_id"], "image"]), r["donor_id"])
                     if r.get("donor_id") in by_id.index else None)
            mpath = resolve(mdir, r["mask"]) if r.get("mask") else None
            mask = np.clip(np.load(mpath, allow_pickle=False).astype(np.float32), 0, 1) \
                if mpath is not None and mpath.is_file() else None
            base = donor if donor is not None else synth
            ok = mask is not None and mask.shape == base.shape and (donor is None or donor.shape == synth.shape)
            box = _zoom_box(mask) if ok else (slice(None), slice(None))
            crop = lambda a: None if a is None else a[box]  # noqa: E731
            rows.append([crop(donor), crop(base) if ok else None, crop(synth)])
            overlays.append([None, crop(mask) if ok else None, None])
            labels.append(f"{label}\n{r['sample_id']}")
    if not rows:
        return False
    contact_sheet(rows, path, row_labels=labels, col_labels=[f"donor ({name})", "mask", "synthetic"],
                  overlays=overlays, cell_size=(128, 128))
    return True


def _zoom_box(mask: np.ndarray, margin: float = 1.0) -> tuple[slice, slice]:
    """A square window on the mask's bounding box (M_b > 0.05) widened by ``margin`` x its size on each side,
    so the lesion fills a good part of the cell; the whole image for an empty mask."""
    rows, cols = np.nonzero(mask > 0.05)
    if rows.size == 0:
        return slice(None), slice(None)
    h, w = mask.shape
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    half = max(rows.max() - rows.min(), cols.max() - cols.min(), 8) * (0.5 + margin)
    y0, x0 = int(max(0, cy - half)), int(max(0, cx - half))
    return slice(y0, int(min(h, cy + half + 1))), slice(x0, int(min(w, cx + half + 1)))


def evaluate_report(out: str | Path, classify_out: Optional[str | Path] = None,
                    quality_out: Optional[str | Path] = None,
                    manifests: Optional[str | Path | Mapping[str, str | Path]] = None) -> list[Path]:
    """Write the report folder ``out`` from whichever inputs are given; returns the files written (summary.md
    last). ``manifests``: one manifest.csv or {method: manifest.csv} for the contact sheets; default the
    manifests recorded by ``classify_out``. Raises UsageError when no input is given, InputError for missing
    or malformed inputs."""
    # 1. inputs
    if classify_out is None and quality_out is None and manifests is None:
        raise UsageError("give at least one of --classify, --quality, --manifest")
    if isinstance(manifests, (str, Path)):
        manifests = {"medsoft": manifests}
    missing = [str(p) for p in (manifests or {}).values() if not Path(p).is_file()]
    if missing:
        raise InputError(f"manifest {missing[0]} not found")
    if manifests is None and classify_out is not None:
        info = _read_json(Path(classify_out) / "classify.json", "classify")
        manifests = {n: v["path"] for n, v in info.get("manifests", {}).items()} or \
            ({"medsoft": info["manifest"]} if info.get("manifest") else {})
    out = Path(out)
    files: list[Path] = []
    md = ["# medsoft-aug evaluation report", ""]
    # 2. classification: tables, verdicts, charts
    if classify_out is not None:
        f, lines = classify_figures(Path(classify_out), out)
        files, md = files + f, md + lines
    # 3. image quality
    if quality_out is not None:
        f, lines = quality_lines(Path(quality_out), out)
        files, md = files + f, md + lines
    # 4. one contact sheet per generated method
    present = {n: Path(p) for n, p in (manifests or {}).items() if Path(p).is_file()}
    if len(present) < len(manifests or {}):
        log.warning("contact sheets skipped for %d manifest(s) recorded by %s that no longer exist",
                    len(manifests) - len(present), classify_out)
    if present:
        f, lines = contact_sheets(present, out)
        files, md = files + f, md + lines
    # 5. summary.md last
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    files.append(out / "summary.md")
    log.info("report written to %s (%d files)", out, len(files))
    return files
