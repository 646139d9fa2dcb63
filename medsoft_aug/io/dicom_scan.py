"""The header pass over a DICOM series folder: which files are the series' slices, and how they stack.

Every file is read once, whole (the encoded pixel bytes stay with their dataset, undecoded), so that damage
anywhere in a slice file (a truncated file, pixel bytes the header does not describe, an unknown transfer
syntax) is found before any pixel is decoded; decoding is left to the reader, slice by slice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .dicom_geometry import SliceGeometry, fallback_spacing, int_or, plan_slices
from .dicom_pixels import attr, check_decodable, dcmread, floats, has_dicm_preamble, n_frames_of, pixel_spacing


def scan_series(folder: Path, with_pixels: bool = True) -> tuple[list, bool, int]:
    """Datasets (path, dataset) of the folder's one series; (datasets, all UIDs empty, ignored count).

    ``with_pixels``: read each file whole and check its pixel data without decoding them
    (:func:`~medsoft_aug.io.dicom_pixels.check_decodable`), else headers only (stop before the pixel data)."""
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
    if with_pixels:
        for p, ds in headers:
            check_decodable(ds, p.name)
    return headers, empty_uids, ignored + len(others)


def plan_series(headers: list, name: str) -> tuple[SliceGeometry, list[int], tuple[int, int]]:
    """Slice geometry, instance numbers and (rows, cols) of single-frame series headers."""
    if any(n_frames_of(ds) > 1 for _, ds in headers):
        raise InputError(f"{name}: series mixes multi-frame files with other images")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"{name}: slices differ in size {sorted(sizes)}")
    ipps = [floats(attr(ds, "ImagePositionPatient"), 3) for _, ds in headers]
    iops = [floats(attr(ds, "ImageOrientationPatient"), 6) for _, ds in headers]
    inst = [int_or(attr(ds, "InstanceNumber"), i) for i, (_, ds) in enumerate(headers)]
    spacing2d = pixel_spacing(headers[0][1])[0]
    geom = plan_slices(ipps, iops, spacing2d, fallback_spacing(headers[0][1], None), inst, name, "instance_number")
    return geom, inst, sizes.pop()


def common_meta(ds) -> dict:
    """Instance number, modality and SOP class of a dataset (structural, checked values only)."""
    inst = attr(ds, "InstanceNumber")
    return {"instance_number": None if inst is None else int_or(inst, 0),
            "modality": str(getattr(ds, "Modality", "") or ""),
            "sop_class_uid": str(getattr(ds, "SOPClassUID", "") or "")}


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
