"""`balance` end to end on a synthetic WORK with tiny models: outputs, manifest, resume, shards, bad inputs."""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.fsutil import sha256_file
from medsoft_aug.manifest import LEDGER_FILE, MANIFEST_COLUMNS, Ledger, merge_manifests, read_manifest

from _balance_helpers import one_thread, write_work

COUNTS = {"normal": 6, "benign": 2, "malignant": 4}
SPLITS = {"test": {"normal": 2, "benign": 1}, "val": {"malignant": 1}}
DESCS = {"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]}
FAST = ["--steps", "2", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bal")
    work = write_work(root / "work", COUNTS, split_counts=SPLITS, descriptions=DESCS)
    with one_thread():
        yield types.SimpleNamespace(root=root, work=work, model=tiny_model_dir)


def _run(*args):
    r = CliRunner().invoke(app, ["balance", *map(str, args)])
    return r


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path)).astype(np.float64) / 65535.0


def test_dry_run_prints_plan_without_building_a_model(env, monkeypatch):
    import torch

    def boom(self, *a, **k):
        raise AssertionError("a torch module was constructed during --dry-run")

    monkeypatch.setattr(torch.nn.Module, "__init__", boom)
    r = _run(env.work, "--dry-run")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["counts_before"] == COUNTS | {} and doc["to_generate"] == {"benign": 4, "malignant": 2}
    assert doc["counts_after"] == {"benign": 6, "malignant": 6, "normal": 6}
    assert sum(doc["donors"]["uses"].values()) == 6 and len(doc["items"]) == 6
    assert doc["prompts"] == {"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]}


def test_full_run_outputs_manifest_and_idempotent_rerun(env):
    out = env.root / "out_full"
    r = _run(env.work, "--model", env.model, "--out", out, "--json", *FAST)
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["generated"] == 6 and summary["skipped"] == 0
    man = read_manifest(out / "manifest.csv")
    assert list(man.columns) == MANIFEST_COLUMNS
    index = pd.read_csv(env.work / "index.csv", dtype=str, keep_default_na=False)
    real = man[man.origin == "real"]
    assert sorted(real.sample_id) == sorted(index.sample_id)           # every real sample, all splits
    syn = man[man.origin == "synthetic"]
    assert len(syn) == 6 and set(syn.split) == {"train"}
    pid = dict(zip(index.sample_id, index.patient_id))
    for _, row in man.iterrows():
        assert sha256_file(out / row.image) == row.sha256
    for _, row in syn.iterrows():
        assert row.patient_id == pid[row.donor_id]
        assert row.steps == "2" and row.guidance == "7.5" and row.model_sha256
        img = _read_png(out / row.image)
        donor = np.load(env.work / "slices" / f"{row.donor_id}.npy")
        mask = np.load(out / row["mask"])
        assert np.array_equal(mask, np.load(env.work / "masks" / f"{row.donor_id}.npy"))
        zero = mask == 0
        assert np.abs(img[zero] - donor[zero]).max() <= 0.5 / 65535 + 1e-9   # donor's pixels, 16-bit rounding
        assert np.abs(img - donor)[mask > 0.5].mean() > 1e-3
    rec = json.loads((out / "balance.json").read_text())
    assert rec["status"] == "complete" and rec["plan"]["counts_after"]["benign"] == 6
    assert rec["images_per_s"] > 0 and rec["timings"]["generate_s"] > 0

    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}
    r2 = _run(env.work, "--model", env.model, "--out", out, "--json", *FAST)
    assert r2.exit_code == 0, r2.stderr
    assert json.loads(r2.stdout)["generated"] == 0 and json.loads(r2.stdout)["skipped"] == 6
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == before


