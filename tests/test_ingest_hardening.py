"""Damaged or unusual input to `ingest` (issue 8 section 2): one `Error:` line naming the sample or the file and
where, exit 3 (nothing usable) or 4 (the others written), never exit 1, never silently altered pixels."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.workdir import read_index

from _ingest_helpers import ras_affine, write_csv, write_nifti, write_png
from _io_helpers import canonical_affine, new_dataset, save, write_series_from_canonical

runner = CliRunner()
COLS = ["image", "label", "patient_id", "slice", "seg", "level", "x", "y"]


@pytest.fixture
def base(tmp_path):
    """images/ with two good PNGs (normal, tumor) and the rows naming them."""
    rng = np.random.default_rng(5)
    images = tmp_path / "images"
    for k in range(2):
        write_png(images / f"ok{k}.png", rng.integers(0, 255, (12, 10), dtype=np.uint8))
    rows = [{"image": "ok0.png", "label": "normal", "patient_id": "A"},
            {"image": "ok1.png", "label": "tumor", "patient_id": "B"}]
    return tmp_path, images, rows


def _ingest(root, images, labels, out="W"):
    return runner.invoke(app, ["ingest", "--labels", str(labels), "--images", str(images), "--out", str(root / out)])


def _clean(r, code, *needles):
    assert r.exit_code == code, (r.exit_code, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "unexpected failure" not in r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    return r.stderr


def _failed_line(r, sample_id):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip().startswith(f"failed: {sample_id}:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_symlink_loop_image_is_a_named_sample_failure(base):
    root, images, rows = base
    os.symlink(images / "loop_b", images / "loop_a")
    os.symlink(images / "loop_a", images / "loop_b")
    r = _ingest(root, images, write_csv(root / "l.csv", rows + [{"image": "loop_a", "label": "normal",
                                                                  "sample_id": "looped"}], COLS + ["sample_id"]))
    _clean(r, 4, "1 of 3 samples failed")
    assert "symlink loop" in _failed_line(r, "looped")
    assert len(read_index(root / "W")) == 2
    alone = write_csv(root / "alone.csv", [{"image": "loop_a", "label": "normal"}], COLS)
    _clean(_ingest(root, images, alone, "W2"), 3, "symlink loop")
    assert not (root / "W2").exists()


def test_symlink_loop_as_labels_csv(base):
    root, images, _ = base
    os.symlink(root / "b.csv", root / "a.csv")
    os.symlink(root / "a.csv", root / "b.csv")
    _clean(_ingest(root, images, root / "a.csv"), 3, "a.csv", "symlink loop")
    assert not (root / "W").exists()


def test_nul_byte_in_labels_csv(base):
    root, images, rows = base
    path = write_csv(root / "l.csv", rows, COLS)
    data = path.read_bytes()
    pos = data.index(b"ok1.png") + 2
    path.write_bytes(data[:pos] + b"\0" + data[pos:])
    err = _clean(_ingest(root, images, path), 3, "l.csv", "NUL byte", "row 2", f"byte offset {pos}")
    assert "ok1" not in err
    assert not (root / "W").exists()


def test_non_utf8_labels_csv_names_row_and_byte(base):
    root, images, rows = base
    path = write_csv(root / "l.csv", rows, COLS)
    data = path.read_bytes()
    pos = data.index(b"tumor") + 3
    path.write_bytes(data[:pos] + b"\xe9" + data[pos:])
    _clean(_ingest(root, images, path), 3, "not UTF-8", "0xe9", "row 2", f"byte offset {pos}")


def test_cut_labels_csv_row(base):
    root, images, rows = base
    path = write_csv(root / "l.csv", rows, COLS)
    path.write_bytes(path.read_bytes().rstrip(b"\n").rsplit(b",", 3)[0])  # last row loses its last fields
    _clean(_ingest(root, images, path), 3, "line 3", "field(s) where the header has 8")


def test_unknown_column_warns_with_closest_known(base):
    root, images, rows = base
    path = write_csv(root / "l.csv", [dict(r, levle="L3", colour="x") for r in rows], COLS + ["levle", "colour"])
    r = _ingest(root, images, path)
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())  # rich wraps long log lines
    assert "'levle'" in err and "did you mean 'level'" in err
    assert "'colour'" in err
    warnings = json.loads((root / "W" / "ingest.json").read_text())["warnings"]
    assert any("levle" in w["warning"] and "'level'" in w["warning"] for w in warnings)


@pytest.mark.parametrize("bad", ["nan", "inf", "complex"])
def test_nifti_nonfinite_or_complex_refused_per_sample(base, bad):
    root, images, rows = base
    rng = np.random.default_rng(7)
    vol = (rng.random((4, 9, 8)) * 500 + 10).astype(np.float32)
    if bad == "complex":
        vol = vol.astype(np.complex64)
    else:
        vol[1, 2, 3] = np.nan if bad == "nan" else np.inf  # not on the (middle) slice that would be used
    write_nifti(images / "v.nii.gz", vol, ras_affine())
    path = write_csv(root / "l.csv", rows + [{"image": "v.nii.gz", "label": "tumor", "sample_id": "vol"}],
                     COLS + ["sample_id"])
    r = _ingest(root, images, path)
    _clean(r, 4, "1 of 3 samples failed")
    line = _failed_line(r, "vol")
    assert ("complex" in line) if bad == "complex" else ("NaN or infinite" in line)


@pytest.mark.parametrize("rows_hdr, cols_hdr", [(12, 12), (20, 12), (16, 10)])
def test_dicom_rows_columns_disagreeing_with_pixel_bytes_refused(base, rows_hdr, cols_hdr):
    root, images, rows = base
    rng = np.random.default_rng(8)
    ds = new_dataset(rng.integers(0, 4000, (16, 12)))
    ds.Rows, ds.Columns = rows_hdr, cols_hdr      # header says something else than the 16 x 12 pixels stored
    save(ds, images / "d.dcm")
    path = write_csv(root / "l.csv", rows + [{"image": "d.dcm", "label": "tumor", "sample_id": "dcm"}],
                     COLS + ["sample_id"])
    r = _ingest(root, images, path)
    _clean(r, 4)
    line = _failed_line(r, "dcm")
    assert "384 bytes" in line and "refused rather than cropped" in line
    assert "PHANTOM" not in r.stderr and "Phantom" not in r.stderr


def test_truncated_file_inside_jpeg2000_series(base):
    root, images, rows = base
    rng = np.random.default_rng(9)
    vol = rng.integers(0, 4000, (5, 32, 32)).astype(np.float32)
    files, _ = write_series_from_canonical(images / "j2k", vol, canonical_affine((1, 1, 1), (0, 0, 0)), "PIR", rng,
                                           compress="j2k")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 100])
    path = write_csv(root / "l.csv", rows + [{"image": "j2k", "label": "tumor", "sample_id": "ser"}],
                     COLS + ["sample_id"])
    r = _ingest(root, images, path)
    _clean(r, 4)
    line = _failed_line(r, "ser")
    assert "truncated" in line and files[2].name in line and "no pixel data" not in line


def test_sform_qform_disagreement_warned_and_recorded(base):
    root, images, rows = base
    rng = np.random.default_rng(10)
    vol = (rng.random((5, 9, 8)) * 500 + 10).astype(np.float32)
    img = nib.Nifti1Image(vol, None)
    img.set_sform(np.diag([2.0, 0.5, 0.6, 1.0]), code=1)   # nibabel uses the sform when its code is set
    img.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    nib.save(img, images / "sq.nii.gz")
    path = write_csv(root / "l.csv", rows + [{"image": "sq.nii.gz", "label": "tumor", "sample_id": "sq"}],
                     COLS + ["sample_id"])
    r = _ingest(root, images, path)
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "sample sq:" in err and "sform and qform disagree" in err
    record = json.loads((root / "W" / "ingest.json").read_text())
    assert [w["sample_id"] for w in record["warnings"]] == ["sq"]
    assert "using the sform" in record["warnings"][0]["warning"]
    row = read_index(root / "W").set_index("sample_id").loc["sq"]
    # the sform's spacing, not the qform's (1 mm): slice grid rows run along y (0.5 mm), columns along z (0.6 mm)
    assert sorted([float(row["spacing_row"]), float(row["spacing_col"])]) == pytest.approx([0.5, 0.6])
