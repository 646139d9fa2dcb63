"""Build de-identified DERIVED DICOM instances from a donor header (used by ``generate/writers.py``).

De-identification follows DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile, implemented as an
allow-list: only the non-identifying image attributes in :data:`KEEP` are copied from the donor (no sequences, no
private tags, no dates or times, no free text, no donor UIDs); patient and study identifiers are replaced by a
pseudonym derived from the synthetic sample id (a hash, so no donor value survives); Study/Series/SOP Instance and
Frame of Reference UIDs are new (derived from the sample id and the pixel data, so a rerun gives the same file);
``PatientIdentityRemoved=YES``, ``DeidentificationMethod`` and its code sequence (113100) are set. The file meta is
written fresh, uncompressed Explicit VR Little Endian.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from .dicom_pixels import attr, floats, rescale, stored_range

#: donor attributes copied as they are (all non-identifying under the Basic Profile; no dates, names, free text)
KEEP = (
    "SpecificCharacterSet", "Modality", "SeriesNumber", "InstanceNumber", "AcquisitionNumber", "PatientOrientation",
    "PatientPosition", "BodyPartExamined", "ImageLaterality", "Laterality", "BurnedInAnnotation",
    "Manufacturer", "SliceThickness", "SpacingBetweenSlices",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTime", "EchoTrainLength", "EchoNumbers", "InversionTime", "FlipAngle", "MagneticFieldStrength",
    "ImagingFrequency", "ImagedNucleus", "NumberOfAverages", "PixelBandwidth",
    "KVP", "ConvolutionKernel", "XRayTubeCurrent", "ExposureTime", "Exposure", "RescaleType",
)
#: multi-frame-only storage classes and the single-frame class a derived slice of them is written as
_SINGLE_FRAME_CLASS = {
    "1.2.840.10008.5.1.4.1.1.4.1": "1.2.840.10008.5.1.4.1.1.4",    # Enhanced MR -> MR Image
    "1.2.840.10008.5.1.4.1.1.2.1": "1.2.840.10008.5.1.4.1.1.2",    # Enhanced CT -> CT Image
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DEID_METHOD = "PS3.15 E.1 Basic Profile allow-list; dates removed"


def pseudonym(sample_id: str) -> str:
    """Patient name/ID written into derived files: a hash of the synthetic sample id (never a donor value)."""
    return "MSA" + hashlib.sha256(str(sample_id).encode("utf-8")).hexdigest()[:16].upper()


def derived_uid(sample_id: str, kind: str, pixel_bytes: bytes) -> str:
    """Deterministic new UID for (sample, kind, pixel content): reruns reproduce it, other content never does."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medsoft-aug", str(sample_id), kind, hashlib.sha256(pixel_bytes).hexdigest()])


