"""``ingest``: labels CSV + images -> WORK/index.csv, slices/{id}.npy, seg/{id}.npy, ingest.json.

Order of work (nothing is written before step 4; index.csv is written last):

1. check options and paths (:meth:`IngestOptions.check_inputs`);
2. parse the layout's CSVs into :class:`SampleSpec` rows (no pixels); check the normal class exists;
3. take WORK's run lock (:func:`medsoft_aug.locks.folder_lock`): a second run on WORK is refused (exit 3);
4. check WORK holds no ingest of *different* inputs (unless ``force``); assign splits from the CSV alone (so an
   unreadable image never moves another patient's split); remove staging folders of killed runs;
5. stream the samples one at a time (only the current volume and label map are cached) into a staging folder
   inside WORK; per-sample problems become listed failures, reader warnings are recorded in ingest.json;
6. commit: remove the old index.csv, move the staged slices into place, write ingest.json, then index.csv.

A fatal error or interrupt before the commit removes the staging folder (and WORK, if this run created it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import FailureList, InputError, PartialFailure, SampleFailure, UsageError
from ..fsutil import atomic_save_npy, atomic_write_csv, atomic_write_json, sha256_file
from ..locks import FolderInUseError, folder_lock
from ..progress import ProgressFn, report
from ..versions import package_versions
from ..workdir import INDEX_COLUMNS
from .generic import parse_generic
from .process import SampleError, SampleReader, ingest_one
from .rsna2024 import default_paths, parse_rsna2024, resolve_conditions
from .samples import SampleSpec, safe_is_dir, safe_resolve
from .splits import SPLITS, assign_splits, check_fractions

log = logging.getLogger("medsoft_aug.ingest")

FORMATS = ("generic", "rsna2024")
_OUTPUTS = ("index.csv", "ingest.json", "slices", "seg")


@dataclass
class IngestResult:
    """What one ingest run produced. ``counts[label][split]`` = number of samples."""

    work: Path
    format: str
    normal_class: str
    n_samples: int
    counts: dict[str, dict[str, int]]
    failures: list[SampleFailure] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    replaced_previous: bool = False
    warnings: list[dict[str, str]] = field(default_factory=list)

    @property
    def split_counts(self) -> dict[str, int]:
        return {s: sum(c.get(s, 0) for c in self.counts.values()) for s in SPLITS}

    def to_dict(self) -> dict[str, Any]:
        return {"work": str(self.work), "format": self.format, "normal_class": self.normal_class,
                "n_samples": self.n_samples, "n_failed": len(self.failures), "counts": self.counts,
                "split_counts": self.split_counts,
                "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in self.failures],
                "skipped": self.skipped, "paths": self.paths, "replaced_previous": self.replaced_previous,
                "warnings": self.warnings}


def _fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def _existing_outputs(work: Path) -> list[str]:
    return [n for n in _OUTPUTS if (work / n).exists()]


def _check_work(work: Path, fingerprint: str, force: bool) -> tuple[bool, bool]:
    """(WORK holds earlier ingest outputs this run replaces, they came from different inputs or options).

    InputError when they differ and ``force`` is not set."""
    if work.exists() and not work.is_dir():
        raise InputError(f"--out {work} exists and is not a folder")
    present = _existing_outputs(work) if work.is_dir() else []
    if not present:
        return False, False
    old = None
    try:
        old = json.loads((work / "ingest.json").read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        pass
    if old != fingerprint and not force:
        raise InputError(f"{work} already holds an ingest of different inputs or options ({', '.join(present)}); "
                         "use --force to replace it or choose another --out")
    return True, old != fingerprint


def _splits(specs: list[SampleSpec], test_fraction: float, val_fraction: float, seed: int) -> dict[str, str]:
    """sample_id -> split: the CSV's split column when given (a patient spanning several splits is warned about,
    not changed), else a deterministic patient-level split over every row with a label."""
    if specs and all(s.split for s in specs):
        per_patient: dict[str, set[str]] = defaultdict(set)
        for s in specs:
            per_patient[s.patient_id].add(s.split)
        mixed = sum(1 for ss in per_patient.values() if len(ss) > 1)
        if mixed:
            log.warning("the labels CSV puts %d patient(s) in more than one split (patient-level leakage)", mixed)
        return {s.sample_id: s.split for s in specs}
    labels_of: dict[str, set[str]] = defaultdict(set)
    for s in specs:
        labels_of[s.patient_id].update([s.label] if s.label else [])
    by_patient = assign_splits(labels_of, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    return {s.sample_id: by_patient[s.patient_id] for s in specs}


def _row(spec: SampleSpec, split: str, out: dict[str, Any]) -> dict[str, Any]:
    fmt = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    row = {
        "sample_id": spec.sample_id, "patient_id": spec.patient_id, "study_id": spec.study_id,
        "label": spec.label, "split": split, "image": f"slices/{spec.sample_id}.npy",
        "seg": f"seg/{spec.sample_id}.npy" if out["seg"] is not None else "", "level": spec.level,
        "x": fmt(spec.x), "y": fmt(spec.y), "description": spec.description, "condition": spec.condition,
        "severity": spec.severity, "source": spec.image.replace("\\", "/"), "source_format": out["source_format"],
        "slice_index": "" if out["slice_index"] is None else str(out["slice_index"]),
        "instance": spec.instance, "series_id": spec.series_id, "height": str(out["height"]),
        "width": str(out["width"]), "spacing_row": fmt(out["spacing_row"]), "spacing_col": fmt(out["spacing_col"]),
        "window_lo": fmt(out["window_lo"]), "window_hi": fmt(out["window_hi"]), "geometry": out["geometry"],
    }
    return {c: row[c] for c in INDEX_COLUMNS}


class _LinkCache:
    """Remembers (source slice key -> staged file) for the last ``size`` slices written, so a sample on a source
    slice already saved (RSNA: several levels or conditions on one instance) becomes a hard link to that file:
    disk use does not grow with rows per slice. Holds paths only, never pixels."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._map: OrderedDict[tuple, Path] = OrderedDict()

    def save(self, path: Path, array: np.ndarray, key: tuple) -> None:
        prev = self._map.get(key)
        if prev is not None:
            try:
                os.link(prev, path)
                return
            except OSError:  # filesystem without hard links: write a copy
                pass
        atomic_save_npy(path, array)
        self._map[key] = path
        self._map.move_to_end(key)
        while len(self._map) > self.size:
            self._map.popitem(last=False)


