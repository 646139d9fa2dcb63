"""Build de-identified DERIVED DICOM instances from a donor header (used by ``generate/writers.py``).

The donor-attribute rule (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile, done as an
allow-list of *checked values*, not of attribute names)
---------------------------------------------------------------------------------------------------------------
Any attribute a scanner or a person can type into can carry a name or an ID, whatever its VR (CS included). So:

1. Copied from the donor: only the structural attributes listed in :data:`DONOR_RULE` (image geometry, pixel
   description, modality, the acquisition physics a reader needs to interpret the image), and only when the
   value passes its check; a value that fails is dropped (the attribute is then absent), never copied raw.

   - numbers (DS, IS): parsed as numbers, finite, inside the attribute's physical range, and written again by
     this module (re-encoded; the donor's text is never reused);
   - coded strings (CS): every value must be one of the standard's defined terms listed here (PS3.3, PS3.16);
     anything else, and any CS without defined terms (e.g. CT ScanOptions), is dropped.
   - ``BodyPartExamined`` only from the subset of PS3.16 Annex L terms in :data:`BODY_PARTS`; ``ScanOptions``
     only for MR, from its defined terms; ``ConvolutionKernel`` (SH, vendor text) and ``ImagedNucleus`` never.
2. Generated: SOP class (from a fixed table of the donor's class, else Secondary Capture), Modality (the SOP
   class's, or a defined term), Study/Series/SOP Instance and Frame of Reference UIDs (new, derived from the
   sample id and the pixel data, so a rerun gives the same file), patient name/ID (a hash of the synthetic
   sample id), ImageType, Series/Instance numbers, the pixel module (from the written pixels), geometry
   (ImageOrientation/Position, PixelSpacing: from ingest's recorded geometry, or the donor's parsed numbers),
   the display window (ingest's window), de-identification attributes (PatientIdentityRemoved, method + code
   113100), DerivationDescription, ImageComments (the lesion description given to the model).
3. Everything else is absent: free text of any VR (LO, SH, LT, ST, UT, UC, PN, AE, UR), dates, times, ages,
   donor UIDs, sequences, private tags, the donor's file meta and character set (only ASCII is written).

The file meta is written fresh, uncompressed Explicit VR Little Endian. Library warnings raised while reading
the donor quote values: :func:`medsoft_aug.io.quiet.header_warnings` reports them without.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .dicom_pixels import attr, floats, rescale, stored_range


def _values(value: Any, max_values: int) -> Optional[list]:
    """The attribute's values as a list, or None when there are none or more than ``max_values``."""
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return values if 1 <= len(values) <= max_values else None


@dataclass(frozen=True)
class Number:
    """A numeric attribute: every value parsed, finite and in [lo, hi]; re-encoded as DS or IS."""

    lo: float
    hi: float
    integer: bool = False
    max_values: int = 1

    def check(self, value: Any) -> Optional[list]:
        values = _values(value, self.max_values)
        if values is None:
            return None
        out = []
        for v in values:
            try:
                f = float(str(v).strip())
            except (TypeError, ValueError):
                return None
            if not (math.isfinite(f) and self.lo <= f <= self.hi) or (self.integer and f != int(f)):
                return None
            out.append(int(f) if self.integer else _ds(f))
        return out


@dataclass(frozen=True)
class Terms:
    """A coded string: every value one of ``terms`` (the standard's defined terms), else dropped."""

    terms: frozenset
    max_values: int = 1

    def check(self, value: Any) -> Optional[list]:
        values = _values(value, self.max_values)
        if values is None:
            return None
        out = [str(v).strip().upper() for v in values]
        return out if all(v in self.terms for v in out) else None


def _terms(text: str) -> frozenset:
    return frozenset(text.split())


#: PS3.16 Annex L (Correspondence of Anatomic Region Codes and Body Part Examined defined terms), the subset a
#: spine study can carry; other terms are dropped
BODY_PARTS = _terms("SPINE CSPINE TSPINE LSPINE SSPINE COCCYX CTSPINE TLSPINE LSSPINE NECK CHEST ABDOMEN "
                    "ABDOMENPELVIS CHESTABDOMEN CHESTABDPELVIS PELVIS SACRUM WHOLEBODY HEAD BRAIN")
#: PS3.3 C.7.3.1.1.1 Modality defined terms (those of images)
MODALITIES = _terms("CR CT DX ES IO MG MR NM OT PT RF RG SC US XA XC PX")
MR_SCAN_OPTIONS = _terms("PER RG CG PPG FC PFF PFP SP FS")

