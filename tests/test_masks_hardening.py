"""`masks build` on damaged WORK folders and after interruptions (issue 8 sections 2 and 3): exit 3 with one
`Error:` line for an unusable index.csv or masks/ path; reuse only of verified masks; a run killed while
rebuilding with new options never leaves masks of two option sets under one record."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import medsoft_aug
from medsoft_aug.cli.app import app
from medsoft_aug.fsutil import sha256_file
from medsoft_aug.masks.stage import build_masks
from medsoft_aug.workdir import read_masks

from _masks_helpers import make_work, phantom_seg

runner = CliRunner()
REPO = Path(medsoft_aug.__file__).resolve().parents[1]


def _samples():
    seg = phantom_seg(shape=(64, 48))
    return [dict(sample_id="n1", seg=seg, level="L2"), dict(sample_id="n2", seg=seg, level="L3"),
            dict(sample_id="t1", x=20, y=20, label="tumor", spacing=(0.7, 0.7)),
            dict(sample_id="t2", x=30, y=40, label="tumor", spacing=(0.8, 0.6))]


def _exit3(work, *needles):
    r = runner.invoke(app, ["masks", "build", str(work)])
    assert r.exit_code == 3, (r.exit_code, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr and "unexpected failure" not in r.stderr, r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    assert not (work / "masks.csv").exists()


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b"", "is empty"),
    (lambda b: b[: len(b) - 25], "line 5"),                       # cut inside the last row
    (lambda b: b.replace(b"t1", b"t\xff1", 1), "not UTF-8"),
    (lambda b: b.replace(b"n2", b"n\x002", 1), "NUL byte"),
])
def test_unusable_index_csv_exit_3(tmp_path, damage, needle):
    work = make_work(tmp_path / "w", _samples())
    (work / "index.csv").write_bytes(damage((work / "index.csv").read_bytes()))
    _exit3(work, "index.csv", needle)


def test_regular_file_where_masks_folder_goes(tmp_path):
    work = make_work(tmp_path / "w", _samples())
    (work / "masks").write_text("not a folder")
    _exit3(work, "masks", "not a folder")
    assert (work / "masks").read_text() == "not a folder"


def test_garbage_mask_file_is_rebuilt_not_reused(tmp_path):
    work = make_work(tmp_path / "w", _samples())
    build_masks(work)
    good = (work / "masks/t1.npy").read_bytes()
    (work / "masks/t1.npy").write_bytes(b"\x93NUMPY garbage" * 7)
    res = build_masks(work)
    assert (res.reused, res.computed) == (3, 1)
    assert (work / "masks/t1.npy").read_bytes() == good
    # a valid .npy with other values (hand-edited) is caught by its hash as well
    np.save(work / "masks/n1.npy", np.zeros((64, 48), np.float32))
    assert build_masks(work).computed == 1
    record = json.loads((work / "masks.json").read_text())
    assert record["mask_sha256"]["n1"] == sha256_file(work / "masks/n1.npy")


KILLER = """
import os, signal, sys
import medsoft_aug.masks.stage as st
calls = {"n": 0}
real = st.atomic_save_npy
def save(path, arr):
    real(path, arr)
    calls["n"] += 1
    if calls["n"] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)   # no cleanup runs, as with kill -9 or a power cut
st.atomic_save_npy = save
st.build_masks(sys.argv[1], sigma_mm=1.0, dilate_mm=1.0)
"""


@pytest.mark.parametrize("kill_after", [2, 4])
def test_sigkill_during_rebuild_with_new_options_then_rerun(tmp_path, kill_after):
    work = make_work(tmp_path / "w", _samples())
    fresh = tmp_path / "fresh"
    shutil.copytree(work, fresh)
    build_masks(work)                                   # sigma 3 mm
    before = {p.name: p.read_bytes() for p in (work / "masks").iterdir()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(work), str(kill_after)], env=env, timeout=120)
    assert proc.returncode == -9
    # what a reader of WORK sees now: the previous run's record, and exactly the masks it describes
    rows = read_masks(work)
    assert set(rows["sigma_mm"]) == {"3.0"} and set(rows["dilate_mm"]) == {"0.0"}
    assert {p.name: p.read_bytes() for p in (work / "masks").iterdir()} == before
    shas = json.loads((work / "masks.json").read_text())["mask_sha256"]
    assert all(sha256_file(work / r["mask"]) == shas[r["sample_id"]] for r in rows.to_dict("records"))
    # the rerun with the new options rebuilds everything, equal to a fresh build, and cleans the staging left
    res = build_masks(work, sigma_mm=1.0, dilate_mm=1.0)
    assert res.computed == 4 and not list(work.glob(".masks-*"))
    build_masks(fresh, sigma_mm=1.0, dilate_mm=1.0)
    for p in (fresh / "masks").iterdir():
        assert (work / "masks" / p.name).read_bytes() == p.read_bytes()
    assert set(read_masks(work)["sigma_mm"]) == {"1.0"}