def _commit(work: Path, stage_dir: Path, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Move staged outputs into WORK. index.csv is removed first (a killed commit never leaves an index pointing
    at missing or foreign slices) and written last, atomically."""
    (work / "index.csv").unlink(missing_ok=True)
    for name in ("ingest.json", "slices", "seg"):
        p = work / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for name in ("slices", "seg"):
        if (stage_dir / name).exists():
            (stage_dir / name).rename(work / name)
    atomic_write_json(work / "ingest.json", record)
    atomic_write_csv(work / "index.csv", pd.DataFrame(rows, columns=INDEX_COLUMNS))





@dataclass
class IngestOptions:
    """Resolved options of one ingest run; :meth:`check_inputs` validates all of them before any work."""

    labels: Path
    images: Path
    out: Path
    fmt: str = "generic"
    normal_class: str = "normal"
    coords: Optional[Path] = None
    series_descriptions: Optional[Path] = None
    conditions: Optional[Sequence[str]] = None
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    split_seed: int = 0
    window: tuple[float, float] = (0.5, 99.5)
    force: bool = False

    def check_inputs(self) -> None:
        """UsageError for bad options, InputError for unusable paths (names the option and the value)."""
        if self.fmt not in FORMATS:
            raise UsageError(f"unknown format {self.fmt!r}; choose from {', '.join(FORMATS)}")
        if self.fmt == "generic" and (self.coords is not None or self.series_descriptions is not None
                                      or self.conditions):
            raise UsageError("--coords, --series-descriptions and --conditions apply to --format rsna2024 only")
        if not str(self.normal_class).strip():
            raise UsageError("--normal-class must not be empty")
        check_fractions(self.test_fraction, self.val_fraction)
        w = self.window
        if len(w) != 2 or not (0.0 <= w[0] < w[1] <= 100.0):
            raise UsageError(f"window percentiles must satisfy 0 <= lo < hi <= 100, got {tuple(w)}")
        if not safe_is_dir(self.images):
            raise InputError(f"--images {self.images} is not a folder")
        images_r, work_r = safe_resolve(self.images, "--images"), safe_resolve(self.out, "--out")
        if work_r == images_r or images_r in work_r.parents:
            raise UsageError("--out must not be inside --images (inputs are never written to)")

    def record(self) -> dict[str, Any]:
        return {"format": self.fmt, "normal_class": self.normal_class, "conditions": list(self._conditions()),
                "test_fraction": float(self.test_fraction), "val_fraction": float(self.val_fraction),
                "split_seed": int(self.split_seed), "window_percentiles": list(self.window),
                "images": str(safe_resolve(self.images, "--images"))}

    def _conditions(self) -> tuple[str, ...]:
        return resolve_conditions(self.conditions) if self.fmt == "rsna2024" else ()


def _parse(opts: IngestOptions, notes: list[dict[str, str]]) -> tuple[list[SampleSpec], dict[str, Path],
                                                                       dict[str, int]]:
    """Sample specs from the layout's CSVs (no image opened): (specs, input CSV paths, skipped-row counts)."""
    if opts.fmt == "generic":
        specs = parse_generic(opts.labels, notes=notes)
        return specs, {"labels": opts.labels}, {}
    rin = default_paths(opts.labels, opts.coords, opts.series_descriptions)
    conds = opts._conditions()
    specs = parse_rsna2024(rin, conditions=conds, normal_class=opts.normal_class)
    if not specs:
        raise InputError(f"no coordinate rows with a severity for conditions {', '.join(conds)}")
    skipped = dict(rin.skipped)
    if skipped.get("empty_severity") or skipped.get("study_not_in_labels"):
        log.info("skipped coordinate rows: %s", skipped)
    return specs, {"labels": rin.labels, "coords": rin.coords, "series_descriptions": rin.series_descriptions}, skipped


def _check_normal(specs: list[SampleSpec], normal_class: str) -> None:
    present = sorted({s.label for s in specs if s.label})
    if normal_class not in present:
        raise InputError(f"normal class {normal_class!r} not found among the labels ({', '.join(present[:10])}"
                         f"{', ...' if len(present) > 10 else ''}); set --normal-class")


def _stream(specs: list[SampleSpec], split_of: dict[str, str], opts: IngestOptions, stage_dir: Path,
            notes: list[dict[str, str]], on_progress: ProgressFn) -> tuple[list[dict[str, Any]], FailureList]:
    """Ingest every sample into ``stage_dir`` (one volume in memory at a time): (index rows, failures).
    Reader warnings (e.g. sform/qform disagreement) are logged and appended to ``notes``."""
    failures, rows = FailureList(), []
    reader = SampleReader(safe_resolve(opts.images, "--images"))
    links = _LinkCache()
    report(on_progress, "ingest", 0, len(specs))
    for n, spec in enumerate(specs, start=1):
        try:
            res = ingest_one(spec, reader, opts.window)
        except SampleError as e:
            failures.add(spec.sample_id, str(e))
            log.debug("sample %s failed: %s", spec.sample_id, e)
        else:
            for w in res.pop("warnings", ()):
                log.warning("sample %s: %s", spec.sample_id, w)
                notes.append({"sample_id": spec.sample_id, "warning": w})
            key = ("image", spec.image, res["slice_index"])
            links.save(stage_dir / "slices" / f"{spec.sample_id}.npy", res.pop("image"), key)
            if res.get("seg") is not None:
                links.save(stage_dir / "seg" / f"{spec.sample_id}.npy", res["seg"], ("seg", spec.seg, *key))
            rows.append(_row(spec, split_of[spec.sample_id], res))
        report(on_progress, "ingest", n, len(specs))
    reader.clear()
    if not rows:
        first = failures.items[0] if failures.items else "no samples"
        raise InputError(f"no sample could be ingested ({len(failures)} failed); first: {first}")
    return rows, failures


def _result(opts: IngestOptions, rows: list[dict[str, Any]], failures: FailureList, skipped: dict[str, int],
            replacing: bool, has_seg: bool) -> IngestResult:
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["label"], {s: 0 for s in SPLITS})[r["split"]] += 1
    counts = {k: counts[k] for k in sorted(counts, key=lambda c: (c != opts.normal_class, c))}
    work = opts.out
    return IngestResult(
        work=work, format=opts.fmt, normal_class=opts.normal_class, n_samples=len(rows), counts=counts,
        failures=list(failures.items), skipped=skipped, replaced_previous=replacing,
        paths={"index": str(work / "index.csv"), "record": str(work / "ingest.json"),
               "slices": str(work / "slices"), "seg": str(work / "seg") if has_seg else ""})


