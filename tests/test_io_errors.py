"""Bad input to read_image: one-line InputError naming the problem, no patient data; inputs never modified."""
from __future__ import annotations

import gzip
import hashlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsoft_aug.errors import InputError
from medsoft_aug.io.reader import read_image

from _io_helpers import canonical_affine, new_dataset, random_volume, save, write_series_from_canonical

PATIENT_MARKERS = ("Test^Phantom", "PHANTOM-0")


def _raises(path, match: str, **kw) -> str:
    with pytest.raises(InputError, match=match) as exc:
        read_image(path, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and not any(m in msg for m in PATIENT_MARKERS)
    assert exc.value.exit_code == 3
    return msg


@pytest.mark.parametrize("name", ["nope.dcm", "nope.nii.gz", "nope.png", "nope_dir"])
def test_missing_paths(tmp_path, name):
    _raises(tmp_path / name, "not found")


def test_empty_folder_and_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "folder is empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "readme.txt").write_text("hello")
    _raises(tmp_path / "txt", "no DICOM images")


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    _raises(tmp_path / "a.jpg", "unsupported image type")
    (tmp_path / "b.txt").write_text("x")
    _raises(tmp_path / "b.txt", "unsupported image type")


def test_truncated_and_garbage_dicom(tmp_path):
    rng = np.random.default_rng(1)
    path = save(new_dataset(rng.integers(0, 4096, (32, 32))), tmp_path / "t.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 700])
    _raises(path, "DICOM")
    (tmp_path / "g.dcm").write_bytes(rng.integers(0, 256, 600).astype(np.uint8).tobytes())
    _raises(tmp_path / "g.dcm", "DICOM")
    nopix = new_dataset(np.zeros((4, 4)))
    del nopix.PixelData
    _raises(save(nopix, tmp_path / "np.dcm"), "no pixel data")


def test_corrupt_compressed_pixel_data(tmp_path):
    rng = np.random.default_rng(2)
    ds = new_dataset(rng.integers(0, 4096, (40, 40)))
    save(ds, tmp_path / "j.dcm", compress="j2k")
    raw = bytearray((tmp_path / "j.dcm").read_bytes())
    start = raw.find(b"\xff\x4f\xff\x51")          # J2K codestream start (SOC + SIZ)
    raw[start + 4: start + 40] = b"\x00" * 36        # destroy the image size header
    (tmp_path / "j.dcm").write_bytes(bytes(raw))
    _raises(tmp_path / "j.dcm", "cannot decode DICOM pixel data|corrupt")


def test_truncated_slice_inside_series(tmp_path):
    rng = np.random.default_rng(3)
    files, _ = write_series_from_canonical(tmp_path / "s", random_volume(rng, (3, 4, 5)),
                                           canonical_affine((1, 1, 1), (0, 0, 0)), "PLS", rng)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-10])
    msg = _raises(tmp_path / "s", "DICOM")
    assert files[2].name in msg


def test_corrupt_nifti(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "g.nii.gz").write_bytes(rng.integers(0, 256, 500).astype(np.uint8).tobytes())
    _raises(tmp_path / "g.nii.gz", "cannot read NIfTI")
    nib.save(nib.Nifti1Image(rng.integers(0, 9, (20, 20, 20)).astype(np.int16), np.eye(4)), tmp_path / "t.nii.gz")
    data = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "t.nii.gz", "cannot read NIfTI")
    (tmp_path / "h.nii").write_bytes(gzip.compress(b"x") + b"not a header")
    _raises(tmp_path / "h.nii", "cannot read NIfTI")


def test_unreadable_png(tmp_path):
    (tmp_path / "g.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    _raises(tmp_path / "g.png", "cannot read image")
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (64, 64)).astype(np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "t.png", "cannot read image")


def test_inputs_never_modified(tmp_path):
    rng = np.random.default_rng(6)
    vol = random_volume(rng, (3, 4, 5))
    files, _ = write_series_from_canonical(tmp_path / "s", vol, canonical_affine((1, 1, 1), (0, 0, 0)), "IPR", rng)
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([-1.0, -1, 1, 1])), tmp_path / "v.nii.gz")
    Image.fromarray(rng.integers(0, 65535, (5, 5)).astype(np.uint16)).save(tmp_path / "p.png")
    mono1 = save(new_dataset(rng.integers(0, 4096, (40, 40)), photometric="MONOCHROME1", slope=2.0),
                 tmp_path / "m.dcm", compress="j2k")
    inputs = [*files, tmp_path / "v.nii.gz", tmp_path / "p.png", mono1]
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in inputs}
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    for p in [tmp_path / "s", tmp_path / "v.nii.gz", tmp_path / "p.png", mono1]:
        read_image(p)
        read_image(p, label_map=True)
    assert before == {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in inputs}
    assert listing == sorted(p.name for p in tmp_path.rglob("*"))
