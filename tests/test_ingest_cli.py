"""`medsoft-aug ingest` through CliRunner: JSON output, exit codes 3/4 on bad input, nothing half written."""
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli import output
from medsoft_aug.cli.app import app
from medsoft_aug.workdir import read_index

from _ingest_helpers import make_rsna_dataset, write_csv, write_dicom, write_nifti, write_png, ras_affine

runner = CliRunner()


@pytest.fixture
def data(tmp_path):
    """Three good PNG samples (normal x2, tumor) + a NIfTI volume with a seg; returns (root, images, rows)."""
    rng = np.random.default_rng(21)
    images = tmp_path / "images"
    for k in range(3):
        write_png(images / f"p{k}.png", rng.integers(0, 255, (12, 10), dtype=np.uint8))
    write_nifti(images / "v.nii.gz", (rng.random((4, 9, 8)) * 500).astype(np.float32), ras_affine())
    write_nifti(images / "v_seg.nii.gz", rng.integers(0, 3, (4, 9, 8)).astype(np.uint8), ras_affine())
    rows = [{"image": "p0.png", "label": "normal", "patient_id": "A"},
            {"image": "p1.png", "label": "normal", "patient_id": "B"},
            {"image": "p2.png", "label": "tumor", "patient_id": "C"},
            {"image": "v.nii.gz", "label": "tumor", "patient_id": "D", "seg": "v_seg.nii.gz", "slice": "2"}]
    return tmp_path, images, rows


COLS = ["image", "label", "patient_id", "seg", "slice", "x", "y"]


def run(root, images, rows, *extra, out="WORK"):
    labels = write_csv(root / "labels.csv", rows, COLS)
    return runner.invoke(app, ["ingest", "--labels", str(labels), "--images", str(images),
                               "--out", str(root / out), *extra])


def error_lines(result):
    return [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]


def assert_clean_error(result, code, *needles):
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for n in needles:
        assert n in lines[0] or n in result.stderr, (n, result.stderr)


