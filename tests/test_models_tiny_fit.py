"""tiny_fit: the fitting pipeline end to end on a synthetic WORK (a few steps), and its checks."""
from __future__ import annotations

import json

import torch

from medsoft_aug.models.base import build_tiny_base, load_base_model
from medsoft_aug.models.tiny_fit import fit_tiny_base, inpaint
from medsoft_aug.models.tiny_report import psnr

from _models_helpers import single_thread  # noqa: F401 - autouse fixture


def test_psnr_matches_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    assert abs(psnr(a, b) - peak_signal_noise_ratio(b.numpy(), a.numpy(), data_range=1.0)) < 1e-6
    w = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    sel = w.bool()
    assert abs(psnr(a, b, weight=w) - peak_signal_noise_ratio(b[sel].numpy(), a[sel].numpy(), data_range=1.0)) < 1e-6


def test_inpaint_keeps_pixels_outside_the_mask():
    model = build_tiny_base()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 64, 64, generator=g)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:40, 24:44] = 1.0
    out = inpaint(model, x0, mask, ["benign lesion", "malignant lesion"], steps=3)
    assert out.shape == x0.shape and (out >= 0).all() and (out <= 1).all()
    assert torch.equal(out[mask == 0], x0[mask == 0])
    assert not torch.allclose(out[mask == 1], x0[mask == 1])


def test_fit_end_to_end_small(tmp_path):
    from _train_helpers import make_work

    work = make_work(tmp_path / "w", n_per_class=3, size=40)
    out = tmp_path / "tiny"
    rec = fit_tiny_base([work], out, vae_steps=3, unet_steps=3, batch=4)
    assert rec["train_rows"] == 6 and rec["eval_rows"] == 3
    assert json.loads((out / "fit.json").read_text())["unet_steps"] == 3
    assert (out / "README.md").is_file() and (out / "contact_sheet.png").stat().st_size > 1000
    model = load_base_model(str(out))
    assert model.resolution == 64
    assert abs(model.vae.config.scaling_factor - rec["vae_scaling_factor"]) < 1e-4
    # the BPE merges were learned from the training descriptions: their words are single tokens
    assert model.tokenizer.tokenize("lesion") == ["lesion</w>"]
