"""Output writers for synthetic images: 16-bit PNG, NIfTI in the donor's geometry, de-identified derived DICOM.

Every writer takes ``image01``, a float (H, W) array in [0, 1] in the ingested slice grid, and writes atomically
(temp file + rename; nothing half-written on failure). ``row`` is the donor's ``index.csv`` row (strings, as
``workdir.read_index`` returns them): ``window_lo``/``window_hi`` map [0, 1] back to source units
(``x_src = lo + x * (hi - lo)``) and ``geometry`` (JSON, ``medsoft_aug.ingest.slicing``) maps the slice grid back
to the source volume.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..errors import InputError
from ..fsutil import atomic_path, atomic_write_bytes
from .plan import class_slug

log = logging.getLogger("medsoft_aug.generate.writers")

DERIVATION = f"MedSoft-Diffusion synthetic lesion inpainting (medsoft-aug {__version__})"
FORMATS = {"png": ".png", "nifti": ".nii.gz", "dicom": ".dcm"}      # --output-format -> image file extension


def synthetic_paths(sample_id: str, label: str, output_format: str) -> tuple[str, str]:
    """(image, mask) paths of a synthetic sample relative to OUT: ``synthetic/{class}/{id}{ext}`` and
    ``synthetic/{class}/{id}_mask.npy``."""
    base = f"synthetic/{class_slug(label)}/{sample_id}"
    return base + FORMATS[output_format], base + "_mask.npy"


def write_image(path: str | Path, image01: np.ndarray, output_format: str, row: dict[str, Any],
                images_root: Optional[Path], *, sample_id: str, description: str = "",
                mask01: Optional[np.ndarray] = None) -> None:
    """Write a synthetic image in ``output_format`` (one of :data:`FORMATS`) with the writer of that format
    (DICOM: with ``mask01`` also its FRACTIONAL Segmentation beside it, :func:`seg_path`)."""
    if output_format == "png":
        write_png16(path, image01)
    elif output_format == "nifti":
        write_nifti_slice(path, image01, row)
    else:
        write_dicom_derived(path, image01, row, images_root, sample_id=sample_id, description=description,
                            mask01=mask01)


def write_png16(path: str | Path, image01: np.ndarray, durable: bool = True) -> None:
    """Write (H, W) values in [0, 1] as a 16-bit grayscale PNG: ``round(clip(x, 0, 1) * 65535)``
    (``durable``: see ``fsutil.atomic_path``).

    Raises:
        ValueError: not a 2D array; InputError: non-finite values.
    """
    from PIL import Image

    arr = _image01(image01, str(Path(path).name))
    u16 = np.rint(arr * 65535.0).astype(np.uint16)
    with atomic_path(path, durable=durable) as tmp:
        Image.fromarray(u16).save(tmp, format="PNG")


def write_nifti_slice(path: str | Path, image01: np.ndarray, row: dict[str, Any], *, dtype: str = "float32") -> None:
    """Write the slice as a one-slice NIfTI volume in the donor's geometry, in source units.

    3D donors: the slice is put back into the source array's axis order (the recorded display ops inverted) as a
    volume with one voxel along the sliced axis, and the affine is the donor's shifted to that slice index, so it
    overlays the donor volume in a viewer. 2D donors: (H, W, 1) with the donor's 2D affine when it has one (DICOM
    with geometry), else ``diag(spacing_row, spacing_col, 1)``.

    Args:
        path: ``.nii`` or ``.nii.gz``.
        image01: (H, W) in [0, 1], the ingested slice grid (``geometry["out_shape"]``).
        row: the donor's index.csv row.
        dtype: "float32" or "int16" (rounded, clipped to the int16 range).

    Raises:
        InputError: the row's window or geometry is missing/invalid or does not match the image.
    """
    import nibabel as nib

    path = Path(path)
    sid = str(row.get("sample_id", "?"))
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"{path.name}: NIfTI output needs a .nii or .nii.gz name")
    if dtype not in ("float32", "int16"):
        raise ValueError(f"dtype must be float32 or int16, not {dtype!r}")
    values = _source_units(_image01(image01, sid), row, sid)
    geom = _geometry(row, sid)
    if geom is not None and list(geom.get("out_shape", values.shape)) != list(values.shape):
        raise InputError(f"{sid}: image shape {values.shape} does not match the donor slice {geom['out_shape']}")
    if geom is not None and geom.get("affine") is not None and len(geom["in_shape"]) == 3:
        vol, offset = unslice(values, geom)
        shift = np.eye(4)
        shift[:3, 3] = offset
        affine = np.asarray(geom["affine"], dtype=np.float64) @ shift
    elif geom is not None and geom.get("affine") is not None:
        vol, affine = values[:, :, np.newaxis], np.asarray(geom["affine"], dtype=np.float64)
    else:
        sp = (_float(row, "spacing_row", sid, 1.0), _float(row, "spacing_col", sid, 1.0))
        vol, affine = values[:, :, np.newaxis], np.diag([sp[0], sp[1], 1.0, 1.0])
    if dtype == "int16":
        data = np.clip(np.rint(vol), -32768, 32767).astype(np.int16)
    else:
        data = vol.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = DERIVATION.encode("ascii")[:79]
    raw = img.to_bytes()
    atomic_write_bytes(path, gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)


def seg_path(image_path: str | Path) -> Path:
    """Where the DICOM Segmentation of a synthetic DICOM image goes: ``{id}.dcm`` -> ``{id}_seg.dcm``."""
    p = Path(image_path)
    return p.with_name(p.name[:-len(".dcm")] + "_seg.dcm" if p.name.endswith(".dcm") else p.name + "_seg.dcm")


def write_dicom_derived(path: str | Path, image01: np.ndarray, row: dict[str, Any], images_root: Optional[Path], *,
                        sample_id: str, description: str, mask01: Optional[np.ndarray] = None) -> None:
    """Write a de-identified DERIVED\\SECONDARY DICOM instance built from the donor's DICOM header (highdicom),
    and, given ``mask01`` ((H, W) soft mask in [0, 1]), the mask beside it as a DICOM Segmentation of type
    FRACTIONAL referencing that instance (:func:`seg_path`; :func:`medsoft_aug.io.dicom_write.build_fractional_seg`).

    The donor is ``images_root / row["source"]``: a single file (2D: same grid and geometry; multi-frame: the
    sliced frame's geometry) or a series folder (header of the instance at ``slice_index`` when the series is
    sliced along its acquisition axis, else of the series' first file). Pixels are written in the donor's stored
    units (inverse window, MONOCHROME1 and rescale inverted, clipped to the stored bit range) in the ingested
    slice grid, with ImageOrientationPatient/ImagePositionPatient/PixelSpacing recomputed from the recorded
    geometry so the slice sits where the donor slice was. Identifiers are removed or replaced (PS3.15 Annex E
    Basic Profile; see :mod:`medsoft_aug.io.dicom_write`); output is uncompressed Explicit VR Little Endian.

    Raises:
        InputError: the donor is not DICOM (PNG/NIfTI: write PNG or NIfTI instead), its files are missing or
            unreadable, or the row's window/geometry is invalid.
    """
    from ..io.dicom_pixels import dcmread, has_dicm_preamble
    from ..io.dicom_write import build_derived, build_fractional_seg
    from ..io.quiet import header_warnings

    sid = str(sample_id)
    fmt = str(row.get("source_format", ""))
    if fmt not in ("dicom", "dicom-series"):
        raise InputError(f"{sid}: donor {row.get('sample_id', '?')} is not DICOM ({fmt or 'unknown format'}); "
                         "choose PNG or NIfTI output")
    if images_root is None:
        raise InputError(f"{sid}: DICOM output needs the donor images folder (--images)")
    values = _source_units(_image01(image01, sid), row, sid)
    geom = _geometry(row, sid)
    if geom is not None and list(geom.get("out_shape", values.shape)) != list(values.shape):
        raise InputError(f"{sid}: image shape {values.shape} does not match the donor slice {geom['out_shape']}")
    src = Path(images_root) / str(row.get("source", ""))
    is_3d = geom is not None and len(geom["in_shape"]) == 3 and geom.get("affine") is not None
    geometry = _dicom_geometry(geom) if is_3d else None
    window = (_float(row, "window_lo", sid), _float(row, "window_hi", sid))
    with header_warnings(f"{sid}: donor {row.get('sample_id', '?')}"):   # every access to the donor's header
        template_path, frame = _template(src, fmt, geom, sid)
        template = dcmread(template_path, header_only=True, force=not has_dicm_preamble(template_path))
        ds = build_derived(template, values, sample_id=sid, description=description, derivation=DERIVATION,
                           geometry=geometry, window=window, frame=frame, deid_version=__version__)
    if mask01 is not None:
        mask = np.asarray(mask01, dtype=np.float32)
        if mask.shape != values.shape:
            raise InputError(f"{sid}: soft mask shape {mask.shape} differs from the image {values.shape}")
        with header_warnings(f"{sid}: segmentation"):        # highdicom's own warnings, values withheld too
            seg = build_fractional_seg(ds, mask, sample_id=sid, version=__version__)
        _write_dataset(seg_path(path), seg)
    _write_dataset(Path(path), ds)


def _write_dataset(path: Path, ds) -> None:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())


def unslice(image: np.ndarray, geometry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Invert the recorded slicing ops: (H, W) slice -> source-axis-order array with size 1 on sliced axes.

    Returns (array, voxel offset (3,) of its index (0, 0, 0) in the source volume).
    """
    shapes = [list(geometry["in_shape"])]
    for op in geometry["ops"]:
        nxt = list(shapes[-1])
        if op["op"] == "take":
            nxt.pop(op["axis"])
        elif op["op"] == "transpose":
            nxt = nxt[::-1]
        shapes.append(nxt)
    out = image
    offset = np.zeros(len(geometry["in_shape"]))
    for op in reversed(geometry["ops"]):
        if op["op"] == "flip":
            out = np.flip(out, axis=op["axis"])
        elif op["op"] == "transpose":
            out = out.T
        elif op["op"] == "take":
            out = np.expand_dims(out, op["axis"])
        else:
            raise InputError(f"unknown geometry op {op['op']!r}")
    takes = [op for op in geometry["ops"] if op["op"] == "take"]
    for op in takes:      # one take in the sagittal convention; axes refer to the array before that op
        offset[op["axis"]] = op["index"]
    return np.ascontiguousarray(out), offset


def _template(src: Path, fmt: str, geom: Optional[dict], sid: str) -> tuple[Path, int]:
    """(donor file whose header the output copies, frame index for multi-frame donors)."""
    from ..io.dicom import series_slice_files
    from ..io.reader import open_image

    index = None if geom is None else geom.get("slice_index")
    if fmt == "dicom-series":
        if not src.is_dir():
            raise InputError(f"{sid}: donor series folder {src.name} not found")
        files, axis = series_slice_files(src)
        if axis is None:                      # a folder holding one multi-frame file
            return _template(files[0], "dicom", geom, sid)
        if axis == 0 and index is not None and 0 <= int(index) < len(files):
            return files[int(index)], 0
        return files[0], 0
    if not src.is_file():
        raise InputError(f"{sid}: donor DICOM file {src.name} not found")
    if index is not None:                     # multi-frame donor: find the sliced frame (headers only)
        meta = open_image(src).meta
        order = meta.get("frame_order") or []
        if meta.get("slice_axis") == 0 and 0 <= int(index) < len(order):
            return src, int(order[int(index)])
    return src, 0


def _dicom_geometry(geom: dict[str, Any]) -> dict[str, list[float]]:
    """IOP / IPP (LPS) / PixelSpacing of the ingested slice grid, from the recorded ops and the donor affine."""
    from ..ingest.slicing import slice_to_world

    to_lps = np.array([-1.0, -1.0, 1.0])
    p00 = slice_to_world(geom, 0, 0) * to_lps
    d_col = slice_to_world(geom, 0, 1) * to_lps - p00      # one column to the right
    d_row = slice_to_world(geom, 1, 0) * to_lps - p00      # one row down
    sc, sr = float(np.linalg.norm(d_col)), float(np.linalg.norm(d_row))
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(geom["affine"], dtype=np.float64)[:3, :3])))
    return {"iop": [*(d_col / sc), *(d_row / sr)], "ipp": list(p00), "pixel_spacing": [sr, sc],
            "slice_thickness": voxel_mm3 / (sr * sc)}      # the source voxel's extent across the slice


