"""DICOM readers: single files, compressed transfer syntaxes, MONOCHROME1, rescale, multi-frame, series."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsoft_aug.errors import InputError
from medsoft_aug.io.dicom import series_slice_files
from medsoft_aug.io.reader import read_image

from _io_helpers import (axis_aligned_view, canonical_affine, enhanced_multiframe, new_dataset, random_volume, save,
                         write_series_from_canonical)


@pytest.fixture()
def rng(request) -> np.random.Generator:
    return np.random.default_rng(abs(hash(request.node.name)) % (2 ** 32))


def test_single_frame_2d_as_stored_with_spacing_and_affine(tmp_path, rng):
    pix = rng.integers(0, 4096, size=(7, 5))
    iop = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]          # sagittal: columns toward P, rows toward I (LPS)
    ipp = [12.5, -30.0, 40.0]
    path = save(new_dataset(pix, pixel_spacing=(0.8, 0.6), iop=iop, ipp=ipp, instance=17), tmp_path / "a.dcm")
    img = read_image(path)
    assert img.source_format == "dicom" and img.array.dtype == np.float32 and img.shape == (7, 5)
    np.testing.assert_array_equal(img.array, pix.astype(np.float32))
    assert img.spacing == (0.8, 0.6)
    assert img.meta["instance_number"] == 17 and img.meta["n_frames"] == 1
    assert img.meta["photometric"] == "MONOCHROME2" and img.meta["transfer_syntax"] == "1.2.840.10008.1.2.1"
    # hand computation: pixel (r, c) sits at IPP + c * 0.6 * row_cos + r * 0.8 * col_cos (LPS)
    r, c = 3, 4
    lps = np.array(ipp) + c * 0.6 * np.array(iop[:3]) + r * 0.8 * np.array(iop[3:])
    ras = img.affine @ np.array([r, c, 0, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-9)


def test_file_without_extension_detected_by_preamble(tmp_path, rng):
    pix = rng.integers(0, 4096, size=(4, 6))
    path = save(new_dataset(pix), tmp_path / "IM0001")
    np.testing.assert_array_equal(read_image(path).array, pix)
    bare = save(new_dataset(pix), tmp_path / "bare.dcm", part10=False)     # no preamble: found by extension
    assert open(bare, "rb").read(132)[128:] != b"DICM"
    np.testing.assert_array_equal(read_image(bare).array, pix)


@pytest.mark.parametrize("signed", [False, True])
def test_rescale_slope_intercept(tmp_path, rng, signed):
    pix = rng.integers(-2000 if signed else 0, 2000, size=(6, 6))
    path = save(new_dataset(pix, signed=signed, slope=0.5, intercept=-1024), tmp_path / "r.dcm")
    img = read_image(path)
    np.testing.assert_allclose(img.array, pix * 0.5 - 1024, rtol=0, atol=1e-6)
    assert img.meta["rescale_slope"] == 0.5 and img.meta["rescale_intercept"] == -1024


def test_monochrome1_inverted_over_stored_range(tmp_path, rng):
    pix = rng.integers(0, 4096, size=(5, 8))
    img = read_image(save(new_dataset(pix, photometric="MONOCHROME1", bits_stored=12), tmp_path / "m.dcm"))
    np.testing.assert_array_equal(img.array, 4095 - pix)     # brightest stored 0 -> 4095
    assert img.meta["monochrome1_inverted"] and img.meta["invert_sum"] == 4095
    # with rescale: range [-100, 2 * 4095 - 100], inverted within it
    img = read_image(save(new_dataset(pix, photometric="MONOCHROME1", slope=2.0, intercept=-100),
                          tmp_path / "m2.dcm"))
    np.testing.assert_allclose(img.array, (-100 + 8090) - (2.0 * pix - 100))
    # a label map is never inverted
    lab = read_image(tmp_path / "m.dcm", label_map=True)
    np.testing.assert_array_equal(lab.array, pix)


@pytest.mark.parametrize("codec,uid", [("j2k", "1.2.840.10008.1.2.4.90"), ("rle", "1.2.840.10008.1.2.5")])
def test_compressed_transfer_syntaxes_decode_exactly(tmp_path, rng, codec, uid):
    pix = rng.integers(0, 4096, size=(40, 36))        # openjpeg's default 6 resolutions need >= 32 px
    path = save(new_dataset(pix, slope=1.0, intercept=-10), tmp_path / f"{codec}.dcm", compress=codec)
    img = read_image(path)
    assert img.meta["transfer_syntax"] == uid
    np.testing.assert_array_equal(img.array, pix - 10)


def test_enhanced_multiframe_per_frame_groups(tmp_path, rng):
    vol = rng.integers(1, 1000, size=(4, 5, 6)).astype(np.float32)
    aff = canonical_affine((1.1, 0.9, 2.5), (-20.0, 5.0, 3.0))
    slopes = np.array([0.5, 0.25, 0.5, 0.25, 0.5, 0.25, 0.5, 0.25][: 4])     # slices along R: 4 of them
    ds, _ = enhanced_multiframe(vol, aff, "IPR", rng, slopes=slopes)
    img = read_image(save(ds, tmp_path / "mf.dcm"))
    assert img.source_format == "dicom" and img.meta["n_frames"] == 4
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_allclose(img.spacing, (1.1, 0.9, 2.5), atol=1e-6)
    assert img.meta["sorted_by"] == "position" and img.meta["slice_axis"] == 0
    # frame_order[i] is the frame holding canonical slice i: re-decode and compare
    stored = ds.pixel_array
    for i, f in enumerate(img.meta["frame_order"]):
        assert np.allclose(stored[f] * img.meta["rescale_slope"][f], vol[i].T[::-1, ::-1])


def test_plain_multiframe_without_geometry(tmp_path, rng):
    frames = rng.integers(0, 4096, size=(3, 4, 5))
    img = read_image(save(new_dataset(frames, pixel_spacing=(0.7, 0.6)), tmp_path / "cine.dcm"))
    # no orientation: rows toward P, columns toward L, frames toward S (LPS identity); canonical flips X and Y
    expected = np.transpose(frames, (2, 1, 0))[::-1, ::-1, :]
    np.testing.assert_array_equal(img.array, expected)
    assert img.meta["orientation_assumed"] and img.meta["sorted_by"] == "frame"
    np.testing.assert_allclose(img.spacing, (0.6, 0.7, 1.0))


@pytest.mark.parametrize("codes", ["IPR", "PLS", "IAL"])
def test_series_matches_canonical_volume_and_nifti(tmp_path, rng, codes):
    vol = random_volume(rng, (4, 5, 6))
    aff = canonical_affine((0.9, 1.2, 3.0), (10.0, -4.0, 22.5))
    files, _ = write_series_from_canonical(tmp_path / "ser", vol, aff, codes, rng)
    (tmp_path / "ser" / "notes.txt").write_text("not dicom")
    (tmp_path / "ser" / ".DS_Store").write_bytes(b"\0\1junk")
    img = read_image(tmp_path / "ser")
    assert img.source_format == "dicom-series"
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_allclose(img.spacing, (0.9, 1.2, 3.0), atol=1e-6)
    assert img.meta["orig_ornt"] == codes and img.meta["ignored_files"] == 1
    assert img.meta["sorted_by"] == "position" and not img.meta["empty_uids"]
    # dicom_files[i] holds canonical slice i along slice_axis
    axis = img.meta["slice_axis"]
    for i, f in enumerate(img.meta["dicom_files"]):
        sl = read_image(f).array
        canon = np.take(vol, i, axis=axis)
        assert sorted(sl.ravel().tolist()) == sorted(canon.ravel().tolist())
    files_hdr, axis_hdr = series_slice_files(tmp_path / "ser")        # header-only layout agrees
    assert [str(f) for f in files_hdr] == img.meta["dicom_files"] and axis_hdr == axis
    # the same volume saved as NIfTI in a permuted, flipped orientation reads to the same array
    stored, ras = axis_aligned_view(vol, aff, "SLA")
    nib.save(nib.Nifti1Image(stored, ras), tmp_path / "v.nii.gz")
    nii = read_image(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(nii.array, img.array)
    np.testing.assert_allclose(nii.affine, img.affine, atol=1e-5)


def test_series_with_empty_uids_and_compressed_slices(tmp_path, rng):
    vol = random_volume(rng, (32, 33, 3))               # J2K slices need >= 32 px per side
    aff = canonical_affine((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    write_series_from_canonical(tmp_path / "s", vol, aff, "PLS", rng, series_uid="", study_uid="", compress="j2k")
    first = sorted((tmp_path / "s").iterdir())[0]
    assert open(first, "rb").read(132)[128:] == b"DICM"
    img = read_image(tmp_path / "s")
    assert img.meta["empty_uids"] is True
    np.testing.assert_array_equal(img.array, vol)


def test_series_sorted_by_instance_number_without_positions(tmp_path, rng):
    slices = rng.integers(0, 4096, size=(3, 4, 5))
    for k, name in zip(range(3), ["c.dcm", "a.dcm", "b.dcm"]):
        save(new_dataset(slices[k], instance=k + 1, series_uid="1.2.3.4"), tmp_path / "s" / name)
    img = read_image(tmp_path / "s")
    assert img.meta["sorted_by"] == "instance_number"
    np.testing.assert_array_equal(img.array, np.transpose(slices, (2, 1, 0))[::-1, ::-1, :])
    assert img.meta["instance_numbers"] == [1, 2, 3]


def test_folder_with_two_series_is_an_error(tmp_path, rng):
    for i, uid in enumerate(["1.2.3.1", "1.2.3.2"]):
        save(new_dataset(rng.integers(0, 99, (4, 4)), series_uid=uid, ipp=[0, 0, i], iop=[1, 0, 0, 0, 1, 0]),
             tmp_path / f"{i}.dcm")
    with pytest.raises(InputError, match="2 DICOM series"):
        read_image(tmp_path)


def test_duplicate_positions_and_size_mismatch_are_errors(tmp_path, rng):
    for i in range(2):
        save(new_dataset(rng.integers(0, 99, (4, 4)), series_uid="1.2.9", ipp=[0, 0, 5], iop=[1, 0, 0, 0, 1, 0],
                         instance=i + 1), tmp_path / "dup" / f"{i}.dcm")
    with pytest.raises(InputError, match="share a position"):
        read_image(tmp_path / "dup")
    for i, shape in enumerate([(4, 4), (4, 5)]):
        save(new_dataset(rng.integers(0, 99, shape), series_uid="1.2.8", ipp=[0, 0, i]), tmp_path / "sz" / f"{i}.dcm")
    with pytest.raises(InputError, match="differ in size"):
        read_image(tmp_path / "sz")


def test_label_map_series_keeps_values(tmp_path, rng):
    vol = rng.choice([0.0, 20.0, 21.0, 22.0], size=(3, 4, 5)).astype(np.float32)
    write_series_from_canonical(tmp_path / "seg", vol, canonical_affine((1, 1, 1), (0, 0, 0)), "IPR", rng)
    img = read_image(tmp_path / "seg", label_map=True)
    assert img.meta["label_dtype"] == "float32" and img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array, vol)


def test_imager_pixel_spacing_fallback_and_default(tmp_path, rng):
    pix = rng.integers(0, 4096, size=(4, 5))
    ds = new_dataset(pix, pixel_spacing=None)
    ds.ImagerPixelSpacing = [0.15, 0.2]
    img = read_image(save(ds, tmp_path / "cr.dcm"))
    assert img.spacing == (0.15, 0.2) and img.meta["spacing_source"] == "ImagerPixelSpacing"
    img = read_image(save(new_dataset(pix, pixel_spacing=None), tmp_path / "none.dcm"))
    assert img.spacing == (1.0, 1.0) and img.meta["spacing_source"] == "default" and img.affine is None


def test_empty_uid_folder_with_two_series_numbers_is_an_error(tmp_path, rng):
    for i in range(2):
        save(new_dataset(rng.integers(0, 99, (4, 4)), series_uid="", study_uid="", series_number=i + 1,
                         ipp=[0, 0, i], iop=[1, 0, 0, 0, 1, 0]), tmp_path / f"{i}.dcm")
    with pytest.raises(InputError, match="2 DICOM series .*UIDs are empty"):
        read_image(tmp_path)
