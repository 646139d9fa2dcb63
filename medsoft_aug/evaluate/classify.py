"""Downstream classification (paper Table 1b): does the synthetic data help a classifier, compared honestly with
what users would do instead?

Methods, all a ResNet-18 evaluated on the real test split only:
  baseline    real training rows
  oversample  real training rows + duplicates of each class's rows up to the ``medsoft`` class counts
  classical   the same draws as ``oversample`` (same class counts, same number of training draws), each draw
              augmented (flip, small affine, intensity jitter)
  medsoft     real training rows + synthetic rows (excluding any whose donor is a test row or test patient)
Validation rows are not used. Writes ``OUT/metrics.json`` ({method: {metric: {"mean", "std"}}}),
``OUT/classify.json`` (per-seed values, classes, counts, leak check, options) and ``OUT/predictions.csv``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError, UsageError
from ..fsutil import atomic_write_csv, atomic_write_json, atomic_write_text, sha256_bytes, sha256_file
from ..progress import ProgressFn, report
from . import metrics as M
from .data import load_image, read_manifest, resolve, to_square_tensor

log = logging.getLogger("medsoft_aug.evaluate.classify")

METHODS = ("baseline", "oversample", "classical", "medsoft")


@dataclass
class ClassifyResult:
    out: Path
    metrics: dict[str, dict[str, dict[str, Optional[float]]]]   # the content of metrics.json
    info: dict[str, Any]                                        # the content of classify.json
    trained_ids: dict[str, set[str]] = field(default_factory=dict)  # method -> ids fed in training (all seeds)
    cached: bool = False


@dataclass
class Splits:
    """Row indices into the manifest for each role (after leak filtering)."""
    train: list[int]
    test: list[int]
    synthetic: list[int]
    excluded_synthetic: dict[str, int]


def select_rows(df: pd.DataFrame) -> Splits:
    """Real train / real test / usable synthetic rows. Synthetic rows are excluded when they are marked test,
    their donor is a test row, or their donor's patient is a test patient. Raises InputError without train or
    test rows."""
    real = df["origin"] == "real"
    train = df.index[real & (df["split"] == "train")].tolist()
    test = df.index[real & (df["split"] == "test")].tolist()
    if not test:
        raise InputError("manifest has no real test rows (split == test): nothing to evaluate on")
    if not train:
        raise InputError("manifest has no real training rows (split == train)")
    test_ids = set(df.loc[test, "sample_id"])
    excluded = {"split_test": 0, "donor_is_test_row": 0, "donor_is_test_patient": 0}
    pid = dict(zip(df["sample_id"], df["patient_id"])) if "patient_id" in df.columns else {}
    test_patients = {pid[s] for s in test_ids if pid.get(s)}
    synthetic = []
    for i in df.index[df["origin"] == "synthetic"]:
        row = df.loc[i]
        donor = row.get("donor_id", "")
        if row["split"] == "test":
            excluded["split_test"] += 1
        elif donor in test_ids:
            excluded["donor_is_test_row"] += 1
        elif pid.get(donor) and pid[donor] in test_patients:
            excluded["donor_is_test_patient"] += 1
        else:
            synthetic.append(i)
    if any(excluded.values()):
        log.warning("excluded %d synthetic rows that touch the test split: %s", sum(excluded.values()), excluded)
    if pid:
        overlap = {pid[s] for s in df.loc[train, "sample_id"] if pid.get(s)} & test_patients
        if overlap:
            log.warning("%d patient(s) have real rows in both train and test: the split is not by patient",
                        len(overlap))
    return Splits(train, test, synthetic, excluded)


def plan_draws(targets: np.ndarray, train: Sequence[int], synthetic: Sequence[int], class_names: list[str],
               seed: int) -> dict[str, list[int]]:
    """Training draws per method (positions into ``targets``, the class index of every row).

    ``oversample`` (and ``classical``) add copies of each class's real training rows, cycling through a seeded
    permutation, until every class has as many draws as in ``medsoft`` (real + synthetic); without synthetic rows
    the target is the largest class count.
    """
    k = len(class_names)
    tr = np.asarray(train, int)
    syn = np.asarray(synthetic, int)
    n_real = np.bincount(targets[tr], minlength=k)
    goal = n_real + np.bincount(targets[syn], minlength=k) if syn.size else np.full(k, n_real.max())
    rng = np.random.default_rng(seed)
    over = list(tr)
    for c in range(k):
        pool = tr[targets[tr] == c]
        extra = int(goal[c] - n_real[c])
        if extra <= 0:
            continue
        if pool.size == 0:
            log.warning("class %s has no real training rows: oversampling cannot add any", class_names[c])
            continue
        reps = int(np.ceil(extra / pool.size))
        cycle = np.concatenate([rng.permutation(pool) for _ in range(reps)])
        over.extend(cycle[:extra].tolist())
    return {"baseline": list(tr), "oversample": over, "classical": list(over), "medsoft": list(tr) + list(syn)}


def _fingerprint(manifest: Path, options: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(sha256_file(manifest).encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    h.update(__version__.encode())
    return h.hexdigest()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} requested but CUDA is not available")
    return device


def evaluate_classify(manifest: str | Path, out: str | Path, seeds: int = 3, epochs: int = 10,
                      resolution: int = 128, weights: Optional[str | Path] = None, batch_size: int = 32,
                      lr: float = 1e-3, seed: int = 0, device: str = "auto", methods: Sequence[str] = METHODS,
                      report_dir: Optional[str | Path] = None, force: bool = False,
                      on_progress: ProgressFn = None) -> ClassifyResult:
    """Train and evaluate the classifier for each method over ``seeds`` seeds (``seed``, ``seed + 1``, ...).

    ``resolution``: images are zero-padded to square and resized to (resolution, resolution) pixels.
    Reruns with the same manifest content and options return the stored result unless ``force``.
    Raises InputError (exit 3) for a missing or malformed manifest, unreadable images, no train or test rows.
    """
    import torch

    from .trainer import TrainConfig, predict, train_model

    manifest, out = Path(manifest), Path(out)
    if seeds < 1 or epochs < 1 or resolution < 16 or batch_size < 2:
        raise UsageError("need --seeds >= 1, --epochs >= 1, --resolution >= 16 and --batch-size >= 2")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    df = read_manifest(manifest)
    splits = select_rows(df)
    if weights is not None and not Path(weights).is_file():
        raise InputError(f"weights file {weights} not found")
    options = {"seeds": seeds, "epochs": epochs, "resolution": resolution, "batch_size": batch_size, "lr": lr,
               "seed": seed, "methods": list(methods),
               "weights": str(weights) if weights else None,
               "weights_sha256": sha256_file(weights) if weights else None}
    fp = _fingerprint(manifest, options)
    if not force and (out / "metrics.json").is_file() and (out / "classify.json").is_file():
        try:
            info = json.loads((out / "classify.json").read_text())
            if info.get("fingerprint") == fp and info.get("metrics_sha256") == sha256_file(out / "metrics.json"):
                log.info("%s is up to date (same manifest and options); use --force to recompute", out)
                res = ClassifyResult(out, json.loads((out / "metrics.json").read_text()), info, cached=True)
                return _with_report(res, report_dir, manifest)
        except (OSError, json.JSONDecodeError):
            pass
    dev = _resolve_device(device)

    used = splits.train + splits.test + splits.synthetic
    class_names = sorted(set(df.loc[splits.train + splits.synthetic, "label"]) | set(df.loc[splits.test, "label"]))
    if len(class_names) < 2:
        raise InputError(f"need at least 2 classes, found {class_names}")
    cidx = {c: i for i, c in enumerate(class_names)}
    pos = {row: j for j, row in enumerate(used)}          # manifest row -> position in the image tensor
    mdir = manifest.parent
    t0 = time.time()
    tensors = []
    for j, row in enumerate(used):
        sid = df.at[row, "sample_id"]
        tensors.append(to_square_tensor(load_image(resolve(mdir, df.at[row, "image"]), sid), resolution))
        report(on_progress, "load images", j + 1, len(used))
    images = torch.stack(tensors)                                            # (N, 1, R, R)
    targets_np = np.array([cidx[df.at[row, "label"]] for row in used], int)  # (N,)
    targets = torch.as_tensor(targets_np)
    ids = [df.at[row, "sample_id"] for row in used]
    p_train = [pos[r] for r in splits.train]
    p_syn = [pos[r] for r in splits.synthetic]
    p_test = torch.as_tensor([pos[r] for r in splits.test])
    y_test = targets_np[p_test.numpy()]
    forbidden = set(df.loc[splits.test, "sample_id"]) | (set(df.loc[df["origin"] == "synthetic", "sample_id"])
                                                         - set(ids[p] for p in p_syn))
    t_load = time.time() - t0

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, device=dev,
                      weights=Path(weights) if weights else None)
    per_seed: dict[str, list[dict[str, Optional[float]]]] = {m: [] for m in methods}
    method_info: dict[str, dict[str, Any]] = {}
    trained: dict[str, set[str]] = {m: set() for m in methods}
    pred_rows = []
    total, done = len(methods) * seeds * epochs, 0

    def step() -> None:
        nonlocal done
        done += 1
        report(on_progress, "classify", done, total)

    for s in range(seed, seed + seeds):
        draws = plan_draws(targets_np, p_train, p_syn, class_names, s)
        for m in methods:
            model, rec = train_model(images, targets, ids, draws[m], len(class_names), cfg,
                                     seed=s * 1000 + METHODS.index(m), augment_draws=(m == "classical"),
                                     on_step=step)
            leaked = rec.fed_ids & forbidden
            if leaked:   # internal invariant: plan_draws only uses train and filtered synthetic rows
                raise RuntimeError(f"leak: {len(leaked)} test or excluded rows were fed to {m}")
            trained[m] |= rec.fed_ids
            proba = predict(model, images[p_test], dev).numpy()
            per_seed[m].append(M.classification_metrics(y_test, proba))
            mi = method_info.setdefault(m, {"n_draws_per_epoch": len(draws[m]),
                                            "n_unique_train": len(set(draws[m])),
                                            "class_draws": dict(zip(class_names, np.bincount(
                                                targets_np[draws[m]], minlength=len(class_names)).tolist())),
                                            "final_loss": []})
            mi["final_loss"].append(rec.final_loss)
            for r, sid in enumerate(df.loc[splits.test, "sample_id"]):
                pred_rows.append({"method": m, "seed": s, "sample_id": sid, "label": class_names[y_test[r]],
                                  "pred": class_names[int(proba[r].argmax())],
                                  **{f"prob_{c}": float(proba[r, k]) for k, c in enumerate(class_names)}})
            del model

    metrics_json = {m: {k: M.mean_std([v[k] for v in per_seed[m]]) for k in M.METRIC_NAMES} for m in methods}
    info = {
        "tool": "medsoft-aug evaluate classify", "version": __version__, "fingerprint": fp,
        "manifest": str(manifest), "manifest_sha256": sha256_file(manifest), "options": options, "device": dev,
        "class_names": class_names, "n_test": len(splits.test),
        "test_class_counts": dict(zip(class_names, np.bincount(y_test, minlength=len(class_names)).tolist())),
        "n_real_train": len(splits.train), "n_synthetic_used": len(splits.synthetic),
        "excluded_synthetic": splits.excluded_synthetic,
        "leak_check": {"test_or_excluded_rows_fed": 0, "checked_ids": sum(len(v) for v in trained.values())},
        "methods": method_info,
        "per_seed": {m: [{"seed": seed + i, **v} for i, v in enumerate(per_seed[m])] for m in methods},
        "notes": ["precision, recall and f1 are macro averages; auc is one-vs-rest macro for more than 2 classes",
                  "std is the sample standard deviation over seeds (ddof=1)",
                  "validation rows are not used; the model of the last epoch is evaluated"],
        "timing_s": {"load": round(t_load, 3), "total": round(time.time() - t0, 3)},
    }
    if not splits.synthetic and "medsoft" in methods:
        info["notes"].append("no usable synthetic rows: medsoft trained on the real training rows only")
        log.warning("manifest has no usable synthetic rows: medsoft equals the baseline data")
    metrics_text = json.dumps(metrics_json, indent=2) + "\n"
    info["metrics_sha256"] = sha256_bytes(metrics_text.encode("utf-8"))
    atomic_write_csv(out / "predictions.csv", pd.DataFrame(pred_rows))
    atomic_write_json(out / "classify.json", info)
    atomic_write_text(out / "metrics.json", metrics_text)
    return _with_report(ClassifyResult(out, metrics_json, info, trained), report_dir, manifest)


def _with_report(result: ClassifyResult, report_dir: Optional[str | Path], manifest: Path) -> ClassifyResult:
    if report_dir is not None:
        from .report import write_report

        write_report(report_dir, classify_out=result.out, manifest=manifest)
    return result
