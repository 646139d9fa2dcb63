"""Reduced-width models written in exactly the on-disk layouts the hub ships, built once per test session.

* ``sd15``: Stable Diffusion 1.5's folder (``model_index.json``, ``unet/ vae/ text_encoder/`` configs with the real
  keys and block types, smaller widths, ``save_pretrained`` safetensors; the real CLIP BPE ``vocab.json`` /
  ``merges.txt``; SD1.5's PNDM ``scheduler_config.json``; ``safety_checker/`` and ``feature_extractor/`` configs);
* ``inpaint``: the same as ``stable-diffusion-inpainting`` (UNet ``in_channels`` 9, inpainting pipeline class);
* ``sdxl``: SDXL's folder (two text encoders and tokenizers, UNet ``addition_embed_type: text_time``, Euler);
* ``single_file``: ``sd15``'s weights as one original-layout checkpoint (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.transformer.*``) like ``v1-5-pruned-emaonly.safetensors``;
* BiomedCLIP's open_clip folder (``open_clip_config.json`` naming the BiomedBERT text tower, WordPiece
  ``vocab.txt`` + ``tokenizer.json``, pickle ``open_clip_pytorch_model.bin``), in the current and the legacy
  config revision, and with safetensors weights.
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
LEGACY_BERT = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract"

SD15_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
              "feature_extractor": ["transformers", "CLIPImageProcessor"],
              "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
              "vae": ["diffusers", "AutoencoderKL"]}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                  "clip_sample": False}
# SD1.5's UNet/VAE/CLIP configs with every width divided (320 -> 32, 128 -> 32, 768 -> 32), 64 px images
UNET = dict(act_fn="silu", attention_head_dim=8, block_out_channels=[32, 32, 64, 64], center_input_sample=False,
            cross_attention_dim=32, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
            mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=8,
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
VAE = dict(act_fn="silu", block_out_channels=[32, 32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 4,
           in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
           sample_size=64, up_block_types=["UpDecoderBlock2D"] * 4)
CLIP_TEXT = dict(architectures=["CLIPTextModel"], attention_dropout=0.0, bos_token_id=0, dropout=0.0,
                 eos_token_id=2, hidden_act="quick_gelu", hidden_size=32, initializer_factor=1.0,
                 initializer_range=0.02, intermediate_size=64, layer_norm_eps=1e-05, max_position_embeddings=77,
                 num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, projection_dim=32, vocab_size=49408)


@functools.lru_cache(maxsize=1)
def layouts_root() -> Path:
    """All folders, built once per session under one temporary directory (removed at interpreter exit)."""
    import atexit

    root = Path(tempfile.mkdtemp(prefix="medsoft_real_layouts_"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.lru_cache(maxsize=1)
def sd15_folder() -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from medsoft_aug.models.clip_vocab import write_clip_tokenizer

    out = layouts_root() / "stable-diffusion-v1-5"
    torch.manual_seed(0)
    UNet2DConditionModel(**UNET).save_pretrained(out / "unet", safe_serialization=True)
    AutoencoderKL(**VAE).save_pretrained(out / "vae", safe_serialization=True)
    cfg = {k: v for k, v in CLIP_TEXT.items() if k != "architectures"}
    CLIPTextModel(CLIPTextConfig(**cfg)).save_pretrained(out / "text_encoder", safe_serialization=True)
    write_clip_tokenizer(out / "tokenizer")
    PNDMScheduler.from_config(SD15_SCHEDULER).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(SD15_INDEX, indent=2))
    for sub, doc in (("safety_checker", {"architectures": ["StableDiffusionSafetyChecker"]}),
                     ("feature_extractor", {"crop_size": 224, "do_center_crop": True, "size": 224})):
        (out / sub).mkdir()
        name = "config.json" if sub == "safety_checker" else "preprocessor_config.json"
        (out / sub / name).write_text(json.dumps(doc))
    return out


@functools.lru_cache(maxsize=1)
def inpaint_folder() -> Path:
    from diffusers import UNet2DConditionModel

    out = layouts_root() / "stable-diffusion-inpainting"
    shutil.copytree(sd15_folder(), out)
    shutil.rmtree(out / "unet")
    torch.manual_seed(1)
    UNet2DConditionModel(**{**UNET, "in_channels": 9}).save_pretrained(out / "unet", safe_serialization=True)
    index = {**SD15_INDEX, "_class_name": "StableDiffusionInpaintPipeline"}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


@functools.lru_cache(maxsize=1)
def sdxl_folder() -> Path:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = layouts_root() / "stable-diffusion-xl-base-1.0"
    sd15 = sd15_folder()
    for sub in ("vae", "tokenizer"):
        shutil.copytree(sd15 / sub, out / sub)
    shutil.copytree(sd15 / "tokenizer", out / "tokenizer_2")
    torch.manual_seed(2)
    unet = dict(UNET, block_out_channels=[32, 64], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 4],
                cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 32, transformer_layers_per_block=[1, 2],
                use_linear_projection=True, sample_size=16)
    UNet2DConditionModel(**unet).save_pretrained(out / "unet", safe_serialization=True)
    cfg = {k: v for k, v in CLIP_TEXT.items() if k != "architectures"}
    CLIPTextModel(CLIPTextConfig(**cfg)).save_pretrained(out / "text_encoder", safe_serialization=True)
    CLIPTextModelWithProjection(CLIPTextConfig(**cfg)).save_pretrained(out / "text_encoder_2",
                                                                       safe_serialization=True)
    EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           steps_offset=1).save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


# ---- BiomedCLIP -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def biomedclip_folder() -> Path:
    """BiomedCLIP as on the hub (current config revision, pickle weights), tiny widths. Its BERT config.json is
    in the folder because the tiny tower is not BiomedBERT's size (the real folder has none: the shipped one
    is used)."""
    from _models_helpers import tiny_encoder
    from medsoft_aug.models.encoders import save_encoder_dir
    from safetensors.torch import load_file

    out = layouts_root() / "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    save_encoder_dir(tiny_encoder(), out, hf_model_name=BIOMEDBERT)
    state = load_file(str(out / "open_clip_model.safetensors"))
    (out / "open_clip_model.safetensors").unlink()
    torch.save(state, out / "open_clip_pytorch_model.bin")           # the official weights are a pickle
    return out


@functools.lru_cache(maxsize=1)
def biomedclip_legacy_folder() -> Path:
    """The older open_clip_config.json revision mirrors still carry: text_cfg keys ``proj`` / ``pooler_type``
    and the former hub name of the text tower."""
    out = layouts_root() / "BiomedCLIP-legacy"
    shutil.copytree(biomedclip_folder(), out)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    text = cfg["model_cfg"]["text_cfg"]
    text["proj"] = text.pop("hf_proj_type")
    text["pooler_type"] = text.pop("hf_pooler_type")
    text["hf_model_name"] = text["hf_tokenizer_name"] = LEGACY_BERT
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=4))
    return out


def without(folder: Path, dest: Path, *names: str) -> Path:
    """A copy of ``folder`` at ``dest`` without the files ``names``."""
    shutil.copytree(folder, dest)
    for n in names:
        (dest / n).unlink()
    return dest
