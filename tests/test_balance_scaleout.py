"""`balance --shard auto`: the shard from torchrun / Slurm env vars; two real processes (as torchrun starts them)
write their shards and the main one merges; the merged manifest equals a single-process run's."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _balance_helpers import one_thread, write_work
from medsoft_aug.cli.app import app
from medsoft_aug.errors import UsageError
from medsoft_aug.generate.scaleout import AutoShard, resolve_shard
from medsoft_aug.manifest import read_manifest


def test_shard_from_launcher_environment():
    assert resolve_shard({}) == AutoShard(1, 1, "none")
    assert resolve_shard({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == AutoShard(3, 4, "torch")
    assert resolve_shard({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == AutoShard(2, 2, "torch")
    assert resolve_shard({"RANK": "0", "WORLD_SIZE": "1"}) == AutoShard(1, 1, "none")
    assert resolve_shard({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3",
                          "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_COUNT": "4"}) == AutoShard(3, 4, "slurm")
    assert resolve_shard({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MAX": "1"}) == AutoShard(1, 2, "slurm")
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"},
                {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_STEP": "2",
                 "SLURM_ARRAY_TASK_COUNT": "5"}, {"SLURM_ARRAY_TASK_ID": "3"}):
        with pytest.raises(UsageError):
            resolve_shard(bad)


def test_two_processes_merge_equals_single_run(tmp_path, tiny_model_dir):
    work = write_work(tmp_path / "work", {"normal": 2, "benign": 1, "malignant": 1},
                      descriptions={"benign": ["bright"], "malignant": ["dark"]})
    fast = ["--model", str(tiny_model_dir), "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medsoft_aug.cli.app", "-q", "balance", str(work), "--out", str(out),
           "--shard", "auto", *fast]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    procs = [subprocess.Popen(cmd, env=dict(env, OMP_NUM_THREADS="1", RANK=str(r), LOCAL_RANK=str(r),
                                            WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r in (1, 0)]
    errs = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert (out / "shard-1-of-2" / "manifest.csv").is_file() and (out / "shard-2-of-2" / "manifest.csv").is_file()
    merged = read_manifest(out / "manifest.csv")
    assert (out / "datalist.json").is_file()
    with one_thread():
        r = CliRunner().invoke(app, ["balance", str(work), "--out", str(tmp_path / "single"), *fast])
    assert r.exit_code == 0, r.stderr
    single = read_manifest(tmp_path / "single" / "manifest.csv")
    a, b = single.set_index("sample_id").sort_index(), merged.set_index("sample_id").sort_index()
    assert list(a.index) == list(b.index) and (a.origin == "synthetic").sum() == 2
    # the per-sample evidence is measured on the synthetic pixels, which (like their sha256) may differ in float
    # noise between processes: equal to 1e-5 there, every other column exactly
    noisy = ("synthetic_mean", "mean_change", "contrast")
    same = [c for c in a.columns if c not in ("image", "mask", "sha256", *noisy)]
    assert a[same].equals(b[same])
    for c in noisy:
        x, y = (pd.to_numeric(t[c], errors="coerce").to_numpy(float) for t in (a, b))
        assert np.allclose(x, y, rtol=0, atol=1e-5, equal_nan=True), c
    real = a.origin == "real"
    assert a.loc[real, "sha256"].equals(b.loc[real, "sha256"])
    from PIL import Image
    for sid in a.index[~real]:   # synthetic: equal within float noise of batching and 16-bit rounding
        pa, pb = (np.asarray(Image.open(d / t.loc[sid, "image"]), dtype=np.float64) / 65535
                  for d, t in ((tmp_path / "single", a), (out, b)))
        np.testing.assert_allclose(pa, pb, atol=3e-4)


def test_scheduler_option_is_checked_before_any_work(tmp_path):
    work = write_work(tmp_path / "work", {"normal": 2, "benign": 1})
    for extra in (["--scheduler", "euler"], ["--scheduler", "unipc", "--eta", "0.5"]):
        r = CliRunner().invoke(app, ["balance", str(work), "--out", str(tmp_path / "o"), "--model",
                                     str(tmp_path / "m"), *extra])
        assert r.exit_code == 2 and "--scheduler" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "o").exists()


def test_balance_with_a_solver_records_it(tmp_path, tiny_model_dir):
    import json

    work = write_work(tmp_path / "work", {"normal": 2, "benign": 1}, descriptions={"benign": ["bright"]})
    with one_thread():
        r = CliRunner().invoke(app, ["balance", str(work), "--out", str(tmp_path / "o"), "--model",
                                     str(tiny_model_dir), "--scheduler", "dpmsolver++", "--steps", "3",
                                     "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
    rec = json.loads((tmp_path / "o" / "balance.json").read_text())
    assert rec["options"]["scheduler"] == "dpmsolver++" and rec["generated"] == 1
    assert (read_manifest(tmp_path / "o" / "manifest.csv").origin == "synthetic").sum() == 1
