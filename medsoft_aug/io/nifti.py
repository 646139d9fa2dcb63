"""NIfTI reader (``.nii`` / ``.nii.gz``) and the canonical-RAS reorientation shared with DICOM series.

Every 3D volume the project reads goes through :func:`to_closest_canonical`, which is nibabel's
``as_closest_canonical`` on a bare array + affine: a pure axis permutation / flip (no resampling), so label
values and intensities are kept exactly.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputError
from .types import ImageData

log = logging.getLogger("medsoft_aug.io.nifti")

#: float32 represents every integer of magnitude up to 2**24 exactly.
_F32_EXACT_INT = 2 ** 24


def to_closest_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Reorient a volume to the closest canonical RAS+ orientation (nibabel ``as_closest_canonical``).

    Args:
        array: (I, J, K) voxel array in stored index order.
        affine: 4x4 voxel (i, j, k) -> RAS mm.

    Returns:
        (canonical array (X, Y, Z), canonical 4x4 affine, original axis codes such as ``('P', 'I', 'R')``).
        The array is a permuted/flipped copy; values are untouched.
    """
    from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    codes = tuple(str(c) for c in aff2axcodes(affine))
    ornt = io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return array, affine.copy(), codes
    out = np.ascontiguousarray(apply_orientation(array, ornt))
    new_affine = affine @ inv_ornt_aff(ornt, array.shape)
    return out, new_affine, codes


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three array axes: the column norms of the affine's 3x3 block."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(v) for v in np.sqrt((a * a).sum(axis=0)))


def label_array(values: np.ndarray) -> tuple[np.ndarray, str]:
    """Label values as float32 when every value is exactly representable, else float64.

    Returns (array, dtype name). Integer labels below 2**24 and float labels that survive a float32 round trip
    (e.g. VerSe's float64 1.0, 2.0, ...) come back as float32; anything else keeps float64 so no label changes.
    """
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        if values.size == 0 or (int(values.max()) < _F32_EXACT_INT and int(values.min()) > -_F32_EXACT_INT):
            return values.astype(np.float32), "float32"
        return values.astype(np.float64), "float64"
    as64 = values.astype(np.float64, copy=False)
    as32 = as64.astype(np.float32)
    if np.array_equal(as32.astype(np.float64), as64, equal_nan=True):
        return as32, "float32"
    return as64.astype(np.float64, copy=True), "float64"


