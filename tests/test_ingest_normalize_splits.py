"""Percentile-window normalization (vs scipy / scikit-image) and deterministic patient-level splits."""
from collections import Counter

import numpy as np
import pytest
from scipy import stats
from skimage import exposure

from medsoft_aug.errors import UsageError
from medsoft_aug.ingest.normalize import ConstantImageError, normalize_slice, percentile_window
from medsoft_aug.ingest.splits import assign_splits


def test_window_matches_scipy_and_skimage():
    rng = np.random.default_rng(7)
    img = (rng.gamma(2.0, 300.0, size=(40, 33)) - 100).astype(np.float32)
    out, lo, hi = normalize_slice(img, (2.0, 97.0))
    ref_lo = stats.scoreatpercentile(img.astype(np.float64), 2.0)
    ref_hi = stats.scoreatpercentile(img.astype(np.float64), 97.0)
    assert lo == pytest.approx(ref_lo, rel=1e-9) and hi == pytest.approx(ref_hi, rel=1e-9)
    ref = exposure.rescale_intensity(img.astype(np.float64), in_range=(ref_lo, ref_hi), out_range=(0.0, 1.0))
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_nan_constant_and_flat_background():
    rng = np.random.default_rng(8)
    img = rng.random((10, 10)).astype(np.float32)
    img[0, 0] = np.nan
    out, lo, hi = normalize_slice(img)
    assert out[0, 0] == 0.0 and np.isfinite(out).all()
    with pytest.raises(ConstantImageError):
        normalize_slice(np.full((4, 4), 3.0, np.float32))
    # 99.9 % background: the percentile window collapses, the full range is used instead
    flat = np.zeros((100, 100), np.float32)
    flat[5, 5] = 200.0
    assert percentile_window(flat, 0.5, 99.5) == (0.0, 200.0)


def _patients(rng, n):
    labels = {}
    for p in range(n):
        ls = ["normal"] * int(rng.integers(1, 4))
        if rng.random() < 0.25:
            ls.append("benign" if rng.random() < 0.5 else "malignant")
        labels[f"pt{p:03d}-{rng.integers(1e6)}"] = ls
    return labels


def test_splits_deterministic_disjoint_stratified():
    rng = np.random.default_rng(9)
    labels = _patients(rng, 120)
    a = assign_splits(labels, test_fraction=0.2, val_fraction=0.1, seed=5)
    b = assign_splits(dict(reversed(list(labels.items()))), test_fraction=0.2, val_fraction=0.1, seed=5)
    assert a == b                                  # independent of input order
    assert set(a) == set(labels) and set(a.values()) <= {"train", "val", "test"}
    c = assign_splits(labels, test_fraction=0.2, val_fraction=0.1, seed=6)
    assert a != c                                  # the seed matters
    # exact totals; stratified: each stratum (rarest class of the patient) gets its share within one patient
    n = len(labels)
    got_all = Counter(a.values())
    assert got_all["test"] == int(n * 0.2 + 0.5) and got_all["val"] == int(n * 0.3 + 0.5) - int(n * 0.2 + 0.5)
    rarity = Counter(cl for ls in labels.values() for cl in set(ls))
    strata = {p: min(set(ls), key=lambda cl: (rarity[cl], cl)) for p, ls in labels.items()}
    assert len(set(strata.values())) == 3
    for s in set(strata.values()):
        members = [p for p in labels if strata[p] == s]
        got = Counter(a[p] for p in members)
        assert abs(got["test"] - len(members) * 0.2) <= 1, (s, got, len(members))
        assert abs(got["val"] - len(members) * 0.1) <= 1, (s, got, len(members))


def test_tiny_strata_still_get_a_test_patient():
    """Three patients with three different rare classes: per-stratum rounding would give no test patient."""
    labels = {"s1": ["normal", "a"], "s2": ["normal", "b"], "s3": ["normal", "c"]}
    got = assign_splits(labels, test_fraction=0.2, seed=0)
    assert sorted(got.values()) == ["test", "train", "train"]


def test_fraction_validation():
    with pytest.raises(UsageError):
        assign_splits({"a": ["x"]}, test_fraction=0.7, val_fraction=0.3)
    with pytest.raises(UsageError):
        assign_splits({"a": ["x"]}, test_fraction=-0.1)
