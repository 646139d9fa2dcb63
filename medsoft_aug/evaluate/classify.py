"""Downstream classification (paper Table 1b): does the synthetic data help a classifier, compared honestly with
what users would do instead?

Methods, all a ResNet-18 evaluated on the same real test split only:
  baseline    real training rows
  oversample  real training rows + duplicates of each class's rows up to the class counts of the first named
              manifest (real + synthetic)
  classical   the same draws as ``oversample``, each draw augmented without flips (small rotation, scaling,
              translation, gamma, contrast, brightness, noise: :class:`~.trainer.ClassicalAugment`)
  NAME        one per named manifest (``medsoft``, ``no-msc``, ``no-smis``, ...): real training rows + that
              manifest's synthetic rows (excluding any whose donor is a test row or a test patient)
Every manifest must hold the same real rows (same test samples, labels and pixels; same training samples).
Every method trains with the same seeds (``seed``, ``seed + 1``, ...), so methods are compared by a paired test
over seeds. Validation rows are not used.

Writes ``OUT/metrics.json`` ({method: {metric: {"mean", "std"}, "per_class": {class: {metric: {"mean", "std"}}}}},
``OUT/classify.json`` (per-seed values, paired comparisons, classes, counts, leak check, options) and
``OUT/predictions.csv``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError, UsageError
from ..fsutil import atomic_write_csv, atomic_write_json, atomic_write_text, sha256_bytes, sha256_file
from ..progress import ProgressFn, report
from . import metrics as M
from .classify_inputs import (BUILTIN, DEFAULT_NAME, METHODS, NAME_RE, Inputs, Pool, Splits, load_pool,
                              parse_manifest_arg, plan_draws, same_real_rows, select_rows)
from .data import read_manifest

log = logging.getLogger("medsoft_aug.evaluate.classify")

__all__ = ["BUILTIN", "DEFAULT_NAME", "METHODS", "ClassifyOptions", "ClassifyResult", "Inputs", "Pool", "Splits",
           "compare_methods", "evaluate_classify", "parse_manifest_arg", "plan_draws", "select_rows"]

COMPARED = ("minority_f1", "f1")               # metrics of the paired comparisons, the verdict's first


@dataclass
class ClassifyResult:
    out: Path
    metrics: dict[str, dict[str, Any]]          # the content of metrics.json
    info: dict[str, Any]                        # the content of classify.json
    trained_ids: dict[str, set[str]] = field(default_factory=dict)  # method -> ids fed in training (all seeds)
    cached: bool = False


# ------------------------------------------------------------------------------------------------ inputs
@dataclass
class ClassifyOptions:
    """Options of :func:`evaluate_classify` (validated by :meth:`check_inputs` before any work)."""
    manifests: dict[str, Path]                  # generated method name -> manifest.csv, in order
    out: Path
    seeds: int = 3
    epochs: int = 10
    resolution: int = 128                       # images zero-padded to square, resized to (R, R) pixels
    weights: Optional[Path] = None
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    methods: Optional[tuple[str, ...]] = None   # None: the built-ins and every named manifest
    normal_class: Optional[str] = None          # None: balance.json beside the first manifest, else "normal"
    report_dir: Optional[Path] = None
    force: bool = False

    def check_inputs(self) -> "Inputs":
        """Validate the options (UsageError), read every manifest and check that they share their real rows
        (InputError naming the manifest); returns what the run needs."""
        if self.seeds < 1 or self.epochs < 1 or self.resolution < 16 or self.batch_size < 2:
            raise UsageError("need --seeds >= 1, --epochs >= 1, --resolution >= 16 and --batch-size >= 2")
        if not self.manifests:
            raise UsageError("give at least one --manifest")
        clash = [n for n in self.manifests if n in BUILTIN or not NAME_RE.match(n)]
        if clash:
            raise UsageError(f"manifest name(s) {clash} clash with a built-in method ({', '.join(BUILTIN)}) or "
                             "are not letters, digits, '-' or '_'")
        known = (*BUILTIN, *self.manifests)
        self.methods = tuple(self.methods) if self.methods else known
        unknown = [m for m in self.methods if m not in known]
        if unknown or len(set(self.methods)) != len(self.methods):
            raise UsageError(f"unknown or repeated method(s) {unknown or list(self.methods)}; "
                             f"choose from {', '.join(known)}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise InputError(f"weights file {self.weights} not found")
        frames = {n: read_manifest(p) for n, p in self.manifests.items()}
        splits = {n: select_rows(df) for n, df in frames.items()}
        first = next(iter(frames))
        for n in list(frames)[1:]:
            same_real_rows(frames[first], splits[first], frames[n], splits[n], (first, n), self.manifests)
        df0, s0 = frames[first], splits[first]
        labels = set(df0.loc[s0.train + s0.test, "label"])
        labels |= {lab for n in frames for lab in frames[n].loc[splits[n].synthetic, "label"]}
        if len(labels) < 2:
            raise InputError(f"need at least 2 classes, found {sorted(labels)}")
        return Inputs(frames, splits, sorted(labels), self._normal_class(sorted(labels)))

    def _normal_class(self, classes: list[str]) -> str:
        given = self.normal_class
        if given is None:
            bal = Path(next(iter(self.manifests.values()))).parent / "balance.json"
            try:
                given = json.loads(bal.read_text("utf-8")).get("normal_class") if bal.is_file() else None
            except (OSError, ValueError):
                given = None
        given = given or "normal"
        if given not in classes:
            raise UsageError(f"normal class {given!r} is not among the classes {classes}: give --normal-class")
        return given


def _fingerprint(opts: ClassifyOptions, options: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name, path in opts.manifests.items():
        h.update(f"{name}={sha256_file(path)};".encode())
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


# ------------------------------------------------------------------------------------------------ the stage
def evaluate_classify(manifest: str | Path | Mapping[str, str | Path], out: str | Path, seeds: int = 3,
                      epochs: int = 10, resolution: int = 128, weights: Optional[str | Path] = None,
                      batch_size: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                      methods: Optional[Sequence[str]] = None, normal_class: Optional[str] = None,
                      report_dir: Optional[str | Path] = None, force: bool = False,
                      on_progress: ProgressFn = None) -> ClassifyResult:
    """Train and evaluate the classifier for each method over ``seeds`` seeds (``seed``, ``seed + 1``, ...).

    ``manifest``: one manifest.csv (the ``medsoft`` method) or {name: manifest.csv} (one generated method each,
    e.g. ``{"medsoft": A, "no-msc": B, "no-smis": C}``); the built-in baseline, oversample and classical methods
    use the real rows, which must be identical in every manifest. Reruns with the same manifests and options
    return the stored result unless ``force``. Raises UsageError (exit 2) for bad options, InputError (exit 3) for
    a missing or malformed manifest, unreadable images, no train or test rows, or manifests whose real rows differ.
    """
    # 1. options, inputs and the real-split check, before any work
    named = {DEFAULT_NAME: manifest} if isinstance(manifest, (str, Path)) else dict(manifest)
    opts = ClassifyOptions({n: Path(p) for n, p in named.items()}, Path(out), seeds, epochs, resolution,
                           Path(weights) if weights else None, batch_size, lr, seed, device,
                           tuple(methods) if methods else None, normal_class,
                           Path(report_dir) if report_dir else None, force)
    inputs = opts.check_inputs()
    record = _options_record(opts, inputs)
    fp = _fingerprint(opts, record)
    # 2. a finished run with the same inputs and options is reused
    cached = None if opts.force else _cached(opts.out, fp)
    if cached is not None:
        return _with_report(cached, opts)
    dev = _resolve_device(opts.device)
    # 3. images of every real row and usable synthetic row, as one tensor
    t0 = time.time()
    pool = load_pool(opts.manifests, opts.resolution, inputs, on_progress)
    t_load = time.time() - t0
    # 4. train and test every method with every seed
    runs = _train_all(opts, inputs, pool, dev, on_progress)
    # 5. mean +- std per metric and class, paired comparisons over seeds
    metrics_json = _summarize(opts.methods, runs.per_seed, inputs)
    comparisons = compare_methods(opts.methods, runs.per_seed)
    info = _info(opts, inputs, pool, runs, record, fp, dev, comparisons,
                 {"load": round(t_load, 3), "total": round(time.time() - t0, 3)})
    # 6. outputs, each written atomically (metrics.json last, its hash in classify.json)
    metrics_text = json.dumps(metrics_json, indent=2) + "\n"
    info["metrics_sha256"] = sha256_bytes(metrics_text.encode("utf-8"))
    atomic_write_csv(opts.out / "predictions.csv", pd.DataFrame(runs.pred_rows))
    atomic_write_json(opts.out / "classify.json", info)
    atomic_write_text(opts.out / "metrics.json", metrics_text)
    return _with_report(ClassifyResult(opts.out, metrics_json, info, runs.trained), opts)


def _options_record(opts: ClassifyOptions, inputs: Inputs) -> dict[str, Any]:
    return {"seeds": opts.seeds, "epochs": opts.epochs, "resolution": opts.resolution,
            "batch_size": opts.batch_size, "lr": opts.lr, "seed": opts.seed, "methods": list(opts.methods),
            "manifest_names": list(opts.manifests), "normal_class": inputs.normal_class,
            "weights": str(opts.weights) if opts.weights else None,
            "weights_sha256": sha256_file(opts.weights) if opts.weights else None}


def _cached(out: Path, fp: str) -> Optional[ClassifyResult]:
    if not (out / "metrics.json").is_file() or not (out / "classify.json").is_file():
        return None
    try:
        info = json.loads((out / "classify.json").read_text())
        if info.get("fingerprint") == fp and info.get("metrics_sha256") == sha256_file(out / "metrics.json"):
            log.info("%s is up to date (same manifests and options); use --force to recompute", out)
            return ClassifyResult(out, json.loads((out / "metrics.json").read_text()), info, cached=True)
    except (OSError, json.JSONDecodeError):
        pass
    return None


@dataclass
class Runs:
    per_seed: dict[str, list[dict[str, Any]]]
    method_info: dict[str, dict[str, Any]]
    trained: dict[str, set[str]]
    pred_rows: list[dict[str, Any]]


def _train_all(opts: ClassifyOptions, inputs: Inputs, pool: Pool, dev: str, on_progress: ProgressFn) -> Runs:
    """Every method x every seed; the same training seed for every method (paired by seed)."""
    import torch

    from .trainer import CLASSICAL, TrainConfig, predict, train_model

    cfg = TrainConfig(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, device=dev, weights=opts.weights)
    names, k = inputs.class_names, len(inputs.class_names)
    runs = Runs({m: [] for m in opts.methods}, {}, {m: set() for m in opts.methods}, [])
    synthetic = {n: pool.synthetic[n] for n in inputs.frames}
    forbidden = set(pool.test_ids) | {f"{n}/{s}" for n, df in inputs.frames.items()
                                      for s in set(df.loc[df["origin"] == "synthetic", "sample_id"])
                                      - set(df.loc[inputs.splits[n].synthetic, "sample_id"])}
    test_x, y_test = pool.images[torch.as_tensor(pool.test)], pool.targets[pool.test]
    total, done = len(opts.methods) * opts.seeds * opts.epochs, [0]

    def step() -> None:
        done[0] += 1
        report(on_progress, "classify", done[0], total)

    for s in range(opts.seed, opts.seed + opts.seeds):
        draws = plan_draws(pool.targets, pool.train, synthetic, names, s)
        for m in opts.methods:
            model, rec = train_model(pool.images, torch.as_tensor(pool.targets), pool.ids, draws[m], k, cfg,
                                     seed=s, augment_draws=(m == "classical"), on_step=step)
            if rec.fed_ids & forbidden:   # internal invariant: plan_draws only uses train and filtered synthetic rows
                raise RuntimeError(f"leak: {len(rec.fed_ids & forbidden)} test or excluded rows were fed to {m}")
            runs.trained[m] |= rec.fed_ids
            proba = predict(model, test_x, dev).numpy()
            runs.per_seed[m].append({"seed": s, **M.classification_metrics(y_test, proba, inputs.minority)})
            mi = runs.method_info.setdefault(m, {
                "n_draws_per_epoch": len(draws[m]), "n_unique_train": len(set(draws[m])),
                "class_draws": dict(zip(names, np.bincount(pool.targets[draws[m]], minlength=k).tolist())),
                "final_loss": [], **({"augmentation": CLASSICAL.to_dict()} if m == "classical" else {})})
            mi["final_loss"].append(rec.final_loss)
            runs.pred_rows += [{"method": m, "seed": s, "sample_id": sid, "label": names[y_test[r]],
                                "pred": names[int(proba[r].argmax())],
                                **{f"prob_{c}": float(proba[r, j]) for j, c in enumerate(names)}}
                               for r, sid in enumerate(pool.test_ids)]
            del model
    return runs


def _summarize(methods: Sequence[str], per_seed: dict[str, list[dict[str, Any]]], inputs: Inputs
               ) -> dict[str, dict[str, Any]]:
    """metrics.json: mean +- std over seeds of every macro metric, minority F1 and per-class metric; the
    classical method also records its augmentation parameters."""
    from .trainer import CLASSICAL

    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        runs = per_seed[m]
        row: dict[str, Any] = {k: M.mean_std([v[k] for v in runs]) for k in M.METRIC_NAMES}
        row["per_class"] = {c: {k: M.mean_std([v["per_class"][k][j] for v in runs]) for k in M.PER_CLASS_NAMES}
                            for j, c in enumerate(inputs.class_names)}
        if m == "classical":
            row["augmentation"] = CLASSICAL.to_dict()
        out[m] = row
    return out


def compare_methods(methods: Sequence[str], per_seed: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Paired comparison (:func:`.metrics.paired_compare`) of every pair of methods on minority F1 and macro F1:
    ``{"a", "b", "metric", "n", "mean_diff", "t", "p", "verdict"}`` where the verdict reads "a is <verdict> than
    b" (a is the method listed later)."""
    out = []
    for i, a in enumerate(methods):
        for b in methods[:i]:
            for metric in COMPARED:
                res = M.paired_compare([v[metric] for v in per_seed[a]], [v[metric] for v in per_seed[b]])
                out.append({"a": a, "b": b, "metric": metric, **res})
    return out