#: donor attributes copied when their value passes the check (see the module docstring); the functional-group
#: sequence is consulted first for enhanced multi-frame donors
DONOR_RULE: dict[str, tuple[Any, Optional[str]]] = {
    "PatientPosition": (Terms(_terms("HFP HFS HFDR HFDL FFDR FFDL FFP FFS LFP LFS RFP RFS AFDR AFDL PFDR PFDL")),
                        None),
    "BodyPartExamined": (Terms(BODY_PARTS), None),
    "ImageLaterality": (Terms(_terms("R L U B")), None),
    "Laterality": (Terms(_terms("R L")), None),
    "BurnedInAnnotation": (Terms(_terms("YES NO")), None),
    "SliceThickness": (Number(0.0, 1000.0), "PixelMeasuresSequence"),
    "SpacingBetweenSlices": (Number(-1000.0, 1000.0), None),
    # MR acquisition physics (PS3.3 C.8.3.1)
    "ScanningSequence": (Terms(_terms("SE IR GR EP RM"), 5), None),
    "SequenceVariant": (Terms(_terms("SK MTC SS TRSS SP MP OSP NONE"), 8), None),
    "MRAcquisitionType": (Terms(_terms("2D 3D")), None),
    "RepetitionTime": (Number(0.0, 1e6), None),
    "EchoTime": (Number(0.0, 1e5), None),
    "InversionTime": (Number(0.0, 1e6), None),
    "EchoTrainLength": (Number(0, 1e5, integer=True), None),
    "EchoNumbers": (Number(0, 1e4, integer=True, max_values=16), None),
    "FlipAngle": (Number(0.0, 360.0), None),
    "MagneticFieldStrength": (Number(0.0, 30.0), None),
    "ImagingFrequency": (Number(0.0, 2000.0), None),
    "NumberOfAverages": (Number(0.0, 1e4), None),
    "PixelBandwidth": (Number(0.0, 1e7), None),
    # CT acquisition physics (PS3.3 C.8.2.1)
    "KVP": (Number(0.0, 1000.0), None),
    "XRayTubeCurrent": (Number(0, 1e6, integer=True), None),
    "ExposureTime": (Number(0, 1e8, integer=True), None),
    "Exposure": (Number(0, 1e8, integer=True), None),
}
MR_IMAGE, CT_IMAGE = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: donor SOP class -> (class written, modality); any other class gives Secondary Capture
SOP_CLASSES = {
    MR_IMAGE: (MR_IMAGE, "MR"), "1.2.840.10008.5.1.4.1.1.4.1": (MR_IMAGE, "MR"),      # (Enhanced) MR Image
    CT_IMAGE: (CT_IMAGE, "CT"), "1.2.840.10008.5.1.4.1.1.2.1": (CT_IMAGE, "CT"),      # (Enhanced) CT Image
}
DEID_METHOD = "PS3.15 E.1 Basic Profile; checked allow-list; dates removed"


def checked_donor_attributes(template, frame: int = 0) -> dict[str, Any]:
    """The donor attributes that pass :data:`DONOR_RULE`'s checks, as values this module re-encoded."""
    sop, modality = sop_class_and_modality(template)
    out: dict[str, Any] = {}
    for kw, (check, seq) in DONOR_RULE.items():
        if modality != "MR" and kw in ("ScanningSequence", "SequenceVariant", "MRAcquisitionType"):
            continue
        try:
            raw = attr(template, kw, frame, seq)
            value = None if raw is None else check.check(raw)
        except Exception:  # noqa: BLE001 - any value pydicom cannot even convert is dropped, never shown
            value = None
        if value is not None:
            out[kw] = value[0] if len(value) == 1 else value
    if modality == "MR":
        try:
            opts = Terms(MR_SCAN_OPTIONS, 9).check(attr(template, "ScanOptions"))
        except Exception:  # noqa: BLE001
            opts = None
        if opts is not None:
            out["ScanOptions"] = opts[0] if len(opts) == 1 else opts
    return out


def sop_class_and_modality(template) -> tuple[str, str]:
    """(SOP class UID written, Modality written): a fixed table of the donor's class, else Secondary Capture
    with the donor's Modality when it is a defined term (else OT)."""
    try:
        donor_class = str(getattr(template, "SOPClassUID", "") or "").strip()
    except Exception:  # noqa: BLE001
        donor_class = ""
    if donor_class in SOP_CLASSES:
        return SOP_CLASSES[donor_class]
    try:
        mod = Terms(MODALITIES).check(getattr(template, "Modality", None))
    except Exception:  # noqa: BLE001
        mod = None
    return SECONDARY_CAPTURE, (mod[0] if mod else "OT")


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
    """A new de-identified DERIVED\\SECONDARY instance holding ``physical`` (rows, cols) in the donor's units.

    Built with highdicom (:class:`highdicom.SOPClass`: file meta, patient, study, series, equipment and SOP
    common modules with new UIDs); the image modules come from the written pixels and, for the donor, only what
    the module's donor-attribute rule allows (see the module docstring). It references nothing: no donor UID.

    Args:
        template: donor dataset (header; its pixels are not used).
        physical: (rows, cols) values in the reader's physical units (rescaled, MONOCHROME1 already inverted).
        sample_id: synthetic sample id (pseudonym and UID source).
        description: lesion description, written to ImageComments.
        derivation: DerivationDescription text naming the method and version.
        geometry: {"iop": 6 floats, "ipp": 3 floats (LPS mm), "pixel_spacing": (row_mm, col_mm)} and optionally
            "slice_thickness" (mm), or None (then the donor's values, parsed as numbers).
        window: (lo, hi) display window in physical units (written as WindowCenter/Width).
        frame: donor frame whose rescale and geometry apply (multi-frame donors).
    """
    stored, pix = stored_values(template, physical, frame)
    data = np.ascontiguousarray(stored).tobytes()
    sop_class, modality = sop_class_and_modality(template)
    ds = _sop_instance(sample_id, data, sop_class, modality, deid_version)
    for kw, value in checked_donor_attributes(template, frame).items():
        setattr(ds, kw, value)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = derivation
    if description:
        ds.ImageComments = str(description)[:10240]
    for kw, value in plane_attributes(template, geometry, frame).items():
        setattr(ds, kw, value)
    if "SliceThickness" not in ds and geometry is not None and geometry.get("slice_thickness"):
        ds.SliceThickness = _ds(geometry["slice_thickness"])
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
    return ds


