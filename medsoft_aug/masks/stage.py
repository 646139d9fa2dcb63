"""``masks build``: one soft mask per sample of WORK/index.csv (Eq. 1), from its seg + level or its x, y.

Reads WORK/index.csv, slices/{id}.npy (shape only) and seg/{id}.npy; writes WORK/masks/{id}.npy (float32
(H, W) in [0, 1], same shape as the slice), WORK/masks.json (run record) and WORK/masks.csv (MASK_COLUMNS), in
that order, each atomically. Normal (donor) samples get masks exactly like diseased ones.

Reruns: a sample whose inputs (index row, seg file hash, slice shape) and options are unchanged since the last
run, and whose mask file still exists, is reused, not recomputed (``force=True`` recomputes everything).
"""
from __future__ import annotations

import collections
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError, PartialFailure, SampleFailure, UsageError
from ..fsutil import atomic_save_npy, atomic_write_json, atomic_write_text, load_npy, sha256_bytes, sha256_file
from ..progress import ProgressFn, report
from ..versions import package_versions
from ..workdir import MASK_COLUMNS, read_index
from . import from_coords, from_seg
from .levels import NUMBERINGS, Level, parse_level
from .preview import select_preview, write_preview
from .soften import dilate_mm as dilate_hard, soften

log = logging.getLogger("medsoft_aug.masks")

# Defaults for lumbar MRI. A lumbar vertebral body is ~30-40 mm wide (AP) and ~25-30 mm tall: a 40 mm box
# centred on a level/lesion coordinate covers the body (or a disc and the adjacent endplates); sigma 3 mm
# softens the edge over ~+-6 mm (2 sigma), a fifth of the body, while its core stays at 1.
DEFAULT_SIGMA_MM = 3.0
DEFAULT_BOX_MM = 40.0
SOURCES = ("auto", "seg", "coords")
LOW_PEAK = 0.5  # soft masks whose maximum stays below this barely let the model inpaint: warned about


@dataclass
class MasksResult:
    """What ``build_masks`` did. Paths are absolute; ``failures`` lists each failed sample and its problem."""

    work: Path
    total: int
    ok: int
    failed: int
    computed: int
    reused: int
    failures: list[SampleFailure] = field(default_factory=list)
    masks_csv: Optional[Path] = None
    masks_json: Optional[Path] = None
    preview: Optional[Path] = None
    options: dict[str, Any] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    numbering: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [{"sample_id": f.sample_id, "problem": f.problem} for f in self.failures]
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _num(v: str) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _inside(work: Path, rel: str, what: str) -> Path:
    p = (work / rel).resolve()
    if not p.is_relative_to(work.resolve()):
        raise InputError(f"{what} path {rel!r} escapes WORK")
    if not p.is_file():
        raise InputError(f"{what} file {rel} not found")
    return p


def _check_options(source: str, sigma_mm: float, box_mm: float, dilate_mm: float, numbering: str) -> None:
    if source not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    if numbering != "auto" and numbering not in NUMBERINGS:
        raise UsageError(f"--numbering must be auto or one of {', '.join(NUMBERINGS)}, got {numbering!r}")
    for name, v, positive in (("--sigma-mm", sigma_mm, False), ("--box-mm", box_mm, True),
                              ("--dilate-mm", dilate_mm, False)):
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise UsageError(f"{name} must be a {'positive' if positive else 'non-negative'} number of mm")


@dataclass
class _Plan:
    """Per-sample decision taken before any mask is computed."""

    source: str                      # seg | coords
    level: Optional[Level] = None
    x: Optional[float] = None
    y: Optional[float] = None
    spacing: Optional[tuple[float, float]] = None
    seg_path: Optional[Path] = None


def _plan(row: dict, work: Path, source: str) -> _Plan:
    x, y = _num(row.get("x", "")), _num(row.get("y", ""))
    xy = (x, y) if x is not None and y is not None else (None, None)
    sr, sc = _num(row.get("spacing_row", "")), _num(row.get("spacing_col", ""))
    spacing = (sr, sc) if sr and sc and sr > 0 and sc > 0 else None
    level, level_err = None, "no level"
    if str(row.get("level", "")).strip():
        try:
            level = parse_level(row["level"])
        except InputError as e:
            level_err = str(e)
    has_seg = bool(str(row.get("seg", "")).strip())
    use = source
    if source == "auto":
        use = "seg" if has_seg and level is not None else "coords" if xy[0] is not None else ""
        if not use:
            why = "no seg" if not has_seg else level_err
            raise InputError(f"cannot place a mask: {why} and no x, y coordinates")
    if use == "seg":
        if not has_seg:
            raise InputError("no seg for this sample (--source seg)")
        if level is None:
            raise InputError(f"cannot choose a vertebra in the seg: {level_err}")
        return _Plan("seg", level, *xy, spacing, _inside(work, row["seg"], "seg"))
    if xy[0] is None:
        raise InputError("no x, y coordinates for a box mask (--source coords)")
    return _Plan("coords", level, *xy, spacing)


