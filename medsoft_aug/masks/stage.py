"""``masks build``: one soft mask per sample of WORK/index.csv (Eq. 1), from its seg + level or its x, y.

Reads WORK/index.csv, slices/{id}.npy (shape only) and seg/{id}.npy; writes WORK/masks/{id}.npy (float32
(H, W) in [0, 1], same shape as the slice), WORK/masks.json (run record) and WORK/masks.csv (MASK_COLUMNS), in
that order, each atomically. Normal (donor) samples get masks exactly like diseased ones.

Reruns: a sample whose inputs (index row, seg file hash, slice shape) and options are unchanged since the last
run, and whose mask file still has the sha256 that run recorded for it (masks.json ``fingerprints`` and
``mask_sha256``), is reused, not recomputed (``force=True`` recomputes everything); a replaced or damaged mask
file is rebuilt.

One set of options: every run builds all its masks into a staging folder inside WORK and swaps it in at the
end (masks.csv removed first, written last), so a run killed at any point leaves either the previous complete
outputs or no masks.csv - never masks of two runs under one record. WORK is locked for the run
(:func:`medsoft_aug.locks.folder_lock`); staging folders of killed runs are removed under the lock.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from .. import __version__
from ..errors import InputError, PartialFailure, SampleFailure, UsageError
from ..fsutil import atomic_save_npy, atomic_write_json, atomic_write_text, load_npy, sha256_bytes, sha256_file
from ..progress import ProgressFn, report
from ..versions import package_versions
from ..locks import folder_lock
from ..workdir import MASK_COLUMNS, read_index, read_masks
from .plan import (SOURCES, SamplePlan, check_options, compute_mask, decide_numbering, fingerprint, image_shape,
                   plan_all)
from .preview import select_preview, write_preview

log = logging.getLogger("medsoft_aug.masks")

__all__ = ["DEFAULT_BOX_MM", "DEFAULT_SIGMA_MM", "LOW_PEAK", "SOURCES", "MasksOptions", "MasksResult", "build_masks"]

# Defaults for lumbar MRI. A lumbar vertebral body is ~30-40 mm wide (AP) and ~25-30 mm tall: a 40 mm box
# centred on a level/lesion coordinate covers the body (or a disc and the adjacent endplates); sigma 3 mm
# softens the edge over ~+-6 mm (2 sigma), a fifth of the body, while its core stays at 1.
DEFAULT_SIGMA_MM = 3.0
DEFAULT_BOX_MM = 40.0
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


@dataclass
class MasksOptions:
    """Options of one ``masks build`` run; :meth:`check_inputs` validates them before any work."""

    work: Path
    source: str = "auto"
    sigma_mm: float = DEFAULT_SIGMA_MM
    box_mm: float = DEFAULT_BOX_MM
    dilate_mm: float = 0.0
    numbering: str = "auto"
    preview: Optional[Path] = None
    force: bool = False

    def check_inputs(self) -> None:
        """UsageError for bad options; InputError when WORK has no index.csv or holds something else where an
        output of this stage goes (a file where masks/ should be, a folder where masks.csv should be)."""
        check_options(self.source, self.sigma_mm, self.box_mm, self.dilate_mm, self.numbering)
        if self.preview is not None and self.preview.suffix.lower() != ".png":
            raise UsageError(f"--preview must name a .png file, got {str(self.preview)!r}")
        if not (self.work / "index.csv").is_file():
            read_index(self.work)  # raises the "run ingest first" error
        masks = self.work / "masks"
        if masks.is_symlink() or (masks.exists() and not masks.is_dir()):
            raise InputError(f"{masks} exists and is not a folder; move it away (masks build writes masks/ there)")
        for name in ("masks.csv", "masks.json"):
            if (self.work / name).exists() and not (self.work / name).is_file():
                raise InputError(f"{self.work / name} exists and is not a file; move it away")

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "sigma_mm": float(self.sigma_mm), "box_mm": float(self.box_mm),
                "dilate_mm": float(self.dilate_mm), "numbering": self.numbering}


@dataclass
class _Previous:
    """What the last complete run recorded: per sample its fingerprint (inputs + options), the sha256 of its
    mask file and its masks.csv row. A mask is reused only when all three still match."""

    fingerprints: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, work: Path) -> "_Previous":
        try:
            rec = json.loads((work / "masks.json").read_text(encoding="utf-8"))
            rows = read_masks(work).to_dict("records")
            return cls(dict(rec["fingerprints"]), dict(rec["mask_sha256"]),
                       {r["sample_id"]: r for r in rows if r.get("status") == "ok"})
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):
            return cls()  # no (complete, current-format) earlier run: recompute everything

    def reuse(self, sid: str, fp: str, mask: Path, staged: Path) -> Optional[dict]:
        """The previous masks.csv row when ``mask`` is still the file that run wrote for the same fingerprint
        (it is then linked into the staging folder), else None."""
        prev, sha = self.rows.get(sid), self.sha256.get(sid)
        if prev is None or sha is None or self.fingerprints.get(sid) != fp or not mask.is_file():
            return None
        if sha256_file(mask) != sha:
            log.warning("sample %s: masks/%s.npy does not match the hash recorded for it; rebuilding it", sid, sid)
            return None
        try:
            os.link(mask, staged)
        except OSError:  # no hard links on this filesystem
            shutil.copyfile(mask, staged)
        return prev


@dataclass
class _Run:
    """Per-sample outcomes of one run, filled by :func:`_build_all`."""

    rows: list[dict] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    by_source: collections.Counter = field(default_factory=collections.Counter)
    seg_choice: collections.Counter = field(default_factory=collections.Counter)
    low_peak: int = 0
    reused: int = 0
    preview_items: list[dict] = field(default_factory=list)


def _build_one(row: dict, plan: SamplePlan, opts: MasksOptions, num: str, prev: _Previous, staging: Path,
               run: _Run, rec: dict) -> None:
    """Mask of one sample into ``staging`` (reused from masks/ when verified, else computed); fills ``rec``."""
    sid = str(row["sample_id"])
    rec["mask_source"] = plan.source
    shape = image_shape(opts.work, row)
    fp = fingerprint(row, plan, shape, num, opts.record())
    staged = staging / f"{sid}.npy"
    old = None if opts.force else prev.reuse(sid, fp, opts.work / "masks" / f"{sid}.npy", staged)
    if old is not None:
        rec.update(area_px=old["area_px"], soft_sum=old["soft_sum"])
        run.reused += 1
    else:
        soft, area, kind = compute_mask(plan, shape, num, opts.sigma_mm, opts.box_mm, opts.dilate_mm)
        run.low_peak += int(float(soft.max()) < LOW_PEAK)
        atomic_save_npy(staged, soft)
        run.seg_choice[kind] += 1
        rec.update(area_px=area, soft_sum=round(float(soft.sum()), 3))
    rec.update(mask=f"masks/{sid}.npy", status="ok")
    run.fingerprints[sid], run.sha256[sid] = fp, sha256_file(staged)
    run.by_source[plan.source] += 1
    run.preview_items.append({"sample_id": sid, "label": row.get("label", ""), "image": row["image"],
                              "caption": f"{plan.source} {row.get('level', '')}".strip()})


def _build_all(rows: list[dict], plans: dict[str, SamplePlan], plan_errors: dict[str, str], per_sample: dict[str, str],
               opts: MasksOptions, staging: Path, on_progress: ProgressFn) -> _Run:
    prev = _Previous() if opts.force else _Previous.read(opts.work)
    run = _Run()
    for i, row in enumerate(rows):
        sid = str(row["sample_id"])
        rec = {c: "" for c in MASK_COLUMNS}
        rec.update(sample_id=sid, level=row.get("level", ""), sigma_mm=opts.sigma_mm, box_mm=opts.box_mm,
                   dilate_mm=opts.dilate_mm, status="error")
        try:
            if sid not in plans:
                raise InputError(plan_errors[sid])
            _build_one(row, plans[sid], opts, per_sample.get(sid, ""), prev, staging, run, rec)
        except InputError as e:
            rec["error"] = " ".join(str(e).split())
        run.rows.append(rec)
        report(on_progress, "masks", i + 1, len(rows))
    return run


def _swap_in(work: Path, staging: Path, record: dict, csv_text: str) -> None:
    """Replace masks/ by the staged folder, then write masks.json and masks.csv (last).

    masks.csv goes first, so a kill at any point leaves either the previous complete outputs or no masks.csv
    (and the next run starts over): never a masks.csv describing masks built with other options."""
    (work / "masks.csv").unlink(missing_ok=True)
    old = work / "masks"
    trash = work / f".masks-old-{os.getpid()}"
    if old.is_dir():
        old.rename(trash)
    staging.rename(old)
    try:
        atomic_write_json(work / "masks.json", record)
        atomic_write_text(work / "masks.csv", csv_text)
    except BaseException:  # e.g. disk full: take this run's masks out again (masks.csv stays absent)
        shutil.rmtree(old, ignore_errors=True)
        if trash.is_dir():
            trash.rename(old)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def build_masks(work: str | Path, *, source: str = "auto", sigma_mm: float = DEFAULT_SIGMA_MM,
                box_mm: float = DEFAULT_BOX_MM, dilate_mm: float = 0.0, numbering: str = "auto",
                preview: Optional[str | Path] = None, force: bool = False,
                on_progress: ProgressFn = None) -> MasksResult:
    """Build one soft mask per sample of ``WORK/index.csv``.

    source: ``seg`` (label map + level), ``coords`` (box of ``box_mm`` mm around x, y) or ``auto`` (seg when the
    row has a seg and a level, else coords when it has x, y; a level that names no vertebra is an error for that
    sample, never a box). sigma_mm: Gaussian sigma (mm, Eq. 1; 0 = hard mask). dilate_mm: dilate the hard mask
    first (mm). numbering: label numbering of the segs (``auto`` decides from the label values and records the
    decision). preview: write a contact sheet PNG there. force: recompute every mask.

    Returns MasksResult. Raises UsageError for bad options, InputError when index.csv is missing/invalid, WORK
    is in use by another run or no sample got a mask (nothing written), PartialFailure (with ``result``) when
    some samples failed.
    """
    # 1. options and WORK's layout
    opts = MasksOptions(Path(work), source, sigma_mm, box_mm, dilate_mm, numbering,
                        Path(preview) if preview is not None else None, force)
    opts.check_inputs()
    # 2. one run per WORK; staging folders of killed runs are removed under the lock
    with folder_lock(opts.work, "masks build", what="WORK"):
        for stale in [*opts.work.glob(".masks-staging-*"), *opts.work.glob(".masks-old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        # 3. read index.csv and decide each sample's source and numbering before any mask is computed
        df = read_index(opts.work)
        dup = df["sample_id"][df["sample_id"].duplicated()].tolist()
        if dup:
            raise InputError(f"index.csv has duplicate sample_id values (first: {dup[0]})")
        rows = df.to_dict("records")
        plans, plan_errors = plan_all(rows, opts.work, opts.source)
        per_sample, numbering_record = decide_numbering(plans, opts.numbering)
        # 4. build every mask into a staging folder (verified masks of the last run are linked, not recomputed)
        staging = Path(tempfile.mkdtemp(prefix=".masks-staging-", dir=opts.work))
        try:
            run = _build_all(rows, plans, plan_errors, per_sample, opts, staging, on_progress)
            # 5. preview, run record; swap the staging folder in and write masks.csv last
            result = _finish(opts, run, numbering_record, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if result.failures:
        raise PartialFailure(f"{result.failed} of {result.total} samples got no mask (listed in masks.csv)",
                             list(result.failures), result=result)
    return result


def _finish(opts: MasksOptions, run: _Run, numbering_record: dict, staging: Path) -> MasksResult:
    """Write the preview, then swap the staged masks in with masks.json and masks.csv (last); InputError when
    no sample got a mask (nothing written)."""
    work, out_rows = opts.work, run.rows
    n = len(out_rows)
    ok = sum(1 for r in out_rows if r["status"] == "ok")
    fails = [SampleFailure(r["sample_id"], r["error"]) for r in out_rows if r["status"] != "ok"]
    if ok == 0:
        first = "; ".join(str(f) for f in fails[:3])
        more = f" (and {len(fails) - 3} more)" if len(fails) > 3 else ""
        raise InputError(f"no mask could be built for any of {n} samples: {first}{more}" if n else
                         "index.csv has no samples")
    if run.low_peak:
        log.warning("%d soft mask(s) peak below %.1f (hard mask small next to sigma): consider a smaller "
                    "--sigma-mm or --dilate-mm", run.low_peak, LOW_PEAK)
    result = MasksResult(work=work.resolve(), total=n, ok=ok, failed=n - ok, computed=ok - run.reused,
                         reused=run.reused, failures=list(fails), options=opts.record(),
                         by_source=dict(run.by_source), numbering=numbering_record)
    if opts.preview is not None:
        idx = select_preview([(it["sample_id"], it["label"]) for it in run.preview_items])
        chosen = [run.preview_items[k] for k in idx]
        result.preview = write_preview(opts.preview, chosen, lambda it: (
            load_npy(work / it["image"]), load_npy(staging / f"{it['sample_id']}.npy"))).resolve()
    csv_text = pd.DataFrame(out_rows, columns=MASK_COLUMNS).to_csv(index=False, lineterminator="\n")
    record = {"stage": "masks build", "medsoft_aug": __version__, "versions": package_versions(),
              "options": opts.record(),
              "inputs": {"index.csv": sha256_file(work / "index.csv")},
              "outputs": {"masks.csv": sha256_bytes(csv_text.encode())},
              "counts": {"total": n, "ok": ok, "failed": n - ok, "computed": ok - run.reused, "reused": run.reused,
                         "by_source": dict(run.by_source), "seg_choice": dict(run.seg_choice),
                         "low_peak": run.low_peak},
              "numbering": numbering_record,
              "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in fails],
              "fingerprints": run.fingerprints, "mask_sha256": run.sha256}
    try:
        _swap_in(work, staging, record, csv_text)
    except BaseException:
        if result.preview is not None:
            result.preview.unlink(missing_ok=True)
        raise
    result.masks_json, result.masks_csv = (work / "masks.json").resolve(), (work / "masks.csv").resolve()
    log.info("masks: %d ok, %d failed, %d reused of %d", ok, n - ok, run.reused, n)
    return result
