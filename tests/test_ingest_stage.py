"""The ingest stage end to end through the Python API (real readers, files written in real formats)."""
import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import stats

from medsoft_aug.errors import InputError
from medsoft_aug.fsutil import load_npy
from medsoft_aug.ingest import stage as stage_mod
from medsoft_aug.ingest.slicing import slice_to_voxel, slice_to_world
from medsoft_aug.ingest.stage import ingest
from medsoft_aug.workdir import INDEX_COLUMNS, read_index

from _ingest_helpers import make_generic_dataset, make_rsna_dataset, write_csv, write_dicom


def _tree(root, exclude):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and exclude not in p.relative_to(root).parts}


def _ref_norm(sl, lo_pct=0.5, hi_pct=99.5):
    lo = stats.scoreatpercentile(sl.astype(np.float64), lo_pct)
    hi = stats.scoreatpercentile(sl.astype(np.float64), hi_pct)
    return np.clip((sl.astype(np.float64) - lo) / (hi - lo), 0, 1)


def test_generic_end_to_end(tmp_path):
    rng = np.random.default_rng(11)
    d = make_generic_dataset(tmp_path, rng)
    work = tmp_path / "WORK"
    inputs_before = _tree(tmp_path, exclude="WORK")
    res = ingest(d["labels"], d["images"], work)
    assert _tree(tmp_path, exclude="WORK") == inputs_before   # inputs untouched, nothing written beside them
    idx = read_index(work)
    assert list(idx.columns) == INDEX_COLUMNS
    assert res.n_samples == len(idx) == len(d["rows"]) and not res.failures
    for _, r in idx.iterrows():
        img = load_npy(work / r["image"])
        assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
        assert (int(r["height"]), int(r["width"])) == img.shape
        geom = json.loads(r["geometry"])
        if r["source_format"] == "raster":
            np.testing.assert_allclose(img, _ref_norm(d["png"].astype(np.float64)), atol=1e-6)
            assert r["slice_index"] == "" and r["seg"] == ""
            continue
        vol, seg = d["vols"][r["source"]]
        i = int(r["slice_index"])
        assert i == (1 if r["sample_id"].endswith("_s1") else vol.shape[0] // 2)
        np.testing.assert_allclose(img, _ref_norm(vol[i].T[::-1, ::-1]), atol=1e-6)
        np.testing.assert_array_equal(load_npy(work / r["seg"]), seg[i].T[::-1, ::-1].astype(np.float32))
        assert (float(r["spacing_row"]), float(r["spacing_col"])) == pytest.approx((0.6, 0.5))
        assert float(r["window_lo"]) == pytest.approx(stats.scoreatpercentile(vol[i].astype(np.float64), 0.5))
        rr, cc = 3, 7
        ijk = tuple(int(v) for v in slice_to_voxel(geom, rr, cc))
        assert seg[ijk] == load_npy(work / r["seg"])[rr, cc]
    # patient-level split: each patient in exactly one split
    assert (idx.groupby("patient_id")["split"].nunique() == 1).all()
    rec = json.loads((work / "ingest.json").read_text())
    assert rec["normal_class"] == "normal" and rec["n_samples"] == res.n_samples
    assert rec["inputs"]["labels"]["sha256"] and rec["counts"] == res.counts
    assert not list(work.glob(".ingest-partial-*"))

    # rerun, same inputs: idempotent, byte-identical outputs
    before = {p: (work / p).read_bytes() for p in ("index.csv", "ingest.json", "slices/p0_t2.npy")}
    res2 = ingest(d["labels"], d["images"], work)
    assert res2.replaced_previous and res2.counts == res.counts
    assert before == {p: (work / p).read_bytes() for p in before}
    # different options without force: clear error, outputs untouched; with force: replaced
    with pytest.raises(InputError, match="different inputs or options.*--force"):
        ingest(d["labels"], d["images"], work, split_seed=1)
    assert (work / "index.csv").read_bytes() == before["index.csv"]
    ingest(d["labels"], d["images"], work, split_seed=1, window=(1, 99), force=True)
    assert json.loads((work / "ingest.json").read_text())["options"]["split_seed"] == 1


def test_split_column_honoured(tmp_path):
    rng = np.random.default_rng(12)
    d = make_generic_dataset(tmp_path, rng, n_patients=2)
    rows = [dict(r, split=["train", "val", "test"][k % 3]) for k, r in enumerate(d["rows"])]
    labels = write_csv(tmp_path / "split.csv", rows, list(dict.fromkeys([*rows[0].keys(), "slice", "split"])))
    ingest(labels, d["images"], tmp_path / "W")
    assert read_index(tmp_path / "W")["split"].tolist() == [r["split"] for r in rows]


@pytest.mark.parametrize("name, seg_name", [
    ("tptbox/sample_mri/sub-mri_label-6_T2w.nii.gz", "tptbox/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz"),
    ("totalsegmentator/example_mr_sm.nii.gz", "totalsegmentator/example_seg_mr.nii.gz"),
])
def test_real_nifti_geometry_maps_back_to_the_file(tmp_path, realdata, name, seg_name):
    """Real volumes in PIR / LPS orientation: every sampled slice pixel maps (through the recorded geometry and
    affine) to the voxel of the original file with the same value; rows run inferior, columns posterior."""
    labels = write_csv(tmp_path / "l.csv", [{"image": name, "label": "normal", "seg": seg_name}])
    work = tmp_path / "W"
    ingest(labels, realdata, work)
    r = read_index(work).iloc[0]
    geom = json.loads(r["geometry"])
    img = nib.load(str(realdata / name))
    seg = nib.load(str(realdata / seg_name))
    raw, raw_seg = np.asarray(img.dataobj), np.asarray(seg.dataobj)
    inv = np.linalg.inv(img.affine)
    sl_seg = load_npy(work / r["seg"])
    lo, hi = float(r["window_lo"]), float(r["window_hi"])
    sl = load_npy(work / r["image"])
    rng = np.random.default_rng(0)
    for rr, cc in zip(rng.integers(0, sl.shape[0], 60), rng.integers(0, sl.shape[1], 60)):
        world = slice_to_world(geom, rr, cc)
        vox = np.rint(inv[:3, :3] @ world + inv[:3, 3]).astype(int)
        assert np.allclose(inv[:3, :3] @ world + inv[:3, 3], vox, atol=1e-3)
        src = float(raw[tuple(vox)])
        assert sl[rr, cc] == pytest.approx(np.clip((src - lo) / (hi - lo), 0, 1), abs=1e-5)
        assert sl_seg[rr, cc] == raw_seg[tuple(vox)]
    assert slice_to_world(geom, 5, 5)[2] > slice_to_world(geom, 6, 5)[2]   # superior at the top
    assert slice_to_world(geom, 5, 5)[1] > slice_to_world(geom, 5, 6)[1]   # anterior on the left
    assert int(r["slice_index"]) == geom["in_shape"][0] // 2


def test_rsna_end_to_end(tmp_path):
    rng = np.random.default_rng(13)
    d = make_rsna_dataset(tmp_path, rng)
    work = tmp_path / "W"
    res = ingest(d["labels"], d["images"], work, fmt="rsna2024")
    idx = read_index(work)
    assert res.skipped["empty_severity"] > 0 and res.skipped["other_condition"] == 20
    assert set(idx["condition"]) == {"spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                                     "right_neural_foraminal_narrowing"}
    assert (idx.groupby("study_id")["split"].nunique() == 1).all() and (idx["patient_id"] == idx["study_id"]).all()
    for _, r in idx.iterrows():
        ds = pydicom.dcmread(d["images"] / r["source"])
        np.testing.assert_allclose(load_npy(work / r["image"]), _ref_norm(ds.pixel_array.astype(np.float64)),
                                   atol=1e-6)
        assert (float(r["spacing_row"]), float(r["spacing_col"])) == (0.5, 0.7)
        sev = r["severity"]
        assert r["label"] == ("normal" if sev == "Normal/Mild" else f"{r['condition']}_{sev.lower()}")
        assert r["source_format"] == "dicom" and r["instance"] in ("3", "4")
        # 2D geometry keeps the instance's affine: pixel (0, 0) is ImagePositionPatient (LPS -> RAS)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        np.testing.assert_allclose(slice_to_world(json.loads(r["geometry"]), 0, 0), [-ipp[0], -ipp[1], ipp[2]])
    # samples on one instance share one file on disk (hard links), not copies
    scs = idx[(idx["study_id"] == "1000") & (idx["condition"] == "spinal_canal_stenosis")]
    inodes = {os.stat(work / p).st_ino for p in scs["image"]}
    assert len(scs) > 1 and len(inodes) == 1
    text = (work / "index.csv").read_text() + (work / "ingest.json").read_text()
    assert "Secret" not in text and "SECRET-ID" not in text


def test_fatal_error_midway_leaves_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(14)
    d = make_generic_dataset(tmp_path, rng, n_patients=3)
    real = stage_mod.ingest_one
    calls = {"n": 0}

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(stage_mod, "ingest_one", boom)
    with pytest.raises(RuntimeError):
        ingest(d["labels"], d["images"], tmp_path / "NEW")
    assert not (tmp_path / "NEW").exists()
    # an existing WORK from the same inputs stays as it was
    monkeypatch.setattr(stage_mod, "ingest_one", real)
    ingest(d["labels"], d["images"], tmp_path / "OLD")
    snapshot = sorted((p.relative_to(tmp_path / "OLD"), p.read_bytes()) for p in (tmp_path / "OLD").rglob("*")
                      if p.is_file())
    calls["n"] = 0
    monkeypatch.setattr(stage_mod, "ingest_one", boom)
    with pytest.raises(RuntimeError):
        ingest(d["labels"], d["images"], tmp_path / "OLD")
    after = sorted((p.relative_to(tmp_path / "OLD"), p.read_bytes()) for p in (tmp_path / "OLD").rglob("*")
                   if p.is_file())
    assert after == snapshot


def test_sagittal_dicom_series_slice_is_the_stored_instance(tmp_path):
    """A standard sagittal series (rows -> inferior, columns -> posterior) is stored in the display convention,
    so ingested slice i must equal the instance at that position; i runs toward the patient's right."""
    rng = np.random.default_rng(15)
    series = tmp_path / "images" / "study" / "sag"
    lps_x = {1: 16.0, 2: 13.0, 3: 10.0}          # instance -> LPS x (mm); larger = more patient-left
    pixels = {}
    for inst, x in lps_x.items():
        pixels[inst] = rng.integers(0, 3000, (14, 11))
        write_dicom(series / f"IM{inst}.dcm", pixels[inst], instance=inst, position=(x, -20.0, 40.0))
    rows = [{"image": "study/sag", "label": "normal", "slice": str(i)} for i in range(3)]
    rows.append({"image": "study/sag", "label": "normal", "x": "10.5", "y": "13.9"})  # default: middle slice
    labels = write_csv(tmp_path / "l.csv", rows, ["image", "label", "slice", "x", "y"])
    ingest(labels, tmp_path / "images", tmp_path / "W")
    idx = read_index(tmp_path / "W")
    assert idx["sample_id"].tolist() == ["study_sag_s0", "study_sag_s1", "study_sag_s2", "study_sag"]
    by_ras_x = sorted(lps_x, key=lambda k: -lps_x[k])       # RAS x = -LPS x, ascending = toward the right
    for _, r in idx.iterrows():
        inst = by_ras_x[int(r["slice_index"])]
        np.testing.assert_allclose(load_npy(tmp_path / "W" / r["image"]),
                                   _ref_norm(pixels[inst].astype(np.float64)), atol=1e-6)
        assert r["source_format"] == "dicom-series"
        assert (float(r["spacing_row"]), float(r["spacing_col"])) == pytest.approx((0.5, 0.7))
    assert idx.iloc[3]["slice_index"] == "1"
    world = slice_to_world(json.loads(idx.iloc[0]["geometry"]), 0, 0)
    assert world[0] == pytest.approx(-16.0)                 # slice 0 is the most patient-left (RAS x = -16)