def _read_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    """np.load without pickles; an unreadable or corrupt file becomes an InputError naming it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{what} file {path.name} is unreadable ({type(e).__name__})") from e


def _image_shape(work: Path, row: dict) -> tuple[int, int]:
    arr = _read_npy(_inside(work, row["image"], "image"), "image", mmap=True)
    if arr.ndim != 2:
        raise InputError(f"slice has {arr.ndim} dimensions, expected 2")
    return int(arr.shape[0]), int(arr.shape[1])


def _hard_mask(plan: _Plan, shape: tuple[int, int], numbering: str, box_mm: float) -> tuple[np.ndarray, str]:
    if plan.source == "coords":
        if plan.spacing is None:
            raise InputError("pixel spacing (spacing_row, spacing_col) missing: cannot size a box in mm")
        return from_coords.box_mask(shape, plan.x, plan.y, box_mm, plan.spacing), "box"
    labels = from_seg.integer_labels(_read_npy(plan.seg_path, "seg"))
    if labels.shape != shape:
        raise InputError(f"seg shape {labels.shape[0]}x{labels.shape[1]} does not match image shape "
                         f"{shape[0]}x{shape[1]}")
    if plan.x is not None:
        from_coords.check_point(shape, plan.x, plan.y)
    return from_seg.hard_mask_from_seg(labels, plan.level, numbering, x=plan.x, y=plan.y,
                                       spacing=plan.spacing or (1.0, 1.0))


def _decide_numbering(plans: dict[str, _Plan]) -> tuple[dict[str, str], dict[str, Any]]:
    """numbering="auto": a per-sample guess from the label values of its seg slice; ambiguous slices take the
    majority of the confident guesses in this run, else VerSe."""
    guesses: dict[str, Optional[str]] = {}
    reasons: collections.Counter = collections.Counter()
    for sid, p in plans.items():
        try:
            present = from_seg.label_set(from_seg.integer_labels(_read_npy(p.seg_path, "seg")))
        except InputError:
            present = set()
        guesses[sid], why = from_seg.guess_numbering(present)
        reasons[why] += 1
    confident = collections.Counter(g for g in guesses.values() if g)
    fallback = sorted(confident.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if confident else "verse"
    decided = {sid: g or fallback for sid, g in guesses.items()}
    record = {"requested": "auto", "fallback_for_ambiguous": fallback,
              "ambiguous": sum(1 for g in guesses.values() if not g),
              "decided": dict(collections.Counter(decided.values())), "reasons": dict(reasons)}
    return decided, record


def _fingerprint(row: dict, plan: _Plan, shape: tuple[int, int], numbering: str, opts: dict) -> str:
    keys = ("image", "seg", "level", "x", "y", "spacing_row", "spacing_col")
    data = {"row": {k: row.get(k, "") for k in keys}, "shape": shape, "source": plan.source,
            "numbering": numbering if plan.source == "seg" else "", "opts": opts, "version": __version__,
            "seg_sha": sha256_file(plan.seg_path) if plan.seg_path else ""}
    return sha256_bytes(json.dumps(data, sort_keys=True).encode())[:20]


def _previous(work: Path) -> tuple[dict[str, str], dict[str, dict]]:
    try:
        fps = json.loads((work / "masks.json").read_text()).get("fingerprints", {})
        prev = pd.read_csv(work / "masks.csv", dtype=str, keep_default_na=False)
        return fps, {r["sample_id"]: r for r in prev.to_dict("records") if r.get("status") == "ok"}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}, {}


def build_masks(work: str | Path, *, source: str = "auto", sigma_mm: float = DEFAULT_SIGMA_MM,
                box_mm: float = DEFAULT_BOX_MM, dilate_mm: float = 0.0, numbering: str = "auto",
                preview: Optional[str | Path] = None, force: bool = False,
                on_progress: ProgressFn = None) -> MasksResult:
    """Build one soft mask per sample of ``WORK/index.csv``.

    source: ``seg`` (label map + level), ``coords`` (box of ``box_mm`` mm around x, y) or ``auto`` (seg when the
    row has a seg and a level, else coords when it has x, y). sigma_mm: Gaussian sigma (mm, Eq. 1; 0 = hard
    mask). dilate_mm: dilate the hard mask first (mm). numbering: label numbering of the segs (``auto`` decides
    from the label values and records the decision). preview: write a contact sheet PNG there.

    Returns MasksResult. Raises UsageError for bad options, InputError when index.csv is missing/invalid or no
    sample got a mask (nothing written), PartialFailure (with ``result``) when some samples failed.
    """
    _check_options(source, sigma_mm, box_mm, dilate_mm, numbering)
    if preview is not None and Path(preview).suffix.lower() != ".png":
        raise UsageError(f"--preview must name a .png file, got {str(preview)!r}")
    work = Path(work)
    df = read_index(work)
    dup = df["sample_id"][df["sample_id"].duplicated()].tolist()
    if dup:
        raise InputError(f"index.csv has duplicate sample_id values (first: {dup[0]})")
    opts = {"source": source, "sigma_mm": float(sigma_mm), "box_mm": float(box_mm),
            "dilate_mm": float(dilate_mm), "numbering": numbering}
    rows = df.to_dict("records")
    plans: dict[str, _Plan] = {}
    plan_errors: dict[str, str] = {}
    for row in rows:
        sid = str(row["sample_id"])
        try:
            if not _safe_id(sid):
                raise InputError("sample_id is not a safe file name")
            plans[sid] = _plan(row, work, source)
        except InputError as e:
            plan_errors[sid] = str(e)

    seg_plans = {s: p for s, p in plans.items() if p.source == "seg"}
    if numbering == "auto":
        per_sample, numbering_record = _decide_numbering(seg_plans)
    else:
        per_sample = {s: numbering for s in seg_plans}
        numbering_record = {"requested": numbering, "decided": {numbering: len(seg_plans)} if seg_plans else {}}

    fps_prev, rows_prev = ({}, {}) if force else _previous(work)
    out_rows, fingerprints, written, stale = [], {}, [], []
    by_source: collections.Counter = collections.Counter()
    seg_choice: collections.Counter = collections.Counter()
    low_peak, reused = 0, 0
    preview_items: list[dict] = []
    n = len(rows)
    try:
        for i, row in enumerate(rows):
            sid = str(row["sample_id"])
            rec = {c: "" for c in MASK_COLUMNS}
            rec.update(sample_id=sid, level=row.get("level", ""), sigma_mm=sigma_mm, box_mm=box_mm,
                       dilate_mm=dilate_mm, status="error")
            plan = plans.get(sid)
            mask_rel = f"masks/{sid}.npy"
            try:
                if plan is None:
                    raise InputError(plan_errors[sid])
                rec["mask_source"] = plan.source
                shape = _image_shape(work, row)
                num = per_sample.get(sid, "")
                fp = _fingerprint(row, plan, shape, num, opts)
                prev = rows_prev.get(sid)
                if fps_prev.get(sid) == fp and prev is not None and (work / mask_rel).is_file():
                    rec.update(mask=mask_rel, area_px=prev["area_px"], soft_sum=prev["soft_sum"], status="ok")
                    reused += 1
                else:
                    soft, area, kind = _compute(plan, shape, num, sigma_mm, box_mm, dilate_mm)
                    low_peak += int(float(soft.max()) < LOW_PEAK)
                    atomic_save_npy(work / mask_rel, soft)
                    written.append(work / mask_rel)
                    seg_choice[kind] += 1
                    rec.update(mask=mask_rel, area_px=area, soft_sum=round(float(soft.sum()), 3), status="ok")
                fingerprints[sid] = fp
                by_source[plan.source] += 1
                preview_items.append({"sample_id": sid, "label": row.get("label", ""), "image": row["image"],
                                      "caption": f"{plan.source} {row.get('level', '')}".strip()})
            except InputError as e:
                rec["error"] = " ".join(str(e).split())
                if _safe_id(sid):  # an earlier run's mask must not outlive this error row (removed at the end)
                    stale.append(work / mask_rel)
            out_rows.append(rec)
            report(on_progress, "masks", i + 1, n)
        result = _finish(work, out_rows, fingerprints, opts, numbering_record, by_source, seg_choice, low_peak,
                         reused, preview, preview_items, written)
    except BaseException:
        for path in written:  # a fatal error (or Ctrl-C): remove what this run created
            path.unlink(missing_ok=True)
        raise
    for path in stale:  # masks.csv now lists these samples as errors
        path.unlink(missing_ok=True)
    if result.failures:
        raise PartialFailure(f"{result.failed} of {result.total} samples got no mask (listed in masks.csv)",
                             list(result.failures), result=result)
    return result


def _compute(plan: _Plan, shape: tuple[int, int], numbering: str, sigma_mm: float, box_mm: float,
             dilate_mm: float) -> tuple[np.ndarray, int, str]:
    """Soft mask (H, W) float32, hard-mask area (px, after dilation) and what the hard mask was made of."""
    if plan.spacing is None and (sigma_mm > 0 or dilate_mm > 0):
        raise InputError("pixel spacing (spacing_row, spacing_col) missing: cannot blur in mm")
    hard, note = _hard_mask(plan, shape, numbering, box_mm)
    spacing = plan.spacing or (1.0, 1.0)
    hard = dilate_hard(hard, dilate_mm, spacing)
    if not hard.any():
        raise InputError("mask is empty")
    return soften(hard, sigma_mm, spacing), int(hard.sum()), "box" if plan.source == "coords" else _kind(note)


def _finish(work: Path, out_rows: list[dict], fingerprints: dict[str, str], opts: dict, numbering_record: dict,
            by_source: collections.Counter, seg_choice: collections.Counter, low_peak: int, reused: int,
            preview: Optional[str | Path], preview_items: list[dict], written: list[Path]) -> MasksResult:
    """Write preview, masks.json, masks.csv (last); raise InputError when no sample got a mask."""
    n = len(out_rows)
    ok = sum(1 for r in out_rows if r["status"] == "ok")
    fails = [SampleFailure(r["sample_id"], r["error"]) for r in out_rows if r["status"] != "ok"]
    if ok == 0:
        first = "; ".join(str(f) for f in fails[:3])
        more = f" (and {len(fails) - 3} more)" if len(fails) > 3 else ""
        raise InputError(f"no mask could be built for any of {n} samples: {first}{more}" if n else
                         "index.csv has no samples")
    if low_peak:
        log.warning("%d soft mask(s) peak below %.1f (hard mask small next to sigma): consider a smaller "
                    "--sigma-mm or --dilate-mm", low_peak, LOW_PEAK)

    result = MasksResult(work=work.resolve(), total=n, ok=ok, failed=n - ok, computed=ok - reused,
                         reused=reused, failures=list(fails), options=opts, by_source=dict(by_source),
                         numbering=numbering_record)
    if preview is not None:
        idx = select_preview([(it["sample_id"], it["label"]) for it in preview_items])
        chosen = [preview_items[k] for k in idx]
        result.preview = write_preview(preview, chosen, lambda it: (
            load_npy(work / it["image"]), load_npy(work / f"masks/{it['sample_id']}.npy"))).resolve()
        written.append(result.preview)

    csv_text = pd.DataFrame(out_rows, columns=MASK_COLUMNS).to_csv(index=False, lineterminator="\n")
    record = {"stage": "masks build", "medsoft_aug": __version__, "versions": package_versions(), "options": opts,
              "inputs": {"index.csv": sha256_file(work / "index.csv")},
              "outputs": {"masks.csv": sha256_bytes(csv_text.encode())},
              "counts": {"total": n, "ok": ok, "failed": n - ok, "computed": ok - reused, "reused": reused,
                         "by_source": dict(by_source), "seg_choice": dict(seg_choice),
                         "low_peak": low_peak},
              "numbering": numbering_record,
              "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in fails],
              "fingerprints": fingerprints}
    atomic_write_json(work / "masks.json", record)
    atomic_write_text(work / "masks.csv", csv_text)
    result.masks_json, result.masks_csv = (work / "masks.json").resolve(), (work / "masks.csv").resolve()
    log.info("masks: %d ok, %d failed, %d reused of %d", ok, n - ok, reused, n)
    return result


def _safe_id(sid: str) -> bool:
    return bool(sid) and sid not in (".", "..") and not any(c in sid for c in "/\\\0")


def _kind(note: str) -> str:
    for k in ("disc label", "union of adjacent vertebrae", "total_mr class", "label"):
        if note.startswith(k):
            return k
    return "vertebra"
