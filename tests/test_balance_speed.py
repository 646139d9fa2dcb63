"""`balance` speed options end to end (tiny model, CPU).

Each finished batch is written on a background thread while the next is generated (generate/writeback.py): the
outputs are byte-identical to the sequential loop, and a failure inside the writer surfaces exactly as the same
failure in the loop does (exit code, Error line, ledger). ``--batch-size auto`` (the CPU default there) and
``--deepcache-interval`` are recorded in balance.json; DeepCache changes the images, auto does not."""
from __future__ import annotations

import json
import types

import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.generate import batches
from medsoft_aug.manifest import LEDGER_FILE, Ledger, read_manifest

from _balance_helpers import one_thread, write_work

COUNTS = {"normal": 5, "benign": 2, "malignant": 3}
DESCS = {"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]}
N_SYN = (5 - 2) + (5 - 3)
FAST = ["--steps", "2", "--batch-size", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("overlap")
    work = write_work(root / "work", COUNTS, descriptions=DESCS)
    with one_thread():
        yield types.SimpleNamespace(root=root, work=work, model=tiny_model_dir)


def _run(env, out, *extra):
    return CliRunner().invoke(app, ["balance", str(env.work), "--model", str(env.model), "--out", str(out),
                                    *FAST, *extra])


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "balance.json" and not p.name.endswith(".lock")}


def _record(out):
    rec = json.loads((out / "balance.json").read_text())
    for k in ("timings", "images_per_s", "versions"):
        rec.pop(k, None)
    rec.get("selection", {}).pop("seconds_per_kept_sample", None)
    return rec


def test_outputs_byte_identical_with_and_without_overlap(env, monkeypatch):
    assert batches.WRITE_AHEAD >= 1                                  # on by default
    r = _run(env, env.root / "overlap")
    assert r.exit_code == 0, r.stderr[-800:]
    monkeypatch.setattr(batches, "WRITE_AHEAD", 0)                   # the sequential loop
    r = _run(env, env.root / "inline")
    assert r.exit_code == 0, r.stderr[-800:]
    a, b = _files(env.root / "overlap"), _files(env.root / "inline")
    assert a.keys() == b.keys() and len([k for k in a if k.startswith("synthetic/")]) == 2 * N_SYN
    assert a == b                                                    # ledger order, manifest, images, masks
    assert _record(env.root / "overlap") == _record(env.root / "inline")


def _failing_writer(monkeypatch, fail_at: int, exc: Exception):
    real, calls = batches.write_image, []

    def write_image(*a, **k):
        calls.append(1)
        if len(calls) == fail_at:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(batches, "write_image", write_image)


@pytest.mark.parametrize("ahead", [1, 0])
def test_writer_failure_is_the_same_clean_error(env, monkeypatch, ahead):
    """A disk error while writing the 3rd sample: exit 5 (a system error) with one Error line, no traceback, the
    ledger listing exactly the 2 samples written before it, in both modes; the rerun completes."""
    monkeypatch.setattr(batches, "WRITE_AHEAD", ahead)
    _failing_writer(monkeypatch, 3, OSError(28, "No space left on device"))
    out = env.root / f"disk-full-{ahead}"
    r = _run(env, out)
    assert r.exit_code == 5
    assert r.stderr.strip().splitlines()[-1] == ("Error: system error: No space left on device; fix it (free "
                                                 "space, permissions) and rerun the same command to resume")
    assert "Traceback" not in r.stderr
    syn = [s for s, row in Ledger.read(out / LEDGER_FILE).items() if row["origin"] == "synthetic"]
    assert len(syn) == 2 and not (out / "manifest.csv").exists()
    monkeypatch.undo()
    r = _run(env, out)
    assert r.exit_code == 0, r.stderr[-800:]
    assert (read_manifest(out / "manifest.csv").origin == "synthetic").sum() == N_SYN


def test_a_sample_error_in_the_writer_is_a_listed_failure(env, monkeypatch):
    from medsoft_aug.errors import InputError

    _failing_writer(monkeypatch, 2, InputError("benign-x: donor window_hi must exceed window_lo"))
    r = _run(env, env.root / "partial", "--json")
    assert r.exit_code == 4
    doc = json.loads(r.stdout)
    assert [f["problem"] for f in doc["failures"]] == ["benign-x: donor window_hi must exceed window_lo"]


def test_batch_size_auto_and_deepcache_recorded(env):
    out = env.root / "dc"
    r = _run(env, out, "--batch-size", "auto", "--deepcache-interval", "2")
    assert r.exit_code == 0, r.stderr[-800:]
    rec = json.loads((out / "balance.json").read_text())
    assert rec["batch"] == {"requested": "auto", "size": 8, "how": "cpu default"}
    assert rec["options"]["deepcache_interval"] == 2
    plain = env.root / "overlap"                       # batch size 1, DeepCache off (the first test's run)
    if plain.is_dir():
        a, b = _files(out), _files(plain)
        syn = [k for k in a if k.startswith("synthetic/") and k.endswith(".png")]
        assert syn and all(k in b for k in syn) and any(a[k] != b[k] for k in syn)
    bad = _run(env, env.root / "bad", "--batch-size", "many")
    assert bad.exit_code == 2 and "--batch-size" in bad.stderr
    bad = _run(env, env.root / "bad", "--deepcache-interval", "2", "--compile")
    assert bad.exit_code == 2 and "--deepcache-interval" in bad.stderr