def _image01(image01: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image01, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2D image, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: generated image has non-finite values")
    return np.clip(arr, 0.0, 1.0)


def _source_units(arr: np.ndarray, row: dict[str, Any], sid: str) -> np.ndarray:
    lo, hi = _float(row, "window_lo", sid), _float(row, "window_hi", sid)
    if not hi > lo:
        raise InputError(f"{sid}: donor window_hi must exceed window_lo")
    return lo + arr * (hi - lo)


def _float(row: dict[str, Any], key: str, sid: str, default: Optional[float] = None) -> float:
    raw = row.get(key, "")
    if raw in ("", None) or (isinstance(raw, float) and np.isnan(raw)):
        if default is not None:
            return default
        raise InputError(f"{sid}: donor row has no {key}")
    try:
        v = float(raw)
    except (TypeError, ValueError) as e:
        raise InputError(f"{sid}: donor {key} is not a number") from e
    if not np.isfinite(v):
        raise InputError(f"{sid}: donor {key} is not finite")
    return v


def _geometry(row: dict[str, Any], sid: str) -> Optional[dict[str, Any]]:
    raw = row.get("geometry", "")
    if isinstance(raw, dict):
        return raw
    if raw in ("", None) or (isinstance(raw, float) and np.isnan(raw)):
        return None
    try:
        geom = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise InputError(f"{sid}: donor geometry is not valid JSON") from e
    if not isinstance(geom, dict) or "in_shape" not in geom or "ops" not in geom:
        raise InputError(f"{sid}: donor geometry lacks in_shape/ops")
    return geom
