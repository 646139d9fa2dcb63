"""Eq. 1 soft masks checked against independent references (scipy, explicit convolution, moments in mm)."""
import numpy as np
import pytest
from scipy import ndimage

from medsoft_aug.masks.soften import dilate_mm, sigma_px, soften


def _random_mask(rng, shape=(48, 40)):
    # Blobs: thresholded smoothed noise, fresh per test, never all zero.
    m = ndimage.uniform_filter(rng.random(shape), 5) > 0.55
    m[rng.integers(0, shape[0]), rng.integers(0, shape[1])] = True
    return m


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 1.25), (3.3, 0.7)])
def test_soften_matches_scipy_gaussian_in_mm(spacing):
    rng = np.random.default_rng(abs(hash(spacing)) % 2**32)
    mask = _random_mask(rng)
    sigma = 2.5
    ref = ndimage.gaussian_filter(mask.astype(np.float64), sigma=(sigma / spacing[0], sigma / spacing[1]),
                                  mode="nearest")
    out = soften(mask, sigma, spacing)
    assert out.dtype == np.float32 and out.shape == mask.shape
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-5)


@pytest.mark.parametrize("where", ["middle", "corner", "edge"])
def test_soften_of_small_mask_equals_whole_image_blur(where):
    """soften blurs only around the mask: it must equal scipy's blur of the whole image, borders included."""
    rng = np.random.default_rng({"middle": 1, "corner": 2, "edge": 3}[where])
    mask = np.zeros((120, 100), bool)
    r0, c0 = {"middle": (50, 40), "corner": (0, 88), "edge": (60, 0)}[where]
    mask[r0:r0 + 12, c0:c0 + 12] = rng.random((12, 12)) > 0.3
    spacing = (0.7, 1.3)
    ref = ndimage.gaussian_filter(mask.astype(np.float64), sigma=(3.0 / 0.7, 3.0 / 1.3), mode="nearest")
    np.testing.assert_allclose(soften(mask, 3.0, spacing), ref, atol=1e-6)


def test_soften_matches_explicit_separable_convolution():
    """Reference built by hand: normalized sampled Gaussian, radius ceil(4 sigma), edge-replicated borders."""
    rng = np.random.default_rng(7)
    mask = _random_mask(rng, (30, 34)).astype(np.float64)
    spacing, sigma = (0.8, 1.6), 2.0
    out = mask
    for axis, sp in enumerate(spacing):
        s = sigma / sp
        r = int(4 * s + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        k /= k.sum()
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, p)
    np.testing.assert_allclose(soften(mask > 0, sigma, spacing), out, atol=1e-5)


def test_anisotropic_spacing_gives_isotropic_blur_in_mm():
    """An impulse blurred with sigma 3 mm has a standard deviation of 3 mm along both axes, whatever the
    pixel spacing (second moments computed in mm)."""
    spacing, sigma = (0.5, 1.5), 3.0
    mask = np.zeros((121, 61), bool)
    mask[60, 30] = True
    out = soften(mask, sigma, spacing).astype(np.float64)
    w = out / out.sum()
    rows = (np.arange(121) - 60) * spacing[0]
    cols = (np.arange(61) - 30) * spacing[1]
    sd_r = np.sqrt((w.sum(1) * rows ** 2).sum())
    sd_c = np.sqrt((w.sum(0) * cols ** 2).sum())
    assert sd_r == pytest.approx(sigma, rel=0.02)
    assert sd_c == pytest.approx(sigma, rel=0.03)
    assert sigma_px(sigma, spacing) == (6.0, 2.0)


def test_soften_range_zero_sigma_and_core():
    rng = np.random.default_rng(3)
    mask = _random_mask(rng)
    out = soften(mask, 1.7, (0.9, 1.1))
    assert out.min() >= 0 and out.max() <= 1
    hard = soften(mask, 0.0, (0.9, 1.1))
    np.testing.assert_array_equal(hard, mask.astype(np.float32))
    big = np.zeros((60, 60), bool)
    big[10:50, 10:50] = True
    assert soften(big, 2.0, (1.0, 1.0))[30, 30] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("spacing,radius", [((1.0, 1.0), 3.0), ((0.6, 1.4), 4.2), ((2.0, 0.5), 2.0)])
def test_dilate_mm_matches_binary_dilation_with_elliptic_footprint(spacing, radius):
    rng = np.random.default_rng(int(radius * 10))
    mask = rng.random((40, 44)) > 0.985
    mask[5, 5] = True
    ry, rx = int(radius / spacing[0]), int(radius / spacing[1])
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    footprint = (yy * spacing[0]) ** 2 + (xx * spacing[1]) ** 2 <= radius ** 2 + 1e-9
    ref = ndimage.binary_dilation(mask, structure=footprint)
    np.testing.assert_array_equal(dilate_mm(mask, radius, spacing), ref)


def test_dilate_zero_and_bad_spacing():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    assert (dilate_mm(m, 0.0, (1, 1)) == m).all()
    with pytest.raises(ValueError):
        soften(m, 1.0, (0.0, 1.0))
