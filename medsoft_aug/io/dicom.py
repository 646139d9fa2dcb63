"""DICOM readers: single-frame files (2D), multi-frame files and series folders (3D, canonical RAS+).

3D geometry: slices are sorted by ImagePositionPatient projected on the slice normal
(row cosines x column cosines), falling back to InstanceNumber (series) or frame order (multi-frame) when
positions are missing. The LPS affine of the stacked (rows, cols, slices) array is built from
ImageOrientationPatient / ImagePositionPatient / PixelSpacing and the position step, converted to RAS and
reoriented exactly as NIfTI volumes are (:func:`medsoft_aug.io.nifti.to_closest_canonical`).

``meta["dicom_files"]`` (series) and ``meta["frame_order"]`` (multi-frame) list the source file / frame for
each index along the canonical axis ``meta["slice_axis"]``: ``array.take(i, axis=slice_axis)`` came from
``dicom_files[i]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .dicom_pixels import (attr, dcmread, floats, has_dicm_preamble, n_frames_of, pixel_spacing,
                           to_physical)
from .nifti import label_array, spacing_from_affine, to_closest_canonical
from .sitk_reader import decode_with_fallback
from .types import ImageData

log = logging.getLogger("medsoft_aug.io.dicom")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DEFAULT_IOP = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass
class SliceGeometry:
    """How 2D slices stack into a volume: ``order`` = input indices in stacking order, ``affine_ras`` the
    4x4 voxel -> RAS mm of the stacked (rows, cols, n) array."""

    order: list[int]
    affine_ras: np.ndarray
    sorted_by: str           # "position" | "instance_number" | "frame"
    slice_spacing: float     # mm between stacked slices
    uniform: bool            # slice positions evenly spaced (within 1 %)
    orientation_assumed: bool


def read_dicom_file(path: str | Path, *, label_map: bool = False) -> ImageData:
    """Read one DICOM file: single-frame -> 2D (rows, cols) as stored; multi-frame -> 3D canonical RAS+.

    Args:
        path: a DICOM Part 10 file (or a ``.dcm`` file without preamble). Read only.
        label_map: keep values (rescale applied, no MONOCHROME1 inversion; float32 if exact else float64).

    Returns:
        ImageData, ``source_format="dicom"``. 2D: ``spacing`` (row_mm, col_mm) from PixelSpacing /
        ImagerPixelSpacing (else (1, 1), ``meta["spacing_source"]="default"``), ``affine`` mapping
        (row, col, 0) -> RAS mm when ImageOrientationPatient/ImagePositionPatient are present.

    Raises:
        InputError: missing, non-DICOM, truncated or undecodable file; no pixel data.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    ds = dcmread(path, force=not has_dicm_preamble(path))
    if "Rows" not in ds:
        raise InputError(f"{path.name}: not a readable DICOM image (no Rows/Columns: truncated or not an image)")
    stored = decode_with_fallback(ds, path)      # GDCM when pydicom cannot decode
    phys, meta = to_physical(ds, stored, label_map=label_map)
    n = stored.shape[0]
    meta.update(_common_meta(ds), n_frames=n, dicom_files=[str(path)])
    if n == 1:
        arr = phys[0]
        spacing, meta["spacing_source"] = pixel_spacing(ds, 0)
        iop = floats(attr(ds, "ImageOrientationPatient", 0, "PlaneOrientationSequence"), 6)
        ipp = floats(attr(ds, "ImagePositionPatient", 0, "PlanePositionSequence"), 3)
        affine = None
        if iop is not None and ipp is not None:
            thick = _positive(attr(ds, "SliceThickness", 0, "PixelMeasuresSequence")) or 1.0
            affine = _affine_ras(iop, ipp, spacing, _normal(iop) * thick)
            meta["image_orientation"], meta["image_position"] = iop.tolist(), ipp.tolist()
        return ImageData(array=_finish_values(arr, label_map, meta), spacing=spacing, affine=affine,
                         source_format="dicom", meta=meta)
    # multi-frame: per-frame functional groups when present, else top-level geometry
    ipps = [floats(attr(ds, "ImagePositionPatient", f, "PlanePositionSequence"), 3) for f in range(n)]
    iops = [floats(attr(ds, "ImageOrientationPatient", f, "PlaneOrientationSequence"), 6) for f in range(n)]
    spacing2d, meta["spacing_source"] = pixel_spacing(ds, 0)
    geom = plan_slices(ipps, iops, spacing2d, _fallback_spacing(ds, 0), list(range(n)), path.name, "frame")
    stack = np.moveaxis(phys[geom.order], 0, -1)          # (rows, cols, n) in stacking order
    arr, aff_c, canon_order, _ = _canonical(stack, geom, meta)
    meta["frame_order"] = canon_order
    return ImageData(array=_finish_values(arr, label_map, meta), spacing=spacing_from_affine(aff_c),
                     affine=aff_c, source_format="dicom", meta=meta)


