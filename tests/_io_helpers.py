"""Builders of tiny test images (DICOM with pydicom, NIfTI with nibabel) for the io tests.

Geometry is computed here by explicit index arithmetic (no nibabel orientation helpers), so the readers are
checked against an independent construction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def canonical_affine(spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """RAS+ affine with the given voxel sizes and origin (what a canonical volume has)."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = origin
    return aff


def axis_aligned_view(vol: np.ndarray, aff: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """Store the canonical ``vol`` in another axis order: axis t of the result runs toward ``codes[t]``.

    Returns (stored array, its 4x4 RAS affine). Built voxel by voxel with the inverse affine.
    """
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(0))
    target = np.zeros((4, 4))
    target[3, 3] = 1.0
    corner = np.zeros(3)
    shape = []
    for t, code in enumerate(codes):
        a, sign = _AXES[code]
        target[a, t] = sign * spacing[a]
        corner[a] = 0 if sign > 0 else vol.shape[a] - 1
        shape.append(vol.shape[a])
    target[:3, 3] = (aff @ np.r_[corner, 1.0])[:3]
    idx = np.indices(shape).reshape(3, -1)
    src = np.linalg.inv(aff) @ target @ np.vstack([idx, np.ones(idx.shape[1])])
    src = np.rint(src[:3]).astype(int)
    return vol[src[0], src[1], src[2]].reshape(shape), target


def new_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                signed: bool = False, slope: Optional[float] = None, intercept: Optional[float] = None,
                pixel_spacing: Optional[Sequence[float]] = (0.8, 0.6), iop: Optional[Sequence[float]] = None,
                ipp: Optional[Sequence[float]] = None, instance: Optional[int] = 1,
                series_uid: Optional[str] = None, study_uid: Optional[str] = None, series_number: int = 1,
                sop_class: str = MR_STORAGE) -> Dataset:
    """A minimal MR image dataset (Explicit VR Little Endian) with ``pixels`` (rows, cols) or (frames, rows, cols)."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid() if series_uid != "" else ""
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid() if study_uid is None else study_uid
    ds.SeriesInstanceUID = generate_uid() if series_uid is None else series_uid
    ds.SeriesNumber = series_number
    ds.Modality = "MR"
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM-0"
    if instance is not None:
        ds.InstanceNumber = instance
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if iop is not None:
        ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
    if ipp is not None:
        ds.ImagePositionPatient = [round(float(v), 6) for v in ipp]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    dtype = np.int16 if signed else np.uint16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    if pixels.ndim == 3:
        ds.NumberOfFrames = int(pixels.shape[0])
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    return ds


def save(ds: Dataset, path: Path, *, compress: Optional[str] = None, part10: bool = True) -> Path:
    """Write ``ds`` (optionally ``compress`` = "j2k" JPEG 2000 lossless or "rle" RLE lossless).

    ``part10=False`` writes a bare dataset without preamble and file meta (as some old archives hold).
    """
    if compress == "j2k":
        ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif compress == "rle":
        ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not part10:
        ds.save_as(path, enforce_file_format=False)
    elif ds.file_meta.get("MediaStorageSOPInstanceUID", ""):
        ds.save_as(path, enforce_file_format=True)
    else:   # empty UIDs (as in real archives): pydicom refuses to enforce, so write preamble + meta as given
        ds.preamble = b"\0" * 128
        ds.save_as(path, enforce_file_format=False)
    return path


def write_series_from_canonical(folder: Path, vol: np.ndarray, aff: np.ndarray, codes: str, rng: np.random.Generator,
                                *, series_uid: Optional[str] = None, study_uid: Optional[str] = None,
                                compress: Optional[str] = None, **kw) -> tuple[list[Path], np.ndarray]:
    """Write the canonical ``vol`` as a DICOM series whose (row, col, slice) axes run toward ``codes``.

    Files get shuffled names and shuffled instance numbers, so only ImagePositionPatient orders them.
    Returns (files in slice order along ``codes[2]``, the stored (rows, cols, n) array).
    """
    stored, ras = axis_aligned_view(vol, aff, codes)
    lps = LPS_TO_RAS @ ras
    ps_row, ps_col = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    col_cos, row_cos = lps[:3, 0] / ps_row, lps[:3, 1] / ps_col
    n = stored.shape[2]
    names = rng.permutation(n)
    insts = rng.permutation(n) + 1
    series_uid = generate_uid() if series_uid is None else series_uid
    study_uid = generate_uid() if study_uid is None else study_uid
    files = []
    for k in range(n):
        ipp = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds = new_dataset(stored[:, :, k], pixel_spacing=(ps_row, ps_col), iop=[*row_cos, *col_cos], ipp=ipp,
                         instance=int(insts[k]), series_uid=series_uid, study_uid=study_uid, **kw)
        files.append(save(ds, folder / f"IM{names[k]:04d}.dcm", compress=compress))
    return files, stored


def enhanced_multiframe(vol: np.ndarray, aff: np.ndarray, codes: str, rng: np.random.Generator,
                        *, slopes: Optional[np.ndarray] = None) -> tuple[Dataset, np.ndarray]:
    """An enhanced MR multi-frame dataset (per-frame functional groups) holding the canonical ``vol``.

    Frames are written in shuffled order; ``slopes`` (per frame, in slice order) go into per-frame
    PixelValueTransformationSequence items with the stored values divided accordingly (exact for
    power-of-two slopes). Returns (dataset, stored (rows, cols, n) array in slice order).
    """
    stored, ras = axis_aligned_view(vol, aff, codes)
    lps = LPS_TO_RAS @ ras
    ps_row, ps_col = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    col_cos, row_cos = lps[:3, 0] / ps_row, lps[:3, 1] / ps_col
    n = stored.shape[2]
    perm = rng.permutation(n)          # frame f holds slice perm[f]
    frames = np.stack([stored[:, :, perm[f]] for f in range(n)])
    if slopes is not None:
        frames = np.stack([frames[f] / slopes[perm[f]] for f in range(n)])
    ds = new_dataset(frames, pixel_spacing=None, sop_class=ENHANCED_MR_STORAGE)
    shared = Dataset()
    po, pm = Dataset(), Dataset()
    po.ImageOrientationPatient = [round(float(v), 6) for v in (*row_cos, *col_cos)]
    pm.PixelSpacing = [float(ps_row), float(ps_col)]
    pm.SliceThickness = 1.0
    shared.PlaneOrientationSequence = DSequence([po])
    shared.PixelMeasuresSequence = DSequence([pm])
    ds.SharedFunctionalGroupsSequence = DSequence([shared])
    per = []
    for f in range(n):
        item, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [round(float(v), 6) for v in (lps @ np.array([0.0, 0.0, perm[f], 1.0]))[:3]]
        item.PlanePositionSequence = DSequence([pp])
        if slopes is not None:
            pv = Dataset()
            pv.RescaleSlope = float(slopes[perm[f]])
            pv.RescaleIntercept = 0.0
            item.PixelValueTransformationSequence = DSequence([pv])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = DSequence(per)
    return ds, stored


def random_volume(rng: np.random.Generator, shape: Sequence[int] = (5, 6, 4), hi: int = 4096) -> np.ndarray:
    """Random integer-valued float volume (distinct values make any axis mix-up visible)."""
    return rng.integers(1, hi, size=tuple(shape)).astype(np.float32)
