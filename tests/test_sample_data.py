"""The phantom sample data: determinism, committed folder == fresh generation, classes, geometry, lesions, RSNA CSVs."""
from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from _sample_data_helpers import (LEVEL_LABELS, SAMPLE, dicom_series_display, manifest, nifti_canonical,
                                  read_sha256sums, read_study)
from medsoft_aug.errors import UsageError
from medsoft_aug.sample_data import (LABEL_COLUMNS, class_counts, display_to_volume, make_sample_data, plan_studies,
                                     render_study, volume_to_display)
from medsoft_aug.sample_data.__main__ import main as sample_main
from medsoft_aug.sample_data.phantom import render_slice


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh generation with the defaults (what `python -m medsoft_aug.sample_data sample_data` writes)."""
    out = tmp_path_factory.mktemp("fresh") / "sample_data"
    summary = make_sample_data(out)
    return out, summary


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "labels.csv", dtype=str, keep_default_na=False)


def test_small_generation_is_byte_for_byte_deterministic(tmp_path):
    a = make_sample_data(tmp_path / "a", n_studies=3, seed=7, rsna_studies=1)
    make_sample_data(tmp_path / "b", n_studies=3, seed=7, rsna_studies=1)
    ma, mb = manifest(tmp_path / "a"), manifest(tmp_path / "b")
    assert ma == mb
    assert len(ma) == a["files"]
    # the .nii.gz gzip header carries no timestamp (bytes 4-7 = MTIME)
    gz = next(p for p in (tmp_path / "a" / "images").glob("*.nii.gz"))
    assert gz.read_bytes()[4:8] == b"\x00\x00\x00\x00"
    # another seed changes the data (the comparison above can fail)
    make_sample_data(tmp_path / "c", n_studies=3, seed=8, rsna_studies=1)
    mc = manifest(tmp_path / "c")
    assert mc["labels.csv"] != ma["labels.csv"] and mc["segs/phantom_001_seg.nii.gz"] != ma["segs/phantom_001_seg.nii.gz"]
    # rerun over an earlier output replaces it whole and gives the same bytes
    make_sample_data(tmp_path / "a", n_studies=3, seed=7, rsna_studies=1)
    assert manifest(tmp_path / "a") == ma


def test_committed_sample_data_equals_fresh_generation(fresh):
    out, summary = fresh
    committed = manifest(SAMPLE)
    listed = read_sha256sums(SAMPLE / "SHA256SUMS")
    assert set(listed) == set(committed) - {"SHA256SUMS"}
    assert all(committed[k] == v for k, v in listed.items()), "committed files do not match their SHA256SUMS"
    regenerated = manifest(out)
    diff = sorted(k for k in set(regenerated) | set(committed) if regenerated.get(k) != committed.get(k))
    assert not diff, f"sample_data/ differs from a fresh generation (rerun the generator): {diff[:5]}"
    assert summary["files"] == len(committed)


def test_size_under_5_mb():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 5_000_000, total


def test_class_counts_are_imbalanced_with_normal_majority():
    for n in (3, 4, 10, 24, 32, 50):
        c = class_counts(n)
        assert sum(c.values()) == n and min(c.values()) >= 1
        assert c["normal"] > n / 2 - 1 and c["normal"] >= c["benign"] >= c["malignant"]
    with pytest.raises(UsageError):
        class_counts(2)


def test_labels_csv_columns_classes_and_paths(labels):
    assert list(labels.columns) == LABEL_COLUMNS
    counts = labels["label"].value_counts().to_dict()
    assert counts == {"normal": 19, "benign": 8, "malignant": 5}
    assert 0.55 <= counts["normal"] / len(labels) <= 0.65
    assert labels["sample_id"].is_unique and len(labels) >= 24
    # some patients have two studies (patient-level splits)
    assert labels["patient_id"].nunique() < len(labels)
    for lab, grp in labels.groupby("label"):
        kinds = {"dicom" if (SAMPLE / p).is_dir() else "nifti" for p in grp["image"]}
        assert kinds == {"dicom", "nifti"}, lab
        assert grp["level"].nunique() == min(5, len(grp)), lab
    for _, r in labels.iterrows():
        assert (SAMPLE / r["image"]).exists() and (SAMPLE / r["seg"]).is_file()
        assert r["level"] in ("L1", "L2", "L3", "L4", "L5") and r["slice"] == ""
        assert 0 <= float(r["x"]) < 128 and 0 <= float(r["y"]) < 128
        if r["label"] == "normal":
            assert r["description"] == ""
        else:
            text = r["description"].lower()
            assert f"{r['level'].lower()} vertebral body" in text
            word = ("hyperintense", "bright", "high-signal") if r["label"] == "benign" else \
                ("hypointense", "dark", "low-signal")
            assert any(w in text for w in word), text
    assert labels.loc[labels.label != "normal", "description"].nunique() == (labels.label != "normal").sum()


def test_geometry_upright_and_seg_in_image_grid(labels):
    """Every study read back independently: same grid as its seg, spine upright, x,y on the named vertebra."""
    codes = set()
    for _, r in labels.iterrows():
        img, seg, aff, saff = read_study(SAMPLE, r["image"], r["seg"])
        assert img.shape == seg.shape and img.shape[0] % 2 == 1
        np.testing.assert_allclose(aff, saff, atol=1e-3)
        mid = img.shape[0] // 2
        s = seg[mid]
        rows = [ndimage.center_of_mass(s == LEVEL_LABELS[v])[0] for v in ("L1", "L2", "L3", "L4", "L5", "S1")]
        assert rows == sorted(rows), f"{r['sample_id']}: vertebrae not stacked top to bottom"
        x, y = int(round(float(r["x"]))), int(round(float(r["y"])))
        assert s[y, x] == LEVEL_LABELS[r["level"]], r["sample_id"]
        # CSF (brightest tissue) lies posterior (to the right) of the vertebral bodies
        body_cols = np.nonzero(s == LEVEL_LABELS["L3"])[1]
        csf = img[mid] > np.percentile(img[mid], 99)
        assert np.median(np.nonzero(csf)[1]) > np.percentile(body_cols, 25), r["sample_id"]
        if not (SAMPLE / r["image"]).is_dir():
            codes.add("".join(nifti_canonical(SAMPLE / r["image"])[2]))
    assert {"RAS", "LPS", "PIR"} <= codes


def test_dicom_headers_are_synthetic_and_include_traps(labels):
    traps = {"mono1": 0, "rescale": 0, "empty_series_uid": 0, "rle": 0, "uncompressed": 0}
    for _, r in labels[labels.image.map(lambda p: (SAMPLE / p).is_dir())].iterrows():
        _, _, dss = dicom_series_display(SAMPLE / r["image"])
        d = dss[0]
        assert d.Modality == "MR" and str(d.PatientName).startswith("PHANTOM^")
        assert d.PatientID == r["patient_id"] and d.StudyDate == "20000101"
        assert len({x.SOPInstanceUID for x in dss}) == len(dss)
        traps["mono1"] += d.PhotometricInterpretation == "MONOCHROME1"
        traps["rescale"] += float(getattr(d, "RescaleSlope", 1)) != 1
        traps["empty_series_uid"] += d.SeriesInstanceUID == ""
        rle = d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
        traps["rle"] += rle
        traps["uncompressed"] += not rle
    assert all(v >= 1 for v in traps.values()), traps


def _run_length(row: np.ndarray, x: int) -> int:
    lo, hi = x, x
    while lo > 0 and row[lo - 1]:
        lo -= 1
    while hi < len(row) - 1 and row[hi + 1]:
        hi += 1
    return hi - lo + 1


def test_lesions_visible_with_contrast_far_above_noise(labels):
    """Mean inside the lesion vs the rest of its body (written files), against the noise level of the air."""
    studies = {s.sample_id: s for s in plan_studies(32, 0)}
    heights_lost = 0
    for _, r in labels[labels.label != "normal"].iterrows():
        st = studies[r["sample_id"]]
        img, seg, _, _ = read_study(SAMPLE, r["image"], r["seg"])
        mid = img.shape[0] // 2
        assert st.offsets[mid] == 0.0
        les = render_slice(st.anatomy, 0.0, "T2", np.zeros(st.anatomy.size))[2]   # the generator's lesion mask
        body = ndimage.binary_erosion(seg[mid] == LEVEL_LABELS[r["level"]], iterations=2)
        rest = body & ~ndimage.binary_dilation(les, iterations=2)
        inside = ndimage.binary_erosion(les) & body
        assert inside.sum() >= 5 and rest.sum() >= 30, r["sample_id"]
        sigma = img[mid][54:74, -3:].mean() / np.sqrt(np.pi / 2)     # air: Rayleigh mean = sigma sqrt(pi/2)
        diff = img[mid][inside].mean() - img[mid][rest].mean()
        if r["label"] == "benign":
            assert diff > 15 * sigma, (r["sample_id"], diff, sigma)
        else:
            assert -diff > 8 * sigma, (r["sample_id"], diff, sigma)
        x, y = int(round(float(r["x"]))), int(round(float(r["y"])))
        assert les[y, x], f"{r['sample_id']}: x,y not on the lesion"
        # lesion size 25-50% of the body's AP depth on that row (edge softening allowed)
        ratio = _run_length(les[y], x) / _run_length(seg[mid][y] == LEVEL_LABELS[r["level"]], x)
        assert 0.2 <= ratio <= 0.6, (r["sample_id"], ratio)
        heights_lost += "height" in r["description"]
    assert heights_lost >= 2


def _body_height(seg: np.ndarray, label: int) -> float:
    """Mean height (px) of a vertebral body on the midline slice: area of the label's largest connected piece
    (the body; posterior elements are separate there) divided by its width on the row through its centroid."""
    comp, n = ndimage.label(seg == label)
    body = comp == 1 + int(np.bincount(comp.ravel())[1:].argmax())
    row = int(round(ndimage.center_of_mass(body)[0]))
    return float(body.sum() / body[row].sum())


def test_height_loss_shows_in_the_seg_and_normals_have_no_lesion(labels):
    """Body height at the level vs the mean of its lumbar neighbours: < 0.82 exactly where the text says so."""
    studies = {s.sample_id: s for s in plan_studies(32, 0)}
    lumbar = ["L1", "L2", "L3", "L4", "L5"]
    for _, r in labels.iterrows():
        _, seg, _, _ = read_study(SAMPLE, r["image"], r["seg"])
        s = seg[seg.shape[0] // 2]
        i = lumbar.index(r["level"])
        neighbours = [lumbar[j] for j in (i - 1, i + 1) if 0 <= j < len(lumbar)]
        ratio = _body_height(s, LEVEL_LABELS[r["level"]]) / np.mean([_body_height(s, LEVEL_LABELS[v])
                                                                      for v in neighbours])
        assert (ratio < 0.82) == ("height" in r["description"]), (r["sample_id"], ratio)
    # normal studies carry no lesion; the full renderer gives the same lesion mask as the noise-free slice
    assert not any(render_study(studies[s], 0)[2].any() for s in labels.sample_id[labels.label == "normal"][:2])
    st = studies[labels.sample_id[labels.label == "malignant"].iloc[0]]
    np.testing.assert_array_equal(render_study(st, 0)[2][len(st.offsets) // 2],
                                  render_slice(st.anatomy, 0.0, "T2", np.zeros(st.anatomy.size))[2])


def test_display_to_volume_inverts_the_ingest_convention():
    rng = np.random.default_rng(0)
    disp = rng.standard_normal((3, 7, 5))
    vol = display_to_volume(disp)
    assert vol.shape == (3, 5, 7)
    for i in range(3):
        np.testing.assert_array_equal(vol[i].T[::-1, ::-1], disp[i])
        np.testing.assert_array_equal(volume_to_display(vol, i), disp[i])


def test_rsna2024_folder_matches_the_kaggle_layout(realdata):
    root = SAMPLE / "rsna2024"
    for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv"):
        real_header = (realdata / "rsna2024_lumbar" / name).read_text().splitlines()[0].strip()
        assert (root / name).read_text().splitlines()[0] == real_header, name
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    values = set(train.drop(columns="study_id").to_numpy().ravel())
    assert values <= {"Normal/Mild", "Moderate", "Severe", ""} and {"Moderate", "Severe"} <= values
    series = pd.read_csv(root / "train_series_descriptions.csv", dtype=str)
    assert set(series.series_description) == {"Sagittal T2/STIR", "Sagittal T1"}
    coords = pd.read_csv(root / "train_label_coordinates.csv", dtype=str)
    assert set(coords.condition) == {"Spinal Canal Stenosis", "Left Neural Foraminal Narrowing",
                                     "Right Neural Foraminal Narrowing"}
    assert set(coords.level) == {"L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"}
    import pydicom
    for _, c in coords.iterrows():
        f = root / "images" / c.study_id / c.series_id / f"{c.instance_number}.dcm"
        d = pydicom.dcmread(f)
        assert 0 <= float(c.x) < d.Columns and 0 <= float(c.y) < d.Rows
        col = f"{c.condition.lower().replace(' ', '_')}_{c.level.lower().replace('/', '_')}"
        assert train.loc[train.study_id == c.study_id, col].item() != ""
        assert f.stat().st_size < 12_000
    # left foraminal coordinates sit on a slice left of the right ones (LPS x larger = patient left)
    for sid, grp in coords[coords.condition.str.contains("Foraminal")].groupby("series_id"):
        st = grp.study_id.iloc[0]
        xs = {cond: float(pydicom.dcmread(root / "images" / st / sid / f"{grp[grp.condition == cond].instance_number.iloc[0]}.dcm").ImagePositionPatient[0])
              for cond in ("Left Neural Foraminal Narrowing", "Right Neural Foraminal Narrowing")}
        assert xs["Left Neural Foraminal Narrowing"] > xs["Right Neural Foraminal Narrowing"]


def test_module_cli_refuses_a_foreign_folder_and_prints_json(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert sample_main([str(foreign)]) == 2
    assert (foreign / "keep.txt").read_text() == "x"
    assert capsys.readouterr().err.startswith("Error: ")
    assert sample_main([str(tmp_path / "new"), "--n-studies", "3", "--rsna-studies", "1", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_studies"] == 3 and summary["classes"] == {"normal": 1, "benign": 1, "malignant": 1}
    with open(tmp_path / "new" / "labels.csv", newline="") as fh:
        assert next(csv.reader(fh)) == LABEL_COLUMNS
    assert not list(tmp_path.glob(".new.*")), "temporary folder left behind"
