"""How 2D DICOM slices (series files or multi-frame frames) stack into a volume, and its canonical layout.

Slices are sorted by ImagePositionPatient projected on the slice normal (row cosines x column cosines), falling
back to InstanceNumber (series) or frame order (multi-frame) when positions are missing. The LPS affine of the
stacked (rows, cols, slices) array is built from ImageOrientationPatient / ImagePositionPatient / PixelSpacing
and the position step, converted to RAS; the canonical layout is nibabel's closest canonical orientation, as
for NIfTI volumes (:func:`medsoft_aug.io.nifti.to_closest_canonical`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .dicom_pixels import attr

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


@dataclass
class CanonicalLayout:
    """Where the stacked (rows, cols, n) array lands in canonical RAS+ (what ``to_closest_canonical`` does to it)."""

    shape: tuple[int, int, int]
    affine: np.ndarray       # canonical voxel -> RAS mm
    codes: str               # original axis codes, e.g. "PIR"
    ornt: np.ndarray         # nibabel orientation of the stacked array
    slice_axis: int          # canonical axis the stacking axis became
    order: list[int]         # input index of each canonical slice along ``slice_axis``
    flipped: bool            # stacking order reversed along ``slice_axis``
    stack_shape: tuple[int, int, int]    # (rows, cols, n)
    stack_order: list[int]   # input index of each stacked slice (``SliceGeometry.order``)
    stack_affine: np.ndarray             # stacked voxel -> RAS mm


def canonical_layout(geom: SliceGeometry, rows: int, cols: int) -> CanonicalLayout:
    """The canonical shape, affine and slice order of the stacked volume, from its geometry alone."""
    from nibabel.orientations import aff2axcodes, inv_ornt_aff, io_orientation

    stack_shape = (rows, cols, len(geom.order))
    ornt = io_orientation(geom.affine_ras)
    shape = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        shape[int(axis)] = stack_shape[i]
    identity = np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]])
    affine = geom.affine_ras.copy() if identity else geom.affine_ras @ inv_ornt_aff(ornt, stack_shape)
    flipped = bool(ornt[2, 1] < 0)
    return CanonicalLayout(shape=(shape[0], shape[1], shape[2]), affine=affine,
                           codes="".join(str(c) for c in aff2axcodes(geom.affine_ras)), ornt=ornt,
                           slice_axis=int(ornt[2, 0]), order=geom.order[::-1] if flipped else list(geom.order),
                           flipped=flipped, stack_shape=stack_shape, stack_order=list(geom.order),
                           stack_affine=geom.affine_ras)


def canonical_meta(geom: SliceGeometry, layout: CanonicalLayout) -> dict:
    """The geometry keys every 3D DICOM reader records in ``meta``."""
    return {"orig_ornt": layout.codes, "slice_axis": layout.slice_axis, "sorted_by": geom.sorted_by,
            "slice_spacing": geom.slice_spacing, "slice_spacing_uniform": geom.uniform,
            "orientation_assumed": geom.orientation_assumed}


def plane_to_canonical(plane: np.ndarray, layout: CanonicalLayout) -> np.ndarray:
    """One stacked slice (rows, cols) as the canonical volume shows it along ``layout.slice_axis``: the same
    permutation and flips of the in-plane axes as the whole volume gets (only valid for slice_axis 0)."""
    from nibabel.orientations import apply_orientation

    return np.ascontiguousarray(apply_orientation(plane[:, :, np.newaxis], layout.ornt)[0])


def plan_slices(ipps: Sequence[Optional[np.ndarray]], iops: Sequence[Optional[np.ndarray]],
                spacing2d: tuple[float, float], fallback: float, fallback_keys: Sequence[int],
                name: str, fallback_kind: str) -> SliceGeometry:
    """Order slices along their normal and build the RAS affine of the stacked (rows, cols, n) array.

    Args:
        ipps: ImagePositionPatient (LPS mm) per slice, None where missing.
        iops: ImageOrientationPatient per slice (row cosines, column cosines), None where missing.
        spacing2d: (row_mm, col_mm) in-plane spacing.
        fallback: slice spacing (mm) when positions are missing or there is one slice.
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
    normal = slice_normal(iop)
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
            spacing, uniform, step = fallback, True, normal * fallback
        origin, sorted_by = pos[order[0]], "position"
    else:
        order = [int(i) for i in np.argsort(np.asarray(fallback_keys), kind="stable")]
        spacing, uniform, step = fallback, True, normal * fallback
        first = ipps[order[0]]
        origin, sorted_by = (first if first is not None else np.zeros(3)), fallback_kind
    if not uniform:
        log.warning("%s: slice positions are unevenly spaced; using the mean step for the affine", name)
    return SliceGeometry(order=order, affine_ras=affine_ras(iop, origin, spacing2d, step), sorted_by=sorted_by,
                         slice_spacing=spacing, uniform=uniform, orientation_assumed=not given)


def affine_ras(iop: np.ndarray, origin: np.ndarray, spacing2d: tuple[float, float], step: np.ndarray) -> np.ndarray:
    """4x4 RAS affine of index (row, col, slice): rows move along the column cosines, columns along the row cosines."""
    row_cos, col_cos = _unit(iop[:3]), _unit(iop[3:])
    lps = np.eye(4)
    lps[:3, 0] = col_cos * spacing2d[0]
    lps[:3, 1] = row_cos * spacing2d[1]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def slice_normal(iop: np.ndarray) -> np.ndarray:
    return _unit(np.cross(_unit(iop[:3]), _unit(iop[3:])))


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def fallback_spacing(ds, frame: Optional[int]) -> float:
    """SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        v = positive(attr(ds, name, frame, "PixelMeasuresSequence"))
        if v:
            return v
    return 1.0


def positive(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def int_or(v, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default
