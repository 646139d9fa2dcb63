"""DICOM volumes opened from their headers (io.reader.open_image): slices taken along the acquisition's slice
axis decode only their own file or frame, and equal the fully read volume in every orientation."""
from __future__ import annotations

import numpy as np
import pytest

from medsoft_aug.errors import InputError
from medsoft_aug.io import sitk_reader
from medsoft_aug.io.dicom import DicomVolume
from medsoft_aug.io.reader import open_image, read_image

from _io_helpers import canonical_affine, enhanced_multiframe, random_volume, save, write_series_from_canonical


@pytest.fixture()
def count_decodes(monkeypatch):
    """Count the files / frames pydicom is asked to decode."""
    calls: list = []
    real = sitk_reader.decode_frames

    def counting(ds, name, index=None):
        calls.append((name, index))
        return real(ds, name, index)

    monkeypatch.setattr(sitk_reader, "decode_frames", counting)
    return calls


def _same_as_full(path, full, label_map=False):
    vol = open_image(path, label_map=label_map)
    assert isinstance(vol, DicomVolume)
    assert vol.shape == full.shape and vol.spacing == full.spacing and vol.source_format == full.source_format
    np.testing.assert_array_equal(vol.affine, full.affine)
    assert {k: v for k, v in vol.meta.items()} == {k: v for k, v in full.meta.items() if k != "label_dtype"}
    for i in range(full.shape[0]):
        np.testing.assert_array_equal(vol.take(i, axis=0), full.array[i])
    return vol


@pytest.mark.parametrize("codes", ["PIR", "ASL", "IPR", "RAS", "SLA"])
@pytest.mark.parametrize("compress", [None, "rle"])
def test_series_slices_equal_the_full_read(tmp_path, codes, compress, count_decodes):
    rng = np.random.default_rng(len(codes) * 7 + (compress is None))
    vol = random_volume(rng, (5, 6, 7))
    aff = canonical_affine((4.5, 0.9, 1.1), (10.0, -4.0, 22.5))
    write_series_from_canonical(tmp_path / "s", vol, aff, codes, rng, compress=compress, slope=2.0, intercept=-3.0)
    full = read_image(tmp_path / "s")
    np.testing.assert_array_equal(full.array, vol * 2.0 - 3.0)
    count_decodes.clear()
    v = _same_as_full(tmp_path / "s", full)
    decoded = len(count_decodes)
    if full.meta["slice_axis"] == 0:        # sagittal acquisition: one file decoded per slice taken
        assert decoded == full.shape[0]
    else:                                   # any other: the volume is decoded once, as a whole
        assert decoded == len(full.meta["dicom_files"]) and v.take(1, axis=1).shape == full.array[:, 1].shape


def test_only_the_taken_slice_is_decoded(tmp_path, count_decodes):
    rng = np.random.default_rng(3)
    vol = random_volume(rng, (7, 6, 5))
    write_series_from_canonical(tmp_path / "s", vol, canonical_affine((5.0, 1.0, 1.0), (0, 0, 0)), "PIR", rng)
    v = open_image(tmp_path / "s")
    assert count_decodes == []                       # opening reads headers and bytes only
    np.testing.assert_array_equal(v.take(3), vol[3])
    assert count_decodes == [(count_decodes[0][0], None)]
    assert count_decodes[0][0] == v.meta["dicom_files"][3].split("/")[-1]


@pytest.mark.parametrize("codes", ["IPR", "RAS"])
def test_multiframe_frames_decoded_one_at_a_time(tmp_path, codes, count_decodes):
    rng = np.random.default_rng(11)
    vol = random_volume(rng, (4, 5, 6), hi=1000)
    aff = canonical_affine((1.1, 0.9, 2.5), (-20.0, 5.0, 3.0))
    n = {"IPR": 4, "RAS": 6}[codes]
    ds, _ = enhanced_multiframe(vol, aff, codes, rng, slopes=np.where(np.arange(n) % 2, 0.5, 0.25))
    path = save(ds, tmp_path / "mf.dcm", compress="rle")
    full = read_image(path)
    np.testing.assert_array_equal(full.array, vol)
    count_decodes.clear()
    _same_as_full(path, full)
    if codes == "IPR":                       # frames along R: each take decodes one frame
        assert [i for _, i in count_decodes] == [full.meta["frame_order"][i] for i in range(4)]
    else:
        assert [i for _, i in count_decodes] == [None]


def test_label_map_slices_keep_values(tmp_path):
    rng = np.random.default_rng(5)
    vol = rng.integers(0, 30, size=(5, 6, 7)).astype(np.float32)
    write_series_from_canonical(tmp_path / "seg", vol, canonical_affine((4.0, 1.0, 1.0), (0, 0, 0)), "PIR", rng)
    _same_as_full(tmp_path / "seg", read_image(tmp_path / "seg", label_map=True), label_map=True)


def test_damage_in_an_unused_slice_is_found_when_opening(tmp_path):
    rng = np.random.default_rng(9)
    vol = random_volume(rng, (5, 6, 7))
    files, _ = write_series_from_canonical(tmp_path / "s", vol, canonical_affine((4.0, 1.0, 1.0), (0, 0, 0)),
                                           "PIR", rng)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) - 20])     # pixel bytes short: found without decoding
    with pytest.raises(InputError, match="truncated or corrupt"):
        open_image(tmp_path / "s")