def read_dicom_series(folder: str | Path, *, label_map: bool = False) -> ImageData:
    """Read a folder holding one DICOM series as a 3D volume in canonical RAS+.

    Non-DICOM files and DICOM files without an image (DICOMDIR, reports) are ignored. Slices are grouped by
    SeriesInstanceUID; when every UID is empty, by (SeriesNumber, orientation) instead and
    ``meta["empty_uids"]`` is True. A folder with more than one series is an error. A folder holding a single
    multi-frame file is read as that file.

    Returns:
        ImageData, ``source_format="dicom-series"``, meta ``dicom_files`` / ``instance_numbers`` along the
        canonical ``slice_axis``, ``sorted_by``, ``slice_spacing``, ``slice_spacing_uniform``, ``orig_ornt``,
        ``ignored_files`` and the pixel provenance of :func:`medsoft_aug.io.dicom_pixels.to_physical`.

    Raises:
        InputError: missing or empty folder, no DICOM images, several series, slices of different size or
            orientation, duplicate slice positions, corrupt or undecodable slices.
    """
    folder = Path(folder)
    headers, empty_uids, ignored = _scan_series(folder, with_pixels=True)   # every file is read once
    if len(headers) == 1 and n_frames_of(headers[0][1]) > 1:
        img = read_dicom_file(headers[0][0], label_map=label_map)
        img.meta.update(dicom_files=[str(headers[0][0])], empty_uids=empty_uids, ignored_files=ignored)
        return img
    geom, inst, sizes = _plan_series(headers, folder.name)
    spacing_source = pixel_spacing(headers[0][1])[1]
    rows, cols = sizes.pop()
    stack = np.empty((rows, cols, len(headers)), dtype=np.float64 if label_map else np.float32)
    per_slice: list[dict] = []
    for k, idx in enumerate(geom.order):
        path, ds = headers[idx]
        stored = decode_with_fallback(ds, path)      # GDCM when pydicom cannot decode
        if stored.shape[1:] != (rows, cols):
            raise InputError(f"{path.name}: pixel data size differs from the header")
        phys, m = to_physical(ds, stored, label_map=label_map)
        stack[:, :, k] = phys[0]
        per_slice.append(m)
        if "PixelData" in ds:
            del ds.PixelData                          # the encoded bytes are not needed any more
        del ds, stored, phys
    meta = dict(per_slice[0])
    for key in ("rescale_slope", "rescale_intercept", "invert_sum"):
        vals = [m.get(key) for m in per_slice]
        if len({repr(v) for v in vals}) > 1:
            meta[key] = vals       # stacking order; reordered to canonical below
    meta.update(_common_meta(headers[0][1]), instance_number=None, spacing_source=spacing_source, n_frames=1,
                n_slices=len(headers), empty_uids=empty_uids, ignored_files=ignored)
    arr, aff_c, canon_order, flip = _canonical(stack, geom, meta)
    for key in ("rescale_slope", "rescale_intercept", "invert_sum"):
        if isinstance(meta.get(key), list) and flip:
            meta[key] = meta[key][::-1]
    meta["dicom_files"] = [str(headers[i][0]) for i in canon_order]
    meta["instance_numbers"] = [inst[i] for i in canon_order]
    return ImageData(array=_finish_values(arr, label_map, meta), spacing=spacing_from_affine(aff_c),
                     affine=aff_c, source_format="dicom-series", meta=meta)


def series_slice_files(folder: str | Path) -> tuple[list[Path], Optional[int]]:
    """Header-only layout of a series folder, as :func:`read_dicom_series` would read it.

    Returns (files along the canonical ``slice_axis``, ``slice_axis``): ``array.take(i, axis=slice_axis)`` of
    the volume comes from ``files[i]``. A folder holding one multi-frame file gives ([file], None).

    Raises:
        InputError: as :func:`read_dicom_series` for folder-level problems (no pixel data is decoded).
    """
    from nibabel.orientations import io_orientation

    folder = Path(folder)
    headers, _, _ = _scan_series(folder)
    if len(headers) == 1 and n_frames_of(headers[0][1]) > 1:
        return [headers[0][0]], None
    geom, _, _ = _plan_series(headers, folder.name)
    ornt = io_orientation(geom.affine_ras)
    order = geom.order[::-1] if ornt[2, 1] < 0 else geom.order
    return [headers[i][0] for i in order], int(ornt[2, 0])