def _info(opts: ClassifyOptions, inputs: Inputs, pool: Pool, runs: Runs, record: dict[str, Any], fp: str,
          dev: str, comparisons: list[dict[str, Any]], timing: dict[str, float]) -> dict[str, Any]:
    first = next(iter(inputs.frames))
    y_test, k = pool.targets[pool.test], len(inputs.class_names)
    info = {
        "tool": "medsoft-aug evaluate classify", "version": __version__, "fingerprint": fp,
        "manifest": str(opts.manifests[first]), "manifest_sha256": sha256_file(opts.manifests[first]),
        "manifests": {n: {"path": str(p), "sha256": sha256_file(p), "n_synthetic_used": len(pool.synthetic[n]),
                          "excluded_synthetic": inputs.splits[n].excluded_synthetic}
                      for n, p in opts.manifests.items()},
        "options": record, "device": dev, "class_names": inputs.class_names, "normal_class": inputs.normal_class,
        "minority_classes": [inputs.class_names[i] for i in inputs.minority], "n_test": len(pool.test),
        "test_class_counts": dict(zip(inputs.class_names, np.bincount(y_test, minlength=k).tolist())),
        "n_real_train": len(pool.train), "n_synthetic_used": len(pool.synthetic[first]),
        "excluded_synthetic": inputs.splits[first].excluded_synthetic, "oversample_target": first,
        "real_split_check": f"identical real rows (test ids, labels, pixels; train ids, labels) in "
                            f"{len(opts.manifests)} manifest(s)",
        "leak_check": {"test_or_excluded_rows_fed": 0, "checked_ids": sum(len(v) for v in runs.trained.values())},
        "methods": runs.method_info, "per_seed": runs.per_seed, "comparisons": comparisons,
        "paired_test": M.PAIRED_TEST,
        "notes": ["precision, recall and f1 are macro averages over all classes; minority_f1 is the mean F1 over "
                  "the disease classes (every class but the normal one); auc is one-vs-rest macro for more than "
                  "2 classes", "std is the sample standard deviation over seeds (ddof=1)",
                  "validation rows are not used; the model of the last epoch is evaluated"],
        "timing_s": timing,
    }
    for n in opts.manifests:
        if not pool.synthetic[n] and n in opts.methods:
            info["notes"].append(f"no usable synthetic rows in manifest {n}: it trained on the real rows only")
            log.warning("manifest %s has no usable synthetic rows: it equals the baseline data", n)
    return info


def _with_report(result: ClassifyResult, opts: ClassifyOptions) -> ClassifyResult:
    if opts.report_dir is not None:
        from .report import evaluate_report

        evaluate_report(opts.report_dir, classify_out=result.out, manifests=opts.manifests)
    return result
