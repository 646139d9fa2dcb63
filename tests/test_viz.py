"""Contact sheets: layout, overlay colour blending, outlines, atomic PNG writes."""
import numpy as np
import pytest
from PIL import Image

from medsoft_aug.viz import contact_sheet, render_cell, render_contact_sheet


def test_render_cell_overlay_blend_matches_hand_computation():
    rng = np.random.default_rng(0)
    img = rng.random((20, 20)).astype(np.float32)
    mask = np.zeros((20, 20), np.float32)
    mask[5:15, 5:15] = 1.0
    cell = render_cell(img, (20, 20), overlay=mask, color=(255, 0, 0), alpha=0.5, outline=False)
    assert cell.shape == (20, 20, 3) and cell.dtype == np.uint8
    # same size: no resampling, so the blend is exact: out = img*(1-a*m) + col*a*m
    exp_r = np.clip(img * (1 - 0.5 * mask) + 0.5 * mask, 0, 1) * 255 + 0.5
    exp_g = np.clip(img * (1 - 0.5 * mask), 0, 1) * 255 + 0.5
    np.testing.assert_array_equal(cell[..., 0], exp_r.astype(np.uint8))
    np.testing.assert_array_equal(cell[..., 1], exp_g.astype(np.uint8))


def test_outline_is_mask_boundary():
    img = np.full((30, 30), 0.5, np.float32)
    mask = np.zeros((30, 30), np.float32)
    mask[10:20, 8:22] = 1.0
    cell = render_cell(img, (30, 30), overlay=mask, color=(0, 255, 0), alpha=0.0, outline=True)
    green = (cell[..., 1] == 255) & (cell[..., 0] == 0)
    ref = np.zeros((30, 30), bool)
    ref[10:20, 8:22] = True
    ref[11:19, 9:21] = False
    np.testing.assert_array_equal(green, ref)


def test_contact_sheet_layout_labels_and_png(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.random((40, 20)).astype(np.float32)  # tall cell: letterboxed
    b = (rng.random((30, 30, 3)) * 255).astype(np.uint8)
    rows = [[a, b, None], [b]]
    arr = render_contact_sheet(rows, row_labels=["r0", "r1"], col_labels=["x", "y", "z"],
                               cell_labels=[["c", "d", ""], ["e"]], cell_size=(50, 60))
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    out = contact_sheet(rows, tmp_path / "sub" / "s.png", cell_size=(50, 60))
    im = Image.open(out)
    assert im.mode == "RGB" and im.format == "PNG"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "s.png"]
    assert np.asarray(im).shape == render_contact_sheet(rows, cell_size=(50, 60)).shape


def test_contact_sheet_rejects_bad_overlay_and_empty(tmp_path):
    with pytest.raises(ValueError):
        render_contact_sheet([])
    with pytest.raises(ValueError, match="overlay shape"):
        render_contact_sheet([[np.zeros((5, 5))]], overlays=[[np.zeros((4, 5))]])
    assert not (tmp_path / "x.png").exists()
