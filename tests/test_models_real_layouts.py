"""Models as users download them: SD1.5 / inpainting / SDXL diffusers folders and BiomedCLIP open_clip folders in
their real on-disk layouts (reduced widths), loaded through the product code and run through the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.errors import ModelError
from medsoft_aug.fsutil import sha256_file
from medsoft_aug.models.base import load_base_model
from medsoft_aug.models.base_checks import check_base_configs, hub_file_selection, read_base_configs
from medsoft_aug.models.encoders import SHIPPED_BERT_DIR, load_encoder

from _models_helpers import single_thread, tiny_encoder, TEXTS  # noqa: F401 - single_thread: autouse fixture
from _real_layouts import (BIOMEDBERT, biomedclip_folder, biomedclip_legacy_folder, inpaint_folder, sd15_folder,
                           sd15_full_size_shapes, sdxl_folder, single_file_checkpoint, single_file_with_configs,
                           without)

# The SD1.5 repository's files (stable-diffusion-v1-5/stable-diffusion-v1-5), as listed by the hub
SD15_REPO_FILES = [
    ".gitattributes", "README.md", "model_index.json", "v1-5-pruned-emaonly.ckpt",
    "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt", "v1-5-pruned.safetensors", "v1-inference.yaml",
    "feature_extractor/preprocessor_config.json", "safety_checker/config.json",
    "safety_checker/model.fp16.safetensors", "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin",
    "safety_checker/pytorch_model.fp16.bin", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.fp16.bin", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors"]


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Fail the test if any base-model weights are read (the config checks must come first)."""
    import diffusers
    import transformers

    def boom(*a, **k):
        raise AssertionError("weights were read before the config checks refused the model")

    for cls in (diffusers.UNet2DConditionModel, diffusers.AutoencoderKL, transformers.CLIPTextModel):
        monkeypatch.setattr(cls, "from_pretrained", boom)


# ---- base model: SD1.5 layout, refusals, hub selection ---------------------------------------------------
def test_sd15_layout_loads_with_clip_bpe_and_pndm_scheduler():
    model = load_base_model(str(sd15_folder()))
    assert model.resolution == 64 and model.vae_scale_factor == 8
    assert model.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids
    ddim = model.inference_scheduler()
    assert ddim.config.beta_schedule == "scaled_linear" and ddim.config.steps_offset == 1
    assert model.encode_prompt(TEXTS[:2]).shape == (2, 77, 32)
    from safetensors.torch import load_file

    on_disk = load_file(str(sd15_folder() / "text_encoder" / "model.safetensors"))   # hub names: text_model.*
    assert all(k.startswith("text_model.") for k in on_disk)
    loaded = model.text_encoder.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("text_model.")], v) for k, v in on_disk.items())
    assert [p.relative_to(sd15_folder()).as_posix() for p in model.weight_files] == [
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"]


def test_inpainting_checkpoint_refused_before_any_weight(no_weight_reads):
    with pytest.raises(ModelError, match=r"9 input channels.*inpainting.*4 input channels"):
        load_base_model(str(inpaint_folder()))
    cfgs = read_base_configs(inpaint_folder())
    del cfgs["index"]                                  # the UNet's own config says it too
    with pytest.raises(ModelError, match="9 input channels"):
        check_base_configs(cfgs, "x")


def test_sdxl_refused_before_any_weight(no_weight_reads):
    with pytest.raises(ModelError, match=r"StableDiffusionXLPipeline is an SDXL model"):
        load_base_model(str(sdxl_folder()))
    cfgs = read_base_configs(sdxl_folder())
    del cfgs["index"]
    with pytest.raises(ModelError, match=r"added conditioning.*addition_embed_type='text_time'"):
        check_base_configs(cfgs, "x")


@pytest.mark.parametrize("part,change,message", [
    ("text_encoder", {"hidden_size": 48}, r"cross_attention_dim 32 differs from the text encoder's width"),
    ("vae", {"latent_channels": 8}, r"in_channels 4 differs from the VAE's latent_channels 8"),
    ("scheduler", {"_class_name": "EDMEulerScheduler"}, r"no DDIM scheduler can be made"),
    ("scheduler", {"_class_name": "FlowMatchEulerDiscreteScheduler"}, r"no DDIM scheduler can be made"),
    ("scheduler", {"beta_schedule": "sigmoid"}, r"beta_schedule 'sigmoid'"),
    ("scheduler", {"prediction_type": "sample"}, r"prediction_type 'sample'"),
    ("unet", {"class_embed_type": "timestep"}, r"class_embed_type='timestep'"),
])
def test_config_checks_name_the_problem(part, change, message):
    cfgs = read_base_configs(sd15_folder())
    check_base_configs(cfgs, "sd15")                   # the real layout passes
    cfgs[part] = {**cfgs[part], **change}
    with pytest.raises(ModelError, match=message):
        check_base_configs(cfgs, "sd15")


def test_hub_selection_reads_only_what_is_loaded():
    chosen = hub_file_selection(SD15_REPO_FILES)
    assert sorted(chosen) == sorted([
        "model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
        "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"])
    fp16_only = [f for f in SD15_REPO_FILES if not f.endswith(("model.safetensors", "_model.safetensors"))
                 or ".fp16." in f]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in hub_file_selection(fp16_only)
    assert not any(f.endswith(".bin") for f in hub_file_selection(fp16_only))


class _FakeHub:
    """list_repo_files + snapshot_download over a local folder: records what was asked for."""

    def __init__(self, folder: Path, cache: Path):
        self.folder, self.cache, self.calls = folder, cache, []

    def files(self) -> list[str]:
        listing = [p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file()]
        return listing + ["v1-5-pruned-emaonly.safetensors", "unet/diffusion_pytorch_model.non_ema.bin"]

    def snapshot_download(self, repo_id, allow_patterns=None, **kw):
        self.calls.append(sorted(allow_patterns))
        for rel in allow_patterns:
            assert "*" not in rel and (self.folder / rel).is_file(), rel
            (self.cache / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.folder / rel, self.cache / rel)
        return str(self.cache)


def _patch_hub(monkeypatch, fake: _FakeHub):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **k: fake.files())


