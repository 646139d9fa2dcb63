"""Privacy as a property (PS3.15 Annex E): no value planted in any text attribute, private tag or nested sequence
of a donor reaches any output byte, log line or stderr of `ingest` -> `masks build` -> `balance --output-format
dicom`, even where the value makes pydicom warn while reading."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest

from _privacy_helpers import Markers, leaks, text_keywords, write_marked_study


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "medsoft_aug.cli.app", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_no_planted_marker_reaches_any_output(tmp_path, tiny_model_dir):
    markers, rng = Markers(), np.random.default_rng(5)
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    rows = []          # donors: a single-file image and a series; target ratio 2 makes both be used
    for i, (label, n_slices) in enumerate([("normal", 1), ("normal", 3), ("benign", 1)]):
        rel = f"study{i}" if n_slices > 1 else f"a/im{i}.dcm"
        write_marked_study(images / rel, markers, rng, n_slices=n_slices)
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i}", "image": rel, "label": label, "x": "20",
                     "y": "20", "split": "train", "description": "bright round lesion" if label == "benign" else ""})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    assert len(text_keywords()) > 2000     # the whole dictionary, not a hand list
    work, out, model = tmp_path / "work", tmp_path / "out", tiny_model_dir
    runs = {"ingest": _cli("ingest", "--labels", str(tmp_path / "labels.csv"), "--images", str(images),
                           "--out", str(work), "--json")}
    assert runs["ingest"].returncode == 0, runs["ingest"].stderr[-2000:]
    runs["masks"] = _cli("masks", "build", str(work), "--source", "coords", "--box-mm", "12", "--json")
    assert runs["masks"].returncode == 0, runs["masks"].stderr[-2000:]
    runs["balance"] = _cli("balance", str(work), "--model", str(model), "--out", str(out), "--steps", "2",
                           "--target-ratio", "2", "--device", "cpu", "--output-format", "dicom", "--json")
    assert runs["balance"].returncode == 0, runs["balance"].stderr[-2000:]
    dcm = sorted(out.rglob("*.dcm"))
    dcm = [p for p in dcm if not p.name.endswith("_seg.dcm")]
    assert len(dcm) == 3, "not every planned sample was written"
    texts = {f"{k} {s}": getattr(r, s) for k, r in runs.items() for s in ("stdout", "stderr")}
    found = leaks([work, out], texts)
    assert not found, f"{len(found)} leak(s), first: {found[:5]}"
    # the markers did make pydicom warn, and the warnings were reported without values
    assert "header warning(s) while reading, values withheld" in runs["ingest"].stderr
    assert "invalid value for VR" in runs["ingest"].stderr
    segs = sorted(out.rglob("*_seg.dcm"))                    # the soft masks as FRACTIONAL SEGs, checked above too
    assert len(segs) == 3 and all(pydicom.dcmread(s).SegmentationType == "FRACTIONAL" for s in segs)
    _check_datalist(out)
    ds = pydicom.dcmread(dcm[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.Modality == "MR"
    assert not any(e.tag.is_private for e in ds.iterall())


def _check_datalist(out):
    """OUT/datalist.json loads in MONAI and lists exactly the manifest's rows, SEGs beside DICOM images."""
    from monai.data import load_decathlon_datalist

    from medsoft_aug.manifest import read_manifest

    man = read_manifest(out / "manifest.csv")
    items = load_decathlon_datalist(str(out / "datalist.json"), data_list_key="training", base_dir=str(out))
    assert sorted(it["sample_id"] for it in items) == sorted(man[man.split == "train"].sample_id)
    syn = [it for it in items if it["synthetic"] is True]
    assert len(syn) == 3 and all(it["seg"].endswith("_seg.dcm") and it["image"].endswith(".dcm") for it in syn)