def build_fractional_seg(image, mask01: np.ndarray, *, sample_id: str, version: str = ""):
    """The soft mask as a DICOM Segmentation of type FRACTIONAL (highdicom), referencing ``image`` only.

    ``image`` is the synthetic instance of :func:`build_derived` (generated identity, no donor UID), so the SEG's
    patient/study attributes and its one reference (source image for the segmentation) are generated too. One
    segment, values ``round(mask * 255) / 255`` (PROBABILITY; the exact float mask stays in the ``.npy``).
    Pixel measures come from the image; a slice thickness the image does not record is written as 1 mm.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.clip(np.asarray(mask01, dtype=np.float32), 0.0, 1.0)
    if mask.shape != (int(image.Rows), int(image.Columns)):
        raise ValueError(f"mask shape {mask.shape} differs from the image's {(int(image.Rows), int(image.Columns))}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medsoft-aug soft mask (SMIS, paper Eq. 1)", version=version or "0",
        family=codes.cid7162.MorphologicalOperations)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="inpainted lesion region (soft mask)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    source = image
    if "ImageOrientationPatient" in image and image.get("SliceThickness") in (None, ""):
        source = copy.deepcopy(image)                     # highdicom needs a thickness for patient coordinates
        source.SliceThickness = "1"
    key = mask.tobytes()
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[segment], series_instance_uid=derived_uid(sample_id, "seg-series", key),
        series_number=2, sop_instance_uid=derived_uid(sample_id, "seg-sop", key), instance_number=1,
        manufacturer="medsoft-aug", manufacturer_model_name="medsoft-aug", software_versions=version or "0",
        device_serial_number="0", fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255, omit_empty_frames=False,
        series_description="medsoft-aug synthetic soft mask")
    for kw in ("InstanceCreationDate", "InstanceCreationTime"):
        if kw in seg:
            delattr(seg, kw)
    return seg


def plane_attributes(template, geometry: Optional[dict], frame: int = 0) -> dict[str, list[str]]:
    """ImageOrientationPatient / ImagePositionPatient / PixelSpacing as re-encoded numbers: from ``geometry``
    (ingest's record) when given, else the donor's values when they parse as finite numbers."""
    if geometry is not None:
        return {"ImageOrientationPatient": [_ds(v) for v in geometry["iop"]],
                "ImagePositionPatient": [_ds(v) for v in geometry["ipp"]],
                "PixelSpacing": [_ds(v) for v in geometry["pixel_spacing"]]}
    out = {}
    for kw, seq, n in (("ImageOrientationPatient", "PlaneOrientationSequence", 6),
                       ("ImagePositionPatient", "PlanePositionSequence", 3),
                       ("PixelSpacing", "PixelMeasuresSequence", 2)):
        try:
            v = floats(attr(template, kw, frame, seq), n)
        except Exception:  # noqa: BLE001 - unconvertible values are dropped, never shown
            v = None
        if v is not None and (kw != "PixelSpacing" or bool(np.all(v > 0))):
            out[kw] = [_ds(x) for x in v]
    return out


def _sop_instance(sample_id: str, data: bytes, sop_class: str, modality: str, deid_version: str):
    """Generated identity (highdicom SOPClass): new UIDs, pseudonymous patient, empty study identifiers, no
    dates or times, the de-identification record."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    alias = pseudonym(sample_id)
    # identifiers replaced (Z: empty, D: dummy); dates and times removed entirely
    ds = hd.SOPClass(study_instance_uid=derived_uid(sample_id, "study", data),
                     series_instance_uid=derived_uid(sample_id, "series", data), series_number=1,
                     sop_instance_uid=derived_uid(sample_id, "sop", data), sop_class_uid=sop_class,
                     instance_number=1, modality=modality, manufacturer="medsoft-aug",
                     transfer_syntax_uid=ExplicitVRLittleEndian, patient_id=alias, patient_name=f"SYNTHETIC^{alias}",
                     series_description="medsoft-aug synthetic", software_versions=deid_version or "0")
    for kw in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        if kw in ds:
            delattr(ds, kw)
    ds.FrameOfReferenceUID = derived_uid(sample_id, "frame-of-reference", data)
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
    return ds


def _ds(v: float) -> str:
    """A DICOM DS string (at most 16 characters) for ``v``."""
    v = float(v)
    for digits in range(12, 0, -1):
        text = f"{v:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{v:.6e}"
