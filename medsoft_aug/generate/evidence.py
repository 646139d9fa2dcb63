"""Per-sample evidence of what was generated: a synthetic image against its donor, inside the soft mask.

Pure array functions (no model, no files). For a donor ``x0``, the synthetic image ``y`` made from it and the soft
mask ``M_b`` (all (H, W), float in [0, 1]):

    donor_mean      sum(M_b * x0) / sum(M_b)              mean inside the soft mask
    synthetic_mean  sum(M_b * y) / sum(M_b)
    mean_change     synthetic_mean - donor_mean           > 0 brighter, < 0 darker
    contrast        mean(y over L) - mean(y over C \\ L)   the lesion against the rest of the vertebra, in the
                    synthetic image: C = mask core (M_b >= 0.5), L = the quarter of C that changed most
                    (|y - x0| >= its 75th percentile over C); 0 when C \\ L is empty. > 0: a bright lesion
    toward_class    did the sample move toward its class? ref = mean inside the mask of the class's real
                    training lesions: True when mean_change has the sign of (ref - donor_mean) and is at least
                    a quarter of it (``MIN_SHARE``; overshooting counts: a darker-than-average metastasis is
                    still dark); None when ref is unknown
    class_score     the selection scorer's score of the sample (``generate.select``), or None

``summarize`` turns rows of evidence into the "k of n moved toward their class" counts per class.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import numpy as np

MIN_SHARE = 0.25
EVIDENCE_FIELDS = ("donor_mean", "synthetic_mean", "mean_change", "contrast", "toward_class", "class_score")


def masked_mean(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``image`` weighted by the soft mask (both (H, W)); NaN for an all-zero mask."""
    w = np.asarray(mask, np.float64)
    total = float(w.sum())
    return float((np.asarray(image, np.float64) * w).sum() / total) if total > 0 else math.nan


def lesion_contrast(donor: np.ndarray, synthetic: np.ndarray, mask: np.ndarray, core: float = 0.5,
                    changed_share: float = 0.25) -> float:
    """Mean of the most-changed ``changed_share`` of the mask core minus the mean of the rest (see module doc)."""
    x0, y = np.asarray(donor, np.float64), np.asarray(synthetic, np.float64)
    c = np.asarray(mask) >= core
    if not c.any():
        return 0.0
    change = np.abs(y - x0)[c]
    lesion = change >= np.quantile(change, 1.0 - changed_share)
    if lesion.all():
        return 0.0
    vals = y[c]
    return float(vals[lesion].mean() - vals[~lesion].mean())


def sample_evidence(donor: np.ndarray, synthetic: np.ndarray, mask: np.ndarray, *,
                    reference_mean: Optional[float] = None, class_score: Optional[float] = None) -> dict[str, Any]:
    """The evidence fields of one synthetic sample (module docstring); arrays (H, W) of the same shape."""
    if not (np.shape(donor) == np.shape(synthetic) == np.shape(mask)) or np.ndim(donor) != 2:
        raise ValueError(f"donor {np.shape(donor)}, synthetic {np.shape(synthetic)} and mask {np.shape(mask)} "
                         "must be 2D and the same shape")
    d, s = masked_mean(donor, mask), masked_mean(synthetic, mask)
    toward = None
    if reference_mean is not None and math.isfinite(reference_mean) and math.isfinite(d):
        want = reference_mean - d
        toward = bool((s - d) * want > 0 and abs(s - d) >= MIN_SHARE * abs(want))
    return {"donor_mean": d, "synthetic_mean": s, "mean_change": s - d,
            "contrast": lesion_contrast(donor, synthetic, mask), "toward_class": toward,
            "class_score": None if class_score is None else float(class_score)}


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class label: n, k = samples that moved toward their class, their share, mean change and contrast.

    ``rows``: mappings with ``label`` and the evidence fields (values may be strings, as read from a manifest:
    "True"/"False"/"" for ``toward_class``)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = out.setdefault(str(r["label"]), {"n": 0, "k": 0, "checked": 0, "_change": [], "_contrast": []})
        c["n"] += 1
        toward = _as_bool(r.get("toward_class"))
        if toward is not None:
            c["checked"] += 1
            c["k"] += int(toward)
        for key, col in (("_change", "mean_change"), ("_contrast", "contrast")):
            v = _as_float(r.get(col))
            if v is not None:
                c[key].append(v)
    for label, c in out.items():
        ch, co = c.pop("_change"), c.pop("_contrast")
        c["mean_change"] = float(np.mean(ch)) if ch else None
        c["mean_contrast"] = float(np.mean(co)) if co else None
        c["text"] = f"{c['k']} of {c['checked']} moved toward their class" if c["checked"] else "not checked"
    return dict(sorted(out.items()))


def _as_bool(v: Any) -> Optional[bool]:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower() if v is not None else ""
    return True if s == "true" else False if s == "false" else None


def _as_float(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
