"""The native-grid <-> model-grid mapping (``medsoft_aug.geometry``): windows, no distortion, exact inverse
placement, the donor's pixels kept exactly, against independent references (numpy slicing + PIL resampling)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from medsoft_aug.geometry import GridMapping, Window, composite, mapping_for_model

R = 64


def _disc(shape, cy, cx, r, rng):
    """A soft disc (1 inside, linear ramp, 0 outside) with random radial noise, zero beyond 1.5 r."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    m = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1) * rng.uniform(0.8, 1.0)
    return m.astype(np.float32)


def _pil_resize(a: np.ndarray, size: int, box: bool = False) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(
        (size, size), Image.BOX if box else Image.BILINEAR), dtype=np.float32)


def _adaptive_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Area averaging as adaptive average pooling defines it: output i averages rows floor(i*s/n)..ceil((i+1)*s/n)."""
    s = a.shape[0]
    edges = [(i * s // size, -(-(i + 1) * s // size)) for i in range(size)]
    return np.array([[a[r0:r1, c0:c1].mean() for c0, c1 in edges] for r0, r1 in edges], dtype=np.float32)


def _reference_window_pixels(arr: np.ndarray, win: Window, mode: str = "edge") -> np.ndarray:
    """The window cut by padding the whole slice on every side, then slicing (independent of geometry._take)."""
    pad = win.side
    big = np.pad(arr.astype(np.float32), pad, mode=mode)
    return big[win.top + pad:win.top + pad + win.side, win.left + pad:win.left + pad + win.side]


@pytest.mark.parametrize("shape", [(448, 320), (320, 448)])
def test_crop_windows_on_non_square_donors_cover_the_mask_and_stay_square(shape):
    rng = np.random.default_rng(shape[0] * 7 + 1)
    mp = GridMapping(R)
    h, w = shape
    for _ in range(25):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 60)
        m = _disc(shape, cy, cx, r, rng)
        if not (m > 0).any():
            continue
        win = mp.window(m)
        rows, cols = np.nonzero(m > 0)
        need = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        assert win.side == min(max(h, w), max(need, 8, int(np.ceil(need * 1.5))))
        assert win.top <= rows.min() and rows.max() < win.top + win.side          # the whole mask is inside
        assert win.left <= cols.min() and cols.max() < win.left + win.side
        if win.side <= min(h, w):                                                 # shifted inside the slice
            assert 0 <= win.top <= h - win.side and 0 <= win.left <= w - win.side


@pytest.mark.parametrize("shape", [(448, 320), (320, 448)])
def test_to_model_matches_an_independent_crop_and_pil_resize(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.uniform(0, 1, shape).astype(np.float32)
    # one mask well inside, one touching the top-left corner, one touching the bottom edge
    for cy, cx, r in ((shape[0] / 2, shape[1] / 2, 30), (0, 0, 25), (shape[0] - 1, shape[1] / 3, 12)):
        m = _disc(shape, cy, cx, r, rng)
        for mode in ("crop", "pad"):
            mp = GridMapping(R, mode=mode)
            v = mp.to_model(img, m)
            assert v.image.shape == v.mask.shape == (1, R, R) and v.image.dtype == torch.float32
            ref_img = _pil_resize(_reference_window_pixels(img, v.window), R)
            np.testing.assert_allclose(v.image[0].numpy(), np.clip(ref_img, 0, 1), atol=2e-6)
            cut = _reference_window_pixels(m, v.window, "constant")
            ref_mask = _adaptive_mean(cut, R) if v.window.side >= R else _pil_resize(cut, R)
            np.testing.assert_allclose(v.mask[0].numpy(), np.clip(ref_mask, 0, 1), atol=2e-6)


def test_pad_mode_is_the_whole_slice_centred_in_a_square():
    rng = np.random.default_rng(3)
    img = rng.uniform(0.2, 1, (448, 320)).astype(np.float32)
    m = _disc(img.shape, 200, 150, 20, rng)
    v = GridMapping(R, mode="pad").to_model(img, m)
    assert v.window == Window(0, -64, 448)
    band = 64 * R // 448                                         # columns of padding on each side, model grid
    assert float(v.mask[0, :, :band - 1].abs().max()) == 0.0 and float(v.mask[0, :, R - band + 1:].max()) == 0
    ref = _pil_resize(np.pad(img, ((0, 0), (64, 64)), mode="edge"), R)     # the padded square, resized
    np.testing.assert_allclose(v.image[0].numpy(), ref, atol=2e-6)


@pytest.mark.parametrize("shape", [(448, 320), (320, 448)])
def test_no_distortion_a_round_lesion_stays_round_on_the_model_grid(shape):
    rng = np.random.default_rng(5)
    m = (_disc(shape, shape[0] * 0.4, shape[1] * 0.6, 40, rng) > 0.5).astype(np.float32)
    for mode in ("crop", "pad"):
        v = GridMapping(R, mode=mode).to_model(np.zeros(shape, np.float32), m)
        rows, cols = np.nonzero(v.mask[0].numpy() > 0.5)
        hgt, wid = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert abs(hgt - wid) <= 1, (mode, hgt, wid)


@pytest.mark.parametrize("shape", [(448, 320), (320, 448)])
def test_to_native_places_the_window_back_exactly(shape):
    rng = np.random.default_rng(11)
    m = _disc(shape, shape[0] - 5, 4, 30, rng)                     # touches two borders
    mp = GridMapping(R)
    win = mp.window(m)
    model_img = torch.from_numpy(rng.uniform(0, 1, (1, 1, R, R)).astype(np.float32))
    back = mp.to_native(model_img, win, shape)
    ref = np.full(shape, np.nan, np.float32)
    big = _pil_resize(model_img[0, 0].numpy(), win.side)
    for y in range(max(win.top, 0), min(win.top + win.side, shape[0])):
        x0, x1 = max(win.left, 0), min(win.left + win.side, shape[1])
        ref[y, x0:x1] = big[y - win.top, x0 - win.left:x1 - win.left]
    assert np.array_equal(np.isnan(back), np.isnan(ref))
    np.testing.assert_allclose(back[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-5)


def test_round_trip_is_exact_without_resampling_and_close_with_it():
    rng = np.random.default_rng(13)
    img = rng.uniform(0, 1, (200, 120)).astype(np.float32)
    m = np.zeros_like(img)
    m[70:70 + R, 30:30 + R - 9] = 1.0                              # bounding box R x (R - 9): window side R
    mp = GridMapping(R, margin=0.0)
    v = mp.to_model(img, m)
    assert v.window.side == R
    back = mp.to_native(v.image, v.window, img.shape)
    inside = ~np.isnan(back)
    assert inside.sum() == R * R and np.array_equal(back[inside], img[inside])
    yy, xx = np.mgrid[0:200, 0:120]
    smooth = (0.5 + 0.3 * np.sin(yy / 23.0) * np.cos(xx / 17.0)).astype(np.float32)
    big = GridMapping(R, margin=0.5)                               # window 128 px -> 64 -> 128
    v = big.to_model(smooth, m)
    back = big.to_native(v.image, v.window, smooth.shape)
    inside = ~np.isnan(back)
    assert np.abs(back[inside] - smooth[inside]).max() < 0.01


@pytest.mark.parametrize("shape", [(448, 320), (320, 448)])
def test_composite_keeps_every_donor_pixel_outside_the_mask_exactly(shape):
    rng = np.random.default_rng(17)
    donor = rng.uniform(0, 1, shape).astype(np.float32)
    m = _disc(shape, 0, shape[1] - 1, 40, rng)                   # top-right corner
    mp = GridMapping(R)
    win = mp.window(m)
    dec = torch.from_numpy(rng.uniform(0, 1, (1, 1, R, R)).astype(np.float32))
    out = mp.composite(donor, m, dec, win)
    assert out.shape == donor.shape and out.dtype == np.float32
    zero = m == 0
    assert zero.sum() > 1000 and np.array_equal(out[zero], donor[zero])
    dec_native = mp.to_native(dec, win, shape)
    inside = m > 0
    np.testing.assert_allclose(out[inside], donor[inside] * (1 - m[inside]) + dec_native[inside] * m[inside],
                               atol=1e-6)
    assert np.abs(out - donor)[m > 0.9].mean() > 0.05


def test_composite_matches_the_formula_on_random_inputs():
    rng = np.random.default_rng(6)
    x0, dec, m = (rng.uniform(0, 1, (9, 13)).astype(np.float32) for _ in range(3))
    m[:3] = 0
    np.testing.assert_allclose(composite(x0, dec, m), x0 * (1 - m) + dec * m, atol=1e-7)
    dec[0, 0], dec[4, 4] = np.nan, np.inf
    out = composite(x0, dec, m)
    assert np.array_equal(out[:3], x0[:3]) and np.isfinite(out).all()


def test_empty_mask_uses_the_whole_slice_and_bad_settings_are_refused():
    mp = GridMapping(R)
    assert mp.window(np.zeros((30, 50), np.float32)) == Window(-10, 0, 50)
    for bad in ({"mode": "stretch"}, {"margin": -0.1}, {"margin": float("nan")}):
        with pytest.raises(ValueError):
            GridMapping(R, **bad)
    with pytest.raises(ValueError):
        GridMapping(4)


def test_mapping_for_model_uses_the_trained_one_and_warns_on_overrides(caplog):
    meta = {"resolution": 64, "geometry": {"mode": "pad", "margin": 0.5, "resolution": 64}}
    with caplog.at_level(logging.WARNING, logger="medsoft_aug.geometry"):
        assert mapping_for_model(meta) == GridMapping(64, "pad", 0.5)
        assert not caplog.records
        assert mapping_for_model(meta, mode="pad", resolution=64) == GridMapping(64, "pad", 0.5)
        assert not caplog.records
        assert mapping_for_model(meta, mode="crop", resolution=128) == GridMapping(128, "crop", 0.5)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and "mode crop" in msgs[0] and "trained with pad" in msgs[0] and "128" in msgs[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medsoft_aug.geometry"):
        assert mapping_for_model({"resolution": 32}) == GridMapping(32)
    assert "records no grid mapping" in caplog.text