def stored_values(template, physical: np.ndarray, frame: int = 0) -> tuple[np.ndarray, dict]:
    """Invert the reader's value mapping: physical units -> stored values in the donor's pixel format.

    MONOCHROME1 is inverted back over the rescaled stored range, rescale slope/intercept inverted, values rounded
    and clipped to the stored bit range. Donors whose format cannot be written back (colour, float, >16 bits,
    modality LUT sequences) get MONOCHROME2 16-bit unsigned with a rescale spanning the values.

    Returns (stored (rows, cols) integer array, pixel-module attributes to set).
    """
    phys = np.asarray(physical, dtype=np.float64)
    spp = int(getattr(template, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(template, "BitsAllocated", 16) or 16)
    photometric = str(getattr(template, "PhotometricInterpretation", "") or "")
    simple = (spp == 1 and bits in (8, 16) and "ModalityLUTSequence" not in template
              and photometric in ("MONOCHROME1", "MONOCHROME2"))
    if not simple:
        lo, hi = float(phys.min()), float(phys.max())
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
        stored = np.clip(np.rint((phys - lo) / slope), 0, 65535).astype(np.uint16)
        return stored, {"PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16,
                        "HighBit": 15, "PixelRepresentation": 0, "RescaleSlope": slope, "RescaleIntercept": lo,
                        "_window_offset": None}
    s, b = rescale(template, frame)
    smin, smax = stored_range(template)
    offset = None
    if photometric == "MONOCHROME1":
        ends = np.array([smin, smax], dtype=np.float64) * s + b
        offset = float(ends.min() + ends.max())
        phys = offset - phys
    signed = int(getattr(template, "PixelRepresentation", 0) or 0) == 1
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[(bits, signed)]
    stored = np.clip(np.rint((phys - b) / s), smin, smax).astype(dtype)
    bits_stored = int(getattr(template, "BitsStored", bits) or bits)
    return stored, {"PhotometricInterpretation": photometric, "BitsAllocated": bits, "BitsStored": bits_stored,
                    "HighBit": bits_stored - 1, "PixelRepresentation": int(signed), "RescaleSlope": s,
                    "RescaleIntercept": b, "_window_offset": offset}


def build_derived(template, physical: np.ndarray, *, sample_id: str, description: str, derivation: str,
                  geometry: Optional[dict], window: tuple[float, float], frame: int = 0,
                  deid_version: str = ""):
    """A new de-identified DERIVED\\SECONDARY dataset holding ``physical`` (rows, cols) in the donor's units.

    Args:
        template: donor dataset (header; its pixels are not used).
        physical: (rows, cols) values in the reader's physical units (rescaled, MONOCHROME1 already inverted).
        sample_id: synthetic sample id (pseudonym and UID source).
        description: lesion description, written to ImageComments.
        derivation: DerivationDescription text naming the method and version.
        geometry: {"iop": 6 floats, "ipp": 3 floats (LPS mm), "pixel_spacing": (row_mm, col_mm)} or None.
        window: (lo, hi) display window in physical units (written as WindowCenter/Width).
        frame: donor frame whose rescale applies (multi-frame donors).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    stored, pix = stored_values(template, physical, frame)
    ds = Dataset()
    for kw in KEEP:
        value = attr(template, kw, frame, "PixelMeasuresSequence" if kw == "SliceThickness" else None)
        if value is not None and not isinstance(value, Sequence):
            setattr(ds, kw, value)
    donor_class = str(getattr(template, "SOPClassUID", "") or "")
    if int(getattr(template, "NumberOfFrames", 1) or 1) > 1:
        donor_class = _SINGLE_FRAME_CLASS.get(donor_class, SECONDARY_CAPTURE)
    ds.SOPClassUID = donor_class or SECONDARY_CAPTURE
    data = np.ascontiguousarray(stored).tobytes()
    ds.SOPInstanceUID = derived_uid(sample_id, "sop", data)
    ds.StudyInstanceUID = derived_uid(sample_id, "study", data)
    ds.SeriesInstanceUID = derived_uid(sample_id, "series", data)
    ds.FrameOfReferenceUID = derived_uid(sample_id, "frame-of-reference", data)
    # identifiers replaced (Z: empty, D: dummy); dates and times removed entirely
    ds.PatientName = ds.PatientID = pseudonym(sample_id)
    for kw in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
               "AccessionNumber", "PositionReferenceIndicator"):
        setattr(ds, kw, "")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"{DEID_METHOD}; medsoft-aug {deid_version}".strip()[:64]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = derivation
    ds.SeriesDescription = "medsoft-aug synthetic"
    if description:
        ds.ImageComments = str(description)[:10240]
    if geometry is not None:
        ds.ImageOrientationPatient = [_ds(v) for v in geometry["iop"]]
        ds.ImagePositionPatient = [_ds(v) for v in geometry["ipp"]]
        ds.PixelSpacing = [_ds(v) for v in geometry["pixel_spacing"]]
    else:
        for kw in ("ImageOrientationPatient", "ImagePositionPatient"):
            v = floats(attr(template, kw, frame, "PlaneOrientationSequence" if "Orient" in kw
                            else "PlanePositionSequence"), 6 if "Orient" in kw else 3)
            if v is not None:
                setattr(ds, kw, [_ds(x) for x in v])
        ps = floats(attr(template, "PixelSpacing", frame, "PixelMeasuresSequence"), 2)
        if ps is not None:
            ds.PixelSpacing = [_ds(x) for x in ps]
    offset = pix.pop("_window_offset")
    lo, hi = window
    center = (lo + hi) / 2.0 if offset is None else offset - (lo + hi) / 2.0
    ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(max(hi - lo, 1e-6))
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    for kw, v in pix.items():
        setattr(ds, kw, _ds(v) if kw.startswith("Rescale") else v)
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _ds(v: float) -> str:
    """A DICOM DS string (at most 16 characters) for ``v``."""
    v = float(v)
    for digits in range(12, 0, -1):
        text = f"{v:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{v:.6e}"