def read_nifti(path: str | Path, *, label_map: bool = False) -> ImageData:
    """Read a ``.nii`` / ``.nii.gz`` volume, reoriented to closest canonical RAS+.

    Args:
        path: the NIfTI file (read only; never modified).
        label_map: keep label values exactly (float32 if exact, else float64; see :func:`label_array`);
            otherwise intensities are float32 with the header's scl_slope/scl_inter applied.

    Returns:
        ImageData with ``array`` (X, Y, Z), ``spacing`` (mm, same order, from the affine's column norms),
        ``affine`` (canonical, voxel -> RAS mm), ``source_format="nifti"`` and meta ``orig_ornt``,
        ``orig_shape``, ``datatype``, ``label_dtype`` (label maps).

    Raises:
        InputError: missing, corrupt or truncated file; complex or non-numeric data; 4D data with more than one
            volume; non-finite affine.

    When sform and qform are both coded and disagree, the sform is used (as nibabel chooses) and
    ``meta["warnings"]`` says so (see :func:`affine_choice`); ``meta["affine_source"]`` records the choice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    img, data, affine, stored_dtype = _load(path)
    orig_shape = tuple(int(s) for s in data.shape)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise InputError(f"{path.name}: NIfTI has shape {orig_shape}; expected a 3D volume")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path.name}: NIfTI affine is not a valid voxel-to-world transform")
    meta: dict = {"orig_shape": list(orig_shape), "datatype": stored_dtype}
    meta.update(affine_choice(img, data.shape))
    if label_map:
        arr, meta["label_dtype"] = label_array(data)
    else:
        arr = np.asarray(data, dtype=np.float32)
    arr, canon_affine, codes = to_closest_canonical(arr, affine)
    meta["orig_ornt"] = "".join(codes)
    return ImageData(array=arr, spacing=spacing_from_affine(canon_affine), affine=canon_affine,
                     source_format="nifti", meta=meta)


def _load(path: Path) -> tuple:
    """(nibabel image, data array as stored, affine, stored dtype name); InputError for anything unreadable.

    ``.nii.gz`` files are decompressed whole first (``gzip.decompress`` checks the CRC and length of every
    member, which nibabel's partial reads never reach: a flipped bit in the compressed data is an error, not
    silently different voxels); NIfTI-1 and NIfTI-2 are then parsed from those bytes."""
    import gzip

    import nibabel as nib

    try:
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(path.read_bytes())
            cls = nib.Nifti2Image if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Image
            img = cls.from_bytes(raw)
            del raw
        else:
            img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # reads everything now, so truncation errors surface here
        affine = np.asarray(img.affine, dtype=np.float64)
        stored_dtype = str(img.get_data_dtype())
    except Exception as e:  # noqa: BLE001 - nibabel/gzip/zlib raise many types; all mean "cannot read"
        raise InputError(f"{path.name}: cannot read NIfTI ({type(e).__name__}: {_one_line(e)})") from e
    if data.dtype.kind == "c":
        raise InputError(f"{path.name}: NIfTI holds complex values ({stored_dtype}); give magnitude images")
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path.name}: NIfTI data type {stored_dtype} is not a number type")
    if data.size == 0:
        raise InputError(f"{path.name}: NIfTI has an empty dimension (shape {tuple(data.shape)})")
    return img, data, affine, stored_dtype


#: sform and qform "agree" when they map every corner of the volume within this distance (mm); the qform's
#: float32 quaternion alone moves a corner by well under 1e-4 mm.
_FORM_TOL_MM = 1e-3


def affine_choice(img, shape: tuple[int, ...]) -> dict:
    """Which header transform gives the affine, as nibabel chooses it (``Nifti1Header.get_best_affine``: the
    sform when its code is non-zero, else the qform when its code is non-zero, else a scaling-only fallback),
    and whether the other coded transform disagrees with it.

    Returns meta keys ``affine_source`` ("sform" | "qform" | "fallback"), and when both transforms are coded
    and map some corner of the volume more than 1e-3 mm apart: ``sform_qform_disagree_mm`` (largest distance)
    and a one-line ``warnings`` entry.
    """
    hdr = img.header
    try:
        sform, scode = hdr.get_sform(coded=True)
        qform, qcode = hdr.get_qform(coded=True)
    except AttributeError:  # Analyze-style headers have neither
        return {"affine_source": "fallback"}
    scode, qcode = int(scode or 0), int(qcode or 0)
    source = "sform" if scode else "qform" if qcode else "fallback"
    out: dict = {"affine_source": source}
    if scode and qcode and sform is not None and qform is not None:
        dims = [max(int(n) - 1, 0) for n in tuple(shape)[:3]] + [0] * (3 - len(tuple(shape)[:3]))
        corners = np.array([[i, j, k, 1.0] for i in (0, dims[0]) for j in (0, dims[1]) for k in (0, dims[2])]).T
        dist = float(np.max(np.linalg.norm((np.asarray(sform) @ corners - np.asarray(qform) @ corners)[:3], axis=0)))
        if not np.isfinite(dist) or dist > _FORM_TOL_MM:
            out["sform_qform_disagree_mm"] = round(dist, 4) if np.isfinite(dist) else None
            out["warnings"] = [f"NIfTI sform and qform disagree (by up to {dist:.3g} mm at the volume corners); "
                               "using the sform, as nibabel does (sform_code > 0)"]
    return out


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text[:limit] if text else "no detail"
