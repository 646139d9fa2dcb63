"""Independent readers for the sample-data tests (nibabel / pydicom directly, not the project's io/)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
LEVEL_LABELS = {"T12": 19, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24, "S1": 26}


def manifest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative POSIX path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_sha256sums(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        digest, name = line.split("  ", 1)
        out[name] = digest
    return out


def dicom_series_display(folder: Path) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset]]:
    """Read a sagittal series as a display stack (n, rows, cols) sorted left->right, physical units.

    Returns (stack float64, RAS affine of the canonical (X, Y, Z) volume built from IPP/IOP/PixelSpacing, datasets).
    """
    dss = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    # LPS x grows toward patient left; canonical RAS index 0 is the leftmost slice -> sort by RAS x
    dss.sort(key=lambda d: -float(np.dot([float(v) for v in d.ImagePositionPatient], [1, 0, 0])))
    stack = []
    for d in dss:
        a = d.pixel_array.astype(np.float64)
        if d.PhotometricInterpretation == "MONOCHROME1":
            a = (2 ** int(d.BitsStored) - 1) - a
        a = a * float(getattr(d, "RescaleSlope", 1.0)) + float(getattr(d, "RescaleIntercept", 0.0))
        stack.append(a)
    stack = np.stack(stack)
    n, H, W = stack.shape
    row_sp, col_sp = (float(v) for v in dss[0].PixelSpacing)
    ipp0 = np.array([float(v) for v in dss[0].ImagePositionPatient])
    ipp1 = np.array([float(v) for v in dss[1].ImagePositionPatient])
    step_lps = ipp1 - ipp0
    # canonical voxel (i, j, k) = display (slice i, row H-1-k, col W-1-j)
    col_dir, row_dir = iop[:3], iop[3:]
    origin_lps = ipp0 + (W - 1) * col_sp * col_dir + (H - 1) * row_sp * row_dir
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, 0] = lps_to_ras @ step_lps
    aff[:3, 1] = lps_to_ras @ (-col_sp * col_dir)
    aff[:3, 2] = lps_to_ras @ (-row_sp * row_dir)
    aff[:3, 3] = lps_to_ras @ origin_lps
    assert abs(abs(np.dot(normal, [1, 0, 0])) - 1) < 1e-6
    return stack, aff, dss


def nifti_canonical(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(canonical RAS data, canonical affine, stored axcodes) via nibabel."""
    img = nib.load(path)
    codes = nib.aff2axcodes(img.affine)
    can = nib.as_closest_canonical(img)
    return np.asarray(can.dataobj), can.affine, codes


def canonical_to_display(vol: np.ndarray) -> np.ndarray:
    """The ingest convention, written out: display slice i = vol[i].T[::-1, ::-1]."""
    return np.stack([vol[i].T[::-1, ::-1] for i in range(vol.shape[0])])


def read_study(root: Path, image: str, seg: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image display stack, seg display stack, image affine, seg affine) for one labels.csv row."""
    p = root / image
    if p.is_dir():
        disp, aff, _ = dicom_series_display(p)
    else:
        vol, aff, _ = nifti_canonical(p)
        disp = canonical_to_display(vol.astype(np.float64))
    svol, saff, _ = nifti_canonical(root / seg)
    return disp, canonical_to_display(svol), aff, saff
