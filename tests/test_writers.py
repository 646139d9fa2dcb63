"""16-bit PNG and NIfTI writers for synthetic images."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsoft_aug.errors import InputError
from medsoft_aug.generate.writers import write_nifti_slice, write_png16
from medsoft_aug.ingest.slicing import apply_geometry, geometry_json, make_geometry
from medsoft_aug.io.reader import read_image

from _io_helpers import axis_aligned_view, canonical_affine, random_volume


def test_png16_exact_levels_and_atomic(tmp_path):
    rng = np.random.default_rng(21)
    img = rng.random((9, 13)).astype(np.float32)
    img[0, 0], img[0, 1], img[0, 2] = -0.5, 1.5, 1.0          # clipped
    write_png16(tmp_path / "sub" / "a.png", img)
    with Image.open(tmp_path / "sub" / "a.png") as im:
        assert im.mode.startswith("I;16") and im.format == "PNG"
        got = np.array(im)
    expected = np.rint(np.clip(img.astype(np.float64), 0, 1) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(got, expected)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.png"]      # no temp files left
    with pytest.raises(InputError, match="non-finite"):
        write_png16(tmp_path / "b.png", np.full((3, 3), np.nan))
    assert not (tmp_path / "b.png").exists()


def _donor_row(img, index, lo, hi):
    geom = make_geometry(img.shape, index, img.affine)
    sl = apply_geometry(img.array, geom)
    x01 = (sl - lo) / (hi - lo)
    return {"sample_id": "d1", "window_lo": str(lo), "window_hi": str(hi), "geometry": geometry_json(geom),
            "spacing_row": "1", "spacing_col": "1"}, x01, geom


@pytest.mark.parametrize("codes", ["PIR", "LPS"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_slice_overlays_donor_slice(tmp_path, codes, ext):
    rng = np.random.default_rng(len(codes + ext))
    vol = random_volume(rng, (6, 7, 5), hi=3000)
    aff = canonical_affine((1.5, 0.8, 2.0), (-12.0, 30.0, -4.0))
    stored, ras = axis_aligned_view(vol, aff, codes)
    nib.save(nib.Nifti1Image(stored.astype(np.int16), ras), tmp_path / f"donor{ext}")
    donor = read_image(tmp_path / f"donor{ext}")
    row, x01, geom = _donor_row(donor, 3, -5.0, 3100.0)
    write_nifti_slice(tmp_path / f"out{ext}", x01, row)
    out = nib.load(tmp_path / f"out{ext}")
    data = np.asanyarray(out.dataobj)
    assert data.dtype == np.float32 and data.shape == (1, 7, 5)
    # every output voxel sits at the world position of donor voxel (3, j, k) and holds its value
    j, k = np.meshgrid(np.arange(7), np.arange(5), indexing="ij")
    ijk = np.stack([np.zeros(j.size), j.ravel(), k.ravel(), np.ones(j.size)])
    world_out = out.affine @ ijk
    world_donor = donor.affine @ (ijk + np.array([[3], [0], [0], [0]]))
    np.testing.assert_allclose(world_out, world_donor, atol=1e-4)
    np.testing.assert_allclose(data[0], vol[3], rtol=0, atol=1e-3)
    # in scanner space it is the donor's voxel grid: resampling the donor at the output voxels gives the same
    donor_nib = nib.load(tmp_path / f"donor{ext}")
    vox = np.rint(np.linalg.inv(donor_nib.affine) @ world_out).astype(int)[:3]
    np.testing.assert_allclose(data[0].ravel(), np.asanyarray(donor_nib.dataobj)[vox[0], vox[1], vox[2]], atol=1e-3)
    assert int(out.header["sform_code"]) == 1
    write_nifti_slice(tmp_path / "int.nii.gz", x01, row, dtype="int16")
    back = nib.load(tmp_path / "int.nii.gz")
    assert back.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(back.dataobj)[0], vol[3])


def test_nifti_slice_from_2d_donor_and_bad_rows(tmp_path):
    rng = np.random.default_rng(8)
    x01 = rng.random((4, 6))
    row = {"sample_id": "p", "window_lo": "0", "window_hi": "255", "spacing_row": "0.5", "spacing_col": "0.25",
           "geometry": geometry_json(make_geometry((4, 6), None, None))}
    write_nifti_slice(tmp_path / "a.nii.gz", x01, row)
    out = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(np.asanyarray(out.dataobj)[:, :, 0], x01 * 255, rtol=1e-6)
    np.testing.assert_allclose(out.header.get_zooms(), (0.5, 0.25, 1.0))
    with pytest.raises(InputError, match="does not match"):
        write_nifti_slice(tmp_path / "b.nii.gz", rng.random((5, 6)), row)
    with pytest.raises(InputError, match="window_hi"):
        write_nifti_slice(tmp_path / "c.nii.gz", x01, {**row, "window_hi": "0"})
    with pytest.raises(InputError, match="no window_lo"):
        write_nifti_slice(tmp_path / "d.nii.gz", x01, {**row, "window_lo": ""})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
