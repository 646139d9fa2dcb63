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
    _hub_text_keys(out / "text_encoder" / "model.safetensors")
    write_clip_tokenizer(out / "tokenizer")
    PNDMScheduler.from_config(SD15_SCHEDULER).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(SD15_INDEX, indent=2))
    for sub, doc in (("safety_checker", {"architectures": ["StableDiffusionSafetyChecker"]}),
                     ("feature_extractor", {"crop_size": 224, "do_center_crop": True, "size": 224})):
        (out / sub).mkdir()
        name = "config.json" if sub == "safety_checker" else "preprocessor_config.json"
        (out / sub / name).write_text(json.dumps(doc))
    return out


def _hub_text_keys(path: Path) -> None:
    """Rewrite a CLIP text encoder's keys as the hub's files (written by transformers 4) name them:
    ``text_model.embeddings...`` (transformers 5 saves ``embeddings...`` and maps the old names on load)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()},
              str(path), metadata={"format": "pt"})


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


# ---- the original (CompVis LDM) single-file layout ----------------------------------------------------------
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _ldm_unet_key(key: str, layers: int) -> str:
    """A diffusers UNet2DConditionModel key -> its name in the original LDM UNetModel (openaimodel.py)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head, _, leaf = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{leaf}"
    p = key.split(".")
    if p[0] == "down_blocks":
        i, kind, rest = int(p[1]), p[2], p[3:]
        if kind == "downsamplers":                                  # downsamplers.0.conv.weight
            return ".".join([f"input_blocks.{(layers + 1) * (i + 1)}.0.op", *rest[2:]])
        j = int(rest[0])
        block = f"input_blocks.{(layers + 1) * i + j + 1}.{0 if kind == 'resnets' else 1}"
        return _inner(block, kind, rest[1:])
    if p[0] == "up_blocks":
        i, kind, rest = int(p[1]), p[2], p[3:]
        if kind == "upsamplers":                                    # upsamplers.0.conv.weight
            n_attn_before = 1 if i == 0 else 2
            return ".".join([f"output_blocks.{(layers + 1) * i + layers}.{n_attn_before}", *rest[1:]])
        j = int(rest[0])
        block = f"output_blocks.{(layers + 1) * i + j}.{0 if kind == 'resnets' else 1}"
        return _inner(block, kind, rest[1:])
    if p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), p[3:]
        return _inner(f"middle_block.{1 if kind == 'attentions' else 2 * j}", kind, rest)
    raise KeyError(key)


def _inner(block: str, kind: str, rest: list[str]) -> str:
    name = ".".join(rest)
    if kind == "resnets":
        for new, old in _RESNET:
            if name.startswith(new + "."):
                name = old + name[len(new):]
                break
    return f"{block}.{name}"


def _ldm_vae_key(key: str, n_blocks: int) -> str:
    """A diffusers AutoencoderKL key -> its name in the original LDM Encoder/Decoder (model.py)."""
    p = key.split(".")
    if p[0] not in ("encoder", "decoder"):
        return key                                                  # quant_conv, post_quant_conv
    side, rest = p[0], p[1:]
    if rest[0] in ("conv_norm_out",):
        return ".".join([side, "norm_out", *rest[1:]])
    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        level = i if rest[0] == "down_blocks" else n_blocks - 1 - i
        stage = "down" if rest[0] == "down_blocks" else "up"
        if rest[2] in ("downsamplers", "upsamplers"):
            return ".".join([side, stage, str(level), "downsample" if stage == "down" else "upsample", *rest[4:]])
        name = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.{stage}.{level}.block.{rest[3]}.{name}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            name = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(rest[2]) + 1}.{name}"
        attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        tail = rest[3:]
        sub = attn[tail[0]]
        leaf = tail[-1]
        return f"{side}.mid.attn_1.{sub}.{leaf}"
    return key


def original_layout(unet: dict, vae: dict, text: dict, unet_cfg: dict, vae_cfg: dict) -> dict:
    """diffusers state dicts (UNet, VAE, CLIP text encoder) -> one original-layout state dict."""
    state = {}
    for k, v in unet.items():
        state["model.diffusion_model." + _ldm_unet_key(k, unet_cfg["layers_per_block"])] = v
    for k, v in vae.items():
        name = _ldm_vae_key(k, len(vae_cfg["block_out_channels"]))
        if ".mid.attn_1." in name and name.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]                                 # LDM's attention uses 1x1 convolutions
        state["first_stage_model." + name] = v
    for k, v in text.items():
        state["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return state


def write_single_file(folder: Path, out: Path) -> Path:
    """The diffusers folder ``folder``'s UNet, VAE and CLIP text encoder as one original-layout safetensors
    checkpoint (the layout of ``v1-5-pruned-emaonly.safetensors``)."""
    from safetensors.torch import load_file, save_file

    state = original_layout(load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
                            load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")),
                            load_file(str(folder / "text_encoder" / "model.safetensors")),
                            json.loads((folder / "unet" / "config.json").read_text()),
                            json.loads((folder / "vae" / "config.json").read_text()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out


@functools.lru_cache(maxsize=1)
def single_file_checkpoint() -> Path:
    """``sd15_folder()`` as ``v1-5-pruned-emaonly.safetensors``, alone in a folder."""
    out = layouts_root() / "single" / "v1-5-pruned-emaonly.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_single_file(sd15_folder(), out)


@functools.lru_cache(maxsize=1)
def single_file_with_configs() -> Path:
    """The SD1.5 repository downloaded without its per-part weights: the root single file beside the configs."""
    root = layouts_root() / "sd15-single-with-configs"
    src = sd15_folder()
    for p in src.rglob("*"):
        if p.is_file() and p.suffix != ".safetensors":
            (root / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, root / p.relative_to(src))
    shutil.copy(single_file_checkpoint(), root / "v1-5-pruned-emaonly.safetensors")
    return root / "v1-5-pruned-emaonly.safetensors"


def sd15_full_size_shapes(in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the real v1-5-pruned-emaonly.safetensors, from SD1.5-sized models on the meta device
    (the shipped configs) renamed to the original layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from medsoft_aug.models.single_file import SD15_CONFIG_DIR

    cfg = {p: json.loads((SD15_CONFIG_DIR / p / "config.json").read_text()) for p in ("unet", "vae", "text_encoder")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({**cfg["unet"], "in_channels": in_channels}).state_dict()
        vae = AutoencoderKL.from_config(cfg["vae"]).state_dict()
        te = {k: v for k, v in cfg["text_encoder"].items() if not k.startswith("_") and k != "architectures"}
        text = CLIPTextModel(CLIPTextConfig(**te)).state_dict()
    state = original_layout(unet, vae, text, cfg["unet"], cfg["vae"])
    return {k: tuple(v.shape) for k, v in state.items()}
