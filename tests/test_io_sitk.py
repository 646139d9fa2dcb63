"""SimpleITK / GDCM: the second DICOM decoder (12-bit lossy JPEG, JPEG-LS) behind the pydicom readers, and
physical-space volume reading (oblique direction cosines); the same volume read both ways is identical.

Compressed files are pydicom's bundled public test files (``pydicom.data``), used in place."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsoft_aug.errors import InputError
from medsoft_aug.io import sitk_reader
from medsoft_aug.io.dicom import read_dicom_file, read_dicom_series
from medsoft_aug.io.nifti import read_nifti
from medsoft_aug.io.sitk_reader import read_volume_sitk

sitk = pytest.importorskip("SimpleITK")


def _data(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(path)


@pytest.fixture
def pydicom_cannot_decode(monkeypatch):
    """Make pydicom's decoder fail as it does for a transfer syntax it has no plugin for."""
    def fail(ds, name, index=None):
        raise InputError(f"{name}: cannot decode DICOM pixel data (forced in test)")

    monkeypatch.setattr(sitk_reader, "decode_frames", fail)


def test_12bit_lossy_jpeg_is_decoded_by_gdcm():
    path = _data("JPEG-lossy.dcm")                     # JPEG Extended (Process 2 & 4), 12-bit
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51" and ds.BitsStored == 12
    img = read_dicom_file(path)
    gdcm = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].astype(np.float32)
    # exact: GDCM decoded it (pydicom + pylibjpeg-openjpeg have no 12-bit JPEG decoder); a reference IDCT elsewhere
    # may differ by one grey level
    assert img.array.shape == (1024, 256) and np.abs(img.array - gdcm).max() <= 1
    assert 0 <= img.array.min() and img.array.max() < 2 ** 12 and img.array.std() > 0


