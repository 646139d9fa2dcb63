"""DICOM header access and pixel decoding shared by the single-file, multi-frame and series readers.

Pixel data are decoded by pydicom's pixel handlers (native, RLE, and JPEG 2000 through pylibjpeg-openjpeg or
Pillow). Values are then mapped to physical units: the modality LUT / rescale slope and intercept (per frame
for enhanced multi-frame files), and MONOCHROME1 is inverted over the rescaled stored bit range so that higher
always means brighter; ``invert_sum`` (lo + hi of that range) is recorded so a writer can invert back.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError

log = logging.getLogger("medsoft_aug.io.dicom")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def has_dicm_preamble(path: str | Path) -> bool:
    """True when the file has the 128-byte preamble followed by ``DICM`` (DICOM Part 10)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dcmread(path: Path, *, header_only: bool = False, force: bool = False):
    """pydicom.dcmread with errors mapped to InputError (messages name the file, never header values)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(str(path), stop_before_pixels=header_only, force=force)
    except InvalidDicomError as e:
        raise InputError(f"{path.name}: not a DICOM file") from e
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise EOFError, OSError, struct.error, ...
        raise InputError(f"{path.name}: corrupt or truncated DICOM ({type(e).__name__})") from e
    # pydicom reports a file that ends inside an element as a warning and returns the elements before it
    # (a truncated JPEG 2000 file then simply lacks PixelData): that is a truncated file, not "no pixel data".
    if any("End of file reached" in str(w.message) for w in caught):
        raise InputError(f"{path.name}: truncated or corrupt DICOM (the file ends inside an element)")
    if caught:  # header values may appear in pydicom's messages: report the count only
        log.debug("%s: %d pydicom warning(s) while reading (messages withheld: they may quote header values)",
                  path.name, len(caught))
    return ds


def fg_item(ds, frame: Optional[int], seq: str):
    """First item of functional-group sequence ``seq`` for ``frame`` (per-frame, else shared), or None."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        pf = ds.PerFrameFunctionalGroupsSequence
        if frame < len(pf):
            groups.append(pf[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for g in groups:
        if seq in g and len(g[seq].value):
            return g[seq].value[0]
    return None


def attr(ds, name: str, frame: Optional[int] = None, seq: Optional[str] = None) -> Any:
    """Attribute ``name`` from the frame's functional group ``seq`` when present, else the top level, else None."""
    if seq is not None:
        item = fg_item(ds, frame, seq)
        if item is not None and name in item and item[name].value not in (None, ""):
            return item[name].value
    if name in ds and ds[name].value not in (None, ""):
        return ds[name].value
    return None


def floats(value: Any, n: int) -> Optional[np.ndarray]:
    """A multi-valued numeric DICOM attribute as an (n,) float array, or None if absent/malformed."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        vals = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if vals.shape != (n,) or not np.all(np.isfinite(vals)):
        return None
    return vals


def pixel_spacing(ds, frame: Optional[int] = None) -> tuple[tuple[float, float], str]:
    """(row_mm, col_mm) from PixelSpacing (or ImagerPixelSpacing); (1, 1) "default" when neither is usable."""
    ps = floats(attr(ds, "PixelSpacing", frame, "PixelMeasuresSequence"), 2)
    if ps is not None and np.all(ps > 0):
        return (float(ps[0]), float(ps[1])), "PixelSpacing"
    ps = floats(attr(ds, "ImagerPixelSpacing"), 2)
    if ps is not None and np.all(ps > 0):
        return (float(ps[0]), float(ps[1])), "ImagerPixelSpacing"
    return (1.0, 1.0), "default"


def stored_range(ds) -> tuple[int, int]:
    """(min, max) stored value permitted by BitsStored and PixelRepresentation."""
    bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 16) or 16)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def rescale(ds, frame: Optional[int]) -> tuple[float, float]:
    """(slope, intercept) for ``frame`` (PixelValueTransformationSequence for enhanced files), default (1, 0)."""
    seq = "PixelValueTransformationSequence"
    slope = attr(ds, "RescaleSlope", frame, seq)
    inter = attr(ds, "RescaleIntercept", frame, seq)
    try:
        s = float(slope) if slope is not None else 1.0
        b = float(inter) if inter is not None else 0.0
    except (TypeError, ValueError):
        s, b = 1.0, 0.0
    if not np.isfinite(s) or s == 0 or not np.isfinite(b):
        s, b = 1.0, 0.0
    return s, b


def decode_frames(ds, name: str, index: Optional[int] = None) -> np.ndarray:
    """Decoded stored values, shape (frames, rows, cols) (colour converted to luminance, float64).

    ``index``: decode only that frame of a multi-frame file (pydicom's frame-level access: a native frame is
    cut from the pixel bytes, an encapsulated one decoded alone); the result is then (1, rows, cols)."""
    from pydicom.pixels import pixel_array

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{name}: DICOM file has no pixel data")
    check_pixel_bytes(ds, name)
    try:
        arr = ds.pixel_array if index is None else pixel_array(ds, index=index)
    except Exception as e:  # noqa: BLE001 - handler errors: truncated data, missing decoder plugin, bad codestream
        # the library's message is not shown: it may quote header values (privacy rule, io/dicom_write.py)
        raise InputError(f"{name}: cannot decode DICOM pixel data ({_ts_name(ds)}; {type(e).__name__})") from e
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    n_frames = n_frames_of(ds) if index is None else 1
    if spp > 1:
        arr = np.asarray(arr, dtype=np.float64)[..., :3] @ _LUMA
    if n_frames == 1 and arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape[0] != n_frames:
        raise InputError(f"{name}: unexpected pixel array shape {tuple(arr.shape)} for {n_frames} frame(s)")
    return arr


def check_decodable(ds, name: str) -> None:
    """The checks a file's pixel data pass without decoding them: pixel data present, a transfer syntax
    pydicom knows, and (native) exactly the bytes the header describes (:func:`check_pixel_bytes`)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{name}: DICOM file has no pixel data")
    fm = getattr(ds, "file_meta", None)
    ts = getattr(fm, "TransferSyntaxUID", None) if fm is not None else None
    if ts is not None and not getattr(ts, "is_transfer_syntax", False):
        raise InputError(f"{name}: cannot decode DICOM pixel data (unknown transfer syntax)")
    check_pixel_bytes(ds, name)


def check_pixel_bytes(ds, name: str) -> None:
    """Native (uncompressed) pixel data must hold exactly what Rows x Columns x frames x samples x bits need
    (plus one padding byte): pydicom would otherwise crop extra bytes with a warning, silently showing part
    of the pixels as the image. InputError when they disagree (a damaged header or a truncated file)."""
    fm = getattr(ds, "file_meta", None)
    ts = getattr(fm, "TransferSyntaxUID", None) if fm is not None else None
    try:
        compressed = ts is not None and bool(ts.is_compressed)
    except (ValueError, AttributeError):  # not a known transfer syntax: the decoder will refuse it
        return
    if "PixelData" not in ds or compressed:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        value = ds.PixelData
    except (AttributeError, TypeError, ValueError, KeyError):
        raise InputError(f"{name}: DICOM image header lacks a usable Rows, Columns or BitsAllocated") from None
    if rows <= 0 or cols <= 0 or bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{name}: DICOM image header has Rows {rows}, Columns {cols}, BitsAllocated {bits}")
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "")
    samples = rows * cols * n_frames_of(ds) * spp
    need = (samples + 7) // 8 if bits == 1 else samples * bits // 8
    if photometric == "YBR_FULL_422":
        need = need * 2 // 3
    have = len(value) if isinstance(value, (bytes, bytearray)) else None
    if have is not None and not need <= have <= need + 1:
        raise InputError(f"{name}: truncated or corrupt DICOM: pixel data holds {have} bytes but Rows x Columns "
                         f"x frames x samples x bits need {need} (the header does not describe the pixels); "
                         "refused rather than cropped")


def n_frames_of(ds) -> int:
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def physical_maps(ds, frames: Sequence[int], *, label_map: bool) -> tuple[list[tuple], dict]:
    """How each of ``frames`` maps stored values to physical units, from the header alone.

    Returns (one (slope, intercept, invert total or None) per frame, slope None meaning the modality LUT;
    the provenance meta: photometric, rescale, bits, transfer syntax, MONOCHROME1 inversion, window)."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "")
    lo_s, hi_s = stored_range(ds)
    use_lut = "ModalityLUTSequence" in ds
    maps, slopes, inters, sums = [], [], [], []
    for f in frames:
        if use_lut:
            s, b = 1.0, 0.0
            ends = apply_modality_lut(np.array([lo_s, hi_s]), ds).astype(np.float64)
        else:
            s, b = rescale(ds, f)
            ends = np.array([lo_s, hi_s], dtype=np.float64) * s + b
        total = float(ends.min() + ends.max()) if photometric == "MONOCHROME1" and not label_map else None
        maps.append((None if use_lut else s, b, total))
        slopes.append(s)
        inters.append(b)
        if total is not None:
            sums.append(total)
    meta: dict = {
        "photometric": photometric,
        "rescale_slope": slopes[0] if len(set(slopes)) == 1 else slopes,
        "rescale_intercept": inters[0] if len(set(inters)) == 1 else inters,
        "modality_lut": bool(use_lut),
        "bits_stored": int(getattr(ds, "BitsStored", 0) or 0),
        "bits_allocated": int(getattr(ds, "BitsAllocated", 0) or 0),
        "pixel_representation": int(getattr(ds, "PixelRepresentation", 0) or 0),
        "transfer_syntax": _ts_uid(ds),
        "transfer_syntax_name": _ts_name(ds),
        "monochrome1_inverted": bool(sums),
    }
    if sums:
        meta["invert_sum"] = sums[0] if len(set(sums)) == 1 else sums
    wc, ww = attr(ds, "WindowCenter", None, None), attr(ds, "WindowWidth", None, None)
    wc, ww = _first_float(wc), _first_float(ww)
    if wc is not None and ww is not None and ww > 0:
        meta["window_center"], meta["window_width"] = wc, ww
    return maps, meta


def apply_map(ds, stored: np.ndarray, vmap: tuple) -> np.ndarray:
    """One frame's stored values (rows, cols) in physical units (float64), by a map of :func:`physical_maps`."""
    from pydicom.pixels import apply_modality_lut

    s, b, total = vmap
    out = apply_modality_lut(stored, ds) if s is None else stored.astype(np.float64) * s + b
    out = np.asarray(out, dtype=np.float64)
    return out if total is None else total - out


def to_physical(ds, stored: np.ndarray, *, label_map: bool) -> tuple[np.ndarray, dict]:
    """Map stored values (frames, rows, cols) to physical units; returns (float64 array, provenance meta)."""
    maps, meta = physical_maps(ds, range(stored.shape[0]), label_map=label_map)
    out = np.empty(stored.shape, dtype=np.float64)
    for f, vmap in enumerate(maps):
        out[f] = apply_map(ds, stored[f], vmap)
    return out, meta


def _first_float(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
            v = list(v)[0]
        f = float(v)
    except (TypeError, ValueError, IndexError):
        return None
    return f if np.isfinite(f) else None


def _ts_uid(ds) -> str:
    fm = getattr(ds, "file_meta", None)
    return str(getattr(fm, "TransferSyntaxUID", "") or "") if fm is not None else ""


def _ts_name(ds) -> str:
    fm = getattr(ds, "file_meta", None)
    uid = getattr(fm, "TransferSyntaxUID", None) if fm is not None else None
    # only a name from pydicom's dictionary, never the header's text
    return uid.name if uid is not None and getattr(uid, "is_transfer_syntax", False) else "unknown transfer syntax"
