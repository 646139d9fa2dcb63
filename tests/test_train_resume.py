"""`train` stopped at every boundary (inside the MSC stage, between the stages, inside the SMIS stage) and resumed
ends with the same bytes as a run that never stopped; a real SIGKILL too; outputs are checked before any work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.train.stage import train
from _train_helpers import make_work, one_thread  # noqa: F401 - module fixture

pytestmark = pytest.mark.usefixtures("one_thread")

# 4 diseased training samples in batches of 3: the MSC's batches straddle epochs (cached and uncached samples mix)
OPTS = dict(max_steps=3, msc_steps=4, batch_size=3, checkpoint_every=1, resolution=32, device="cpu", seed=3)
FILES = ("msc.safetensors", "adapter.safetensors")


class Stop(Exception):
    """Stands for a kill: raised from the progress callback right after a step (and its checkpoint)."""


def _stop_at(stage: str, step: int):
    def on_progress(name: str, done: int, total: int) -> None:
        if name == stage and done == step:
            raise Stop(f"{stage} {step}")
    return on_progress


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """WORK and an uninterrupted run's weight files (bytes)."""
    root = tmp_path_factory.mktemp("resume")
    work = make_work(root / "W", n_per_class=3, size=32)
    res = train(work, root / "full", **OPTS)
    assert res.complete
    return work, {f: (root / "full" / f).read_bytes() for f in FILES}, root / "full"


@pytest.mark.parametrize("stage,step", [("train msc", 2), ("train smis", 0), ("train smis", 2)],
                         ids=["inside-msc", "between-stages", "inside-smis"])
def test_resume_at_each_boundary_is_bit_identical(reference, tmp_path, stage, step):
    work, want, _ = reference
    out = tmp_path / "M"
    with pytest.raises(Stop):
        train(work, out, on_progress=_stop_at(stage, step), **OPTS)
    assert not (out / "medsoft_model.json").exists()
    torch.manual_seed(987)                      # a fresh process would not share this one's global RNG state
    torch.rand(11)
    res = train(work, out, resume="latest", **OPTS)
    assert res.complete
    for f in FILES:
        assert (out / f).read_bytes() == want[f], f
    if stage == "train smis" and step:
        assert res.stages["smis"]["resumed_from"] == step
    elif stage == "train msc":
        assert res.stages["msc"]["resumed_from"] == step


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkill_between_the_stages_then_resume_is_bit_identical(reference, tmp_path):
    """A real process killed once the MSC is done (while the SMIS stage starts), resumed in this process."""
    work, want, _ = reference
    out = tmp_path / "M"
    args = [str(work), "--out", str(out), "--max-steps", "3", "--msc-steps", "4", "--batch-size", "3",
            "--checkpoint-every", "1", "--resolution", "32", "--device", "cpu", "--seed", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "medsoft_aug.cli.app", "-q", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = out / "checkpoints" / "msc_done.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not done.is_file():
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"train ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (out / "medsoft_model.json").exists()
    res = train(work, out, resume="latest", **OPTS)
    assert res.complete
    for f in FILES:
        assert (out / f).read_bytes() == want[f], f


def test_model_dir_records_the_work_fingerprint(reference, tmp_path):
    from medsoft_aug.models.modeldir import read_meta, work_mismatch, work_record

    work, _, model = reference
    meta = read_meta(model)
    assert meta["work"]["fingerprint"] == work_record(work)["fingerprint"]
    assert work_mismatch(meta, work) is None
    other = make_work(tmp_path / "W2", n_per_class=3, size=32, seed=1)
    (other / "masks.csv").write_text((other / "masks.csv").read_text() + "\n")
    msg = work_mismatch(meta, other)
    assert msg and "another WORK" in msg and meta["work"]["fingerprint"][:12] in msg
    legacy = {"work": {k: v for k, v in meta["work"].items() if k != "fingerprint"}}
    assert work_mismatch(legacy, work) is None and work_mismatch(legacy, other)


@pytest.mark.parametrize("under", [False, True])
def test_out_naming_an_existing_file_is_refused_before_any_work(reference, tmp_path, monkeypatch, under):
    import medsoft_aug.models.base as base

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(base, "load_base_model", no_model)
    work = reference[0]
    f = tmp_path / "model.bin"
    f.write_bytes(b"keep me")
    out = f / "sub" if under else f
    res = CliRunner().invoke(app, ["train", str(work), "--out", str(out), "--device", "cpu", "--max-steps", "1"])
    assert res.exit_code == 3, res.stderr
    assert res.stderr.startswith("Error: ") and "existing file" in res.stderr and "Traceback" not in res.stderr
    assert f.read_bytes() == b"keep me"
