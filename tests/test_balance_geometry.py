"""`balance` on non-square donors with masks touching the border (real tiny MODEL_DIR): outputs on the donor's own
grid, the donor's pixels exactly outside the mask, the trained mapping recorded and used, overrides warned."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.geometry import GridMapping
from medsoft_aug.manifest import read_manifest

from _balance_helpers import one_thread
from _work_helpers import WorkWriter

SHAPES = {"tall": (448, 320), "wide": (320, 448)}


def _soft_disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two normal donors per shape (one mask at the top-left corner, one on the bottom edge) and one lesion each."""
    rng = np.random.default_rng(21)
    w = WorkWriter(tmp_path_factory.mktemp("geo") / "work")
    for name, (h, wd) in SHAPES.items():
        for i, (cy, cx) in enumerate(((0, 0), (h - 1, wd // 2))):
            img = rng.uniform(0.1, 0.9, (h, wd)).astype(np.float32)
            w.add(f"n-{name}-{i}", "normal", "train", img, _soft_disc((h, wd), cy, cx, 18), patient_id=f"p{name}{i}")
        img = rng.uniform(0.1, 0.9, (h, wd)).astype(np.float32)
        w.add(f"b-{name}", "benign", "train", img, _soft_disc((h, wd), h / 2, wd / 2, 15), patient_id=f"q{name}",
              description="bright round lesion")
    return w.close()


def _balance(work, model, out, *extra):
    with one_thread():
        return CliRunner().invoke(app, ["balance", str(work), "--model", str(model), "--out", str(out), "--steps",
                                        "2", "--device", "cpu", "--batch-size", "4", "--json", *extra])


def test_outputs_keep_the_donor_grid_and_pixels(work, tiny_model_dir, tmp_path):
    meta = json.loads((tiny_model_dir / "medsoft_model.json").read_text())
    assert meta["geometry"] == {"mode": "crop", "margin": 0.25, "resolution": meta["resolution"]}
    r = _balance(work, tiny_model_dir, tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert "trained with" not in r.stderr                          # no override: no warning
    rec = json.loads((tmp_path / "out" / "balance.json").read_text())
    assert rec["options"]["geometry"] == meta["geometry"]
    syn = read_manifest(tmp_path / "out" / "manifest.csv").query("origin == 'synthetic'")
    assert len(syn) == 2
    for _, row in syn.iterrows():
        donor = np.load(work / "slices" / f"{row.donor_id}.npy")
        mask = np.load(tmp_path / "out" / row["mask"])
        img = np.asarray(Image.open(tmp_path / "out" / row.image)).astype(np.float64) / 65535
        assert img.shape == donor.shape == mask.shape
        zero = mask == 0
        assert zero.sum() > 0.9 * zero.size
        assert np.abs(img[zero] - donor[zero]).max() <= 0.5 / 65535 + 1e-9      # 16-bit rounding only
        assert np.abs(img - donor)[mask > 0.5].mean() > 1e-3
        win = GridMapping.from_dict(meta["geometry"]).window(mask)
        assert win.side < max(donor.shape)                            # a crop, not the whole slice


def test_overrides_are_warned_and_recorded(work, tiny_model_dir, tmp_path):
    r = _balance(work, tiny_model_dir, tmp_path / "out", "--geometry", "pad", "--crop-margin", "0.5")
    assert r.exit_code == 0, r.stderr
    assert "mode pad although the model was trained with crop" in r.stderr
    assert "margin 0.5 although the model was trained with 0.25" in r.stderr
    rec = json.loads((tmp_path / "out" / "balance.json").read_text())
    assert rec["options"]["geometry"]["mode"] == "pad" and rec["options"]["geometry"]["margin"] == 0.5
    syn = read_manifest(tmp_path / "out" / "manifest.csv").query("origin == 'synthetic'")
    for _, row in syn.iterrows():
        donor = np.load(work / "slices" / f"{row.donor_id}.npy")
        img = np.asarray(Image.open(tmp_path / "out" / row.image)).astype(np.float64) / 65535
        mask = np.load(tmp_path / "out" / row["mask"])
        assert img.shape == donor.shape and np.abs(img - donor)[mask == 0].max() <= 0.5 / 65535 + 1e-9
    r = _balance(work, tiny_model_dir, tmp_path / "bad", "--geometry", "stretch")
    assert r.exit_code == 2 and "stretch" in r.output
    r = _balance(work, tiny_model_dir, tmp_path / "bad2", "--resolution", "60")
    assert r.exit_code == 2 and "--resolution must be a multiple of" in r.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()
