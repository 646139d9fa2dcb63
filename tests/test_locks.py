"""One run per folder (issue 8 section 4): a second run on a locked WORK exits 3 naming the holder (pid, host),
the lock of a killed run is taken over, and a refused run touches nothing. Real processes (subprocess)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import medsoft_aug
from medsoft_aug.errors import InputError
from medsoft_aug.locks import INFO_NAME, LOCK_NAME, FolderInUseError, folder_lock

from _ingest_helpers import write_csv, write_png

REPO = Path(medsoft_aug.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}
HOLDER = """
import sys, time
from medsoft_aug.locks import folder_lock
with folder_lock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(folder: Path, stage: str) -> subprocess.Popen:
    """A second real process holding ``folder``'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), stage], stdout=subprocess.PIPE, env=ENV,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsoft_aug.cli.app", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=120)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    for k in range(2):
        write_png(images / f"p{k}.png", rng.integers(0, 255, (12, 10), dtype=np.uint8))
    labels = write_csv(tmp_path / "labels.csv", [{"image": "p0.png", "label": "normal"},
                                                 {"image": "p1.png", "label": "tumor"}])
    return tmp_path, images, labels


def test_second_ingest_refused_then_stale_lock_taken_over(dataset):
    root, images, labels = dataset
    work = root / "W"
    holder = _hold(work, "ingest")
    try:
        (work / ".ingest-partial-inflight").mkdir()  # the holder's work in progress: must survive the refusal
        r = _cli("ingest", "--labels", labels, "--images", images, "--out", work)
        assert r.returncode == 3, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in r.stderr
        assert str(work) in errors[0] and "in use" in errors[0]
        assert f"pid {holder.pid}" in errors[0] and socket.gethostname() in errors[0]
        assert (work / ".ingest-partial-inflight").is_dir()
        assert not (work / "index.csv").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder left its lock and info files behind: the next run takes the lock over and cleans up
    assert (work / LOCK_NAME).exists() and json.loads((work / INFO_NAME).read_text())["pid"] == holder.pid
    r = _cli("ingest", "--labels", labels, "--images", images, "--out", work)
    assert r.returncode == 0, r.stderr
    assert (work / "index.csv").is_file() and not (work / ".ingest-partial-inflight").exists()
    assert not (work / INFO_NAME).exists() and not (work / LOCK_NAME).exists()  # released, nothing left


def test_second_masks_build_refused(tmp_path):
    from _masks_helpers import make_work

    work = make_work(tmp_path / "w", [dict(sample_id="a", x=10, y=10)])
    holder = _hold(work, "masks build")
    try:
        r = _cli("masks", "build", work)
        assert r.returncode == 3, r.stderr
        assert "in use" in r.stderr and f"pid {holder.pid}" in r.stderr and "`masks build`" in r.stderr
        assert not (work / "masks.csv").exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_in_process(tmp_path):
    """Same process, two takers: refused too (flock is per open file); unreadable info still refuses."""
    with folder_lock(tmp_path / "f", "train", what="MODEL_DIR"):
        (tmp_path / "f" / INFO_NAME).write_text("garbage")
        with pytest.raises(FolderInUseError, match="MODEL_DIR .* is in use .*no lock information") as e:
            with folder_lock(tmp_path / "f", "train", what="MODEL_DIR"):
                pass
        assert e.value.exit_code == 3
    with folder_lock(tmp_path / "f", "train"):  # released: free again
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        with folder_lock(tmp_path / "file", "balance"):
            pass


def test_second_train_refused_before_any_model_loads(tmp_path):
    from typer.testing import CliRunner

    from _masks_helpers import make_work
    from medsoft_aug.cli.app import app
    from medsoft_aug.masks.stage import build_masks

    work = make_work(tmp_path / "w", [dict(sample_id="a", x=10, y=10), dict(sample_id="b", x=12, y=12,
                                                                             label="tumor")])
    build_masks(work)
    holder = _hold(tmp_path / "M", "train")
    try:
        r = CliRunner().invoke(app, ["train", str(work), "--out", str(tmp_path / "M"), "--device", "cpu"])
        assert r.exit_code == 3, r.stderr
        assert "MODEL_DIR" in r.stderr and "in use" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert sorted(p.name for p in (tmp_path / "M").iterdir()) == sorted([INFO_NAME, LOCK_NAME])
    finally:
        holder.kill()
        holder.wait()


def test_second_balance_refused_and_nothing_touched(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from _balance_helpers import write_work
    from medsoft_aug.cli.app import app

    work = write_work(tmp_path / "work", {"normal": 3, "benign": 1})
    out = tmp_path / "OUT"
    holder = _hold(out, "balance")
    try:
        (out / ".manifest.csv.123.tmp").write_text("the holder's temp file")
        r = CliRunner().invoke(app, ["balance", str(work), "--model", str(tiny_model_dir), "--out", str(out),
                                     "--device", "cpu"])
        assert r.exit_code == 3, r.stderr
        assert "--out" in r.stderr and "in use" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert (out / ".manifest.csv.123.tmp").read_text() == "the holder's temp file"
        assert sorted(p.name for p in out.iterdir()) == sorted([".manifest.csv.123.tmp", INFO_NAME, LOCK_NAME])
    finally:
        holder.kill()
        holder.wait()
