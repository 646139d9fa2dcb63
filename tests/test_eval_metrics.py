"""Metrics against independent references: scipy sqrtm, scikit-image, hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medsoft_aug.evaluate import metrics as M


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(200, 16), (64, 32)])
def test_frechet_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(1234 + d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.3, size=(n, d)) @ rng.normal(size=(d, d)) * 0.7
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    ref = _scipy_frechet(mu1, s1, mu2, s2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert M.fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_of_identical_sets_is_zero_and_symmetric():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(50, 8))
    b = rng.normal(size=(50, 8)) + 1.0
    assert M.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert M.fid_from_features(a, b) == pytest.approx(M.fid_from_features(b, a), rel=1e-8)


def test_frechet_singular_covariance_stays_finite():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20))  # fewer samples than dims: singular covariances
    v = M.fid_from_features(a, b)
    assert np.isfinite(v) and v > 0


def test_psnr_matches_skimage():
    rng = np.random.default_rng(11)
    a = rng.random((48, 40))
    b = np.clip(a + rng.normal(scale=0.05, size=a.shape), 0, 1)
    assert M.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-10)
    assert M.psnr(a, a) == math.inf


def test_masked_psnr_matches_direct_weighted_mse():
    rng = np.random.default_rng(12)
    a, b, w = rng.random((32, 32)), rng.random((32, 32)), rng.random((32, 32))
    mse = np.sum(w * (a - b) ** 2) / np.sum(w)
    assert M.psnr(a, b, weights=w) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-10)
    hard = (w > 0.5).astype(float)
    sel = hard.astype(bool)
    assert M.psnr(a, b, weights=hard) == pytest.approx(
        peak_signal_noise_ratio(a[sel], b[sel], data_range=1.0), rel=1e-10)
    with pytest.raises(ValueError):
        M.psnr(a, b, weights=np.zeros_like(w))


def test_ssim_matches_skimage_value_and_map():
    rng = np.random.default_rng(13)
    a = rng.random((40, 36))
    b = np.clip(0.8 * a + 0.1 + rng.normal(scale=0.05, size=a.shape), 0, 1)
    ref, ref_map = structural_similarity(a, b, data_range=1.0, full=True)
    assert M.ssim(a, b) == pytest.approx(ref, rel=1e-8)
    np.testing.assert_allclose(M.ssim_map(a, b), ref_map, rtol=1e-8, atol=1e-10)


def test_masked_ssim_is_weighted_mean_of_skimage_map():
    rng = np.random.default_rng(14)
    a, w = rng.random((30, 30)), rng.random((30, 30))
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1)
    _, smap = structural_similarity(a, b, data_range=1.0, full=True)
    inner = (slice(3, 27), slice(3, 27))
    expected = np.sum(w[inner] * smap[inner]) / np.sum(w[inner])
    assert M.ssim(a, b, weights=w) == pytest.approx(expected, rel=1e-8)


def _hand_auc(y, s):
    """Mann-Whitney: P(score_pos > score_neg) + 0.5 P(tie)."""
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return gt / (len(pos) * len(neg))


def _hand_prf(y, pred, k):
    p, r, f = [], [], []
    for c in range(k):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        pc = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        p.append(pc), r.append(rc), f.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    return np.mean(p), np.mean(r), np.mean(f)


@pytest.mark.parametrize("k", [2, 4])
def test_classification_metrics_match_hand_computation(k):
    rng = np.random.default_rng(100 + k)
    n = 60
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = M.classification_metrics(y, proba)
    pred = proba.argmax(1)
    p, r, f = _hand_prf(y, pred, k)
    auc = _hand_auc(y, proba[:, 1]) if k == 2 else np.mean(
        [_hand_auc((y == c).astype(int), proba[:, c]) for c in range(k)])
    assert m["accuracy"] == pytest.approx(np.mean(pred == y))
    assert m["precision"] == pytest.approx(p) and m["recall"] == pytest.approx(r) and m["f1"] == pytest.approx(f)
    assert m["auc"] == pytest.approx(auc)
    assert set(m) == set(M.METRIC_NAMES) | {"per_class"}


def test_auc_none_when_one_class_in_test():
    y = np.zeros(5, int)
    m = M.classification_metrics(y, np.tile([0.7, 0.3], (5, 1)))
    assert m["auc"] is None and m["accuracy"] == 1.0


def test_mean_std():
    assert M.mean_std([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "std": pytest.approx(np.std([1, 2, 4], ddof=1))}
    assert M.mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
    assert M.mean_std([None]) == {"mean": None, "std": None}


@pytest.mark.parametrize("k,n", [(2, 40), (3, 75), (5, 90)])
def test_per_class_and_minority_f1_match_sklearn(k, n):
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(7 * k + n)
    y = rng.integers(0, k, size=n)
    proba = rng.dirichlet(np.ones(k), size=n) + 0.4 * np.eye(k)[y] * rng.random((n, 1))
    pred = proba.argmax(1)
    labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    m = M.classification_metrics(y, proba, minority=[0, 2] if k > 2 else None)
    assert m["per_class"]["precision"] == pytest.approx(p.tolist())
    assert m["per_class"]["recall"] == pytest.approx(r.tolist())
    assert m["per_class"]["f1"] == pytest.approx(f.tolist())
    assert m["f1"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    minority = [0, 2] if k > 2 else [1]
    assert m["minority_f1"] == pytest.approx(f1_score(y, pred, labels=minority, average="macro", zero_division=0))
    assert M.per_class_metrics(y, pred, k)["support"].tolist() == s.tolist()


def test_per_class_handles_a_never_predicted_class():
    from sklearn.metrics import precision_recall_fscore_support

    y, pred = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 0, 2, 2, 0, 0])       # class 1 never predicted
    got = M.per_class_metrics(y, pred, 3)
    ref = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], average=None, zero_division=0)
    for a, b in zip((got["precision"], got["recall"], got["f1"]), ref[:3]):
        assert a.tolist() == pytest.approx(b.tolist())


def test_paired_compare_matches_scipy_ttest_rel():
    from scipy import stats

    rng = np.random.default_rng(3)
    for n in (3, 5, 8):
        a = rng.uniform(0.4, 0.8, size=n)
        b = a - rng.normal(0.05, 0.05, size=n)
        res = M.paired_compare(a.tolist(), b.tolist())
        ref = stats.ttest_rel(a, b)
        assert res["t"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
        assert res["n"] == n and res["mean_diff"] == pytest.approx(float(np.mean(a - b)))
        want = "no clear difference" if ref.pvalue >= 0.05 else ("better" if ref.statistic > 0 else "worse")
        assert res["verdict"] == want
    # consistent gains across seeds are "better"; a swap gives "worse"; noise gives no clear difference
    assert M.paired_compare([0.8, 0.82, 0.79], [0.7, 0.71, 0.70])["verdict"] == "better"
    assert M.paired_compare([0.7, 0.71, 0.70], [0.8, 0.82, 0.79])["verdict"] == "worse"
    assert M.paired_compare([0.8, 0.6, 0.75], [0.7, 0.72, 0.70])["verdict"] == "no clear difference"
    assert M.paired_compare([0.5, 0.5], [0.5, 0.5]) | {} == {"n": 2, "mean_diff": 0.0, "t": 0.0, "p": 1.0,
                                                            "verdict": "no clear difference"}
    assert M.paired_compare([0.6, 0.7], [0.5, 0.6])["verdict"] == "better"        # identical non-zero gains
    assert M.paired_compare([0.5], [0.4])["verdict"] == "n/a"
    assert M.paired_compare([None, 0.5], [0.4, 0.4])["verdict"] == "n/a"
    with pytest.raises(ValueError):
        M.paired_compare([0.5, 0.6], [0.4])