def test_hub_download_configs_first_then_only_loaded_weights(monkeypatch, tmp_path):
    fake = _FakeHub(sd15_folder(), tmp_path / "snap")
    _patch_hub(monkeypatch, fake)
    model = load_base_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert model.ref == "stable-diffusion-v1-5/stable-diffusion-v1-5" and model.resolution == 64
    configs, everything = fake.calls
    assert not any(f.endswith(".safetensors") for f in configs)
    assert [f for f in everything if f.endswith(".safetensors")] == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    assert not any("safety_checker" in f or "feature_extractor" in f for f in everything)

    fake = _FakeHub(inpaint_folder(), tmp_path / "snap2")          # refused after the configs alone
    _patch_hub(monkeypatch, fake)
    with pytest.raises(ModelError, match="inpainting"):
        load_base_model("runwayml/stable-diffusion-inpainting")
    assert len(fake.calls) == 1 and not any(f.endswith(".safetensors") for f in fake.calls[0])


def test_hub_id_offline_uses_the_hf_cache(monkeypatch):
    import huggingface_hub

    def offline(self, repo_id, **k):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline")

    def cache_only(repo_id, local_files_only=False, **k):
        assert local_files_only
        return str(sd15_folder())

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
    assert load_base_model("stable-diffusion-v1-5/stable-diffusion-v1-5").resolution == 64


# ---- single-file checkpoints ----------------------------------------------------------------------------
def test_single_file_beside_its_configs_loads_the_same_weights():
    ref = load_base_model(str(sd15_folder()))
    model = load_base_model(str(single_file_with_configs()))
    assert model.resolution == 64 and model.weight_files == [single_file_with_configs()]
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(model, part).state_dict(), getattr(ref, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), part
    assert model.tokenizer("a photo of a cat").input_ids == ref.tokenizer("a photo of a cat").input_ids


def test_single_file_alone_gets_the_shipped_sd15_configs_only_for_sd15_shapes(monkeypatch, tmp_path):
    import medsoft_aug.models.single_file as sf

    with pytest.raises(ModelError, match=r"not Stable Diffusion 1.5's shapes.*python -c \"from diffusers import "
                                         r"StableDiffusionPipeline.*from_single_file"):
        load_base_model(str(single_file_checkpoint()))        # tiny widths, no configs beside it
    fake = tmp_path / "v1-5-pruned-emaonly.safetensors"
    fake.write_bytes(b"")
    monkeypatch.setattr(sf, "header_shapes", lambda p: sd15_full_size_shapes())
    assert sf.single_file_config(fake) == sf.SD15_CONFIG_DIR
    monkeypatch.setattr(sf, "header_shapes", lambda p: sd15_full_size_shapes(in_channels=9))
    with pytest.raises(ModelError, match="9 input channels.*inpainting"):
        sf.single_file_config(fake)
    monkeypatch.setattr(sf, "header_shapes", lambda p: {"conditioner.embedders.0.x": (1,), **sd15_full_size_shapes()})
    with pytest.raises(ModelError, match="SDXL"):
        sf.single_file_config(fake)
    ckpt = tmp_path / "v1-5-pruned-emaonly.ckpt"
    ckpt.write_bytes(b"PK")
    with pytest.raises(ModelError, match=r"pickle checkpoint.*convert it"):
        load_base_model(str(ckpt))


