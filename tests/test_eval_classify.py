"""`evaluate classify`: schema, no leakage (checked on the tensors the network actually saw), determinism."""
from __future__ import annotations

import json
import shutil

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


def test_schema_and_leak(leaky_manifest, tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    real_build = T.build_resnet18

    def spy_build(*a, **k):
        model = real_build(*a, **k)
        model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()) if m.training else None)
        return model

    monkeypatch.setattr(T, "build_resnet18", spy_build)
    res = C.evaluate_classify(leaky_manifest, tmp_path / "out", methods=("baseline", "oversample", "medsoft"), **FAST)

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) == {"baseline", "oversample", "medsoft"}
    for m in metrics.values():
        assert set(m) == {"auc", "accuracy", "precision", "recall", "f1", "minority_f1", "per_class"}
        assert set(m["per_class"]) == {"normal", "benign", "malignant"}
        for k in ("auc", "accuracy", "precision", "recall", "f1", "minority_f1"):
            assert set(m[k]) == {"mean", "std"}
        for c in m["per_class"].values():
            assert set(c) == {"precision", "recall", "f1"} and all(set(v) == {"mean", "std"} for v in c.values())
    info = json.loads((tmp_path / "out" / "classify.json").read_text())
    assert info["excluded_synthetic"] == {"split_test": 1, "donor_is_test_row": 1, "donor_is_test_patient": 1}
    assert info["n_synthetic_used"] == 10 and info["n_test"] == 7
    assert info["normal_class"] == "normal" and info["minority_classes"] == ["benign", "malignant"]
    # minority F1 and per-class F1 recomputed from predictions.csv with scikit-learn
    from sklearn.metrics import f1_score

    p0 = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str)
    for m in metrics:
        d = p0[p0["method"] == m]
        assert metrics[m]["minority_f1"]["mean"] == pytest.approx(
            f1_score(d["label"], d["pred"], labels=["benign", "malignant"], average="macro", zero_division=0))
        per = f1_score(d["label"], d["pred"], labels=["benign", "malignant", "normal"], average=None, zero_division=0)
        assert [metrics[m]["per_class"][c]["f1"]["mean"] for c in ("benign", "malignant", "normal")] == \
            pytest.approx(per.tolist())
    assert {(c["a"], c["b"]) for c in info["comparisons"]} == {("oversample", "baseline"), ("medsoft", "baseline"),
                                                              ("medsoft", "oversample")}
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(preds) == 3 * 7

    df = pd.read_csv(leaky_manifest, dtype=str, keep_default_na=False)
    forbidden = set(df[df["split"] == "test"]["sample_id"]) | {"leak_split", "leak_donor", "leak_patient", "ghost"}
    for m, ids in res.trained_ids.items():
        assert ids and not (ids & forbidden), m
    assert res.trained_ids["medsoft"] - res.trained_ids["baseline"] == {
        f"medsoft/{s}" for s in df[(df["origin"] == "synthetic") & ~df["sample_id"].str.startswith("leak")]["sample_id"]}

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
    d = C.plan_draws(targets, train, {"medsoft": syn, "other": syn[:2]}, ["n", "a", "b"], seed=3)
    assert sorted(d["baseline"]) == train
    assert np.bincount(targets[d["medsoft"]]).tolist() == [10, 7, 7]
    assert np.bincount(targets[d["oversample"]]).tolist() == [10, 7, 7]
    assert set(d["oversample"]) == set(train) and d["classical"] == d["oversample"]
    assert np.bincount(targets[d["other"]]).tolist() == [10, 5, 2]
    assert C.plan_draws(targets, train, {"medsoft": syn, "other": syn[:2]}, ["n", "a", "b"], seed=3) == d
    no_syn = C.plan_draws(targets, train, {"medsoft": []}, ["n", "a", "b"], seed=0)
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


