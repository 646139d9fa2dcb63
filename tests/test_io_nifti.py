"""NIfTI reader: canonical RAS+ in any stored orientation, label dtypes, real TotalSegmentator / TPTBox files."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsoft_aug.errors import InputError
from medsoft_aug.io.nifti import label_array
from medsoft_aug.io.reader import read_image

from _io_helpers import axis_aligned_view, canonical_affine, random_volume


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "SLA", "IRP", "ALI"])
def test_any_orientation_gives_the_same_canonical_array(tmp_path, codes):
    rng = np.random.default_rng(sum(map(ord, codes)))
    vol = random_volume(rng, (4, 5, 6))
    aff = canonical_affine((0.7, 1.3, 2.9), (-30.0, 12.0, 8.0))
    stored, ras = axis_aligned_view(vol, aff, codes)
    path = tmp_path / f"{codes}.nii.gz"
    nib.save(nib.Nifti1Image(stored.astype(np.int16), ras), path)
    img = read_image(path)
    assert img.source_format == "nifti" and img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_allclose(img.spacing, (0.7, 1.3, 2.9), atol=1e-6)
    assert img.meta["orig_ornt"] == codes
    # and exactly what nibabel's as_closest_canonical gives
    canon = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_array_equal(img.array, canon.get_fdata(dtype=np.float32))


def test_scl_slope_applied_to_intensities_not_hidden(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(-500, 500, size=(3, 4, 5)).astype(np.int16)
    im = nib.Nifti1Image(raw, np.diag([1.0, 1.0, 1.0, 1.0]))
    im.header.set_slope_inter(0.25, 10.0)
    nib.save(im, tmp_path / "s.nii")
    img = read_image(tmp_path / "s.nii")
    np.testing.assert_allclose(img.array, raw * 0.25 + 10.0)


def test_float64_labels_float32_when_exact_else_float64(tmp_path):
    rng = np.random.default_rng(11)
    verse = rng.choice([0.0, 20.0, 21.0, 22.0, 23.0, 26.0], size=(4, 4, 3))          # VerSe stores float64
    nib.save(nib.Nifti1Image(verse.astype(np.float64), np.eye(4)), tmp_path / "v.nii.gz")
    img = read_image(tmp_path / "v.nii.gz", label_map=True)
    assert img.array.dtype == np.float32 and img.meta["label_dtype"] == "float32"
    np.testing.assert_array_equal(img.array, verse)
    odd = verse.copy()
    odd[0, 0, 0] = 1.0 + 2.0 ** -40                    # not representable in float32
    nib.save(nib.Nifti1Image(odd, np.eye(4)), tmp_path / "o.nii.gz")
    img = read_image(tmp_path / "o.nii.gz", label_map=True)
    assert img.array.dtype == np.float64 and img.meta["label_dtype"] == "float64"
    np.testing.assert_array_equal(img.array, odd)


def test_label_array_integer_limits():
    a, kind = label_array(np.array([0, 2 ** 24 - 1], dtype=np.int64))
    assert kind == "float32" and a[1] == 2 ** 24 - 1
    a, kind = label_array(np.array([0, 2 ** 24 + 1], dtype=np.int64))
    assert kind == "float64" and a[1] == 2 ** 24 + 1


def test_2d_and_singleton_4d_nifti_become_3d(tmp_path):
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 100, size=(4, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "a.nii")
    assert read_image(tmp_path / "a.nii").shape == (4, 5, 1)
    nib.save(nib.Nifti1Image(arr[:, :, None, None], np.eye(4)), tmp_path / "b.nii")
    np.testing.assert_array_equal(read_image(tmp_path / "b.nii").array[..., 0], arr)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(InputError, match="expected a 3D volume"):
        read_image(tmp_path / "c.nii")


@pytest.mark.parametrize("image,seg,shape,spacing,ornt,labels", [
    ("totalsegmentator/example_mr_sm.nii.gz", "totalsegmentator/example_seg_mr.nii.gz", (117, 91, 20), 3.0, "LPS",
     {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 19, 20, 21, 23, 24, 25, 46, 47, 48, 49}),
    ("totalsegmentator/example_ct_sm.nii.gz", "totalsegmentator/example_seg.nii.gz", (122, 101, 30), 3.0, "RAS",
     None),
    ("tptbox/sample_mri/sub-mri_label-6_T2w.nii.gz", "tptbox/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz",
     (67, 68, 52), 1.5, "PIR", {0, 5, 6, 7, 105, 106, 205, 206, 207}),
])
def test_real_files(realdata, image, seg, shape, spacing, ornt, labels):
    img = read_image(realdata / image)
    lab = read_image(realdata / seg, label_map=True)
    assert img.shape == shape and lab.shape == shape
    np.testing.assert_allclose(img.spacing, (spacing,) * 3, rtol=1e-6)
    assert img.meta["orig_ornt"] == ornt
    np.testing.assert_allclose(lab.affine, img.affine, atol=1e-4)      # seg shares the image grid
    assert img.array.dtype == np.float32 and np.ptp(img.array) > 0
    found = set(np.unique(lab.array).astype(int).tolist())
    if labels is not None:
        assert found == labels
    else:   # CT: TotalSegmentator v2 labels 30-33 (L2, L1, T12, T11) present, 42 labels in all
        assert {30, 31, 32, 33} <= found and len(found) == 42
    # axis 2 of the canonical array runs toward Superior, axis 0 toward Right
    assert img.affine[2, 2] > 0 and img.affine[0, 0] > 0 and img.affine[1, 1] > 0
