"""`balance` hardening: the resume ledger (append-only, torn line ignored), manifest.csv only when complete,
--force with a smaller plan, real rows linked/copied once, the MODEL_DIR's training-WORK fingerprint, plan checks
before any model loads (classes, size, DICOM donors)."""
from __future__ import annotations

import json
import os
import types

import pandas as pd
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.fsutil import sha256_file
from medsoft_aug.manifest import LEDGER_FILE, MANIFEST_COLUMNS, Ledger, read_manifest

from _balance_helpers import one_thread, write_work

COUNTS = {"normal": 6, "benign": 2, "malignant": 4}
DESCS = {"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]}
FAST = ["--steps", "2", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ledger")
    work = write_work(root / "work", COUNTS, split_counts={"test": {"normal": 2}}, descriptions=DESCS)
    with one_thread():
        yield types.SimpleNamespace(root=root, work=work, model=tiny_model_dir)


def _run(*args):
    return CliRunner().invoke(app, ["balance", *map(str, args)])


def _row(sid: str, **kw) -> dict:
    return {c: "" for c in MANIFEST_COLUMNS} | {"sample_id": sid, "origin": "synthetic"} | kw


# ---- the ledger itself ---------------------------------------------------------------------------------------
def test_ledger_appends_and_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / LEDGER_FILE
    with Ledger(path) as led:
        led.append([_row("a", seed="1"), _row("b")])
        led.append([])
        led.append([_row("a", seed="2")])                          # a later line replaces an earlier one
    assert Ledger.read(path)["a"]["seed"] == "2" and set(Ledger.read(path)) == {"a", "b"}
    whole = path.read_bytes()
    with open(path, "ab") as fh:                                    # a kill in the middle of a write
        fh.write(b'{"sample_id": "c", "origin": "synth')
    assert set(Ledger.read(path)) == {"a", "b"}
    with Ledger(path) as led:                                       # the torn tail is cut before appending
        led.append([_row("d")])
    assert path.read_bytes() == whole + json.dumps(_row("d")).encode() + b"\n"
    assert set(Ledger.read(path)) == {"a", "b", "d"}
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"{not json"                                         # a damaged line: its sample is redone
    path.write_bytes(b"\n".join(lines))
    assert set(Ledger.read(path)) == {"a", "d"}
    with Ledger(path, reset=True) as led:
        led.append([_row("e")])
    assert set(Ledger.read(path)) == {"e"}
    assert Ledger.read(tmp_path / "none.jsonl") == {}


# ---- balance runs --------------------------------------------------------------------------------------------
def test_manifest_written_once_when_complete_and_the_ledger_grows_by_batches(env, monkeypatch):
    import medsoft_aug.generate.outdir as outdir
    import medsoft_aug.manifest as manifest

    writes, sizes = [], []
    orig_write, orig_append = outdir.write_manifest, manifest.Ledger.append

    def counting_write(path, rows):
        writes.append(len(rows))
        return orig_write(path, rows)

    def watching_append(self, rows):
        rows = list(rows)
        assert not (out / "manifest.csv").exists()               # never while the run goes
        sizes.append(len(rows))
        return orig_append(self, rows)

    monkeypatch.setattr(outdir, "write_manifest", counting_write)
    monkeypatch.setattr(manifest.Ledger, "append", watching_append)
    out = env.root / "once"
    r = _run(env.work, "--model", env.model, "--out", out, "--json", *FAST)
    assert r.exit_code == 0, r.stderr
    n_real = len(pd.read_csv(env.work / "index.csv"))
    assert writes == [n_real + 6]                                   # one manifest.csv, at the end
    assert sizes == [0, n_real, 2, 2, 2]                            # (nothing to carry over), real rows, 3 batches
    man = read_manifest(out / "manifest.csv")
    assert man.set_index("sample_id").to_dict("index") == {
        k: {c: v[c] for c in MANIFEST_COLUMNS if c != "sample_id"} for k, v in Ledger.read(out / LEDGER_FILE).items()}


def test_killed_run_has_no_manifest_and_resumes_without_recopying_real_rows(env, monkeypatch):
    import medsoft_aug.generate.batches as batches

    out = env.root / "killed"
    orig, calls = batches.write_sample, {"n": 0}

    def dying_write(*a, **k):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(batches, "write_sample", dying_write)
    r = _run(env.work, "--model", env.model, "--out", out, *FAST)
    assert r.exit_code == 130 and not (out / "manifest.csv").exists()
    assert json.loads((out / "balance.json").read_text())["status"] == "running"
    real = {p: p.stat().st_mtime_ns for p in (out / "real").iterdir()}
    monkeypatch.setattr(batches, "write_sample", orig)
    r = _run(env.work, "--model", env.model, "--out", out, "--json", *FAST)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["skipped"] == 2 and json.loads(r.stdout)["generated"] == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "real").iterdir()} == real     # copied once per OUT
    man = read_manifest(out / "manifest.csv")
    assert all(sha256_file(out / p) == s for p, s in zip(man.image, man.sha256))