@pytest.mark.parametrize("compressed,plain", [("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
                                              ("MR_small_jp2klossless.dcm", "MR_small.dcm")])
def test_gdcm_fallback_gives_what_pydicom_gives(compressed, plain, request):
    """JPEG-LS / JPEG 2000 lossless decoded by GDCM == the uncompressed original read by pydicom."""
    ref = read_dicom_file(_data(plain))
    request.getfixturevalue("pydicom_cannot_decode")
    via_gdcm = read_dicom_file(_data(compressed))
    assert np.array_equal(via_gdcm.array, ref.array)
    assert via_gdcm.spacing == ref.spacing and np.allclose(via_gdcm.affine, ref.affine)


def test_gdcm_fallback_undoes_the_rescale_gdcm_applies(pydicom_cannot_decode, monkeypatch):
    path = _data("CT_small.dcm")                       # RescaleIntercept -1024
    monkeypatch.setattr(sitk_reader, "_compressed", lambda ds: True)
    via_gdcm = read_dicom_file(path)
    monkeypatch.undo()
    ref = read_dicom_file(path)
    assert np.array_equal(via_gdcm.array, ref.array) and ref.array.min() < 0


def test_undecodable_everywhere_is_one_input_error(tmp_path, pydicom_cannot_decode):
    ds = pydicom.dcmread(_data("MR_small_jpeg_ls_lossless.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]           # truncated codestream
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(InputError, match=r"bad.dcm: .*SimpleITK/GDCM cannot decode it either"):
        read_dicom_file(bad)


def _oblique_series(folder: Path, source: str, n: int = 5) -> Path:
    """``n`` slices of a pydicom test file as one oblique series (rotated 20 degrees about the patient's z),
    InstanceNumber in reverse of position, pixel data (compressed or not) kept as is."""
    folder.mkdir()
    a = np.deg2rad(20.0)
    row, col = np.array([np.cos(a), np.sin(a), 0.0]), np.array([-np.sin(a) * 0.3, np.cos(a) * 0.3, -0.954])
    col = col / np.linalg.norm(col)
    col = col - row * (row @ col)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    series = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    for k in range(n):
        ds = pydicom.dcmread(_data(source))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([10.0, -20.0, 5.0]) + normal * 1.5 * k]
        ds.InstanceNumber = n - k
        ds.SliceThickness = "1.5"
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            arr = ds.pixel_array.astype(np.int16) + np.int16(37 * k)           # slices differ
            ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"IM{k:03d}.dcm")
    return folder


def test_series_read_by_gdcm_equals_pydicom_reader(tmp_path):
    folder = _oblique_series(tmp_path / "plain", "MR_small.dcm")
    ref = read_dicom_series(folder)
    gdcm = read_volume_sitk(folder)
    assert gdcm.source_format == ref.source_format == "dicom-series"
    assert gdcm.array.shape == ref.array.shape and np.array_equal(gdcm.array, ref.array)
    assert np.allclose(gdcm.affine, ref.affine, atol=1e-4) and np.allclose(gdcm.spacing, ref.spacing, atol=1e-5)
    assert sorted(gdcm.meta["orig_ornt"]) == sorted(ref.meta["orig_ornt"])    # ITK's (col, row) vs (row, col)
    assert (np.abs(ref.affine[:3, :3]) > 1e-3).sum() > 3                          # it is oblique


def test_compressed_series_with_gdcm_fallback_equals_uncompressed(tmp_path, monkeypatch):
    lossless = _oblique_series(tmp_path / "jls", "MR_small_jpeg_ls_lossless.dcm", n=3)
    plain = tmp_path / "plain"
    plain.mkdir()
    pixels = pydicom.dcmread(_data("MR_small.dcm")).PixelData
    for p in sorted(lossless.iterdir()):                # the same headers, uncompressed pixel data
        ds = pydicom.dcmread(p)
        ds.PixelData = pixels
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(plain / p.name, enforce_file_format=True)
    ref = read_dicom_series(plain)                      # pydicom decodes
    monkeypatch.setattr(sitk_reader, "decode_frames",
                        lambda ds, name, index=None: (_ for _ in ()).throw(InputError(f"{name}: forced")))
    via_gdcm = read_dicom_series(lossless)              # GDCM decodes every slice
    assert np.array_equal(via_gdcm.array, ref.array) and np.allclose(via_gdcm.affine, ref.affine)
    assert via_gdcm.meta["dicom_files"] == [str(lossless / Path(f).name) for f in ref.meta["dicom_files"]]


def test_oblique_nifti_in_physical_space(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 9, 5)).astype(np.float32)
    a = np.deg2rad(25.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]]) @ \
        np.array([[1, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])                  # oblique and axes permuted
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = tmp_path / "oblique.nii.gz"
    nib.save(img, path)
    ref, via = read_nifti(path), read_volume_sitk(path)
    assert via.array.shape == ref.array.shape and np.array_equal(via.array, ref.array)
    assert np.allclose(via.affine, ref.affine, atol=1e-5) and np.allclose(via.spacing, ref.spacing, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_read_image_reads_nrrd_and_metaimage_in_physical_space(tmp_path, suffix):
    from medsoft_aug.io.reader import read_image

    rng = np.random.default_rng(1)
    arr = rng.normal(size=(5, 9, 7)).astype(np.float32)               # ITK (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.1, 2.5))
    img.SetOrigin((3.0, -4.0, 10.0))
    a = np.deg2rad(15.0)
    img.SetDirection((np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(img, str(path))
    out = read_image(path)
    # independent: voxel (i, j, k) of ITK's array at LPS = origin + D diag(spacing) (i, j, k); RAS flips x, y
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    ijk = np.array([2, 3, 4])
    lps = np.array(img.GetOrigin()) + d @ ijk
    ras = lps * [-1, -1, 1]
    vox = np.linalg.solve(out.affine[:3, :3], ras - out.affine[:3, 3])
    assert np.allclose(vox, np.round(vox), atol=1e-6)
    assert out.array[tuple(np.round(vox).astype(int))] == arr[4, 3, 2]
    assert out.source_format == "sitk" and sorted(out.spacing) == pytest.approx(sorted((0.7, 1.1, 2.5)))


def test_sitk_reader_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume_sitk(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume_sitk(tmp_path / "empty")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(InputError, match="junk.nii.gz: SimpleITK cannot read it"):
        read_volume_sitk(junk)
