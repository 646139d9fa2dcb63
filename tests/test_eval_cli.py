"""`medsoft-aug evaluate ...` through the CLI: exit codes, one JSON document, the report folder."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _eval_helpers import eval_one_thread, make_manifest  # noqa: F401 - fixture used by pytest
from medsoft_aug.cli.app import app

runner = CliRunner()


def _classify(manifest, out, *extra):
    return runner.invoke(app, ["evaluate", "classify", "--manifest", str(manifest), "--out", str(out), "--seeds", "1",
                               "--epochs", "1", "--resolution", "32", "--batch-size", "16", "--device", "cpu",
                               *extra])


def test_missing_manifest_is_exit_3(tmp_path):
    r = _classify(tmp_path / "nope.csv", tmp_path / "out")
    assert r.exit_code == 3
    assert r.stderr.startswith("Error: ") and "not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_manifest_missing_columns_is_exit_3(tmp_path):
    p = tmp_path / "m.csv"
    pd.DataFrame({"sample_id": ["a"], "label": ["x"], "image": ["a.png"]}).to_csv(p, index=False)
    r = _classify(p, tmp_path / "out")
    assert r.exit_code == 3 and "missing columns" in r.stderr and "origin" in r.stderr and "split" in r.stderr
    assert not (tmp_path / "out").exists()


def test_no_test_rows_is_exit_3(tmp_path):
    p = make_manifest(tmp_path / "d", n_test={})
    r = _classify(p, tmp_path / "out")
    assert r.exit_code == 3 and "no real test rows" in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_image_names_the_sample(tmp_path):
    p = make_manifest(tmp_path / "d")
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    (p.parent / df.loc[3, "image"]).unlink()
    r = _classify(p, tmp_path / "out")
    assert r.exit_code == 3 and df.loc[3, "sample_id"] in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_option_is_usage_error(tmp_path):
    p = make_manifest(tmp_path / "d")
    r = _classify(p, tmp_path / "out", "--method", "magic")
    assert r.exit_code == 2


@pytest.mark.slow
def test_classify_json_and_report(tmp_path):
    p = make_manifest(tmp_path / "d", n_train={"normal": 6, "benign": 2}, n_test={"normal": 2, "benign": 2},
                      n_synth={"benign": 4})
    r = _classify(p, tmp_path / "out", "--json", "--report", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["metrics"]) == {"baseline", "oversample", "classical", "medsoft"}
    assert doc["class_names"] == ["benign", "normal"] and doc["n_test"] == 4
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk == doc["metrics"]
    names = {f.name for f in (tmp_path / "rep").iterdir()}
    assert {"metrics.json", "summary.md", "f1_per_class.png", "roc.png", "confusion.png",
            "contact_medsoft.png"} <= names
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "| baseline |" in summary and "| medsoft |" in summary and "| Method | AUC | Acc |" in summary
    assert "| benign (disease) | medsoft |" in summary and "| medsoft vs baseline |" in summary
    assert "no flips" in summary
    from PIL import Image

    for f in ("f1_per_class.png", "roc.png", "confusion.png", "contact_medsoft.png"):
        with Image.open(tmp_path / "rep" / f) as im:
            assert im.width > 200 and im.height > 150 and len(np.unique(np.asarray(im.convert("L")))) > 20, f
    # a rerun is served from OUT (same manifest and options) and still writes the requested report
    import shutil

    shutil.rmtree(tmp_path / "rep")
    r1 = _classify(p, tmp_path / "out", "--json", "--report", str(tmp_path / "rep"))
    assert r1.exit_code == 0 and json.loads(r1.stdout)["cached"] is True
    assert (tmp_path / "rep" / "roc.png").is_file()
    # the separate report command rebuilds it from the finished run
    r2 = runner.invoke(app, ["evaluate", "report", "--out", str(tmp_path / "rep2"), "--classify",
                             str(tmp_path / "out"), "--json"])
    assert r2.exit_code == 0, r2.stderr
    assert any(f.endswith("roc.png") for f in json.loads(r2.stdout)["files"])


def test_named_manifests_with_different_test_splits_exit_3(tmp_path):
    a = make_manifest(tmp_path / "a", n_train={"normal": 4, "benign": 2}, n_test={"normal": 2, "benign": 2},
                      n_synth={"benign": 2})
    b = make_manifest(tmp_path / "b", n_train={"normal": 4, "benign": 2}, n_test={"normal": 2, "benign": 2},
                      n_synth={"benign": 2}, seed=1)                  # same ids, other pixels
    r = runner.invoke(app, ["evaluate", "classify", "--manifest", str(a), "--manifest", f"no-smis={b}", "--out",
                            str(tmp_path / "out"), "--seeds", "1", "--epochs", "1", "--resolution", "32"])
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith("Error: manifest no-smis") and "different pixels" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    r = runner.invoke(app, ["evaluate", "classify", "--manifest", str(a), "--manifest", str(b), "--out",
                            str(tmp_path / "out")])
    assert r.exit_code == 2 and "NAME" in r.stderr


def test_report_without_inputs_is_usage_error(tmp_path):
    r = runner.invoke(app, ["evaluate", "report", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2


def test_quality_missing_work_is_exit_3(tmp_path):
    r = runner.invoke(app, ["evaluate", "quality", str(tmp_path / "nowork"), "--model",
                            str(tmp_path / "nomodel"), "--out", str(tmp_path / "q")])
    assert r.exit_code == 3 and r.stderr.startswith("Error: ")
    assert not (tmp_path / "q").exists()