def test_resume_after_kill_and_shards_give_the_same_images(env, monkeypatch):
    full = read_manifest(env.root / "out_full" / "manifest.csv") if (env.root / "out_full").exists() else None
    if full is None:
        pytest.skip("needs test_full_run_outputs_manifest_and_idempotent_rerun")
    out = env.root / "out_killed"
    import medsoft_aug.generate.batches as batches

    orig, calls = batches.write_sample, {"n": 0}

    def dying_write(*a, **k):
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if killed while writing the 4th sample
        calls["n"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(batches, "write_sample", dying_write)
    r = _run(env.work, "--model", env.model, "--out", out, "--steps", "2", "--batch-size", "2", "--device", "cpu")
    assert r.exit_code == 130
    assert not (out / "manifest.csv").exists()              # manifest.csv means complete
    man = pd.DataFrame(list(Ledger.read(out / LEDGER_FILE).values()))
    syn = man[man.origin == "synthetic"]
    assert len(syn) == 2                                    # only whole batches are listed
    assert all(sha256_file(out / p) == s for p, s in zip(syn.image, syn.sha256))
    monkeypatch.setattr(batches, "write_sample", orig)
    r = _run(env.work, "--model", env.model, "--out", out, "--json", "--steps", "2", "--batch-size", "3",
             "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["skipped"] == 2 and json.loads(r.stdout)["generated"] == 4
    _same_images(env.root / "out_full", full, out, read_manifest(out / "manifest.csv"))

    outs = []
    for k in (1, 2):
        o = env.root / f"shard{k}"
        r = _run(env.work, "--model", env.model, "--out", o, "--shard", f"{k}/2", *FAST)
        assert r.exit_code == 0, r.stderr
        outs.append(o / "manifest.csv")
    res = merge_manifests(outs + [outs[1]], env.root / "merged" / "manifest.csv")
    assert res.n_synthetic == 6 and res.n_real == len(full) - 6 and len(res.duplicates) == 3
    merged = read_manifest(env.root / "merged" / "manifest.csv")
    _same_images(env.root / "out_full", full, env.root / "merged", merged)


def _same_images(dir_a, man_a, dir_b, man_b):
    """Same samples; real images byte-identical; synthetic ones equal within float noise of batching (CPU
    convolutions sum in a batch-size-dependent order) and 16-bit rounding."""
    a, b = man_a.set_index("sample_id"), man_b.set_index("sample_id")
    assert sorted(a.index) == sorted(b.index)
    for sid in a.index:
        if a.loc[sid, "origin"] == "real":
            assert a.loc[sid, "sha256"] == b.loc[sid, "sha256"]
        else:
            assert a.loc[sid, "seed"] == b.loc[sid, "seed"] and a.loc[sid, "donor_id"] == b.loc[sid, "donor_id"]
            np.testing.assert_allclose(_read_png(dir_a / a.loc[sid, "image"]), _read_png(dir_b / b.loc[sid, "image"]),
                                       atol=3e-4)


def test_bad_inputs_exit_3(env, tmp_path):
    r = _run(env.work, "--model", tmp_path / "nope", "--out", tmp_path / "o1", *FAST)
    assert r.exit_code == 3 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "o1").exists()
    broken = write_work(tmp_path / "w2", {"normal": 3, "benign": 1})
    (broken / "masks.csv").unlink()
    r = _run(broken, "--model", env.model, "--out", tmp_path / "o2", *FAST)
    assert r.exit_code == 3 and "masks build" in r.stderr
    changed = write_work(tmp_path / "w3", {"normal": 3, "benign": 1})
    (changed / "masks.json").write_text(json.dumps({"inputs": {"index.csv": sha256_file(changed / "index.csv")}}))
    with open(changed / "index.csv", "a") as fh:
        fh.write("\n")
    r = _run(changed, "--model", env.model, "--out", tmp_path / "o3", *FAST)
    assert r.exit_code == 3 and "changed since the masks were built" in r.stderr
    r = _run(env.work, "--model", env.model, "--out", env.root / "out_full", "--steps", "3", "--device", "cpu")
    assert r.exit_code == 3 and "other options (steps)" in r.stderr.replace("\n", " ")
    r = _run(env.work, "--model", env.model, "--out", tmp_path / "o4", "--shard", "3/2")
    assert r.exit_code == 2


def test_model_trained_on_another_base_is_refused(env, tmp_path):
    other = tmp_path / "m_other"
    shutil.copytree(env.model, other)
    meta = json.loads((other / "medsoft_model.json").read_text())
    meta["base_model"]["sha256"] = "0" * 64
    (other / "medsoft_model.json").write_text(json.dumps(meta))
    r = _run(env.work, "--model", other, "--out", tmp_path / "o2", *FAST)
    assert r.exit_code == 3 and "trained on base" in r.stderr and not (tmp_path / "o2").exists()


def test_negative_prompts_are_recorded_per_row_change_the_images_and_the_fingerprint(env):
    # --negative-prompts other-classes: each synthetic row records the other class's text it was guided away
    # from, the images differ from a run without (same seeds, prompts and donors), an OUT made without it is
    # not resumed with it, and a run without it keeps the plan hash of the items without the new field.
    from medsoft_aug.generate import stage

    base = env.root / "out_full"
    if not (base / "manifest.csv").is_file():
        assert _run(env.work, "--model", env.model, "--out", base, *FAST).exit_code == 0
    out = env.root / "out_neg"
    r = _run(env.work, "--model", env.model, "--out", out, "--negative-prompts", "other-classes", "--json", *FAST)
    assert r.exit_code == 0, r.stderr
    neg = read_manifest(out / "manifest.csv").set_index("sample_id")
    plain = read_manifest(base / "manifest.csv").set_index("sample_id")
    syn = neg[neg.origin == "synthetic"]
    other = {"benign": DESCS["malignant"][0], "malignant": DESCS["benign"][0]}
    assert all(row.negative_prompt == other[row.label] for _, row in syn.iterrows())
    assert set(plain.loc[plain.origin == "synthetic", "negative_prompt"]) == {""}
    assert (neg.loc[syn.index, ["prompt", "seed", "donor_id"]] == plain.loc[syn.index, ["prompt", "seed",
                                                                                         "donor_id"]]).all().all()
    diff = [np.abs(_read_png(out / neg.loc[s, "image"]) - _read_png(base / plain.loc[s, "image"])).max()
            for s in syn.index]
    assert min(diff) > 1e-3
    rec = json.loads((out / "balance.json").read_text())
    assert rec["options"]["negative_prompts"] == "other-classes"
    assert "negative_prompts" not in json.loads((base / "balance.json").read_text())["options"]
    again = _run(env.work, "--model", env.model, "--out", base, "--negative-prompts", "other-classes", *FAST)
    assert again.exit_code == 3 and "Error:" in again.stderr
    items = [stage.PlanItem("syn-a-00000", "a", 0, "d", "p", 7)]
    old = [["syn-a-00000", "a", 0, "d", "p", 7]]                     # the fields before negative_prompt existed
    import hashlib

    assert stage._plan_sha256(items) == hashlib.sha256(json.dumps(old).encode()).hexdigest()
