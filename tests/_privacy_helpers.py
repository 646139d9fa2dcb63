"""Marker-planted DICOM donors for the privacy property tests (PS3.15 Annex E).

Every public attribute of pydicom's data dictionary whose VR can hold text gets a unique marker (``ZQMK`` +
number + ``XJ``), regardless of the VR's length or format rules (values are written unvalidated, so they also
trigger pydicom's "Invalid value" warnings when read), plus private tags (with and without a creator), nested
sequences (two levels, and functional groups the readers consult) and file-meta text. A few attributes keep real
values because the readers need them to decode the pixels at all (:data:`NEEDED_TO_READ`).
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import re
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom import config
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

PREFIX = "ZQMK"
MARKER_RE = re.compile(rb"zqmk", re.IGNORECASE)
TEXT_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
#: kept real: without them no reader can decode or group the pixels
NEEDED_TO_READ = frozenset({"PhotometricInterpretation", "NumberOfFrames", "TransferSyntaxUID",
                            "MediaStorageSOPClassUID", "SOPClassUID"})
#: public sequences given an item (itself holding a nested sequence) of marked attributes
SEQUENCES = ("ReferencedImageSequence", "SourceImageSequence", "RequestAttributesSequence",
             "OtherPatientIDsSequence", "ProcedureCodeSequence", "AnatomicRegionSequence",
             "ReferencedPerformedProcedureStepSequence", "RequestedProcedureCodeSequence")


@functools.lru_cache(maxsize=1)
def text_keywords() -> list[tuple[int, str, str]]:
    """(tag, VR, keyword) of every public dictionary attribute with a text VR (file meta included)."""
    out = []
    for tag, (vr, _vm, _name, _retired, kw) in DicomDictionary.items():
        if vr in TEXT_VRS and kw and kw not in NEEDED_TO_READ and tag >> 16 not in (0x0000, 0xFFFE):
            out.append((tag, vr, kw))
    return sorted(out)


def put(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Store ``text`` as the raw value of ``tag`` (written as is: no validation, no conversion)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = text.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


class Markers:
    """One marker per place (attribute path), shared by every file of a donor set."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}

    def new(self, where: str) -> str:
        return self.of.setdefault(where, f"{PREFIX}{len(self.of):05d}XJ")


@contextlib.contextmanager
def unvalidated() -> Iterator[None]:
    """Write (and convert) marker values without validation, and without the warnings that quote them."""
    import warnings

    saved = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.settings.reading_validation_mode = config.IGNORE
    lg = logging.getLogger("pydicom")
    disabled, lg.disabled = lg.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = saved
        lg.disabled = disabled


def _item(markers: Markers, where: str, depth: int) -> Dataset:
    item = Dataset()
    for tag, vr, kw in text_keywords()[::97]:
        if tag >> 16 != 0x0002:
            put(item, tag, vr, markers.new(f"{where}>{kw}"))
    if depth:
        item.add_new(0x0040A730, "SQ", Sequence([_item(markers, f"{where}>ContentSequence", depth - 1)]))
    return item


def plant(ds: Dataset, markers: Markers, keep: frozenset = frozenset()) -> Dataset:
    """Put a marker into every text attribute of ``ds`` (except :data:`NEEDED_TO_READ` and ``keep``), private
    tags, nested sequences, functional groups and the file meta. Call inside :func:`unvalidated`."""
    for tag, vr, kw in text_keywords():
        if kw in keep:
            continue
        target = ds.file_meta if tag >> 16 == 0x0002 else ds
        if tag >> 16 == 0x0002 and kw in ("FileMetaInformationVersion",):
            continue
        put(target, tag, vr, markers.new(kw))
    for name in SEQUENCES:
        setattr(ds, name, Sequence([_item(markers, name, 1)]))
    pm, timing = Dataset(), Dataset()              # functional groups the readers consult for single frames too
    put(pm, 0x00180050, "DS", markers.new("Shared>PixelMeasures>SliceThickness"))
    if "PixelSpacing" not in keep:
        put(pm, 0x00280030, "DS", markers.new("Shared>PixelMeasures>PixelSpacing"))
    put(timing, 0x00180080, "DS", markers.new("Shared>MRTiming>RepetitionTime"))
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    block = ds.private_block(0x0029, markers.new("private creator"), create=True)
    block.add_new(0x10, "LO", markers.new("private LO"))
    block.add_new(0x11, "UT", markers.new("private UT"))
    block.add_new(0x12, "SQ", Sequence([_item(markers, "private SQ", 1)]))
    ds.add_new(0x00291210, "UN", markers.new("private UN without creator").encode())
    return ds


#: what a series keeps real in :func:`write_marked_series` (so it still has a sagittal slice to ingest)
GEOMETRY = frozenset({"ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"})


def write_marked_study(path: Path, markers: Markers, rng: np.random.Generator, *, shape=(40, 48),
                       n_slices: int = 1) -> Path:
    """One marked MR image file (``n_slices == 1``: ``path`` is the file) or a sagittal series folder of
    ``n_slices`` files whose headers carry markers everywhere but :data:`GEOMETRY` (``path`` is the folder)."""
    from _io_helpers import MR_STORAGE, new_dataset, save

    keep = GEOMETRY if n_slices > 1 else frozenset()
    with unvalidated():
        for k in range(n_slices):
            pix = rng.integers(200, 3000, size=shape)
            ds = new_dataset(pix, iop=[0, 1, 0, 0, 0, -1], ipp=[float(k) * 3.0, -20.0, 30.0], instance=k + 1,
                             sop_class=MR_STORAGE)
            save(plant(ds, markers, keep), path / f"IM{k:04d}.dcm" if n_slices > 1 else path)
    return path


def payloads(path: Path) -> Iterator[bytes]:
    """The bytes of ``path`` and, for compressed containers (gzip, PNG), the decompressed content too."""
    raw = path.read_bytes()
    yield raw
    if raw[:2] == b"\x1f\x8b":
        yield gzip.decompress(raw)
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        pos, idat = 8, b""
        while pos + 8 <= len(raw):
            n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
            body = raw[pos + 8:pos + 8 + n]
            if kind == b"IDAT":
                idat += body
            elif kind in (b"zTXt", b"iTXt"):
                yield body
                with contextlib.suppress(zlib.error):
                    yield zlib.decompress(body[body.index(b"\0") + 2:])
            else:
                yield body
            pos += 12 + n
        yield zlib.decompress(idat)


def leaks(roots: list[Path], texts: dict[str, str]) -> list[str]:
    """Every place a marker appears: files (names and contents) under ``roots`` and the given texts."""
    found = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if MARKER_RE.search(str(p).encode()):
                found.append(f"file name {p}")
            if p.is_file():
                for data in payloads(p):
                    m = MARKER_RE.search(data)
                    if m:
                        found.append(f"{p.relative_to(root.parent)}: {data[m.start():m.start() + 12]!r}")
                        break
    for name, text in texts.items():
        m = MARKER_RE.search(text.encode())
        if m:
            found.append(f"{name}: {text[max(0, m.start() - 60):m.start() + 12]!r}")
    return found
