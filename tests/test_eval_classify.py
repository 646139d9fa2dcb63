"""`evaluate classify`: schema, no leakage (checked on the tensors the network actually saw), determinism."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from _eval_helpers import eval_one_thread, make_manifest  # noqa: F401 - fixture used by pytest
from medsoft_aug.evaluate import classify as C
from medsoft_aug.evaluate import trainer as T
from medsoft_aug.evaluate.data import load_image, to_square_tensor

RES = 32
FAST = dict(seeds=1, epochs=1, resolution=RES, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def leaky_manifest(tmp_path_factory):
    """A manifest with three synthetic rows that must never be trained on: one marked test, one whose donor is a
    test row, one whose donor's patient is a test patient."""
    root = tmp_path_factory.mktemp("leaky")
    path = make_manifest(root, n_train={"normal": 8, "benign": 3, "malignant": 3},
                         n_test={"normal": 3, "benign": 2, "malignant": 2},
                         n_synth={"benign": 5, "malignant": 5})
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    test = df[(df["origin"] == "real") & (df["split"] == "test")].iloc[0]
    train_row = df[(df["origin"] == "real") & (df["split"] == "train")].iloc[0]
    syn = df[df["origin"] == "synthetic"].iloc[0]
    bad = []
    for sid, split, donor in (("leak_split", "test", train_row["sample_id"]), ("leak_donor", "train", test["sample_id"]),
                              ("leak_patient", "train", "ghost")):
        r = syn.to_dict()
        r.update(sample_id=sid, split=split, donor_id=donor)
        bad.append(r)
    ghost = train_row.to_dict()
    ghost.update(sample_id="ghost", split="val", patient_id=test["patient_id"])  # a val row of a test patient
    df = pd.concat([df, pd.DataFrame(bad + [ghost])], ignore_index=True)
    df.to_csv(path, index=False)
    return path


def test_schema_leak_and_speed(leaky_manifest, tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    real_build = T.build_resnet18

    def spy_build(*a, **k):
        model = real_build(*a, **k)
        model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()) if m.training else None)
        return model

    monkeypatch.setattr(T, "build_resnet18", spy_build)
    t0 = time.time()
    res = C.evaluate_classify(leaky_manifest, tmp_path / "out", methods=("baseline", "oversample", "medsoft"), **FAST)
    elapsed = time.time() - t0
    assert elapsed < 60, elapsed   # seconds on a loaded 2-core CPU

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"baseline", "oversample", "medsoft"}
    for m in metrics.values():
        assert set(m) == {"auc", "accuracy", "precision", "recall", "f1"}
        for v in m.values():
            assert set(v) == {"mean", "std"}
    info = json.loads((tmp_path / "out" / "classify.json").read_text())
    assert info["excluded_synthetic"] == {"split_test": 1, "donor_is_test_row": 1, "donor_is_test_patient": 1}
    assert info["n_synthetic_used"] == 10 and info["n_test"] == 7
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(preds) == 3 * 7

    df = pd.read_csv(leaky_manifest, dtype=str, keep_default_na=False)
    forbidden = set(df[df["split"] == "test"]["sample_id"]) | {"leak_split", "leak_donor", "leak_patient", "ghost"}
    for m, ids in res.trained_ids.items():
        assert ids and not (ids & forbidden), m
    assert res.trained_ids["medsoft"] - res.trained_ids["baseline"] == set(
        df[(df["origin"] == "synthetic") & ~df["sample_id"].str.startswith("leak")]["sample_id"])

    # Independent check on what the network saw: no training input equals a test image. (The leak_* and ghost
    # rows reuse training images, so only their ids are checked above.)
    def norm_img(sid):
        row = df[df["sample_id"] == sid].iloc[0]
        x = to_square_tensor(load_image(leaky_manifest.parent / row["image"], sid), RES)
        return (x - T.GRAY_MEAN) / T.GRAY_STD                                   # (1, R, R)

    fed = torch.cat(seen).flatten(1)                                            # (draws, R*R)
    assert fed.shape[0] > 0
    for sid in sorted(df[(df["split"] == "test") & (df["origin"] == "real")]["sample_id"]):
        d = (fed - norm_img(sid).flatten()[None]).abs().amax(dim=1)
        assert float(d.min()) > 1e-3, f"{sid} was fed to training"
    train_sid = df[(df["origin"] == "real") & (df["split"] == "train")]["sample_id"].iloc[0]
    assert float((fed - norm_img(train_sid).flatten()[None]).abs().amax(dim=1).min()) < 1e-6  # the spy works


def test_rerun_is_cached_and_force_recomputes_identically(tmp_path):
    path = make_manifest(tmp_path / "d", n_train={"normal": 6, "benign": 2}, n_test={"normal": 2, "benign": 2},
                         n_synth={"benign": 4})
    kw = dict(FAST, methods=("baseline", "classical"))
    a = C.evaluate_classify(path, tmp_path / "out", **kw)
    b = C.evaluate_classify(path, tmp_path / "out", **kw)
    assert b.cached and b.metrics == a.metrics
    c = C.evaluate_classify(path, tmp_path / "out", force=True, **kw)
    assert not c.cached and c.metrics == a.metrics            # deterministic given the seeds
    assert set(a.metrics) == {"baseline", "classical"}


def test_plan_draws_counts():
    targets = np.array([0] * 10 + [1] * 3 + [2] * 2 + [1] * 4 + [2] * 5)       # rows 15.. are synthetic
    train, syn = list(range(15)), list(range(15, 24))
    d = C.plan_draws(targets, train, syn, ["n", "a", "b"], seed=3)
    assert sorted(d["baseline"]) == train
    assert np.bincount(targets[d["medsoft"]]).tolist() == [10, 7, 7]
    assert np.bincount(targets[d["oversample"]]).tolist() == [10, 7, 7]
    assert set(d["oversample"]) == set(train) and d["classical"] == d["oversample"]
    assert C.plan_draws(targets, train, syn, ["n", "a", "b"], seed=3) == d
    no_syn = C.plan_draws(targets, train, [], ["n", "a", "b"], seed=0)
    assert np.bincount(targets[no_syn["oversample"]]).tolist() == [10, 10, 10]


def test_training_is_deterministic_and_augmentation_is_seeded():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, RES, RES, generator=g)
    y = torch.arange(12) % 2
    ids = [f"i{i}" for i in range(12)]
    cfg = T.TrainConfig(epochs=1, batch_size=6)
    m1, r1 = T.train_model(x, y, ids, list(range(12)), 2, cfg, seed=5, augment_draws=True)
    m2, r2 = T.train_model(x, y, ids, list(range(12)), 2, cfg, seed=5, augment_draws=True)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert r1.fed_ids == set(ids) and r1.n_draws == 12
    a1 = T.augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a1, T.augment(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a1, x) and a1.min() >= 0 and a1.max() <= 1


def test_resnet_weights_file_adapts_three_channel_stem(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    sd = {k: v.contiguous() for k, v in resnet18(weights=None, num_classes=1000).state_dict().items()}
    save_file(sd, str(tmp_path / "r18.safetensors"))
    torch.save(sd, tmp_path / "r18.pth")
    for f in ("r18.safetensors", "r18.pth"):
        model = T.build_resnet18(3, tmp_path / f)
        assert torch.allclose(model.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))
        assert torch.equal(model.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
        assert model.fc.out_features == 3
    torch.save({"a": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(C.InputError):
        T.build_resnet18(3, tmp_path / "bad.pth")
