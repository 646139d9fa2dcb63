"""Derived DICOM writer: de-identification (no donor identifier anywhere), pixel round trip, geometry."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsoft_aug.errors import InputError
from medsoft_aug.generate.writers import write_dicom_derived
from medsoft_aug.ingest.slicing import apply_geometry, geometry_json, make_geometry, slice_to_world
from medsoft_aug.io.reader import read_image

from _io_helpers import canonical_affine, enhanced_multiframe, new_dataset, random_volume, save, \
    write_series_from_canonical

ALPHA = "SECRET"                       # every identifying string contains it
DATE, TIME = "18880808", "131313"


def fill_identifiers(ds: Dataset) -> Dataset:
    """Fill the identifying attributes of the Basic Profile (and some more) with marker values."""
    for kw in ("PatientName", "OtherPatientNames", "ReferringPhysicianName", "PerformingPhysicianName",
               "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician", "PhysiciansOfRecord",
               "PatientMotherBirthName"):
        setattr(ds, kw, f"{ALPHA}^{kw}")
    for kw in ("PatientID", "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank",
               "EthnicGroup", "PatientComments", "AccessionNumber", "InstitutionName", "InstitutionAddress",
               "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "StudyID", "StudyDescription",
               "SeriesDescription", "ProtocolName", "ImageComments", "ManufacturerModelName", "SoftwareVersions"):
        setattr(ds, kw, f"{ALPHA}{kw}"[:16])          # fits every VR used here (SH: 16 characters)
    for kw in ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
               "InstanceCreationDate", "PerformedProcedureStepStartDate"):
        setattr(ds, kw, DATE)
    for kw in ("PatientBirthTime", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime"):
        setattr(ds, kw, TIME)
    ds.AcquisitionDateTime = DATE + TIME
    ds.PatientAge, ds.PatientSex, ds.PatientWeight = "077Y", "M", 77.7
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = f"{ALPHA}OTHERID", f"{ALPHA}ISSUER"
    ds.OtherPatientIDsSequence = Sequence([other])
    req = Dataset()
    req.RequestedProcedureID, req.ScheduledProcedureStepID = f"{ALPHA}RPID", f"{ALPHA}SPS"
    req.StudyInstanceUID = ds.StudyInstanceUID
    ds.RequestAttributesSequence = Sequence([req])
    ds.private_block(0x0029, f"{ALPHA} CREATOR", create=True).add_new(0x10, "LO", f"{ALPHA}PRIVATE")
    ds.file_meta.SourceApplicationEntityTitle = f"{ALPHA}AE"
    ds.file_meta.ImplementationVersionName = f"{ALPHA}IMPL"
    return ds


def donor_uids(paths) -> set[str]:
    out = set()
    for p in paths:
        d = pydicom.dcmread(p, stop_before_pixels=True)
        out |= {str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID),
                str(d.FrameOfReferenceUID)}
    return out


def assert_no_identifiers(path, uids: set[str]) -> pydicom.Dataset:
    raw = path.read_bytes()
    assert ALPHA.encode() not in raw
    ds = pydicom.dcmread(path)
    for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
        if elem.tag == 0x7FE00010:
            continue
        text = str(elem.value)
        assert DATE not in text and TIME not in text and "077Y" not in text, elem
        assert not any(u in text for u in uids), elem
        assert not elem.tag.is_private, elem
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert "MedSoft-Diffusion" in ds.DerivationDescription
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    return ds


def donor_row(img, rel: str, index, lo: float, hi: float):
    geom = make_geometry(img.shape, index, img.affine)
    x01 = np.clip((apply_geometry(img.array, geom) - lo) / (hi - lo), 0, 1)
    return {"sample_id": "donor1", "source": rel, "source_format": img.source_format, "window_lo": repr(lo),
            "window_hi": repr(hi), "geometry": geometry_json(geom),
            "slice_index": "" if index is None else str(index)}, x01, geom


def assert_geometry(out_path, geom):
    """Each output pixel (r, c) lies where the donor slice pixel (r, c) was."""
    out = read_image(out_path)
    for r, c in [(0, 0), (2, 3), (out.shape[0] - 1, out.shape[1] - 1)]:
        np.testing.assert_allclose((out.affine @ np.array([r, c, 0, 1.0]))[:3], slice_to_world(geom, r, c),
                                   atol=1e-4)


@pytest.mark.parametrize("codes,matches_instance", [("IPR", True), ("PLS", False)])
def test_series_donor_deidentified_round_trip(tmp_path, codes, matches_instance):
    rng = np.random.default_rng(7 if matches_instance else 8)
    vol = random_volume(rng, (5, 6, 7), hi=4000)
    aff = canonical_affine((2.0, 0.7, 0.9), (-8.0, 14.0, 3.5))
    files, _ = write_series_from_canonical(tmp_path / "img" / "s1", vol, aff, codes, rng)
    for f in files:
        save(fill_identifiers(pydicom.dcmread(f)), f)
    donor = read_image(tmp_path / "img" / "s1")
    row, x01, geom = donor_row(donor, "s1", 2, 0.0, 4095.0)
    synth = np.clip(x01 + rng.normal(0, 0.05, x01.shape), 0, 1)       # a "generated" image
    out_path = tmp_path / "out" / "syn1.dcm"
    write_dicom_derived(out_path, synth, row, tmp_path / "img", sample_id="syn1", description="L2 hemangioma")
    ds = assert_no_identifiers(out_path, donor_uids(files))
    assert ds.ImageComments == "L2 hemangioma" and ds.PatientID != ""
    assert ds.InstanceNumber == 1 and ds.SeriesNumber == 1      # generated, not the donor's
    back = read_image(out_path)
    np.testing.assert_allclose(back.array, synth * 4095.0, rtol=0, atol=0.5 + 1e-6)    # within 1 stored unit
    assert_geometry(out_path, geom)
    # idempotent: the same input gives the same bytes
    write_dicom_derived(tmp_path / "out" / "again.dcm", synth, row, tmp_path / "img", sample_id="syn1",
                        description="L2 hemangioma")
    assert (tmp_path / "out" / "again.dcm").read_bytes() == out_path.read_bytes()


def test_monochrome1_rescaled_compressed_2d_donor(tmp_path):
    rng = np.random.default_rng(9)
    pix = rng.integers(0, 4096, size=(40, 36))
    ds = fill_identifiers(new_dataset(pix, photometric="MONOCHROME1", slope=2.0, intercept=-100.0,
                                      iop=[1, 0, 0, 0, 1, 0], ipp=[5.0, 6.0, 7.0]))
    src = save(ds, tmp_path / "img" / "a" / "b.dcm", compress="j2k")
    donor = read_image(src)
    lo, hi = float(donor.array.min()), float(donor.array.max())
    row, x01, geom = donor_row(donor, "a/b.dcm", None, lo, hi)
    out = tmp_path / "o.dcm"
    write_dicom_derived(out, x01, row, tmp_path / "img", sample_id="s2", description="")
    ods = assert_no_identifiers(out, donor_uids([src]))
    assert ods.PhotometricInterpretation == "MONOCHROME1" and float(ods.RescaleSlope) == 2.0
    np.testing.assert_array_equal(ods.pixel_array, pix)            # stored values recovered exactly
    np.testing.assert_allclose(read_image(out).array, donor.array, atol=2.0)
    assert list(map(float, ods.ImagePositionPatient)) == [5.0, 6.0, 7.0]


def test_enhanced_multiframe_donor(tmp_path):
    rng = np.random.default_rng(10)
    vol = rng.integers(1, 1000, size=(4, 5, 6)).astype(np.float32)
    ds, _ = enhanced_multiframe(vol, canonical_affine((1.1, 0.9, 2.5), (-20.0, 5.0, 3.0)), "IPR", rng)
    src = save(fill_identifiers(ds), tmp_path / "img" / "mf.dcm")
    donor = read_image(src)
    row, x01, geom = donor_row(donor, "mf.dcm", 1, 0.0, 1000.0)
    write_dicom_derived(tmp_path / "o.dcm", x01, row, tmp_path / "img", sample_id="s3", description="x")
    ods = assert_no_identifiers(tmp_path / "o.dcm", donor_uids([src]))
    assert ods.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and "NumberOfFrames" not in ods
    np.testing.assert_allclose(read_image(tmp_path / "o.dcm").array, apply_geometry(vol, geom), atol=0.5)
    assert_geometry(tmp_path / "o.dcm", geom)


def test_non_dicom_donor_and_missing_files_are_input_errors(tmp_path):
    x01 = np.zeros((4, 4))
    row = {"sample_id": "d", "source": "a.png", "source_format": "raster", "window_lo": "0", "window_hi": "1",
           "geometry": ""}
    with pytest.raises(InputError, match="is not DICOM"):
        write_dicom_derived(tmp_path / "o.dcm", x01, row, tmp_path, sample_id="s", description="")
    with pytest.raises(InputError, match="is not DICOM"):
        write_dicom_derived(tmp_path / "o.dcm", x01, {**row, "source_format": "nifti"}, tmp_path, sample_id="s",
                            description="")
    with pytest.raises(InputError, match="not found"):
        write_dicom_derived(tmp_path / "o.dcm", x01, {**row, "source_format": "dicom", "source": "x.dcm"}, tmp_path,
                            sample_id="s", description="")
    assert not (tmp_path / "o.dcm").exists()


def _soft_mask(shape, rng):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    m = np.exp(-(((yy - shape[0] / 2) / 2.0) ** 2 + ((xx - shape[1] / 2) / 2.5) ** 2))
    return np.clip(m + rng.uniform(0, 0.01, shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("kind", ["series", "2d"])
def test_fractional_seg_beside_the_image(tmp_path, kind):
    import highdicom as hd
    import SimpleITK as sitk

    from medsoft_aug.generate.writers import seg_path

    rng = np.random.default_rng(11)
    if kind == "series":
        vol = random_volume(rng, (5, 6, 7), hi=4000)
        files, _ = write_series_from_canonical(tmp_path / "img" / "s1", vol,
                                               canonical_affine((2.0, 0.7, 0.9), (-8.0, 14.0, 3.5)), "IPR", rng)
        rel, index = "s1", 2
    else:
        files = [save(new_dataset(rng.integers(0, 4096, size=(9, 8)), iop=[1, 0, 0, 0, 1, 0], ipp=[5.0, 6.0, 7.0]),
                      tmp_path / "img" / "a.dcm")]
        rel, index = "a.dcm", None
    for f in files:
        save(fill_identifiers(pydicom.dcmread(f)), f)
    donor = read_image(tmp_path / "img" / rel)
    row, x01, geom = donor_row(donor, rel, index, 0.0, 4095.0)
    mask = _soft_mask(x01.shape, rng)
    out = tmp_path / "out" / "syn1.dcm"
    write_dicom_derived(out, x01, row, tmp_path / "img", sample_id="syn1", description="lesion", mask01=mask)
    image = assert_no_identifiers(out, donor_uids(files))
    sp = seg_path(out)
    assert sp.name == "syn1_seg.dcm" and ALPHA.encode() not in sp.read_bytes()
    # highdicom: a FRACTIONAL segmentation of the synthetic instance, values within one 1/255 step
    seg = hd.seg.segread(sp)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert seg.get_source_image_uids() == [(image.StudyInstanceUID, image.SeriesInstanceUID, image.SOPInstanceUID)]
    got = seg.get_pixels_by_source_instance([image.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    np.testing.assert_allclose(got, mask, atol=0.5 / 255 + 1e-6)
    # pydicom: nothing of the donor (its UIDs, identifiers, private tags) in the SEG either
    ds = pydicom.dcmread(sp)
    uids = donor_uids(files)
    for elem in ds.iterall():
        assert not elem.tag.is_private and not any(u in str(elem.value) for u in uids if elem.tag != 0x7FE00010)
    assert ds.PatientID == image.PatientID and ds.StudyInstanceUID == image.StudyInstanceUID
    assert ds.SegmentationType == "FRACTIONAL" and ds.MaximumFractionalValue == 255
    # SimpleITK (GDCM) opens both, on the same grid
    simg, sseg = sitk.ReadImage(str(out)), sitk.ReadImage(str(sp))
    assert simg.GetSize()[:2] == sseg.GetSize()[:2] == (x01.shape[1], x01.shape[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sseg).reshape(mask.shape), np.rint(mask * 255))
    np.testing.assert_allclose(sitk.GetArrayFromImage(simg).reshape(x01.shape), image.pixel_array)
    if kind == "series":
        np.testing.assert_allclose(sseg.GetOrigin(), simg.GetOrigin(), atol=1e-4)
