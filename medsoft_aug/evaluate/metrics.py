"""Image-quality and classification metrics: Frechet distance (FID), PSNR, SSIM (whole image and masked), and
AUC / accuracy / precision / recall / F1 (macro, per class, minority), and the paired test over seeds.

Images are float arrays (H, W) in [0, data_range]. Masks and weights are float (H, W) in [0, 1]: a soft mask
M_b weights each pixel by its membership; "outside the mask" uses the weights 1 - M_b or the strict region
M_b == 0 (see :func:`psnr`).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("auc", "accuracy", "precision", "recall", "f1", "minority_f1")
PER_CLASS_NAMES = ("precision", "recall", "f1")


# ----------------------------------------------------------------------------------------------- FID
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N>=2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2):

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    The trace of the matrix square root is computed as ``sum(sqrt(eig(S1^(1/2) S2 S1^(1/2))))`` (a symmetric
    PSD product, so it stays real and finite for singular covariances, e.g. fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets (Na, D) and (Nb, D)."""
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


# ----------------------------------------------------------------------------------------------- PSNR
def psnr(ref: np.ndarray, img: np.ndarray, data_range: float = 1.0,
         weights: Optional[np.ndarray] = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``; ``inf`` when identical.

    With ``weights`` (H, W) >= 0 the MSE is the weighted mean ``sum(w (ref - img)^2) / sum(w)``: pass the soft
    mask M_b for "inside the mask", ``1 - M_b`` for "outside", or a 0/1 array for a strict region.
    Raises ValueError when the weights sum to zero (an empty region).
    """
    a = np.asarray(ref, np.float64)
    b = np.asarray(img, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    sq = (a - b) ** 2
    if weights is None:
        mse = float(sq.mean())
    else:
        w = np.asarray(weights, np.float64)
        total = float(w.sum())
        if total <= 0:
            raise ValueError("empty region: weights sum to zero")
        mse = float((w * sq).sum() / total)
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range ** 2 / mse))


# ----------------------------------------------------------------------------------------------- SSIM
def ssim_map(ref: np.ndarray, img: np.ndarray, data_range: float = 1.0, win_size: int = 7,
             k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Local SSIM (Wang et al. 2004) with a uniform ``win_size`` window and sample covariances, (H, W) float64.

    Same definition as scikit-image's default ``structural_similarity`` (uniform filter, reflect borders).
    """
    a = np.asarray(ref, np.float64)
    b = np.asarray(img, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (H, W) images of the same shape, got {a.shape} and {b.shape}")
    if min(a.shape) < win_size:
        raise ValueError(f"image {a.shape} smaller than the SSIM window {win_size}")
    n = win_size ** 2
    cov_norm = n / (n - 1.0)
    f = lambda x: ndimage.uniform_filter(x, size=win_size, mode="reflect")  # noqa: E731
    ux, uy = f(a), f(b)
    vx = cov_norm * (f(a * a) - ux * ux)
    vy = cov_norm * (f(b * b) - uy * uy)
    vxy = cov_norm * (f(a * b) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(ref: np.ndarray, img: np.ndarray, data_range: float = 1.0,
         weights: Optional[np.ndarray] = None, win_size: int = 7) -> float:
    """Mean SSIM over the image, excluding a border of ``(win_size - 1) // 2`` pixels (as scikit-image does).

    With ``weights`` (H, W) (e.g. the soft mask) it is the weighted mean of the SSIM map over the same interior.
    """
    s = ssim_map(ref, img, data_range=data_range, win_size=win_size)
    pad = (win_size - 1) // 2
    inner = (slice(pad, s.shape[0] - pad), slice(pad, s.shape[1] - pad))
    if weights is None:
        return float(s[inner].mean())
    w = np.asarray(weights, np.float64)[inner]
    total = float(w.sum())
    if total <= 0:
        raise ValueError("empty region: weights sum to zero")
    return float((w * s[inner]).sum() / total)


# ----------------------------------------------------------------------------------------------- classification
def per_class_metrics(y_true: np.ndarray, pred: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support, each (K,) float64, from labels and predictions (N,) in
    0..K-1, computed from the confusion matrix (0 where a ratio is undefined, as scikit-learn's
    ``zero_division=0``)."""
    y, p = np.asarray(y_true).astype(int), np.asarray(pred).astype(int)
    cm = np.zeros((k, k), np.int64)                        # rows: true class, columns: predicted class
    np.add.at(cm, (y, p), 1)
    tp = np.diag(cm).astype(np.float64)
    n_pred, n_true = cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)
    div = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # noqa: E731
    prec, rec = div(tp, n_pred), div(tp, n_true)
    return {"precision": prec, "recall": rec, "f1": div(2 * prec * rec, prec + rec), "support": n_true}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray,
                           minority: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """AUC, accuracy, macro precision / recall / F1, minority F1 and per-class precision / recall / F1 from
    labels (N,) in 0..K-1 and probabilities (N, K).

    Predictions are ``argmax(proba)``. AUC: binary -> ROC AUC of class 1's probability; K > 2 -> one-vs-rest macro
    (mean of per-class binary AUCs, as scikit-learn's ``multi_class="ovr", average="macro"``), over classes that
    have both positives and negatives in ``y_true``; ``None`` when no class has. Precision, recall and F1 are
    macro averages over all K classes. ``minority_f1`` is the mean F1 over the class indices in ``minority`` (the
    disease classes; default all classes but 0). ``per_class`` is ``{"precision": [K], "recall": [K], "f1": [K]}``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, np.float64)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    pc = per_class_metrics(y, pred, k)
    minority = list(range(1, k)) if minority is None else list(minority)
    aucs = []
    for c in ([1] if k == 2 else range(k)):
        yc = (y == c).astype(int)
        if 0 < yc.sum() < len(yc):
            aucs.append(float(roc_auc_score(yc, p[:, c])))
    return {"auc": float(np.mean(aucs)) if aucs else None, "accuracy": float(np.mean(pred == y)),
            "precision": float(pc["precision"].mean()), "recall": float(pc["recall"].mean()),
            "f1": float(pc["f1"].mean()),
            "minority_f1": float(pc["f1"][minority].mean()) if minority else None,
            "per_class": {n: pc[n].tolist() for n in PER_CLASS_NAMES}}


def mean_std(values: list[Optional[float]]) -> dict[str, Optional[float]]:
    """``{"mean", "std"}`` over the non-None values (sample std, ddof=1; 0.0 for one value; None for none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


PAIRED_TEST = ("two-sided paired t-test over seeds (same seeds, same real test set), alpha = 0.05: it measures "
               "training-seed variability only (the test set is fixed); with few seeds (3 gives 2 degrees of "
               "freedom) it detects only large, consistent differences, so 'no clear difference' is not evidence "
               "of equality")


def paired_compare(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                   alpha: float = 0.05) -> dict[str, Any]:
    """Compare method A with method B on one metric from per-seed values paired by seed (same length, same seed
    order). Two-sided paired t-test on the differences d = a - b (t = mean(d) / (std(d, ddof=1) / sqrt(n)),
    n - 1 degrees of freedom). Verdict "better" / "worse" when p < ``alpha`` (sign of the mean difference), else
    "no clear difference"; "n/a" with fewer than 2 complete pairs. Identical differences (std 0) give p = 0 when
    non-zero and p = 1 when all zero.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}")
    d = np.asarray([x - y for x, y in zip(a, b) if x is not None and y is not None], np.float64)
    out: dict[str, Any] = {"n": int(d.size), "mean_diff": float(d.mean()) if d.size else None,
                           "t": None, "p": None, "verdict": "n/a"}
    if d.size < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        t, pval = (0.0, 1.0) if d[0] == 0 else (float(np.sign(d[0]) * np.inf), 0.0)
    else:
        t = float(d.mean() / (sd / np.sqrt(d.size)))
        pval = float(2 * stats.t.sf(abs(t), df=d.size - 1))
    verdict = "no clear difference" if pval >= alpha else ("better" if d.mean() > 0 else "worse")
    out.update(t=t if np.isfinite(t) else None, p=pval, verdict=verdict)
    return out
