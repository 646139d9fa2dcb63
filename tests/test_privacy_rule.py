"""The donor-attribute rule of io/dicom_write.py and the header-warning capture of io/quiet.py, attribute by
attribute: checked structural values are copied (re-encoded), anything else is dropped; warnings lose their values."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from medsoft_aug.io.dicom_pixels import dcmread
from medsoft_aug.io.dicom_write import build_derived, checked_donor_attributes, sop_class_and_modality
from medsoft_aug.io.quiet import header_warnings, kind_of
from medsoft_aug.io.reader import read_image

from _io_helpers import MR_STORAGE, new_dataset, save
from _privacy_helpers import put, unvalidated


def _donor(**attrs) -> Dataset:
    ds = new_dataset(np.arange(12, dtype=np.uint16).reshape(3, 4) * 100)
    with unvalidated():
        for kw, v in attrs.items():        # raw values, as a scanner could have written them
            put(ds, tag_for_keyword(kw), dictionary_VR(kw), "\\".join(v) if isinstance(v, list) else v)
    return ds


def test_checked_structural_values_are_copied_re_encoded():
    ds = _donor(EchoTime="  90.000 ", RepetitionTime="4000", FlipAngle="90", EchoTrainLength="17",
                ScanningSequence=["SE", "IR"], SequenceVariant="SK", MRAcquisitionType="2D",
                BodyPartExamined="LSPINE", PatientPosition="HFS", ScanOptions=["FS", "PFP"], SliceThickness="4.0")
    got = checked_donor_attributes(ds)
    assert got["EchoTime"] == "90" and got["RepetitionTime"] == "4000" and got["EchoTrainLength"] == 17
    assert got["ScanningSequence"] == ["SE", "IR"] and got["BodyPartExamined"] == "LSPINE"
    assert got["ScanOptions"] == ["FS", "PFP"] and got["PatientPosition"] == "HFS"
    assert sop_class_and_modality(ds) == (MR_STORAGE, "MR")


@pytest.mark.parametrize("kw,value", [
    ("BodyPartExamined", "JOHN SMITH 1234"), ("BodyPartExamined", "LSPINE\\PAT77"), ("ScanOptions", "ID4711"),
    ("PatientPosition", "HFS SMITH"), ("ScanningSequence", "SE\\DOE"), ("ImageLaterality", "X"),
    ("EchoTime", "SMITH"), ("EchoTime", "nan"), ("EchoTime", "1e300"), ("FlipAngle", "-5"),
    ("EchoTrainLength", "2.5"), ("SliceThickness", "inf"), ("BurnedInAnnotation", "MAYBE"),
])
def test_values_failing_their_check_are_dropped(kw, value):
    ds = _donor(**{kw: value})
    assert kw not in checked_donor_attributes(ds)


def test_free_text_and_vendor_strings_are_never_copied():
    ds = _donor(ConvolutionKernel="B30f", ImagedNucleus="1H", Manufacturer="ACME", StationName="MR1",
                RescaleType="US", SpecificCharacterSet="ISO_IR 100", PatientOrientation=["A", "F"])
    out = build_derived(ds, np.ones((3, 4)), sample_id="syn-1", description="", derivation="test",
                        geometry=None, window=(0.0, 1.0))
    for kw in ("ConvolutionKernel", "ImagedNucleus", "StationName", "RescaleType", "SpecificCharacterSet",
               "PatientOrientation"):
        assert kw not in out, kw
    assert out.Manufacturer == "medsoft-aug" and out.InstanceNumber == 1


def test_ct_scan_options_and_unknown_classes():
    ct = _donor(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", ScanOptions="FS", KVP="120", ScanningSequence="SE")
    got = checked_donor_attributes(ct)
    assert "ScanOptions" not in got and "ScanningSequence" not in got and got["KVP"] == "120"
    odd = _donor(SOPClassUID="1.2.3.4.5.6", Modality="PAT^NAME")
    assert sop_class_and_modality(odd) == ("1.2.840.10008.5.1.4.1.1.7", "OT")
    assert sop_class_and_modality(_donor(SOPClassUID="1.2.3", Modality="CT"))[1] == "CT"


def test_header_warnings_are_reported_without_values(tmp_path, caplog, capsys):
    ds = new_dataset(np.arange(12, dtype=np.uint16).reshape(3, 4))
    with unvalidated():
        put(ds, 0x00180015, "CS", "smith^john")               # BodyPartExamined: lower case is invalid CS
        put(ds, 0x00080005, "CS", "SECRETCHARSET")            # unknown character set
        put(ds, 0x00200013, "IS", "doe77")                     # InstanceNumber
        path = save(ds, tmp_path / "a.dcm")
    with caplog.at_level(logging.DEBUG):
        read_image(path)
        with header_warnings("again") as kinds:
            build_derived(dcmread(path), np.ones((3, 4)),
                          sample_id="s", description="", derivation="t", geometry=None, window=(0.0, 1.0))
    text = caplog.text + capsys.readouterr().err
    for value in ("smith", "john", "SECRETCHARSET", "doe77"):
        assert value not in text
    assert "a.dcm: " in text and "values withheld" in text and "invalid value for VR" in text
    assert sum(kinds.values()) >= 1


def test_kind_of_never_echoes_the_message():
    assert kind_of("Invalid value for VR PN: 'Doe^Jane'") == "invalid value for VR PN"
    assert kind_of("Doe^Jane is strange") == "other"
    assert kind_of("Invalid value for VR ZZ: 'x'") == "invalid value for VR ?"
