"""`evaluate quality`: a real (tiny) MODEL_DIR trained by the project's own `train`, inpainting through the balance
engine, PSNR/SSIM/FID, background fidelity of a real `balance` output, Inception weights loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _eval_helpers import eval_one_thread, make_work  # noqa: F401 - fixture used by pytest
from medsoft_aug.cli.app import app
from medsoft_aug.errors import InputError, ModelError
from medsoft_aug.evaluate import features as FE
from medsoft_aug.evaluate import metrics as M
from medsoft_aug.evaluate.data import load_image
from medsoft_aug.fsutil import load_npy

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("quality")
    return root, make_work(root / "work"), tiny_model_dir


@pytest.mark.slow
def test_quality_with_background_fidelity(trained, tmp_path):
    from medsoft_aug.generate.stage import balance

    root, work, model = trained
    balance(work, model, tmp_path / "bal", steps=2, device="cpu")
    r = runner.invoke(app, ["evaluate", "quality", str(work), "--model", str(model), "--out",
                            str(tmp_path / "q"), "--steps", "2", "--device", "cpu", "--balance-out",
                            str(tmp_path / "bal"), "--report", str(tmp_path / "rep"), "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["n_samples"] == 4                      # 2 benign + 2 malignant test rows; normal ones excluded
    assert doc["fid_features"] == "tiny_encoder" and "not Inception" in doc["fid_note"]
    assert np.isfinite(doc["fid"]) and doc["fid"] >= 0
    for k in ("psnr", "psnr_mask", "ssim", "ssim_mask"):
        assert set(doc[k]) == {"mean", "std"} and np.isfinite(doc[k]["mean"])
    assert doc["psnr"]["mean"] > doc["psnr_mask"]["mean"]  # outside the mask the composite is the original
    bg = doc["background"]
    assert bg["n"] > 0 and bg["n_identical_outside_mask"] == bg["n"] and bg["psnr_outside_strict_db"] == "inf"
    assert bg["max_abs_diff_outside_strict"] == 0.0
    assert json.loads((tmp_path / "q" / "quality.json").read_text())["fid"] == doc["fid"]
    assert (tmp_path / "rep" / "quality_samples.png").is_file()

    # per-sample values agree with a recomputation from the saved 16-bit output (up to its quantisation)
    import pandas as pd

    s = pd.read_csv(tmp_path / "q" / "quality_samples.csv")
    sid = s["sample_id"][0]
    x0 = load_npy(work / "slices" / f"{sid}.npy")
    m = load_npy(work / "masks" / f"{sid}.npy")
    y = load_image(tmp_path / "q" / "inpainted" / f"{sid}.png")
    assert M.psnr(x0, y, weights=m) == pytest.approx(s["psnr_mask"][0], abs=0.01)
    assert M.ssim(x0, y) == pytest.approx(s["ssim"][0], abs=0.01)


def test_no_diseased_test_rows_is_input_error(trained, tmp_path):
    import pandas as pd

    from medsoft_aug.evaluate.quality import evaluate_quality

    root, work, model = trained
    w2 = make_work(tmp_path / "w2", n_test=0)
    with pytest.raises(InputError, match="no diseased test-split"):
        evaluate_quality(w2, model, tmp_path / "q", device="cpu")
    assert not (tmp_path / "q").exists()
    with pytest.raises(ModelError):
        evaluate_quality(work, tmp_path / "no_model", tmp_path / "q", device="cpu")
    assert not (tmp_path / "q").exists()
    assert pd.read_csv(work / "index.csv").shape[0] > 0   # inputs untouched


def test_inception_weights_safetensors_and_pth(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=True)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(tmp_path / "inc.safetensors"))
    torch.save(sd, tmp_path / "inc.pth")
    monkeypatch.setattr(FE, "INCEPTION_SIZE", 75)   # the smallest input Inception-v3 accepts: keeps the test fast
    rng = np.random.default_rng(0)
    imgs = [rng.random((40, 36)).astype(np.float32) for _ in range(3)]
    feats = []
    for f in ("inc.safetensors", "inc.pth"):
        model = FE.load_inception(tmp_path / f)
        feats.append(FE.inception_features(model, imgs))
    assert feats[0].shape == (3, 2048)
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-5, atol=1e-6)
    # pool3 = the input of fc in the reference network
    grab = {}
    net.eval().fc.register_forward_hook(lambda m, i, o: grab.setdefault("x", i[0]))
    from medsoft_aug.evaluate.data import to_square_tensor

    with torch.no_grad():
        net(torch.stack([to_square_tensor(im, 75) for im in imgs]).expand(-1, 3, -1, -1) * 2 - 1)
    np.testing.assert_allclose(feats[0], grab["x"].double().numpy(), rtol=1e-4, atol=1e-5)
    torch.save({"x": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ModelError):
        FE.load_inception(tmp_path / "bad.pth")


def test_progress_per_denoising_step(trained, tmp_path):
    """Progress comes per denoising step within each batch (as balance reports it), then per batch."""
    from medsoft_aug.evaluate.quality import evaluate_quality

    root, work, model = trained
    events = []
    evaluate_quality(work, model, tmp_path / "q", steps=2, batch_size=3, device="cpu",
                     on_progress=lambda stage, done, total: events.append((stage, done, total)))
    steps = [(d, t) for s, d, t in events if s == "inpaint: denoising steps"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]        # 4 samples: 2 batches x 2 steps, one bar
    assert [(d, t) for s, d, t in events if s == "inpaint"] == [(0, 4), (3, 4), (4, 4)]
