"""SimpleITK (ITK + GDCM) where the field uses it: volumes in physical space and the second DICOM decoder.

* :func:`read_volume_sitk` reads any volume SimpleITK reads (NIfTI, NRRD, MetaImage, a DICOM series folder
  through GDCM's series reader) with its direction cosines, origin and spacing, into the one
  :class:`~medsoft_aug.io.types.ImageData` contract: canonical RAS+ array (X, Y, Z), voxel -> RAS affine,
  float32 physical intensities (DICOM rescale applied by GDCM, MONOCHROME1 inverted as the pydicom reader does).
  Oblique acquisitions keep their exact affine; the array is reoriented only by axis permutations and flips.
* :func:`decode_with_fallback` is the pixel decoder of the pydicom readers: pydicom (+ pylibjpeg / pyjpegls)
  first; when that fails on a compressed transfer syntax it cannot decode (12-bit lossy JPEG, JPEG-LS without a
  plugin, ...), GDCM decodes the file and the rescale GDCM applied is undone, so the result is the same stored
  values pydicom would give and the header handling stays in one place.
Only structural attributes are read from headers (sizes, geometry, pixel description); nothing else is kept.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from .dicom_pixels import decode_frames, n_frames_of
from .nifti import label_array, spacing_from_affine, to_closest_canonical
from .types import ImageData

log = logging.getLogger("medsoft_aug.io.sitk_reader")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")     # volumes read_image hands to SimpleITK


def read_volume_sitk(path: str | Path, *, label_map: bool = False) -> ImageData:
    """Read a 3D volume (file, or DICOM series folder) with SimpleITK into the canonical RAS+ contract.

    Returns:
        ImageData with ``source_format`` "dicom-series" (folder) or "sitk" (file), ``meta["reader"]`` "SimpleITK",
        ``meta["orig_ornt"]`` the original axis codes, ``meta["photometric"]`` for DICOM.

    Raises:
        InputError: missing path, a folder without one DICOM series, a file SimpleITK cannot read, not 3D.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: not found")
    try:
        with _quiet_itk() as sitk:
            if p.is_dir():
                img, photometric = _read_series(sitk, p)
            else:
                img, photometric = sitk.ReadImage(str(p)), None
    except RuntimeError as e:
        raise InputError(f"{p.name}: SimpleITK cannot read it ({_itk_gist(e)})") from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p.name}: not a single-channel 3D volume (dimension {img.GetDimension()})")
    vol = np.asarray(sitk.GetArrayFromImage(img), dtype=np.float64).transpose(2, 1, 0)   # ITK (z,y,x) -> (i,j,k)
    if photometric == "MONOCHROME1" and not label_map:
        vol = _invert_monochrome1(vol, p)
    affine = _affine_ras(img)
    arr, aff_c, codes = to_closest_canonical(vol, affine)
    meta = {"reader": "SimpleITK", "orig_ornt": "".join(codes)}
    if photometric is not None:
        meta["photometric"] = photometric
    if label_map:
        arr, meta["label_dtype"] = label_array(arr)
    else:
        arr = arr.astype(np.float32)
    return ImageData(array=np.ascontiguousarray(arr), spacing=spacing_from_affine(aff_c), affine=aff_c,
                     source_format="dicom-series" if p.is_dir() else "sitk", meta=meta)


def decode_with_fallback(ds, path: Path, index: Optional[int] = None) -> np.ndarray:
    """Stored values (frames, rows, cols) of a DICOM file: pydicom first, GDCM for compressed transfer syntaxes
    pydicom cannot decode. Raises the pydicom InputError (with a note) when GDCM cannot decode it either.

    ``index``: that frame only, (1, rows, cols) (GDCM, which decodes whole files, is cut to it)."""
    try:
        return decode_frames(ds, path.name, index)
    except InputError as first:
        if not _compressed(ds):
            raise
        try:
            stored = _gdcm_stored(ds, path)
        except (RuntimeError, InputError) as e:
            raise InputError(f"{first}; SimpleITK/GDCM cannot decode it either") from e
        log.info("%s: pixel data decoded by GDCM (pydicom could not)", path.name)
        return stored if index is None else stored[index:index + 1]


# ---- internals ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_itk():
    """SimpleITK with ITK's (and GDCM's) C++ warnings off inside the block: they print header values straight
    to stderr. Yields the SimpleITK module."""
    import SimpleITK as sitk

    previous = bool(sitk.ProcessObject.GetGlobalWarningDisplay())
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield sitk
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _read_series(sitk, folder: Path):
    """GDCM's series reader on the folder's only series (sorted by GDCM on position along the normal)."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(ids) != 1:
        raise InputError(f"{folder.name}: {'no DICOM series' if not ids else f'{len(ids)} DICOM series'} "
                         "in folder (SimpleITK/GDCM)")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    img = reader.Execute()
    photometric = reader.GetMetaData(0, "0028|0004").strip() if reader.HasMetaDataKey(0, "0028|0004") else ""
    return img, photometric


def _affine_ras(img) -> np.ndarray:
    """4x4 voxel (i, j, k) -> RAS mm from ITK's LPS origin, spacing and direction cosines."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = img.GetOrigin()
    return _LPS_TO_RAS @ lps


def _invert_monochrome1(vol: np.ndarray, folder: Path) -> np.ndarray:
    """MONOCHROME1 -> higher is brighter, as the pydicom readers do: v' = (lo + hi) - v over the physical range of
    the stored bits (one file's header gives BitsStored / PixelRepresentation / rescale)."""
    from .dicom_pixels import dcmread, has_dicm_preamble, rescale, stored_range

    first = next(p for p in sorted(folder.iterdir()) if p.is_file() and has_dicm_preamble(p))
    ds = dcmread(first, header_only=True)
    lo, hi = stored_range(ds)
    s, b = rescale(ds, 0)
    return (lo * s + b + hi * s + b) - vol


def _compressed(ds) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(ts is not None and getattr(ts, "is_compressed", False))


def _gdcm_stored(ds, path: Path) -> np.ndarray:
    """GDCM's decode of ``path``, back to stored values (GDCM applies RescaleSlope/Intercept itself)."""
    from .dicom_pixels import rescale

    with _quiet_itk() as sitk:
        img = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
        arr = np.asarray(sitk.GetArrayFromImage(img), dtype=np.float64)
    if arr.ndim == 4:                                   # colour: (frames, rows, cols, samples)
        raise InputError(f"{path.name}: colour pixel data decoded by GDCM is not supported")
    rows, cols, n = int(ds.Rows), int(ds.Columns), n_frames_of(ds)
    arr = arr.reshape((-1, rows, cols)) if arr.size == n * rows * cols else arr
    if arr.shape != (n, rows, cols):
        raise InputError(f"{path.name}: GDCM decoded shape {arr.shape}, header says ({n}, {rows}, {cols})")
    s, b = rescale(ds, 0)
    if "ModalityLUTSequence" not in ds and (s, b) != (1.0, 0.0):
        arr = (arr - b) / s
        if int(getattr(ds, "BitsAllocated", 16) or 16) <= 32 and "FloatPixelData" not in ds:
            arr = np.round(arr)
    return arr


def _itk_gist(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    tail = [ln for ln in lines if "Description:" in ln or "ERROR" in ln.upper()]
    return (tail[-1] if tail else (lines[-1] if lines else type(e).__name__))[:160]

