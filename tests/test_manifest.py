"""Manifest schema, atomic write, merge (duplicates, conflicts, path rebasing) and the `manifest merge` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.errors import InputError, UsageError
from medsoft_aug.fsutil import sha256_file
from medsoft_aug.manifest import MANIFEST_COLUMNS, merge_manifests, read_manifest, write_manifest


def _shard(root: Path, ids: list[str], origin: str = "synthetic", payload: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for sid in ids:
        img = root / "synthetic" / f"{sid}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(f"img {sid}{payload}".encode())
        rows.append({c: "" for c in MANIFEST_COLUMNS} | {
            "sample_id": sid, "patient_id": "p1", "split": "train", "label": "benign", "origin": origin,
            "image": f"synthetic/{sid}.png", "seed": "7", "model_sha256": "abc", "sha256": sha256_file(img)})
    write_manifest(root / "manifest.csv", pd.DataFrame(rows))
    return root / "manifest.csv"


def test_schema_order_and_validation(tmp_path):
    m = _shard(tmp_path / "a", ["syn-b-00001", "syn-b-00000"])
    df = read_manifest(m)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert list(df.sample_id) == ["syn-b-00000", "syn-b-00001"]
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest(tmp_path / "x.csv", pd.concat([df, df]))
    (tmp_path / "bad.csv").write_text("sample_id,label\na,b\n")
    with pytest.raises(InputError, match="missing columns"):
        read_manifest(tmp_path / "bad.csv")
    assert not list(tmp_path.glob(".x.csv*"))                  # no temp file left behind


def test_merge_rebases_paths_and_reports_duplicates(tmp_path):
    a = _shard(tmp_path / "s1", ["syn-b-00000", "syn-b-00002"])
    b = _shard(tmp_path / "s2", ["syn-b-00001", "syn-b-00002"])
    res = merge_manifests([a, b], tmp_path / "all" / "m.csv")
    assert res.n_rows == 3 and res.duplicates == ["syn-b-00002"] and res.models == ["abc"]
    df = read_manifest(tmp_path / "all" / "m.csv")
    for p, s in zip(df.image, df.sha256):
        assert p.startswith("../s") and sha256_file(tmp_path / "all" / p) == s


def test_merge_conflict_writes_nothing(tmp_path):
    a = _shard(tmp_path / "s1", ["syn-b-00000"])
    b = _shard(tmp_path / "s2", ["syn-b-00000"], payload="other")
    with pytest.raises(InputError, match="conflict.*syn-b-00000"):
        merge_manifests([a, b], tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(UsageError):
        merge_manifests([a], a)


def test_merge_missing_image_is_input_error(tmp_path):
    a = _shard(tmp_path / "s1", ["syn-b-00000"])
    (tmp_path / "s1" / "synthetic" / "syn-b-00000.png").unlink()
    with pytest.raises(InputError, match="syn-b-00000: image listed"):
        merge_manifests([a], tmp_path / "m.csv")


def test_cli_merge_json_and_conflict_exit_code(tmp_path):
    a = _shard(tmp_path / "s1", ["syn-b-00000"])
    b = _shard(tmp_path / "s2", ["syn-b-00001"])
    (tmp_path / "m").mkdir()
    r = CliRunner().invoke(app, ["manifest", "merge", str(a), str(b), "--out", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)                                  # an existing folder gets FOLDER/manifest.csv
    assert doc["rows"] == 2 and doc["out"] == str(tmp_path / "m" / "manifest.csv")
    assert len(read_manifest(tmp_path / "m" / "manifest.csv")) == 2
    c = _shard(tmp_path / "s3", ["syn-b-00000"], payload="x")
    r = CliRunner().invoke(app, ["manifest", "merge", str(a), str(c), "--out", str(tmp_path / "m2.csv")])
    assert r.exit_code == 3 and r.stderr.startswith("Error: ") and "conflict" in r.stderr
