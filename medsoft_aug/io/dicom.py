"""DICOM readers: single-frame files (2D), multi-frame files and series folders (3D, canonical RAS+).

The geometry (slice order, affine, canonical layout) is :mod:`medsoft_aug.io.dicom_geometry`'s, the header
pass over a series folder :mod:`medsoft_aug.io.dicom_scan`'s. A volume is opened from its headers
(:func:`open_dicom`): shape, affine, spacing and meta are known before any pixel is decoded, and
:meth:`DicomVolume.take` decodes only the slices it returns (one file of a sagittal series, one frame of a
multi-frame file); :meth:`DicomVolume.load` decodes all of them, as :func:`read_dicom_series` does.

``meta["dicom_files"]`` (series) and ``meta["frame_order"]`` (multi-frame) list the source file / frame for
each index along the canonical axis ``meta["slice_axis"]``: ``array.take(i, axis=slice_axis)`` came from
``dicom_files[i]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..errors import InputError
from .dicom_geometry import (CanonicalLayout, SliceGeometry, affine_ras, canonical_layout, canonical_meta,
                             fallback_spacing, plan_slices, plane_to_canonical, positive, slice_normal)
from .dicom_pixels import (apply_map, attr, dcmread, floats, has_dicm_preamble, n_frames_of, physical_maps,
                           pixel_spacing, to_physical)
from .dicom_scan import common_meta, plan_series, scan_series
from .nifti import label_array, spacing_from_affine, to_closest_canonical
from .quiet import header_warnings
from .sitk_reader import decode_with_fallback
from .types import ImageData

__all__ = ["DicomVolume", "SliceGeometry", "open_dicom", "plan_slices", "read_dicom_file", "read_dicom_series",
           "series_slice_files"]


class DicomVolume:
    """A 3D DICOM volume (series folder or multi-frame file) opened from its headers; pixels on demand.

    ``shape``, ``ndim``, ``affine``, ``spacing``, ``source_format`` and ``meta`` are those of the
    :class:`~medsoft_aug.io.types.ImageData` that :meth:`load` returns (``meta["label_dtype"]`` excepted: it
    depends on every value, so it is known after :meth:`load`). The encoded pixel bytes stay in memory with
    their datasets (one volume's worth) until :meth:`load` has decoded them.
    """

    def __init__(self, name: str, source_format: str, layout: CanonicalLayout, meta: dict, maps: list,
                 stored: Callable[[int], np.ndarray], ds_of: Callable[[int], object], label_map: bool, *,
                 release: Optional[Callable[[int], None]] = None,
                 before_load: Optional[Callable[[], None]] = None):
        self.name, self.source_format, self.meta = name, source_format, meta
        self.layout, self.label_map = layout, label_map
        self.shape, self.affine = layout.shape, layout.affine
        self.spacing = spacing_from_affine(layout.affine)
        self._maps, self._stored, self._ds_of = maps, stored, ds_of
        self._release, self._before_load = release, before_load
        self._loaded: Optional[ImageData] = None

    @property
    def ndim(self) -> int:
        return 3

    def take(self, index: int, axis: int = 0) -> np.ndarray:
        """``load().array.take(index, axis)``; along the acquisition's slice axis only that slice is decoded."""
        if self._loaded is None and axis == 0 and self.layout.slice_axis == 0:
            n = self.shape[0]
            if not 0 <= index < n:
                raise IndexError(f"index {index} is out of bounds for axis 0 with size {n}")
            with header_warnings(self.name):
                plane = plane_to_canonical(self._plane(self.layout.order[index]), self.layout)
            return _check_finite(_finish_values(plane, self.label_map, {}), self.name)
        return np.take(self.load().array, index, axis=axis)

    def load(self) -> ImageData:
        """Every slice decoded: the volume :func:`read_dicom_series` / :func:`read_dicom_file` return."""
        if self._loaded is None:
            with header_warnings(self.name):
                if self._before_load is not None:
                    self._before_load()
                rows, cols, n = self.layout.stack_shape
                stack = np.empty((rows, cols, n), dtype=np.float64 if self.label_map else np.float32)
                for j, k in enumerate(self.layout.stack_order):
                    stack[:, :, j] = self._plane(k)
                    if self._release is not None:
                        self._release(k)
            arr, aff_c, _ = to_closest_canonical(stack, self.layout.stack_affine)
            meta = dict(self.meta)
            self._loaded = ImageData(array=_finish_values(arr, self.label_map, meta), spacing=self.spacing,
                                     affine=aff_c, source_format=self.source_format, meta=meta)
        return self._loaded

    def _plane(self, k: int) -> np.ndarray:
        """Input slice ``k`` (series file or frame), (rows, cols) in physical units (float64)."""
        return apply_map(self._ds_of(k), self._stored(k), self._maps[k])


def open_dicom(path: str | Path, *, label_map: bool = False) -> Union["DicomVolume", ImageData]:
    """Open a DICOM series folder or file. A series or multi-frame file comes back as a :class:`DicomVolume`
    (headers read, checks done, nothing decoded yet); a single-frame file as its ImageData (it is one slice).

    Raises:
        InputError: as :func:`read_dicom_series` / :func:`read_dicom_file` for everything found in the headers
            and encoded pixel bytes; damage only a decoder finds surfaces when that slice is decoded.
    """
    path = Path(path)
    if path.is_dir():
        return _open_series(path, label_map)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    ds = dcmread(path, force=not has_dicm_preamble(path))
    if "Rows" not in ds:
        raise InputError(f"{path.name}: not a readable DICOM image (no Rows/Columns: truncated or not an image)")
    if n_frames_of(ds) > 1:
        return _open_multiframe(ds, path, label_map)
    return _single_frame(ds, path, label_map)


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
    img = open_dicom(path, label_map=label_map)
    return img.load() if isinstance(img, DicomVolume) else img


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
    return _open_series(Path(folder), label_map).load()


def series_slice_files(folder: str | Path) -> tuple[list[Path], Optional[int]]:
    """Header-only layout of a series folder, as :func:`read_dicom_series` would read it.

    Returns (files along the canonical ``slice_axis``, ``slice_axis``): ``array.take(i, axis=slice_axis)`` of
    the volume comes from ``files[i]``. A folder holding one multi-frame file gives ([file], None).

    Raises:
        InputError: as :func:`read_dicom_series` for folder-level problems (no pixel data is decoded).
    """
    folder = Path(folder)
    headers, _, _ = scan_series(folder, with_pixels=False)
    if len(headers) == 1 and n_frames_of(headers[0][1]) > 1:
        return [headers[0][0]], None
    geom, _, (rows, cols) = plan_series(headers, folder.name)
    layout = canonical_layout(geom, rows, cols)
    return [headers[i][0] for i in layout.order], layout.slice_axis


def _open_series(folder: Path, label_map: bool) -> Union[DicomVolume, ImageData]:
    """The header pass (every file read once, whole; nothing decoded) and the series' layout and meta."""
    headers, empty_uids, ignored = scan_series(folder)
    if len(headers) == 1 and n_frames_of(headers[0][1]) > 1:
        vol = _open_multiframe(headers[0][1], headers[0][0], label_map)
        vol.meta.update(dicom_files=[str(headers[0][0])], empty_uids=empty_uids, ignored_files=ignored)
        return vol
    geom, inst, (rows, cols) = plan_series(headers, folder.name)
    layout = canonical_layout(geom, rows, cols)
    maps, per_slice = zip(*(physical_maps(ds, [0], label_map=label_map) for _, ds in headers))
    meta = dict(per_slice[geom.order[0]])
    for key in ("rescale_slope", "rescale_intercept", "invert_sum"):
        vals = [per_slice[i].get(key) for i in layout.order]
        if len({repr(v) for v in vals}) > 1:
            meta[key] = vals       # canonical slice order
    meta.update(common_meta(headers[0][1]), instance_number=None,
                spacing_source=pixel_spacing(headers[0][1])[1], n_frames=1, n_slices=len(headers),
                empty_uids=empty_uids, ignored_files=ignored)
    meta.update(canonical_meta(geom, layout), dicom_files=[str(headers[i][0]) for i in layout.order],
                instance_numbers=[inst[i] for i in layout.order])

    def stored(k: int) -> np.ndarray:
        path, ds = headers[k]
        arr = decode_with_fallback(ds, path)      # GDCM when pydicom cannot decode
        if arr.shape[1:] != (rows, cols):
            raise InputError(f"{path.name}: pixel data size differs from the header")
        return arr[0]

    def release(k: int) -> None:                   # the encoded bytes (and pydicom's decoded copy) go
        ds = headers[k][1]
        if "PixelData" in ds:
            del ds.PixelData

    return DicomVolume(folder.name, "dicom-series", layout, meta, [m[0] for m in maps], stored,
                       lambda k: headers[k][1], label_map, release=release)


def _open_multiframe(ds, path: Path, label_map: bool) -> DicomVolume:
    """A multi-frame file: per-frame functional groups when present, else top-level geometry; frames decoded
    one at a time (pydicom's frame-level access), or all at once by :meth:`DicomVolume.load`."""
    from .dicom_pixels import check_decodable

    check_decodable(ds, path.name)
    n = n_frames_of(ds)
    ipps = [floats(attr(ds, "ImagePositionPatient", f, "PlanePositionSequence"), 3) for f in range(n)]
    iops = [floats(attr(ds, "ImageOrientationPatient", f, "PlaneOrientationSequence"), 6) for f in range(n)]
    spacing2d, spacing_source = pixel_spacing(ds, 0)
    geom = plan_slices(ipps, iops, spacing2d, fallback_spacing(ds, 0), list(range(n)), path.name, "frame")
    layout = canonical_layout(geom, int(ds.Rows), int(ds.Columns))
    maps, meta = physical_maps(ds, range(n), label_map=label_map)
    meta.update(common_meta(ds), n_frames=n, dicom_files=[str(path)], spacing_source=spacing_source)
    meta.update(canonical_meta(geom, layout), frame_order=layout.order)
    decoded: dict[str, np.ndarray] = {}

    def stored(k: int) -> np.ndarray:
        if "all" in decoded:
            return decoded["all"][k]
        return decode_with_fallback(ds, path, index=k)[0]

    def decode_all() -> None:
        decoded["all"] = decode_with_fallback(ds, path)

    return DicomVolume(path.name, "dicom", layout, meta, maps, stored, lambda k: ds, label_map,
                       before_load=decode_all)


def _single_frame(ds, path: Path, label_map: bool) -> ImageData:
    stored = decode_with_fallback(ds, path)      # GDCM when pydicom cannot decode
    phys, meta = to_physical(ds, stored, label_map=label_map)
    meta.update(common_meta(ds), n_frames=1, dicom_files=[str(path)])
    spacing, meta["spacing_source"] = pixel_spacing(ds, 0)
    iop = floats(attr(ds, "ImageOrientationPatient", 0, "PlaneOrientationSequence"), 6)
    ipp = floats(attr(ds, "ImagePositionPatient", 0, "PlanePositionSequence"), 3)
    affine = None
    if iop is not None and ipp is not None:
        thick = positive(attr(ds, "SliceThickness", 0, "PixelMeasuresSequence")) or 1.0
        affine = affine_ras(iop, ipp, spacing, slice_normal(iop) * thick)
        meta["image_orientation"], meta["image_position"] = iop.tolist(), ipp.tolist()
    return ImageData(array=_finish_values(phys[0], label_map, meta), spacing=spacing, affine=affine,
                     source_format="dicom", meta=meta)


def _check_finite(arr: np.ndarray, name: str) -> np.ndarray:
    """As :func:`medsoft_aug.io.reader.check_finite`, for one decoded slice."""
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{name}: {bad} of {arr.size} voxel values of a slice are NaN or infinite")
    return arr


def _finish_values(arr: np.ndarray, label_map: bool, meta: dict) -> np.ndarray:
    if label_map:
        out, meta["label_dtype"] = label_array(arr)
        return np.ascontiguousarray(out)
    return np.ascontiguousarray(arr, dtype=np.float32)