def _scan_series(folder: Path, with_pixels: bool = False) -> tuple[list, bool, int]:
    """Datasets (path, dataset) of the folder's one series; (datasets, all UIDs empty, ignored count).

    ``with_pixels``: read each file whole (its pixel data are then decoded from this one read), else headers
    only (stop before the pixel data)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not entries:
        raise InputError(f"{folder.name}: folder is empty")
    headers, others, ignored = [], [], 0
    for p in entries:
        preamble = has_dicm_preamble(p)
        if not preamble and p.suffix.lower() != ".dcm":
            ignored += 1
            continue
        ds = dcmread(p, header_only=not with_pixels, force=not preamble)
        if "Rows" not in ds or "Columns" not in ds:
            others.append((p, ds))
            continue
        headers.append((p, ds))
    if not headers and not others:
        raise InputError(f"{folder.name}: no DICOM images in folder")
    _check_non_images(others, headers)
    if not headers:
        raise InputError(f"{folder.name}: no DICOM images in folder")
    headers, empty_uids = _one_series(headers, folder.name)
    return headers, empty_uids, ignored + len(others)


def _check_non_images(others: list, headers: list) -> None:
    """DICOM files without an image are ignored only when they are recognisably something else (a DICOMDIR,
    a report: a SOP class of their own, not the images' SOP class or series). An empty, truncated or damaged
    slice file - no SOP class, or the images' SOP class or series without Rows/Columns - is an error, not a
    silently missing slice."""
    series = {str(getattr(ds, "SeriesInstanceUID", "") or "").strip() for _, ds in headers} - {""}
    image_sops = {_sop(ds) for _, ds in headers} - {""}
    for p, ds in others:
        sop, uid = _sop(ds), str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
        if not sop or sop in image_sops or (uid and uid in series):
            raise InputError(f"{p.name}: not a readable DICOM image (empty, truncated or damaged file: "
                             "no Rows/Columns)")


def _sop(ds) -> str:
    fm = getattr(ds, "file_meta", None)
    return str(getattr(ds, "SOPClassUID", "") or getattr(fm, "MediaStorageSOPClassUID", "") or "").strip()


def _plan_series(headers: list, name: str) -> tuple[SliceGeometry, list[int], set]:
    """Slice geometry, instance numbers and the set of (rows, cols) of single-frame series headers."""
    if any(n_frames_of(ds) > 1 for _, ds in headers):
        raise InputError(f"{name}: series mixes multi-frame files with other images")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"{name}: slices differ in size {sorted(sizes)}")
    ipps = [floats(attr(ds, "ImagePositionPatient"), 3) for _, ds in headers]
    iops = [floats(attr(ds, "ImageOrientationPatient"), 6) for _, ds in headers]
    inst = [_int_or(attr(ds, "InstanceNumber"), i) for i, (_, ds) in enumerate(headers)]
    spacing2d = pixel_spacing(headers[0][1])[0]
    geom = plan_slices(ipps, iops, spacing2d, _fallback_spacing(headers[0][1], None), inst, name, "instance_number")
    return geom, inst, sizes


def plan_slices(ipps: Sequence[Optional[np.ndarray]], iops: Sequence[Optional[np.ndarray]],
                spacing2d: tuple[float, float], fallback_spacing: float, fallback_keys: Sequence[int],
                name: str, fallback_kind: str) -> SliceGeometry:
    """Order slices along their normal and build the RAS affine of the stacked (rows, cols, n) array.

    Args:
        ipps: ImagePositionPatient (LPS mm) per slice, None where missing.
        iops: ImageOrientationPatient per slice (row cosines, column cosines), None where missing.
        spacing2d: (row_mm, col_mm) in-plane spacing.
        fallback_spacing: slice spacing (mm) when positions are missing or there is one slice.
        fallback_keys: sort keys when positions are missing (InstanceNumber or frame index).
        name: file or folder name for error messages.
        fallback_kind: ``sorted_by`` value for the fallback ("instance_number" | "frame").
    """
    n = len(ipps)
    given = [o for o in iops if o is not None]
    if given:
        iop = given[0]
        if len(given) != n or any(np.max(np.abs(o - iop)) > 1e-3 for o in given):
            raise InputError(f"{name}: slices have different or missing orientations (ImageOrientationPatient)")
    else:
        iop = _DEFAULT_IOP
    normal = _normal(iop)
    if all(p is not None for p in ipps):
        pos = np.array(ipps, dtype=np.float64)
        dist = pos @ normal
        order = [int(i) for i in np.argsort(dist, kind="stable")]
        gaps = np.diff(dist[order])
        if n > 1 and float(gaps.min()) < 1e-3:
            dup = int(np.sum(gaps < 1e-3))
            raise InputError(f"{name}: {dup + 1} slices share a position (several acquisitions in one series?)")
        if n > 1:
            spacing = float(np.median(gaps))
            uniform = bool(np.max(np.abs(gaps - spacing)) <= max(0.01 * spacing, 1e-3))
            step = (pos[order[-1]] - pos[order[0]]) / (n - 1)
        else:
            spacing, uniform, step = fallback_spacing, True, normal * fallback_spacing
        origin, sorted_by = pos[order[0]], "position"
    else:
        order = [int(i) for i in np.argsort(np.asarray(fallback_keys), kind="stable")]
        spacing, uniform, step = fallback_spacing, True, normal * fallback_spacing
        first = ipps[order[0]]
        origin, sorted_by = (first if first is not None else np.zeros(3)), fallback_kind
    if not uniform:
        log.warning("%s: slice positions are unevenly spaced; using the mean step for the affine", name)
    return SliceGeometry(order=order, affine_ras=_affine_ras(iop, origin, spacing2d, step), sorted_by=sorted_by,
                         slice_spacing=spacing, uniform=uniform, orientation_assumed=not given)


def _canonical(stack: np.ndarray, geom: SliceGeometry, meta: dict) -> tuple[np.ndarray, np.ndarray, list[int], bool]:
    """Reorient the stacked volume and record its geometry in ``meta``.

    Returns (canonical array, canonical affine, input indices in canonical slice order, stack order reversed)."""
    from nibabel.orientations import io_orientation

    arr, aff_c, codes = to_closest_canonical(stack, geom.affine_ras)
    ornt = io_orientation(geom.affine_ras)
    slice_axis, flipped = int(ornt[2, 0]), bool(ornt[2, 1] < 0)
    meta.update(orig_ornt="".join(codes), slice_axis=slice_axis, sorted_by=geom.sorted_by,
                slice_spacing=geom.slice_spacing, slice_spacing_uniform=geom.uniform,
                orientation_assumed=geom.orientation_assumed)
    return arr, aff_c, (geom.order[::-1] if flipped else list(geom.order)), flipped


def _affine_ras(iop: np.ndarray, origin: np.ndarray, spacing2d: tuple[float, float], step: np.ndarray) -> np.ndarray:
    """4x4 RAS affine of index (row, col, slice): rows move along the column cosines, columns along the row cosines."""
    row_cos, col_cos = _unit(iop[:3]), _unit(iop[3:])
    lps = np.eye(4)
    lps[:3, 0] = col_cos * spacing2d[0]
    lps[:3, 1] = row_cos * spacing2d[1]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def _normal(iop: np.ndarray) -> np.ndarray:
    return _unit(np.cross(_unit(iop[:3]), _unit(iop[3:])))


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _fallback_spacing(ds, frame: Optional[int]) -> float:
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        v = _positive(attr(ds, name, frame, "PixelMeasuresSequence"))
        if v:
            return v
    return 1.0


def _positive(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _int_or(v, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _one_series(headers: list, name: str) -> tuple[list, bool]:
    """Keep the folder's only series; error when there are several. Returns (headers, all UIDs empty)."""
    uids = [str(getattr(ds, "SeriesInstanceUID", "") or "").strip() for _, ds in headers]
    empty = all(u == "" for u in uids)
    if empty:
        keys = [(str(getattr(ds, "SeriesNumber", "") or ""),
                 tuple(np.round(floats(attr(ds, "ImageOrientationPatient"), 6), 3))
                 if floats(attr(ds, "ImageOrientationPatient"), 6) is not None else ())
                for _, ds in headers]
    else:
        keys = uids
    distinct = sorted(set(map(str, keys)))
    if len(distinct) > 1:
        how = "SeriesNumber/orientation (UIDs are empty)" if empty else "SeriesInstanceUID"
        raise InputError(f"{name}: folder holds {len(distinct)} DICOM series (by {how}); "
                         "give a folder with one series")
    return headers, empty


def _common_meta(ds) -> dict:
    inst = attr(ds, "InstanceNumber")
    return {"instance_number": None if inst is None else _int_or(inst, 0),
            "modality": str(getattr(ds, "Modality", "") or ""),
            "sop_class_uid": str(getattr(ds, "SOPClassUID", "") or "")}


def _finish_values(arr: np.ndarray, label_map: bool, meta: dict) -> np.ndarray:
    if label_map:
        out, meta["label_dtype"] = label_array(arr)
        return np.ascontiguousarray(out)
    return np.ascontiguousarray(arr, dtype=np.float32)
