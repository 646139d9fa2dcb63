"""`balance --output-format nifti|dicom` through the io writers, on the ingested sample data (tiny model)."""
from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.manifest import read_manifest

from _balance_helpers import one_thread


@pytest.fixture(scope="module")
def sample_work(tmp_path_factory, sample_data_dir, tiny_model_dir):
    if not (sample_data_dir / "labels.csv").is_file():
        pytest.skip("sample_data/ not present")
    from medsoft_aug.api import build_masks, ingest

    root = tmp_path_factory.mktemp("fmt")
    ingest(sample_data_dir / "labels.csv", sample_data_dir, root / "work")
    build_masks(root / "work")
    with one_thread():
        yield types.SimpleNamespace(root=root, work=root / "work", model=tiny_model_dir)


@pytest.mark.parametrize("fmt,ext", [("nifti", ".nii.gz"), ("dicom", ".dcm")])
def test_outputs_in_native_formats(sample_work, sample_data_dir, fmt, ext):
    out = sample_work.root / f"out_{fmt}"
    r = CliRunner().invoke(app, ["balance", str(sample_work.work), "--model", str(sample_work.model), "--out",
                                 str(out), "--classes", "malignant", "--target-ratio", "0.5", "--steps", "2",
                                 "--device", "cpu", "--output-format", fmt, "--json"])
    plan = json.loads(CliRunner().invoke(app, ["balance", str(sample_work.work), "--classes", "malignant",
                                               "--target-ratio", "0.5", "--dry-run", "--output-format", fmt])
                      .stdout)["items"]
    index = pd.read_csv(sample_work.work / "index.csv", dtype=str, keep_default_na=False).set_index("sample_id")
    if fmt == "dicom":            # NIfTI donors cannot become DICOM: the plan draws from the DICOM donors only
        assert all(index.loc[it["donor_id"], "source_format"].startswith("dicom") for it in plan)
        assert (index.loc[index.label == "normal", "source_format"] == "nifti").any()     # some were excluded
    assert r.exit_code == 0, r.stderr
    man = read_manifest(out / "manifest.csv")
    syn = man[man.origin == "synthetic"]
    expect = {it["sample_id"] for it in plan}
    assert set(syn.sample_id) == expect and len(expect) >= 1
    assert all(p.endswith(ext) for p in syn.image) and set(syn.format) == {fmt}
    for _, row in syn.iterrows():
        path = out / row.image
        if fmt == "nifti":
            import nibabel as nib

            img = nib.load(str(path))
            assert 1 in img.shape and np.isfinite(np.asarray(img.dataobj)).all()
        else:
            import pydicom

            ds = pydicom.dcmread(path)
            assert "DERIVED" in ds.ImageType and ds.get("PatientIdentityRemoved") == "YES"
            donor_src = sample_data_dir / index.loc[row.donor_id, "source"]
            donor = pydicom.dcmread(sorted(donor_src.glob("*.dcm"))[0] if donor_src.is_dir() else donor_src)
            dump = str(ds) + str(ds.file_meta)
            for ident in (str(donor.PatientName), str(donor.PatientID), str(donor.StudyInstanceUID)):
                assert ident not in dump                       # the donor's identity does not leak
            assert ds.pixel_array.shape == (int(ds.Rows), int(ds.Columns))
        assert (out / row["mask"]).is_file()