def test_shipped_sd15_configs_are_sd15():
    from diffusers import UNet2DConditionModel

    from medsoft_aug.models.single_file import SD15_CONFIG_DIR

    check_base_configs(read_base_configs(SD15_CONFIG_DIR), "shipped")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet"))
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964


# ---- BiomedCLIP ----------------------------------------------------------------------------------------------
def _same_features(enc, ref) -> None:
    x = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(3))
    assert torch.equal(enc.image_embed(x), ref.image_embed(x))
    (t1, m1), (t2, m2) = enc.text_tokens(TEXTS), ref.text_tokens(TEXTS)
    assert torch.equal(m1, m2) and torch.equal(t1, t2)


def test_biomedclip_pickle_weights_current_and_legacy_config(caplog):
    for folder in (biomedclip_folder(), biomedclip_legacy_folder()):
        assert not list(folder.glob("*.safetensors"))
        with caplog.at_level("WARNING", logger="medsoft_aug.models.encoders"):
            enc = load_encoder(str(folder))
        assert "torch.load(weights_only=True)" in caplog.text
        assert enc.sha256 == sha256_file(folder / "open_clip_pytorch_model.bin")
        _same_features(enc, tiny_encoder())
    legacy = json.loads((biomedclip_legacy_folder() / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert legacy["proj"] == "mlp" and "hf_proj_type" not in legacy          # the folder is read, not rewritten


class _Planted:
    """Unpickling this would create a file (what a malicious checkpoint would do)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_biomedclip_pickle_with_code_is_refused(tmp_path):
    folder = without(biomedclip_folder(), tmp_path / "evil", "open_clip_pytorch_model.bin")
    planted = tmp_path / "planted"
    torch.save({"logit_scale": _Planted(str(planted))}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelError, match=r"open_clip_pytorch_model.bin: refused") as e:
        load_encoder(str(folder))
    assert "weights_only" not in str(e.value).replace("weights-only", "")  # torch's "set it to False" advice
    assert not planted.exists()


def test_biomedclip_hash_is_of_the_file_open_clip_loads(tmp_path):
    """A folder with the official pickle and another (different) weights file: open_clip prefers
    open_clip_pytorch_model.bin over model.safetensors; the recorded hash is that file's."""
    from medsoft_aug.models.encoders import build_tiny_encoder
    from safetensors.torch import save_file

    folder = tmp_path / "both"
    shutil.copytree(biomedclip_folder(), folder)
    other = build_tiny_encoder(seed=7).model.state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(folder / "model.safetensors"))
    enc = load_encoder(str(folder))
    assert enc.sha256 == sha256_file(folder / "open_clip_pytorch_model.bin")
    _same_features(enc, tiny_encoder())
    st_only = without(folder, tmp_path / "st_only", "open_clip_pytorch_model.bin")
    enc2 = load_encoder(str(st_only))
    assert enc2.sha256 == sha256_file(st_only / "model.safetensors") != enc.sha256


def test_biomedclip_folder_as_downloaded_uses_the_shipped_bert_config(tmp_path, monkeypatch):
    """A full-size BiomedCLIP folder has no BERT config: the shipped one builds BiomedBERT-base (meta device)."""
    import open_clip
    from transformers import AutoConfig

    from medsoft_aug.models.encoder_folder import create_model as _create

    cfg = AutoConfig.from_pretrained(SHIPPED_BERT_DIR)
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == ("bert", 768, 12, 12, 3072,
                                                                                   30522, 512)
    folder = without(biomedclip_folder(), tmp_path / "full", "config.json", "open_clip_pytorch_model.bin")
    doc = json.loads((folder / "open_clip_config.json").read_text())
    doc["model_cfg"] = {"embed_dim": 512, "vision_cfg": {
        "timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
        "timm_proj": "linear", "image_size": 224}, "text_cfg": {
        "hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT, "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}}
    (folder / "open_clip_config.json").write_text(json.dumps(doc))
    import open_clip.factory

    monkeypatch.setattr(open_clip.factory, "_set_model_device_and_precision", lambda *a, **k: None)  # stay on meta
    with torch.device("meta"):
        model, _ = _create(folder, require_weights=False)
    bert = model.text.transformer
    assert type(bert).__name__ == "BertModel" and bert.config.hidden_size == 768
    assert sum(p.numel() for p in bert.embeddings.parameters()) + sum(
        p.numel() for p in bert.encoder.parameters()) == 85_054_464 + 23_837_184   # BERT-base: 12 layers + embeddings
    assert isinstance(model, open_clip.CustomTextCLIP)
    with pytest.raises(ModelError, match="no weights"):
        load_encoder(str(folder))


# ---- through the CLI: train --max-steps 1, then balance ---------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from _work_helpers import WorkWriter

    rng = np.random.default_rng(0)
    w = WorkWriter(tmp_path_factory.mktemp("real_layouts") / "W")
    yy, xx = np.mgrid[0:64, 0:80].astype(np.float32)
    for label, n in (("normal", 3), ("benign", 1), ("malignant", 2)):
        for i in range(n):
            cy, cx = rng.integers(20, 44, 2)
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 50.0).astype(np.float32)
            w.add(f"{label}_{i}", label, "train", rng.random((64, 80), dtype=np.float32), m,
                  patient_id=f"p{label}{i}", study_id=f"s{label}{i}",
                  description="" if label == "normal" else f"{label} lesion in the vertebral body")
    return w.close()