def test_classical_augmentation_preserves_anatomy():
    """No flips: an image whose left and right halves differ stays closer to itself than to its mirror image
    under every draw; the recorded parameters say so."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    img = (0.15 + 0.7 * xx * (0.6 + 0.4 * yy))[None, None].repeat(64, 1, 1, 1)       # brighter to the right
    out = T.augment(img, torch.Generator().manual_seed(0))
    d_same = (out - img).abs().flatten(1).mean(1)
    d_flip = (out - img.flip(-1)).abs().flatten(1).mean(1)
    assert bool((d_same < d_flip).all())
    assert T.CLASSICAL.to_dict()["flips"] is False and T.CLASSICAL.to_dict()["rotation_deg"] <= 15


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


def _copy_manifest(src, dst, edit=None):
    shutil.copytree(src.parent, dst)
    path = dst / "manifest.csv"
    if edit is not None:
        edit(pd.read_csv(path, dtype=str, keep_default_na=False), dst, path)
    return path


def _donor_copies(df, root, path):
    """A different synthetic set (each synthetic image replaced by its donor, as if nothing was inpainted)."""
    for _, r in df[df["origin"] == "synthetic"].iterrows():
        donor = df[df["sample_id"] == r["donor_id"]].iloc[0]
        img = load_image(root / donor["image"])
        from _eval_helpers import save_png16

        save_png16(root / r["image"], img)


@pytest.fixture(scope="module")
def three_manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    a = make_manifest(root / "medsoft", n_train={"normal": 6, "benign": 2, "malignant": 2},
                      n_test={"normal": 2, "benign": 2, "malignant": 2}, n_synth={"benign": 3, "malignant": 3})
    b = _copy_manifest(a, root / "no_msc", _donor_copies)
    c = _copy_manifest(a, root / "no_smis")
    return {"medsoft": a, "no-msc": b, "no-smis": c}


def test_three_manifests_six_methods_with_verdicts(three_manifests, tmp_path):
    res = C.evaluate_classify(three_manifests, tmp_path / "out", **FAST)
    methods = ["baseline", "oversample", "classical", "medsoft", "no-msc", "no-smis"]
    assert list(res.metrics) == methods
    assert res.metrics["classical"]["augmentation"]["flips"] is False
    info = res.info
    assert set(info["manifests"]) == {"medsoft", "no-msc", "no-smis"}
    assert all(v["n_synthetic_used"] == 6 for v in info["manifests"].values())
    pairs = {(c["a"], c["b"], c["metric"]) for c in info["comparisons"]}
    assert len(pairs) == 15 * 2 and ("no-smis", "medsoft", "minority_f1") in pairs
    assert all(c["verdict"] == "n/a" for c in info["comparisons"])       # one seed: no paired test possible
    # each generated method trained on its own manifest's synthetic rows, all on the same real rows
    for m in ("medsoft", "no-msc", "no-smis"):
        extra = res.trained_ids[m] - res.trained_ids["baseline"]
        assert extra and all(i.startswith(f"{m}/") for i in extra)
    preds = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str)
    assert preds.groupby("method")["sample_id"].apply(frozenset).nunique() == 1   # the same test set


def test_manifests_with_different_test_splits_are_refused(three_manifests, tmp_path):
    a = three_manifests["medsoft"]

    def change_pixels(df, root, path):
        row = df[(df["origin"] == "real") & (df["split"] == "test")].iloc[0]
        img = load_image(root / row["image"])
        img[:4, :4] = 1.0 - img[:4, :4]
        np.save(root / "changed.npy", img)
        df.loc[row.name, "image"] = "changed.npy"
        df.to_csv(path, index=False)

    def drop_test_row(df, root, path):
        i = df[(df["origin"] == "real") & (df["split"] == "test")].index[0]
        df.drop(index=i).to_csv(path, index=False)

    for edit, words in ((change_pixels, "different pixels"), (drop_test_row, "different real test splits")):
        b = _copy_manifest(a, tmp_path / edit.__name__, edit)
        with pytest.raises(C.InputError, match=words):
            C.evaluate_classify({"medsoft": a, "no-msc": b}, tmp_path / "out", **FAST)
        assert not (tmp_path / "out").exists()


def test_manifest_names_are_parsed_and_checked(tmp_path):
    assert C.parse_manifest_arg("no-msc=B/manifest.csv") == ("no-msc", tmp_path.__class__("B/manifest.csv"))
    assert C.parse_manifest_arg("A/manifest.csv")[0] == "medsoft"
    assert C.parse_manifest_arg("dir=x/manifest.csv")[0] == "dir"
    assert C.parse_manifest_arg("./a=b/manifest.csv") == ("medsoft", tmp_path.__class__("./a=b/manifest.csv"))
    with pytest.raises(C.UsageError):
        C.parse_manifest_arg("9lives=m.csv")
    with pytest.raises(C.UsageError, match="clash"):
        C.evaluate_classify({"baseline": tmp_path / "m.csv"}, tmp_path / "out", **FAST)
