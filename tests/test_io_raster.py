"""PNG / TIFF reader: bit depths, colour to luminance, palettes, spacing from DPI."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsoft_aug.errors import InputError
from medsoft_aug.io.reader import read_image


@pytest.fixture()
def rng(request) -> np.random.Generator:
    return np.random.default_rng(abs(hash(request.node.name)) % (2 ** 32))


@pytest.mark.parametrize("ext", ["png", "tif", "tiff"])
@pytest.mark.parametrize("dtype,hi", [(np.uint8, 256), (np.uint16, 65536)])
def test_gray_8_and_16_bit_exact(tmp_path, rng, ext, dtype, hi):
    arr = rng.integers(0, hi, size=(9, 7)).astype(dtype)
    path = tmp_path / f"g.{ext}"
    Image.fromarray(arr).save(path)
    img = read_image(path)
    assert img.source_format == "raster" and img.array.dtype == np.float32 and img.affine is None
    np.testing.assert_array_equal(img.array, arr.astype(np.float32))
    assert img.spacing == (1.0, 1.0) and img.meta["spacing_source"] == "default"
    assert img.meta["bit_depth"] == 8 * np.dtype(dtype).itemsize


def test_float_tiff(tmp_path, rng):
    arr = rng.normal(size=(5, 6)).astype(np.float32)
    Image.fromarray(arr).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif").array, arr)


def test_rgb_to_luminance(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(6, 5, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]     # ITU-R BT.601
    np.testing.assert_allclose(img.array, expected, atol=1e-4)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "c4.png")
    np.testing.assert_allclose(read_image(tmp_path / "c4.png").array, expected, atol=1e-4)


def test_palette_to_luminance_and_label_indices(tmp_path, rng):
    idx = rng.integers(0, 4, size=(6, 7)).astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 0], [10, 20, 250]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    lum = palette.astype(float) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(img.array, lum[idx], atol=1e-4)
    lab = read_image(tmp_path / "p.png", label_map=True)
    np.testing.assert_array_equal(lab.array, idx)
    assert lab.meta["label_dtype"] == "float32"


def test_rgb_label_map_only_when_gray(tmp_path, rng):
    g = rng.integers(0, 5, size=(4, 4)).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], axis=2)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png", label_map=True).array, g)
    Image.fromarray(rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="cannot be used as a label map"):
        read_image(tmp_path / "c.png", label_map=True)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_spacing_from_dpi_and_screen_defaults_ignored(tmp_path, rng, ext):
    arr = rng.integers(0, 65536, size=(4, 6)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / f"d.{ext}", dpi=(254, 127))       # 0.1 mm columns, 0.2 mm rows
    img = read_image(tmp_path / f"d.{ext}")
    np.testing.assert_allclose(img.spacing, (0.2, 0.1), rtol=1e-3)
    assert img.meta["spacing_source"] == "dpi"
    if ext == "tif":        # resolution in pixels per centimetre
        Image.fromarray(arr).save(tmp_path / "cm.tif", resolution_unit=3, x_resolution=20, y_resolution=10)
        np.testing.assert_allclose(read_image(tmp_path / "cm.tif").spacing, (1.0, 0.5), rtol=1e-6)
    Image.fromarray(arr).save(tmp_path / f"s.{ext}", dpi=(72, 72))
    img = read_image(tmp_path / f"s.{ext}")
    assert img.spacing == (1.0, 1.0) and img.meta["spacing_source"] == "default"


def test_multipage_tiff_is_an_error(tmp_path, rng):
    pages = [Image.fromarray(rng.integers(0, 255, (4, 4)).astype(np.uint8)) for _ in range(2)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match="multi-page"):
        read_image(tmp_path / "m.tif")
