"""Byte-for-byte deterministic NIfTI (.nii.gz) and DICOM (MR, one file per sagittal slice) writers.

Determinism: gzip with mtime 0 and no file name; DICOM UIDs derived from fixed entropy sources with
``pydicom.uid.generate_uid(entropy_srcs=...)``; fixed dates/times; the file-meta implementation UID and version
name are set explicitly so they do not depend on the pydicom version.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid


IMPLEMENTATION_UID = generate_uid(entropy_srcs=["medsoft-aug", "phantom", "implementation"])
FIXED_DATE = "20000101"
FIXED_TIME = "120000"


def write_bytes(path: Path, data: bytes) -> None:
    """Plain write (the whole output folder is built in a temporary folder and swapped in at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def uid(*parts: object) -> str:
    """Deterministic DICOM UID from the given parts."""
    return generate_uid(entropy_srcs=["medsoft-aug-phantom", *map(str, parts)])


def canonical_affine(n: int, shape_yz: tuple[int, int], spacing: tuple[float, float, float],
                     centre_ras: tuple[float, float, float]) -> np.ndarray:
    """4x4 voxel -> RAS mm affine of a canonical (X=R, Y=A, Z=S) volume of shape (n, W, H) centred at ``centre_ras``.

    ``spacing`` = (slice spacing, column spacing, row spacing) in mm.
    """
    aff = np.diag([*spacing, 1.0])
    dims = np.array([n, *shape_yz], float)
    aff[:3, 3] = np.asarray(centre_ras, float) - (dims - 1) / 2 * np.asarray(spacing, float)
    return aff


def nifti_gz_bytes(vol_ras: np.ndarray, affine: np.ndarray, axcodes: str, dtype: str, descrip: str) -> bytes:
    """Encode a canonical RAS volume as .nii.gz bytes stored in orientation ``axcodes`` (e.g. "LPS", "PIR")."""
    img = nib.Nifti1Image(np.asarray(vol_ras).astype(dtype), affine)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                           nib.orientations.axcodes2ornt(tuple(axcodes)))
    img = img.as_reoriented(ornt)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip.encode("ascii")[:79]
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        gz.write(img.to_bytes())
    return buf.getvalue()


@dataclass
class SeriesInfo:
    """Identity and acquisition details of one synthetic DICOM series."""

    patient_no: int
    study_key: str                 # used to derive UIDs
    study_uid: str
    series_uid: str                # may be "" (a real-world trap)
    series_number: int
    series_description: str
    echo_time: float
    repetition_time: float
    photometric: str = "MONOCHROME2"   # or MONOCHROME1 (stored inverted)
    slope: float = 1.0
    intercept: float = 0.0
    reverse: bool = False          # instance 1 = rightmost slice instead of leftmost
    rle: bool = False              # RLE Lossless transfer syntax instead of uncompressed


def write_dicom_series(folder: Path, display: np.ndarray, affine: np.ndarray, info: SeriesInfo,
                       name: Callable[[int], str] = lambda k: f"IM{k:04d}.dcm") -> list[Path]:
    """Write a display stack (n, H, W) (physical units, row 0 superior, col 0 anterior) as sagittal MR slices.

    ``affine`` is the canonical RAS affine of the matching volume (see :func:`canonical_affine`);
    slice i of ``display`` is canonical index i. Returns the written paths in instance order.
    """
    n, H, W = display.shape
    sx, sy, sz = (float(np.linalg.norm(affine[:3, k])) for k in range(3))
    order = list(range(n))[::-1] if info.reverse else list(range(n))
    max_stored = 4095
    paths = []
    for inst, i in enumerate(order, start=1):
        ras_tl = affine @ np.array([i, W - 1, H - 1, 1.0])     # display pixel (0, 0): most anterior, superior
        ipp = [-ras_tl[0], -ras_tl[1], ras_tl[2]]              # RAS -> LPS
        stored = np.rint((display[i].astype(np.float64) - info.intercept) / info.slope)
        stored = np.clip(stored, 0, max_stored)
        if info.photometric == "MONOCHROME1":
            stored = max_stored - stored
        ds = _slice_header(info, inst, ipp, (sx, sy, sz), (H, W))
        ds.PixelData = stored.astype("<u2").tobytes()
        if info.rle:
            ds.compress(RLELossless, stored.astype(np.uint16), encoding_plugin="pydicom",
                        generate_instance_uid=False)     # keep our deterministic SOP Instance UID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = folder / name(inst)
        write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _slice_header(info: SeriesInfo, inst: int, ipp: list[float], spacing: tuple[float, float, float],
                  size: tuple[int, int]) -> Dataset:
    """The DICOM header of instance ``inst`` (1-based) of a phantom series: fixed, obviously fake identity,
    deterministic UIDs, the slice's geometry and pixel description (no pixel data yet)."""
    sop = uid(info.study_key, info.series_number, "sop", inst)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDSOFTAUG_PH1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY", "PHANTOM"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = FIXED_TIME
    ds.Modality = "MR"
    ds.Manufacturer = "medsoft-aug phantom"
    ds.InstitutionName = "SYNTHETIC"
    ds.StudyDescription = "PHANTOM LUMBAR SPINE"
    ds.SeriesDescription = info.series_description
    ds.PatientName = f"PHANTOM^{info.patient_no:04d}"
    ds.PatientID = f"PH{info.patient_no:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = f"{info.repetition_time:.0f}"
    ds.EchoTime = f"{info.echo_time:.0f}"
    ds.MagneticFieldStrength = "1.5"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = info.series_number
    ds.InstanceNumber = inst
    ds.FrameOfReferenceUID = uid(info.study_key, "frame")
    _slice_geometry(ds, info, ipp, spacing, size)
    return ds


def _slice_geometry(ds: Dataset, info: SeriesInfo, ipp: list[float], spacing: tuple[float, float, float],
                    size: tuple[int, int]) -> None:
    """Geometry (position, orientation, spacing) and pixel description of one phantom slice, into ``ds``."""
    sx, sy, sz = spacing
    H, W = size
    ds.SliceThickness = f"{sx * 0.8:.2f}"
    ds.SpacingBetweenSlices = f"{sx:.4f}"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    ds.SliceLocation = f"{-ipp[0]:.4f}"
    ds.PixelSpacing = [f"{sz:.6f}", f"{sy:.6f}"]          # row spacing (S-I), column spacing (A-P)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = info.photometric
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter = "500"
    ds.WindowWidth = "1000"
    if info.slope != 1.0 or info.intercept != 0.0:
        ds.RescaleIntercept = f"{info.intercept:g}"
        ds.RescaleSlope = f"{info.slope:g}"
        ds.RescaleType = "US"
