"""Base model: a tiny diffusers-layout folder written with save_pretrained (safetensors) and loaded back through
the code path SD1.5 takes; the SD1.5 UNet config; the offline CLIP BPE tokenizer; the shipped tiny preset."""
from __future__ import annotations

import shutil

import pytest
import torch

from medsoft_aug.errors import ModelError
from medsoft_aug.models.base import (TINY_BASE_DIR, build_tiny_base, load_base_model, save_base_model,
                                     sd15_unet_config)
from medsoft_aug.models.tokenizer import learn_merges

from _models_helpers import single_thread  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    model = build_tiny_base()
    folder = save_base_model(model, tmp_path_factory.mktemp("tiny_sd"))
    return model, folder


def _unet_out(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 16, 16, generator=g)
    ctx = model.encode_prompt(["benign hemangioma, bright", ""])
    with torch.no_grad():
        return model.unet(z, torch.tensor([10, 900]), ctx).sample


def test_folder_round_trip(tiny_pair):
    from diffusers import DDIMScheduler, DDPMScheduler

    model, folder = tiny_pair
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()
    loaded = load_base_model(str(folder))
    assert loaded.resolution == 64 and loaded.vae_scale_factor == 4
    assert isinstance(loaded.train_scheduler, DDPMScheduler)
    ddim = loaded.inference_scheduler()
    assert isinstance(ddim, DDIMScheduler) and ddim.config.beta_schedule == "scaled_linear"
    assert not ddim.config.clip_sample and ddim.config.steps_offset == 1
    text = "Malignant metastasis: dark, destructive lesion in L3!"
    assert loaded.tokenizer(text).input_ids == model.tokenizer(text).input_ids
    assert loaded.encode_prompt([text]).shape == (1, 77, 64)
    assert torch.equal(loaded.encode_prompt([text]), model.encode_prompt([text]))
    assert torch.equal(_unet_out(loaded), _unet_out(model))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.vae.encode(x).latent_dist.mean, model.vae.encode(x).latent_dist.mean)
    assert not any(p.requires_grad for p in loaded.unet.parameters()) and not loaded.unet.training
    assert len(loaded.sha256) == 64 and loaded.sha256 == load_base_model(str(folder)).sha256


def test_fp16_weights_load_as_requested_dtype(tiny_pair, tmp_path):
    model, folder = tiny_pair
    half = save_base_model(model, tmp_path / "half", fp16=True)
    size = lambda d: sum(p.stat().st_size for p in d.rglob("*.safetensors"))  # noqa: E731
    assert size(half) < 0.55 * size(folder)
    loaded = load_base_model(str(half))
    assert loaded.unet.dtype == torch.float32
    assert torch.allclose(_unet_out(loaded), _unet_out(model), atol=5e-2)
    assert load_base_model(str(half), dtype=torch.float16).unet.dtype == torch.float16


def test_broken_folders_name_the_part(tiny_pair, tmp_path):
    _, folder = tiny_pair
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    shutil.rmtree(bad / "vae")
    with pytest.raises(ModelError, match=r"missing vae/"):
        load_base_model(str(bad))
    shutil.copytree(folder / "vae", bad / "vae")
    (bad / "unet" / "diffusion_pytorch_model.safetensors").rename(bad / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match=r"unet/diffusion_pytorch_model.safetensors missing.*\.bin"):
        load_base_model(str(bad))
    with pytest.raises(ModelError, match="not 'tiny'"):
        load_base_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="hub"):              # tests run with HF_HUB_OFFLINE=1
        load_base_model("stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_sd15_unet_config_has_sd15_shape():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_unet_config())
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964       # SD1.5's UNet
    assert sum(name.endswith("attn2.processor") for name in unet.attn_processors) == 16


def test_bpe_merges_by_hand_and_byte_fallback(tmp_path):
    from transformers import CLIPTokenizer

    from medsoft_aug.models.tokenizer import save_clip_tokenizer

    # tokenizers' BpeTrainer on hand-countable words: "ab" x3 -> (a, b</w>); "abc" -> (a, b, c</w>): pair counts
    # (a, b</w>) 3, (a, b) 1, (b, c</w>) 1; after the first merge no pair occurs twice, so learning stops.
    assert learn_merges(["ab ab ab abc"], 10) == [("a", "b</w>")]
    tok = build_tiny_base().tokenizer
    ids = tok("vertebral hémangiome ✓").input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "vertebral hémangiome ✓"
    # the saved files (SD1.5 layout) load with CLIPTokenizer and tokenize alike
    back = CLIPTokenizer.from_pretrained(save_clip_tokenizer(tok, tmp_path / "tok"))
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    assert back("a benign lesion, 13 mm").input_ids == tok("a benign lesion, 13 mm").input_ids


@pytest.mark.skipif(not (TINY_BASE_DIR / "unet").is_dir(), reason="tiny_base not built yet (tools/build_tiny_base.py)")
def test_shipped_tiny_preset_reconstructs_sample_slices(sample_data_dir):
    """The fitted tiny VAE reconstructs middle sagittal slices of sample_data/ (never trained on) well."""
    import nibabel as nib
    import numpy as np
    import torch.nn.functional as F

    from medsoft_aug.evaluate.metrics import psnr
    from medsoft_aug.generate.engine import InpaintEngine

    size = sum(p.stat().st_size for p in TINY_BASE_DIR.rglob("*") if p.is_file())
    assert size < 10 * 2 ** 20 and (TINY_BASE_DIR / "README.md").is_file()
    model = load_base_model("tiny")
    assert model.ref == "tiny" and model.resolution == 64
    engine = InpaintEngine(model.unet, model.vae, model.inference_scheduler(), model.resolution)
    studies = sorted(sample_data_dir.glob("images/*.nii.gz"))[:3]
    if not studies:
        pytest.skip("sample_data/ not present")
    for path in studies:
        vol = nib.as_closest_canonical(nib.load(path)).get_fdata()
        sl = vol[vol.shape[0] // 2].T[::-1, ::-1]                       # display grid (sample_data README)
        lo, hi = np.percentile(sl, [0.5, 99.5])
        x = torch.from_numpy(np.clip((sl - lo) / (hi - lo), 0, 1).astype(np.float32).copy())[None, None]
        x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        rec = engine.decode(engine.encode(x))
        assert psnr(x.numpy(), rec.numpy()) > 24.0, path.name


def test_shipped_tiny_128_preset_is_the_same_architecture_at_128_px():
    """``tiny-128`` (the demo's base): the tiny architecture refitted at 128 px; its own UNet weights, loadable and
    checkable by name like ``tiny``, and the text encoder and tokenizer of the same vocabulary."""
    from medsoft_aug.models.base import TINY_PRESETS, check_base_model

    folder = TINY_PRESETS["tiny-128"]
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 10 * 2 ** 20 and (folder / "README.md").is_file() and (folder / "fit.json").is_file()
    check_base_model("tiny-128")
    big, small = load_base_model("tiny-128"), load_base_model("tiny")
    assert big.ref == "tiny-128" and big.resolution == 128 and small.resolution == 64
    assert big.unet.config.block_out_channels == small.unet.config.block_out_channels
    assert big.sha256 != small.sha256
    ids = big.tokenizer(["T2 hypointense lesion"]).input_ids
    assert ids == small.tokenizer(["T2 hypointense lesion"]).input_ids
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        out = big.unet(x, torch.tensor([10]), encoder_hidden_states=big.encode_prompt(["a"])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
