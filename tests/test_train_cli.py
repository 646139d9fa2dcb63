"""`medsoft-aug train` end to end on the ingested sample data (tiny models, CPU), reruns, ablations, errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from _train_helpers import one_thread  # noqa: F401 - module fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory, sample_data_dir):
    """sample_data/ ingested and masked (falls back to a synthetic WORK while sample_data is absent)."""
    root = tmp_path_factory.mktemp("train_cli")
    w = root / "W"
    if (sample_data_dir / "labels.csv").is_file():
        r = CliRunner()
        res = r.invoke(app, ["ingest", "--labels", str(sample_data_dir / "labels.csv"), "--images",
                             str(sample_data_dir), "--out", str(w)])
        assert res.exit_code == 0, res.stderr
        res = r.invoke(app, ["masks", "build", str(w)])
        assert res.exit_code == 0, res.stderr
    else:
        from _train_helpers import make_work

        make_work(w, n_per_class=4, size=64)
    return w


def _train(*args):
    return CliRunner().invoke(app, ["train", *map(str, args), "--device", "cpu", "--json"])


def test_train_end_to_end_then_load_and_rerun(work, tmp_path):
    from safetensors.torch import load_file

    from medsoft_aug.models.adapter import adapter_state_dict
    from medsoft_aug.models.modeldir import load_model_dir

    out = tmp_path / "M"
    common = [work, "--out", out, "--max-steps", 2, "--msc-steps", 2, "--batch-size", 4, "--checkpoint-every", 1]
    res = _train(*common)
    assert res.exit_code == 0, res.stderr + res.stdout
    doc = json.loads(res.stdout)
    assert doc["complete"] and not doc["skipped"]
    assert doc["stages"]["msc"]["steps"] == 2 and doc["stages"]["smis"]["steps"] == 2
    from medsoft_aug.workdir import read_index

    if (read_index(work)["split"] == "val").any():            # validation metrics when WORK has a val split
        assert "val_cos" in doc["stages"]["msc"]["val"] and "val_loss" in doc["stages"]["smis"]["val"]
    assert doc["stages"]["smis"]["train_loss"] > 0
    names = {p.name for p in out.iterdir()}
    assert names == {"medsoft_model.json", "msc.safetensors", "adapter.safetensors", "checkpoints"}
    assert not list(out.rglob("*.bin.tmp")) and not list(out.rglob(".*.tmp"))
    meta = json.loads((out / "medsoft_model.json").read_text())
    assert meta["training"]["arguments"]["max_steps"] == 2 and meta["work"]["index_sha256"]
    model = load_model_dir(out)
    stored = load_file(str(out / "adapter.safetensors"))
    for k, v in adapter_state_dict(model.base.unet).items():
        assert (v == stored[k]).all()
    assert any(v.abs().sum() > 0 for k, v in stored.items() if "to_v_ip" in k)     # it trained

    again = _train(*common)                                   # idempotent rerun: nothing to do
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"]
    other = _train(*common[:-2], "--checkpoint-every", 0, "--seed", 1)
    assert other.exit_code == 2 and "--force" in other.stderr


def test_no_msc_hard_mask_ablation(work, tmp_path):
    out = tmp_path / "A"
    res = _train(work, "--out", out, "--no-msc", "--mask-mode", "hard", "--max-steps", 1, "--batch-size", 2,
                 "--checkpoint-every", 0)
    assert res.exit_code == 0, res.stderr
    assert {p.name for p in out.iterdir()} == {"medsoft_model.json", "unet.safetensors"}
    meta = json.loads((out / "medsoft_model.json").read_text())
    assert meta["no_msc"] and meta["mask_mode"] == "hard" and meta["encoder"] is None
    from safetensors.torch import load_file

    keys = list(load_file(str(out / "unet.safetensors")))
    assert keys and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in keys)


def test_bad_inputs_exit_codes(work, tmp_path):
    res = _train(tmp_path / "missing", "--out", tmp_path / "M1")
    assert res.exit_code == 3 and res.stderr.startswith("Error: ") and "index.csv" in res.stderr
    assert not (tmp_path / "M1").exists()
    res = _train(work, "--out", tmp_path / "M2", "--stage", "bogus")
    assert res.exit_code == 2 and "--stage" in res.stderr
    res = _train(work, "--out", tmp_path / "M3", "--stage", "smis", "--max-steps", 1)
    assert res.exit_code == 2 and "no trained MSC" in res.stderr
    assert not (tmp_path / "M3").exists()
    res = _train(work, "--out", tmp_path / "M4", "--resume", "latest", "--force")
    assert res.exit_code == 2