def _cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.mark.parametrize("base", [sd15_folder, single_file_with_configs], ids=["folder", "single-file"])
def test_cli_train_and_balance_on_real_layouts(work, tmp_path, base):
    model_dir, out = tmp_path / "M", tmp_path / "OUT"
    res = _cli("train", work, "--out", model_dir, "--base-model", base(), "--encoder",
               biomedclip_legacy_folder(), "--max-steps", 1, "--batch-size", 2, "--checkpoint-every", 0,
               "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr + res.stdout
    meta = json.loads((model_dir / "medsoft_model.json").read_text())
    assert meta["encoder"]["sha256"] == sha256_file(biomedclip_legacy_folder() / "open_clip_pytorch_model.bin")
    res = _cli("balance", work, "--model", model_dir, "--out", out, "--steps", 2, "--batch-size", 2,
               "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr + res.stdout
    rows = (out / "manifest.csv").read_text().splitlines()
    assert len(rows) > 1
    if base is sd15_folder:                                   # a moved encoder: refused before the base loads
        meta["encoder"]["ref"] = str(tmp_path / "moved")
        (model_dir / "medsoft_model.json").write_text(json.dumps(meta))
        res = _cli("balance", work, "--model", model_dir, "--out", tmp_path / "OUT2", "--steps", 2, "--device", "cpu")
        assert res.exit_code == 3 and "moved" in res.stderr, res.stderr


@pytest.mark.parametrize("folder,words", [(inpaint_folder, "inpainting"), (sdxl_folder, "SDXL")])
def test_cli_train_refuses_wrong_base_with_exit_3(work, tmp_path, folder, words, no_weight_reads):
    res = _cli("train", work, "--out", tmp_path / "M", "--base-model", folder(), "--no-msc", "--max-steps", 1,
               "--device", "cpu")
    assert res.exit_code == 3, res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0]
    assert not (tmp_path / "M").exists()


def test_cli_train_checks_the_encoder_before_loading_the_base(work, tmp_path, no_weight_reads):
    broken = without(biomedclip_folder(), tmp_path / "enc", "config.json", "vocab.txt", "tokenizer.json",
                     "tokenizer_config.json")
    res = _cli("train", work, "--out", tmp_path / "M", "--base-model", sd15_folder(), "--encoder", broken,
               "--max-steps", 1, "--device", "cpu")
    assert res.exit_code == 3 and "tokenizer files" in res.stderr, res.stderr
    res = _cli("train", work, "--out", tmp_path / "M", "--base-model", sd15_folder(), "--encoder",
               without(biomedclip_folder(), tmp_path / "enc2", "open_clip_pytorch_model.bin"), "--max-steps", 1,
               "--device", "cpu")
    assert res.exit_code == 3 and "no weights" in res.stderr, res.stderr
    assert not (tmp_path / "M").exists()