def _record(opts: IngestOptions, result: IngestResult, fingerprint: str, input_hashes: dict,
            notes: list[dict[str, str]]) -> dict[str, Any]:
    return {"stage": "ingest", "versions": package_versions(), "fingerprint": fingerprint,
            "options": opts.record(), "inputs": input_hashes, "normal_class": opts.normal_class,
            "n_samples": result.n_samples,
            "counts": result.counts, "split_counts": result.split_counts, "skipped": result.skipped,
            "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in result.failures],
            "warnings": notes,
            "normalization": {"method": "percentile window of each 2D slice, clipped to [0, 1]",
                              "percentiles": list(opts.window)},
            "slicing": "3D: canonical RAS+ sagittal slice, display = vol[i].T[::-1, ::-1]; 2D: as stored"}


def _run_locked(opts: IngestOptions, specs: list[SampleSpec], fingerprint: str, input_hashes: dict,
                skipped: dict[str, int], notes: list[dict[str, str]], on_progress: ProgressFn) -> IngestResult:
    """Steps 4-6 of :func:`ingest`, run while holding WORK's lock."""
    work = opts.out
    replacing, changed = _check_work(work, fingerprint, opts.force)
    split_of = _splits(specs, opts.test_fraction, opts.val_fraction, opts.split_seed)
    for stale in work.glob(".ingest-partial-*"):  # left by a killed (SIGKILL) earlier run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    stage_dir = Path(tempfile.mkdtemp(prefix=".ingest-partial-", dir=work))
    committed = False
    try:
        rows, failures = _stream(specs, split_of, opts, stage_dir, notes, on_progress)
        result = _result(opts, rows, failures, skipped, replacing, (stage_dir / "seg").exists())
        result.warnings = notes
        record = _record(opts, result, fingerprint, input_hashes, notes)
        committed = True
        _commit(work, stage_dir, record, rows)
    except BaseException:
        if committed:
            (work / "index.csv").unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    stale = [n for n in ("masks.csv", "masks", "masks.json") if (work / n).exists()]
    if changed and stale:
        log.warning("%s: outputs of later stages (%s) predate this ingest; rebuild them", work, ", ".join(stale))
    return result


