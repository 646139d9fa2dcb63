"""`balance --candidates K`: post-selection by a recorded scorer, deterministic whatever the batch size or shards;
the floor reports samples (exit 4); per-sample evidence in the manifest and balance.json."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.generate.select import candidate_seed, choose
from medsoft_aug.manifest import merge_manifests, read_manifest

from _balance_helpers import one_thread, write_work

COUNTS = {"normal": 6, "benign": 2, "malignant": 3}
DESCS = {"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]}
FAST = ["--steps", "2", "--device", "cpu", "--json"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("sel")
    work = write_work(root / "work", COUNTS, descriptions=DESCS)
    with one_thread():
        yield types.SimpleNamespace(root=root, work=work, model=tiny_model_dir)


def _run(env, out, *args):
    return CliRunner().invoke(app, ["balance", str(env.work), "--model", str(env.model), "--out",
                                    str(env.root / out), *FAST, *map(str, args)])


def _synthetic(path):
    man = read_manifest(path)
    return man[man.origin == "synthetic"].set_index("sample_id").sort_index()


def test_candidate_seeds_and_choice_rule():
    assert candidate_seed(123, 0) == 123
    seeds = [candidate_seed(123, j) for j in range(5)]
    assert len(set(seeds)) == 5 and seeds == [candidate_seed(123, j) for j in range(5)]
    assert choose([0.1, 0.3, 0.3, -1.0], 0.0) == 1            # best; ties -> the lower index
    assert choose([-0.2, -0.1], 0.0) is None and choose([-0.2, -0.1], -0.15) == 1


@pytest.mark.parametrize("scorer", ["classifier", "feature"])
def test_selection_is_recorded_and_independent_of_batch_size_and_shards(env, scorer):
    k = 3
    r = _run(env, f"b2_{scorer}", "--candidates", k, "--scorer", scorer, "--min-score", -1e9, "--batch-size", 2)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["selection"]["scorer"] == scorer and res["selection"]["candidates"] == k
    assert set(res["evidence"]) == {"benign", "malignant"} and res["evidence"]["benign"]["checked"] == 4
    a = _synthetic(env.root / f"b2_{scorer}" / "manifest.csv")
    assert len(a) == 7 and set(a.scorer) == {scorer} and set(a.candidates) == {str(k)}
    for _, row in a.iterrows():
        scores = [float(s) for s in row.candidate_scores.split(";")]
        assert len(scores) == k and int(row.chosen) == int(np.argmax(scores))   # best kept (ties: first)
        assert float(row.class_score) == pytest.approx(max(scores))
        assert row.toward_class in ("True", "False") and row.mean_change != "" and row.contrast != ""
    bal = json.loads((env.root / f"b2_{scorer}" / "balance.json").read_text())
    assert bal["selection"]["references"] == {"benign": 2, "malignant": 3, "normal": 6}
    assert bal["evidence"]["malignant"]["text"].endswith("of 3 moved toward their class")

    r = _run(env, f"b5_{scorer}", "--candidates", k, "--scorer", scorer, "--min-score", -1e9, "--batch-size", 5)
    assert r.exit_code == 0, r.stderr
    b = _synthetic(env.root / f"b5_{scorer}" / "manifest.csv")
    shards = []
    for s in (1, 2):
        r = _run(env, f"s{s}_{scorer}", "--candidates", k, "--scorer", scorer, "--min-score", -1e9,
                 "--batch-size", 4, "--shard", f"{s}/2")
        assert r.exit_code == 0, r.stderr
        shards.append(env.root / f"s{s}_{scorer}" / "manifest.csv")
    merge_manifests(shards, env.root / f"m_{scorer}" / "manifest.csv")
    c = _synthetic(env.root / f"m_{scorer}" / "manifest.csv")
    for other in (b, c):
        assert list(other.index) == list(a.index)
        assert list(other.chosen) == list(a.chosen) and list(other.seed) == list(a.seed)
        for x, y in zip(a.candidate_scores, other.candidate_scores):
            np.testing.assert_allclose([float(v) for v in x.split(";")], [float(v) for v in y.split(";")],
                                       atol=2e-4)


def test_floor_reports_samples_with_exit_4(env):
    r = _run(env, "floor", "--candidates", 2, "--scorer", "classifier", "--min-score", 1.01)
    assert r.exit_code == 4
    assert "none of its 2 candidates reached the classifier scorer's floor 1.01" in r.stderr
    assert "syn-benign-00000" in r.stderr
    assert _synthetic(env.root / "floor" / "manifest.csv").empty      # real rows only: nothing silently kept
    bal = json.loads((env.root / "floor" / "balance.json").read_text())
    assert bal["status"] == "partial" and len(bal["failures"]) == 7


def test_plain_run_records_evidence_without_scores(env):
    r = _run(env, "plain", "--batch-size", 4)
    assert r.exit_code == 0, r.stderr
    a = _synthetic(env.root / "plain" / "manifest.csv")
    assert set(a.candidates) == {"1"} and set(a.scorer) == {""} and set(a.class_score) == {""}
    assert set(a.chosen) == {"0"} and all(v in ("True", "False") for v in a.toward_class)
