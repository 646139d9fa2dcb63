"""generate.evidence: per-sample facts of a synthetic image against its donor, checked by hand on random inputs."""
from __future__ import annotations

import numpy as np
import pytest

from medsoft_aug.generate.evidence import lesion_contrast, masked_mean, sample_evidence, summarize


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    donor = rng.random((12, 10))
    synth = np.clip(donor + rng.normal(0, 0.1, donor.shape), 0, 1)
    mask = rng.random((12, 10))
    mask[:, :3] = 0.0                                                 # a region outside the mask
    return donor, synth, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evidence_matches_a_hand_computation(seed):
    donor, synth, mask = _random_case(seed)
    # by hand, with plain loops
    sw = sd = ss = 0.0
    for i in range(12):
        for j in range(10):
            sw += mask[i, j]
            sd += mask[i, j] * donor[i, j]
            ss += mask[i, j] * synth[i, j]
    d, s = sd / sw, ss / sw
    core = [(i, j) for i in range(12) for j in range(10) if mask[i, j] >= 0.5]
    changes = sorted(abs(synth[p] - donor[p]) for p in core)
    cut = np.quantile(changes, 0.75)
    lesion = [synth[p] for p in core if abs(synth[p] - donor[p]) >= cut]
    rest = [synth[p] for p in core if abs(synth[p] - donor[p]) < cut]
    contrast = sum(lesion) / len(lesion) - sum(rest) / len(rest)

    ref_up, ref_down = d + 0.05, d - 0.05
    ev = sample_evidence(donor, synth, mask, reference_mean=ref_up, class_score=0.7)
    assert ev["donor_mean"] == pytest.approx(d, abs=1e-12) and ev["synthetic_mean"] == pytest.approx(s, abs=1e-12)
    assert ev["mean_change"] == pytest.approx(s - d, abs=1e-12)
    assert ev["contrast"] == pytest.approx(contrast, abs=1e-12)
    assert ev["class_score"] == 0.7
    moved = s - d
    assert ev["toward_class"] is bool(moved > 0 and abs(moved) >= 0.25 * 0.05)
    assert sample_evidence(donor, synth, mask, reference_mean=ref_down)["toward_class"] is \
        bool(moved < 0 and abs(moved) >= 0.25 * 0.05)
    assert sample_evidence(donor, synth, mask)["toward_class"] is None


def test_direction_and_size_decide_toward_class():
    donor = np.full((8, 8), 0.3)
    mask = np.zeros((8, 8))
    mask[2:6, 2:6] = 1.0
    bright = donor.copy()
    bright[3:5, 3:5] = 0.9                                            # mean inside the mask +0.15
    assert masked_mean(bright, mask) == pytest.approx(0.45)
    ev = sample_evidence(donor, bright, mask, reference_mean=0.38)
    assert ev["toward_class"] is True and ev["contrast"] == pytest.approx(0.6)      # a bright spot
    assert sample_evidence(donor, bright, mask, reference_mean=0.25)["toward_class"] is False   # wrong way
    faint = donor + 0.01 * mask                                       # right way but under a quarter of 0.08
    assert sample_evidence(donor, faint, mask, reference_mean=0.38)["toward_class"] is False
    assert lesion_contrast(donor, donor, mask) == 0.0                 # nothing changed: no lesion
    with pytest.raises(ValueError, match="same shape"):
        sample_evidence(donor, bright[:4], mask)


def test_summarize_counts_k_of_n_per_class_also_from_manifest_strings():
    rows = [{"label": "benign", "toward_class": True, "mean_change": 0.1, "contrast": 0.2},
            {"label": "benign", "toward_class": "False", "mean_change": "-0.1", "contrast": "0.0"},
            {"label": "malignant", "toward_class": "True", "mean_change": "-0.2", "contrast": "-0.3"},
            {"label": "malignant", "toward_class": "", "mean_change": "", "contrast": ""}]
    s = summarize(rows)
    assert s["benign"] == {"n": 2, "k": 1, "checked": 2, "mean_change": pytest.approx(0.0),
                           "mean_contrast": pytest.approx(0.1), "text": "1 of 2 moved toward their class"}
    assert s["malignant"]["k"] == 1 and s["malignant"]["checked"] == 1 and s["malignant"]["n"] == 2