def test_real_masks_are_hard_links_when_byte_identical(env):
    out = env.root / "once"
    if not (out / "manifest.csv").is_file():
        pytest.skip("needs test_manifest_written_once_when_complete_and_the_ledger_grows_by_batches")
    man = read_manifest(out / "manifest.csv")
    real = man[(man.origin == "real") & (man["mask"] != "")]
    assert len(real)
    for _, row in real.iterrows():
        dst, src = out / row["mask"], env.work / "masks" / f"{row.sample_id}.npy"
        assert os.path.samefile(dst, src) and dst.read_bytes() == src.read_bytes()


def test_real_mask_that_would_change_is_copied_not_linked(tmp_path):
    import numpy as np

    from medsoft_aug.generate.outdir import link_or_save_npy

    src = tmp_path / "m64.npy"
    np.save(src, np.linspace(0, 1, 12).reshape(3, 4))             # float64: the output must be float32
    link_or_save_npy(src, tmp_path / "out.npy")
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and not os.path.samefile(src, tmp_path / "out.npy")
    np.testing.assert_array_equal(got, np.load(src).astype(np.float32))


def test_force_with_a_smaller_plan_removes_unlisted_images(env):
    out = env.root / "shrink"
    assert _run(env.work, "--model", env.model, "--out", out, *FAST).exit_code == 0
    before = {p.relative_to(out).as_posix() for p in (out / "synthetic").rglob("*") if p.is_file()}
    r = _run(env.work, "--model", env.model, "--out", out, "--force", "--target-ratio", "0.5", *FAST)
    assert r.exit_code == 0, r.stderr
    man = read_manifest(out / "manifest.csv")
    listed = {v for c in ("image", "mask") for v in man[c] if v}
    files = {p.relative_to(out).as_posix() for sub in ("real", "synthetic") for p in (out / sub).rglob("*")
             if p.is_file()}
    assert files == listed and len(before) > len(files & before)   # orphans of the larger plan are gone
    assert (man.origin == "synthetic").sum() == 1                   # ceil(0.5 * 6) - 2 benign, 0 malignant


def test_model_trained_on_another_work_warns(env, tmp_path):
    out = tmp_path / "o"
    r = _run(env.work, "--model", env.model, "--out", out, "--json", "--classes", "benign", *FAST)
    assert r.exit_code == 0, r.stderr
    assert "trained on another WORK" in r.stderr
    rec = json.loads((out / "balance.json").read_text())
    assert len(rec["warnings"]) == 1 and "another WORK" in rec["warnings"][0]
    assert json.loads(r.stdout)["warnings"] == rec["warnings"]
    own = env.model.parent / "work"                                 # the WORK the model was trained on
    r = _run(own, "--model", env.model, "--out", tmp_path / "o2", "--json", "--classes", "benign", *FAST)
    assert r.exit_code == 0, r.stderr
    assert "another WORK" not in r.stderr and json.loads(r.stdout)["warnings"] == []


# ---- the plan, checked before any model loads -----------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    import medsoft_aug.generate.runner as runner

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(runner, "Generator", boom)


def test_class_case_mismatch_is_refused_with_the_near_match(env, tmp_path, no_model):
    r = _run(env.work, "--model", env.model, "--out", tmp_path / "o", "--classes", "Benign", *FAST)
    assert r.exit_code == 3 and r.stderr.startswith("Error: ") and "did you mean 'benign'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_outsized_plan_is_refused_at_once_unless_allowed(env, no_model):
    r = _run(env.work, "--target-ratio", "1e9", "--dry-run")
    assert r.exit_code == 2 and "--max-synthetic" in r.stderr and "Traceback" not in r.stderr
    r = _run(env.work, "--target-ratio", "300", "--dry-run", "--max-synthetic", "4000", "--classes", "benign")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["total_to_generate"] == 1798 == len(json.loads(r.stdout)["items"])


def test_dicom_output_with_non_dicom_donors_is_found_in_the_plan(env, tmp_path, no_model):
    r = _run(env.work, "--output-format", "dicom", "--dry-run")      # write_work's donors are not DICOM
    assert r.exit_code == 3 and "needs DICOM donors" in r.stderr
    r = _run(env.work, "--model", env.model, "--out", tmp_path / "o", "--output-format", "dicom",
             "--images", tmp_path, *FAST)
    assert r.exit_code == 3 and "needs DICOM donors" in r.stderr and not (tmp_path / "o").exists()
    mixed = write_work(tmp_path / "mixed", {"normal": 4, "benign": 1}, descriptions=DESCS)
    idx = pd.read_csv(mixed / "index.csv", dtype=str, keep_default_na=False)
    idx.loc[idx.label == "normal", "source_format"] = ["dicom", "nifti", "dicom-series", "raster"]
    idx.to_csv(mixed / "index.csv", index=False)
    (mixed / "masks.json").unlink(missing_ok=True)
    r = _run(mixed, "--output-format", "dicom", "--dry-run")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["donors"]["pool"] == 2 and doc["donors"]["excluded_not_dicom"] == {"nifti": 1, "raster": 1}
    assert set(doc["donors"]["uses"]) <= set(idx[idx.source_format.str.startswith("dicom")].sample_id)