def test_ok_json_one_document(data):
    root, images, rows = data
    r = run(root, images, rows, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["n_samples"] == 4 and doc["n_failed"] == 0
    assert doc["counts"]["tumor"]["train"] + doc["counts"]["tumor"]["test"] == 2
    assert "ingest:" in r.stderr and "train" not in r.stderr   # stderr: progress only
    assert len(read_index(root / "WORK")) == 4
    r = run(root, images, rows)                                  # rerun without --json: the summary on stdout
    assert r.exit_code == 0, r.stderr
    assert "ingest: 4 samples" in r.stdout and "train" in r.stdout and "train" not in r.stderr


def test_missing_labels_csv(tmp_path):
    (tmp_path / "images").mkdir()
    r = runner.invoke(app, ["ingest", "--labels", str(tmp_path / "none.csv"), "--images", str(tmp_path / "images"),
                            "--out", str(tmp_path / "W")])
    assert_clean_error(r, 3, "none.csv not found")
    assert not (tmp_path / "W").exists()


def test_missing_columns_named(tmp_path, data):
    root, images, _ = data
    labels = write_csv(root / "bad.csv", [{"file": "p0.png", "class": "normal"}])
    r = runner.invoke(app, ["ingest", "--labels", str(labels), "--images", str(images), "--out", str(root / "W")])
    assert_clean_error(r, 3, "missing required column(s): image, label")
    assert not (root / "W").exists()


def test_normal_class_absent(data):
    root, images, rows = data
    r = run(root, images, rows, "--normal-class", "healthy")
    assert_clean_error(r, 3, "normal class 'healthy' not found", "normal, tumor")
    assert not (root / "WORK").exists()


@pytest.mark.parametrize("case, needle", [
    ("missing", "image file not found: gone.png"),
    ("corrupt_nifti", "cannot read image broken.nii.gz"),
    ("truncated_dicom", "cannot read image trunc.dcm"),
    ("slice_range", "slice 9 out of range: volume has 4 sagittal slices"),
    ("coords", "coordinates x=10, y=3 outside the 10x12 image"),
    ("seg_shape", "seg shape [4, 9, 7] does not match image shape [4, 9, 8]"),
    ("dotdot", "escapes the --images folder"),
    ("absolute", "is absolute"),
    ("symlink", "escapes the --images folder"),
])
def test_per_sample_problem_is_partial_failure(data, case, needle):
    root, images, rows = data
    rng = np.random.default_rng(3)
    bad = {"label": "tumor", "patient_id": "E"}
    if case == "missing":
        bad["image"] = "gone.png"
    elif case == "corrupt_nifti":
        (images / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
        bad["image"] = "broken.nii.gz"
    elif case == "truncated_dicom":
        full = write_dicom(root / "full.dcm", rng.integers(0, 4000, (16, 16)))
        (images / "trunc.dcm").write_bytes(full.read_bytes()[:-100])
        bad["image"] = "trunc.dcm"
    elif case == "slice_range":
        bad.update(image="v.nii.gz", slice="9")
    elif case == "coords":
        bad.update(image="p1.png", x="10", y="3")
    elif case == "seg_shape":
        write_nifti(images / "small_seg.nii.gz", np.ones((4, 9, 7), np.uint8), ras_affine())
        bad.update(image="v.nii.gz", seg="small_seg.nii.gz")
    elif case == "dotdot":
        write_png(root / "outside.png", rng.integers(0, 255, (5, 5), dtype=np.uint8))
        bad["image"] = "../outside.png"
    elif case == "absolute":
        bad["image"] = str(images / "p0.png")
    elif case == "symlink":
        write_png(root / "outside.png", rng.integers(0, 255, (5, 5), dtype=np.uint8))
        (images / "link.png").symlink_to(root / "outside.png")
        bad["image"] = "link.png"
    r = run(root, images, rows + [bad], "--json")
    assert_clean_error(r, 4, "1 of 5 samples failed")
    assert needle in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert doc["n_samples"] == 4 and doc["n_failed"] == 1 and needle in doc["failures"][0]["problem"]
    rec = json.loads((root / "WORK" / "ingest.json").read_text())
    assert needle in rec["failures"][0]["problem"]
    idx = read_index(root / "WORK")
    assert len(idx) == 4 and all((root / "WORK" / p).is_file() for p in idx["image"])
    failed_id = doc["failures"][0]["sample_id"]
    assert not (root / "WORK" / "slices" / f"{failed_id}.npy").exists()


def test_all_failed_is_exit_3_and_leaves_nothing(data):
    root, images, _ = data
    rows = [{"image": "gone1.png", "label": "normal"}, {"image": "gone2.png", "label": "normal"}]
    r = run(root, images, rows)
    assert_clean_error(r, 3, "no sample could be ingested (2 failed)")
    assert not (root / "WORK").exists()


def test_rerun_different_input_and_force(data):
    root, images, rows = data
    assert run(root, images, rows).exit_code == 0
    again = run(root, images, rows)
    assert again.exit_code == 0, again.stderr
    r = run(root, images, rows[:3])
    assert_clean_error(r, 3, "already holds an ingest of different inputs", "--force")
    assert len(read_index(root / "WORK")) == 4
    r = run(root, images, rows[:3], "--force")
    assert r.exit_code == 0 and len(read_index(root / "WORK")) == 3


def test_usage_errors(data):
    root, images, rows = data
    r = run(root, images, rows, "--test-fraction", "0.8", "--val-fraction", "0.3")
    assert_clean_error(r, 2, "test_fraction + val_fraction")
    r = run(root, images, rows, "--coords", "x.csv")
    assert_clean_error(r, 2, "rsna2024 only")
    r = run(root, images, rows, out="images/WORK")
    assert_clean_error(r, 2, "must not be inside --images")


def test_rsna_cli_and_debug_traceback(tmp_path, monkeypatch):
    d = make_rsna_dataset(tmp_path, np.random.default_rng(5), n_studies=2)
    args = ["ingest", "--format", "rsna2024", "--labels", str(d["labels"]), "--images", str(d["images"]),
            "--out", str(tmp_path / "W"), "--conditions", "spinal_canal_stenosis", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["counts"]) <= {"normal", "spinal_canal_stenosis_moderate", "spinal_canal_stenosis_severe"}
    r = runner.invoke(app, args[:-1] + ["--conditions", "bogus", "--force"])
    assert_clean_error(r, 2, "unknown condition 'bogus'")
    # remove one instance: partial failure naming the sample, never the DICOM patient fields (even with --debug)
    shutil.rmtree(d["images"] / "1001")
    monkeypatch.setitem(output.STATE, "debug", False)  # the root callback makes --debug sticky in-process
    r = runner.invoke(app, ["--debug"] + args + ["--force"])
    assert r.exit_code == 4
    assert "Traceback" in r.stderr and "1001_" in r.stderr
    assert "Secret" not in r.stderr + r.stdout and "SECRET-ID" not in r.stderr + r.stdout
