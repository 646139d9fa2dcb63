"""Take a 2D slice from an image and record exactly how, so every slice pixel maps back to a source voxel.

Geometry (stored as a JSON string in index.csv ``geometry``)::

    {"version": 1,
     "in_shape": [X, Y, Z] | [rows, cols],     # shape of the source array as the reader returned it
     "ops": [...],                              # applied in order to the source array
     "out_shape": [H, W],                       # shape of the ingested slice
     "slice_index": i | null,
     "affine": 4x4 nested list | null}          # source voxel (i, j, k) -> RAS mm (reader's affine)

Ops: ``{"op": "take", "axis": a, "index": i}`` (drop axis ``a`` at index ``i``), ``{"op": "transpose"}``
(2D transpose), ``{"op": "flip", "axis": a}`` (reverse axis ``a`` of the current 2D array).

Sagittal convention for a canonical RAS+ volume (shape (X, Y, Z): +X right, +Y anterior, +Z superior): slice ``i``
is ``vol[i]`` (axes Y, Z), displayed with superior at the top and anterior on the left::

    display = vol[i].T[::-1, ::-1]      # (Z, Y) -> row r = Z-1-k, col c = Y-1-j

2D inputs are kept as stored (no ops). No interpolation or resampling ever happens here.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

GEOMETRY_VERSION = 1


def sagittal_ops(slice_index: int) -> list[dict[str, Any]]:
    """The ops taking RAS+ volume slice ``slice_index`` to the display grid (superior up, anterior left)."""
    return [{"op": "take", "axis": 0, "index": int(slice_index)}, {"op": "transpose"},
            {"op": "flip", "axis": 0}, {"op": "flip", "axis": 1}]


def _out_shape(in_shape: Sequence[int], ops: list[dict[str, Any]]) -> list[int]:
    shape = list(in_shape)
    for op in ops:
        if op["op"] == "take":
            shape.pop(op["axis"])
        elif op["op"] == "transpose":
            shape = shape[::-1]
    return shape


def make_geometry(in_shape: Sequence[int], slice_index: Optional[int],
                  affine: Optional[np.ndarray]) -> dict[str, Any]:
    """Geometry record for a 3D source (sagittal slice ``slice_index``) or a 2D source (``slice_index`` None)."""
    if len(in_shape) == 3:
        if slice_index is None:
            raise ValueError("a 3D source needs a slice index")
        ops = sagittal_ops(slice_index)
    elif len(in_shape) == 2:
        ops = []
    else:
        raise ValueError(f"expected a 2D or 3D array, got {len(in_shape)} dimensions")
    return {"version": GEOMETRY_VERSION, "in_shape": [int(s) for s in in_shape], "ops": ops,
            "out_shape": _out_shape(in_shape, ops),
            "slice_index": None if slice_index is None else int(slice_index),
            "affine": None if affine is None else np.asarray(affine, dtype=float).tolist()}


def apply_geometry(array: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """Apply the recorded ops to ``array`` (shape ``geometry["in_shape"]``); returns a contiguous 2D copy.

    Used for the image and, identically, for its label map (nearest: pure indexing, values untouched).
    ``array`` may also be any volume with ``shape`` and ``take(index, axis)``: a DICOM volume opened from its
    headers (:class:`medsoft_aug.io.dicom.DicomVolume`) then decodes only the slice taken.
    """
    if list(array.shape) != list(geometry["in_shape"]):
        raise ValueError(f"array shape {list(array.shape)} does not match geometry {geometry['in_shape']}")
    out = array
    for op in geometry["ops"]:
        if op["op"] == "take":
            out = out.take(op["index"], axis=op["axis"])
        elif op["op"] == "transpose":
            out = out.T
        elif op["op"] == "flip":
            out = np.flip(out, axis=op["axis"])
        else:
            raise ValueError(f"unknown geometry op {op['op']!r}")
    return np.ascontiguousarray(out)


def slice_to_voxel(geometry: dict[str, Any], row: float, col: float) -> tuple[float, ...]:
    """Map slice pixel (row, col) back to the source array index ((i, j, k) for 3D, (row, col) for 2D).

    Works for fractional coordinates too (pixel centres at integers), so lesion coordinates map exactly.
    """
    shape = list(geometry["in_shape"])
    # Shapes seen before each op, to invert flips.
    shapes = [shape]
    for op in geometry["ops"]:
        shapes.append(_out_shape(shapes[-1], [op]))
    coord: list[float] = [float(row), float(col)]
    for op, before in zip(reversed(geometry["ops"]), reversed(shapes[:-1])):
        if op["op"] == "flip":
            a = op["axis"]
            coord[a] = (before[a] - 1) - coord[a]
        elif op["op"] == "transpose":
            coord = coord[::-1]
        elif op["op"] == "take":
            coord.insert(op["axis"], float(op["index"]))
    return tuple(coord)


def slice_to_world(geometry: dict[str, Any], row: float, col: float) -> Optional[np.ndarray]:
    """RAS mm of slice pixel (row, col) through the recorded affine, or None without one.

    3D sources: affine @ (i, j, k, 1). 2D sources (DICOM instances): the reader's affine maps (row, col, 0)."""
    if geometry.get("affine") is None:
        return None
    vox = slice_to_voxel(geometry, row, col)
    ijk = np.array([*vox, *([0.0] * (3 - len(vox))), 1.0])
    return (np.asarray(geometry["affine"], dtype=float) @ ijk)[:3]


def slice_spacing(spacing: Sequence[float], geometry: dict[str, Any]) -> tuple[float, float]:
    """(spacing_row, spacing_col) in mm of the output slice, from the source spacing (same axis order as the array)."""
    axes = list(range(len(geometry["in_shape"])))
    for op in geometry["ops"]:
        if op["op"] == "take":
            axes.pop(op["axis"])
        elif op["op"] == "transpose":
            axes = axes[::-1]
    return float(spacing[axes[0]]), float(spacing[axes[1]])


def geometry_json(geometry: dict[str, Any]) -> str:
    """Compact, deterministic JSON for the index.csv ``geometry`` column."""
    return json.dumps(geometry, separators=(",", ":"), sort_keys=True)
