"""OUT/datalist.json: the manifest's rows as a MONAI datalist, loadable by monai.data.load_decathlon_datalist."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medsoft_aug.manifest import MANIFEST_COLUMNS, datalist_path, merge_manifests, write_datalist, write_manifest


def _rows(folder, n_real=(3, 1, 2), n_syn=2):
    rows = []
    for split, n in zip(("train", "val", "test"), n_real):
        for i in range(n):
            rows.append({"sample_id": f"{split}{i}", "patient_id": f"p{split}{i}", "split": split,
                         "label": ["normal", "benign"][i % 2], "origin": "real", "image": f"real/{split}{i}.png",
                         "mask": f"real/{split}{i}_mask.npy" if i else ""})
    for i in range(n_syn):
        rows.append({"sample_id": f"syn-benign-{i:05d}", "patient_id": "ptrain0", "split": "train", "label": "benign",
                     "origin": "synthetic", "image": f"synthetic/benign/syn-benign-{i:05d}.dcm",
                     "mask": f"synthetic/benign/syn-benign-{i:05d}_mask.npy"})
    df = pd.DataFrame([{c: "" for c in MANIFEST_COLUMNS} | r for r in rows], columns=MANIFEST_COLUMNS)
    for rel in [*df["image"], *[m for m in df["mask"] if m]]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    (folder / "synthetic/benign/syn-benign-00000_seg.dcm").write_bytes(b"x")      # one SEG beside its image
    return df


def test_datalist_loads_in_monai_with_the_manifests_rows(tmp_path):
    monai_data = pytest.importorskip("monai.data")
    df = _rows(tmp_path)
    write_manifest(tmp_path / "manifest.csv", df)
    write_datalist(datalist_path(tmp_path / "manifest.csv"), df)
    raw = json.loads((tmp_path / "datalist.json").read_text())
    assert raw["labels"] == {"0": "benign", "1": "normal"} and raw["numTraining"] == 5
    for key, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        items = monai_data.load_decathlon_datalist(str(tmp_path / "datalist.json"), is_segmentation=False,
                                                   data_list_key=key, base_dir=str(tmp_path))
        want = df[df.split == split]
        assert [it["sample_id"] for it in items] == sorted(want.sample_id, key=lambda s: (s.startswith("syn"), s))
        for it in items:
            r = want.set_index("sample_id").loc[it["sample_id"]]
            assert it["image"] == str(tmp_path / r.image)                      # resolved against base_dir
            assert raw["labels"][str(it["label"])] == r.label == it["class"]
            assert ("mask" in it) == bool(r["mask"]) and (not r["mask"] or it["mask"] == str(tmp_path / r["mask"]))
    seg = [it for it in raw["training"] if "seg" in it]
    assert [it["sample_id"] for it in seg] == ["syn-benign-00000"]


def test_manifest_merge_writes_the_datalist_beside(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    df = _rows(a)
    write_manifest(a / "manifest.csv", df.iloc[:4])
    b.mkdir()
    for rel in df["image"].iloc[4:]:
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_bytes(b"x")
    write_manifest(b / "manifest.csv", df.iloc[4:])
    merge_manifests([a / "manifest.csv", b / "manifest.csv"], tmp_path / "m" / "all.csv")
    dl = json.loads((tmp_path / "m" / "all.datalist.json").read_text())
    n = sum(len(dl[k]) for k in ("training", "validation", "test"))
    assert n == len(df) and np.all([not it["image"].startswith("/") for it in dl["training"]])
