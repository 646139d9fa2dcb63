"""One entry point for every image the project reads: :func:`read_image`.

Dispatch on what ``path`` is:

=======================================  =======================================================
folder                                   DICOM series (:func:`medsoft_aug.io.dicom.read_dicom_series`)
``.nii`` / ``.nii.gz``                   NIfTI (:func:`medsoft_aug.io.nifti.read_nifti`)
``.png`` / ``.tif`` / ``.tiff``          raster (:func:`medsoft_aug.io.raster.read_raster`)
``.nrrd`` / ``.nhdr`` / ``.mha`` /       3D volume in physical space via SimpleITK
``.mhd``                                 (:func:`medsoft_aug.io.sitk_reader.read_volume_sitk`)
``.dcm``, or any file with the DICM      DICOM file (:func:`medsoft_aug.io.dicom.read_dicom_file`)
preamble
=======================================  =======================================================

Reading is one image at a time with nothing cached; inputs are opened read-only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .dicom import DicomVolume, open_dicom, read_dicom_file, read_dicom_series
from .dicom_pixels import has_dicm_preamble
from .nifti import read_nifti
from .quiet import header_warnings
from .raster import RASTER_SUFFIXES, read_raster
from .sitk_reader import SITK_SUFFIXES, read_volume_sitk
from .types import ImageData

SUPPORTED = "a DICOM file or series folder, .nii/.nii.gz, .nrrd/.mha/.mhd, .png, .tif/.tiff"


def read_image(path: str | Path, *, label_map: bool = False) -> ImageData:
    """Read any supported image into the :class:`~medsoft_aug.io.types.ImageData` contract.

    Args:
        path: file or DICOM series folder.
        label_map: the image is a segmentation: values are kept exactly (no MONOCHROME1 inversion, palette
            indices for palette PNGs), returned as float32 when every value is exactly representable in float32
            and as float64 otherwise (``meta["label_dtype"]`` says which).

    Returns:
        2D: ``array`` (rows, cols) as stored, ``spacing`` (row_mm, col_mm). 3D: canonical RAS+ ``array``
        (X, Y, Z), ``spacing`` in that order, ``affine`` voxel -> RAS mm. Intensities float32 in physical units.

    Raises:
        InputError: missing path, empty folder, unsupported extension, corrupt/truncated/undecodable file,
            NaN or infinite values (:func:`check_finite`).
            The message names the file and the problem; the caller prefixes the sample id.
    """
    return check_finite(_read(Path(path), label_map), Path(path).name)


def check_finite(img: ImageData, name: str) -> ImageData:
    """InputError when the pixel array holds NaN or infinite values (they would silently change the
    normalization and every later stage); counts only, never values."""
    arr = img.array
    if arr.size == 0:
        raise InputError(f"{name}: the image is empty (shape {tuple(arr.shape)})")
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{name}: {bad} of {arr.size} voxel values are NaN or infinite")
    return img


def open_image(path: str | Path, *, label_map: bool = False) -> ImageData | DicomVolume:
    """As :func:`read_image`, but a DICOM series folder or multi-frame file comes back opened from its headers
    (:class:`~medsoft_aug.io.dicom.DicomVolume`: the same shape, affine, spacing and meta; ``take(i, axis=0)``
    decodes only the slices it returns, ``load()`` gives the ImageData :func:`read_image` would)."""
    p = Path(path)
    if _format_of(p) != "dicom":
        return read_image(p, label_map=label_map)
    with header_warnings(p.name):          # library warnings quote header values: reported without them
        img = open_dicom(p, label_map=label_map)
    return img if isinstance(img, DicomVolume) else check_finite(img, p.name)


def _format_of(p: Path) -> str:
    """"dicom" (series folder or DICOM file), "nifti", "sitk", "raster"; InputError for anything else."""
    if p.is_dir():
        return "dicom"
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    name = p.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return "nifti"
    if name.endswith(SITK_SUFFIXES):
        return "sitk"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith(".dcm") or has_dicm_preamble(p):
        return "dicom"
    raise InputError(f"{p.name}: unsupported image type (expected {SUPPORTED})")


def _read(p: Path, label_map: bool) -> ImageData:
    kind = _format_of(p)
    if kind == "nifti":
        return read_nifti(p, label_map=label_map)
    if kind == "sitk":
        return read_volume_sitk(p, label_map=label_map)
    if kind == "raster":
        return read_raster(p, label_map=label_map)
    with header_warnings(p.name):          # library warnings quote header values: reported without them
        return read_dicom_series(p, label_map=label_map) if p.is_dir() else read_dicom_file(p, label_map=label_map)