def ingest(labels: str | Path, images: str | Path, out: str | Path, *, fmt: str = "generic",
           normal_class: str = "normal", coords: Optional[str | Path] = None,
           series_descriptions: Optional[str | Path] = None, conditions: Optional[Sequence[str]] = None,
           test_fraction: float = 0.2, val_fraction: float = 0.0, split_seed: int = 0,
           window: Sequence[float] = (0.5, 99.5), force: bool = False,
           on_progress: ProgressFn = None) -> IngestResult:
    """Ingest a labelled imaging dataset into WORK (see module docstring and ``medsoft_aug.workdir``).

    Args: labels (labels CSV, or RSNA ``train.csv``), images (root folder; every CSV image path is relative to
    it and must stay inside it), out (WORK), fmt (``generic`` | ``rsna2024``), normal_class (must occur among
    the labels), coords / series_descriptions / conditions (rsna2024 only; default: CSVs beside ``labels``, the
    three sagittal conditions), test_fraction / val_fraction / split_seed (patient-level split when the CSV has
    no ``split`` column), window ((lo, hi) percentiles of each 2D slice mapped to [0, 1]), force (replace an
    ingest of different inputs), on_progress (``fn("ingest", done, total)``).

    Returns the IngestResult. Raises InputError (nothing written) when no sample could be ingested or WORK is
    in use by another run (:class:`~medsoft_aug.locks.FolderInUseError`), and PartialFailure (outputs written
    for the good samples, ``.result`` set) when some failed.
    """
    # 1. options and paths
    opts = IngestOptions(Path(labels), Path(images), Path(out), fmt, normal_class,
                         Path(coords) if coords else None, Path(series_descriptions) if series_descriptions else None,
                         conditions, test_fraction, val_fraction, split_seed,
                         (float(window[0]), float(window[1])) if len(window) == 2 else tuple(window), force)
    opts.check_inputs()
    # 2. the CSVs alone: sample specs, the normal class, input hashes and the run's fingerprint
    notes: list[dict[str, str]] = []
    specs, inputs, skipped = _parse(opts, notes)
    _check_normal(specs, opts.normal_class)
    input_hashes = {k: {"path": str(p.resolve()), "sha256": sha256_file(p)} for k, p in inputs.items()}
    fingerprint = _fingerprint({"options": opts.record(),
                                "inputs": {k: v["sha256"] for k, v in input_hashes.items()}})
    # 3. lock WORK (a second run is refused); 4-6. check WORK, stream samples into staging, commit
    created_work = not opts.out.exists()
    try:
        with folder_lock(opts.out, "ingest", what="--out"):
            result = _run_locked(opts, specs, fingerprint, input_hashes, skipped, notes, on_progress)
    except BaseException as e:
        if created_work and not isinstance(e, FolderInUseError):
            shutil.rmtree(opts.out, ignore_errors=True)
        raise
    if result.failures:
        raise PartialFailure(f"{len(result.failures)} of {len(specs)} samples failed; outputs written for the "
                             f"other {result.n_samples} (listed in {opts.out / 'ingest.json'})",
                             list(result.failures), result)
    return result
