"""Encoders: the tiny BiomedCLIP-shaped model, saved in open_clip's real local-dir layout and loaded back through
the code path real BiomedCLIP weights take."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from medsoft_aug.errors import ModelError
from medsoft_aug.fsutil import sha256_file
from medsoft_aug.models.encoder_folder import create_model as _create
from medsoft_aug.models.encoders import build_tiny_encoder, load_encoder, save_encoder_dir
from safetensors.torch import save_file

from _models_helpers import single_thread, TEXTS, tiny_encoder  # noqa: F401 - single_thread: autouse fixture

BIOMED_BERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """The tiny encoder written as BiomedCLIP is on the hub: text_cfg names the BERT by hub id; config.json at root."""
    out = tmp_path_factory.mktemp("biomedclip_tiny")
    save_encoder_dir(tiny_encoder(), out, hf_model_name=BIOMED_BERT)
    return out


def test_tiny_shapes_and_conventions():
    enc = tiny_encoder()
    assert enc.embed_dim == 64 and enc.image_size == 160 and enc.context_length == 256
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    e_t, mask = enc.text_tokens(TEXTS[:2])
    ids = enc.tokenizer(TEXTS[:2])
    assert e_t.shape == (2, int((ids != 0).sum(1).max()), 64)
    assert mask.sum(1).tolist() == (ids != 0).sum(1).tolist()
    # the [CLS] token, projected, is exactly open_clip's text feature (BiomedCLIP pools [CLS])
    assert torch.allclose(e_t[:, 0], enc.model.encode_text(ids), atol=1e-5)
    x = torch.rand(3, 1, 72, 72, generator=torch.Generator().manual_seed(1))
    e_v, e_r = enc.image_tokens(x), enc.image_embed(x)
    assert e_v.shape == (3, (160 // 16) ** 2, 64)
    assert torch.allclose(e_r.norm(dim=-1), torch.ones(3), atol=1e-5)
    # patch tokens agree with timm's own intermediate-feature API (last block, final norm, prefix dropped)
    inter = enc.model.visual.trunk.forward_intermediates(enc.preprocess(x), indices=1, norm=True,
                                                         output_fmt="NLC", intermediates_only=True)[-1]
    assert torch.allclose(e_v, enc.model.visual.head(inter), atol=1e-5)


def test_preprocess_pads_resizes_and_normalises():
    enc = tiny_encoder()
    x = torch.rand(2, 1, 160, 160, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(enc.preprocess(x), (x.repeat(1, 3, 1, 1) - mean) / std, atol=1e-6)
    tall = torch.rand(1, 1, 160, 80, generator=torch.Generator().manual_seed(3))
    out = enc.preprocess(tall) * std + mean
    assert torch.allclose(out[..., 40:120], tall.repeat(1, 3, 1, 1), atol=1e-6)   # centred
    assert out[..., :40].abs().max() < 1e-6 and out[..., 120:].abs().max() < 1e-6  # zero padding
    with pytest.raises(ValueError):
        enc.preprocess(torch.rand(2, 2, 8, 8))


def test_tiny_is_deterministic():
    a, b = tiny_encoder(), build_tiny_encoder()
    assert a.sha256 == b.sha256
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.image_embed(x), b.image_embed(x))
    assert build_tiny_encoder(seed=7).sha256 != a.sha256


def test_local_dir_round_trip_identical_features(saved_dir):
    cfg = json.loads((saved_dir / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == BIOMED_BERT         # not rewritten on disk
    assert (saved_dir / "open_clip_model.safetensors").is_file() and (saved_dir / "vocab.txt").is_file()
    before = {p.name: sha256_file(p) for p in saved_dir.iterdir()}
    enc = load_encoder(f"local-dir:{saved_dir}")
    assert {p.name: sha256_file(p) for p in saved_dir.iterdir()} == before     # input folder untouched
    assert enc.sha256 == sha256_file(saved_dir / "open_clip_model.safetensors")
    ref = tiny_encoder()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 96, 80, generator=g)
    assert torch.equal(enc.image_tokens(x), ref.image_tokens(x))
    assert torch.equal(enc.image_embed(x), ref.image_embed(x))
    (t1, m1), (t2, m2) = enc.text_tokens(TEXTS), ref.text_tokens(TEXTS)
    assert torch.equal(m1, m2) and torch.equal(t1, t2)
    assert load_encoder(str(saved_dir)).sha256 == enc.sha256                   # prefix optional


def test_bert_config_in_named_subfolder(saved_dir, tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(saved_dir, folder)
    sub = folder / BIOMED_BERT.split("/")[-1]
    sub.mkdir()
    (folder / "config.json").rename(sub / "config.json")
    enc = load_encoder(str(folder))
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    assert torch.equal(enc.image_embed(x), tiny_encoder().image_embed(x))


def test_missing_text_config_weights_and_bad_refs(saved_dir, tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(saved_dir, folder)
    (folder / "config.json").unlink()
    # BiomedCLIP's BERT name resolves to the shipped full-size config, which these tiny weights do not fit
    with pytest.raises(ModelError, match=r"cannot load open_clip_model.safetensors.*Missing key"):
        load_encoder(str(folder))
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = "some-lab/unknown-bert"
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="some-lab/unknown-bert.*not found offline"):
        load_encoder(str(folder))
    shutil.copy(saved_dir / "config.json", folder / "config.json")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_encoder(str(folder))
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(ModelError, match="open_clip_config.json missing"):
        load_encoder(str(folder))
    with pytest.raises(ModelError, match="not 'tiny'"):
        load_encoder(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="hub"):           # tests run with HF_HUB_OFFLINE=1
        load_encoder("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")


def test_native_open_clip_vit_tower(tmp_path):
    """A non-timm ViT tower (open_clip's own, average-pooled): the mean of the projected patch tokens is the
    (unnormalised) CLIP image feature."""
    import open_clip

    enc = tiny_encoder()
    cfg = json.loads(json.dumps(enc._model_cfg))
    cfg["vision_cfg"] = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                         "pool_type": "avg"}
    folder = tmp_path / "native"
    save_encoder_dir(enc, folder)
    (folder / "open_clip_model.safetensors").unlink()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    model, _ = _create(folder, require_weights=False)               # random weights for the new tower
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    native = load_encoder(str(folder))
    assert isinstance(native.model.visual, open_clip.transformer.VisionTransformer)
    x = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(8))
    tokens = native.image_tokens(x)
    assert tokens.shape == (2, 16, 64)
    raw = native.model.encode_image(native.preprocess(x))
    assert torch.allclose(tokens.mean(1), raw, atol=1e-5)
    assert torch.allclose(native.image_embed(x), F.normalize(raw, dim=-1), atol=1e-6)


def test_bin_only_folder_is_loaded_by_open_clip_with_a_warning(saved_dir, tmp_path, caplog):
    """A hub-style folder with only open_clip_pytorch_model.bin (no safetensors): open_clip loads it itself
    (torch.load with weights_only=True); we say so in the log."""
    from safetensors.torch import load_file

    folder = tmp_path / "bin_only"
    shutil.copytree(saved_dir, folder)
    state = load_file(str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_model.safetensors").unlink()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    with caplog.at_level("WARNING", logger="medsoft_aug.models.encoders"):
        enc = load_encoder(str(folder))
    assert "weights_only=True" in caplog.text
    x = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(9))
    assert torch.equal(enc.image_embed(x), tiny_encoder().image_embed(x))
