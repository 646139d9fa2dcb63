"""Checks on a base model's configs before any weight is read, and the hub file selection.

``check_base_configs`` reads only the JSON configs (milliseconds) and raises ModelError (exit 3) naming what the
tool cannot use and why: an inpainting UNet (9 input channels), SDXL's added conditioning, a UNet whose
cross-attention width differs from the text encoder's, a scheduler DDIM cannot be made from.
``hub_file_selection`` picks, from a hub repository's file list, exactly the files ``load_base_model`` reads:
the configs, the tokenizer and one safetensors weights file per part (no fp16 / non-EMA / .bin variants
when the plain safetensors exists; no root single-file checkpoints, no safety checker).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError

WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
CONFIG_FILES = {"unet": "unet/config.json", "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
                "scheduler": "scheduler/scheduler_config.json"}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json", "added_tokens.json")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "v_prediction")


def read_base_configs(folder: Path) -> dict[str, dict]:
    """The part configs of a diffusers-layout folder (and ``model_index.json`` when present, key "index")."""
    out: dict[str, dict] = {}
    for part, rel in CONFIG_FILES.items():
        out[part] = _read_json(folder / rel, folder, rel)
    if (folder / "model_index.json").is_file():
        out["index"] = _read_json(folder / "model_index.json", folder, "model_index.json")
    return out


def check_base_configs(cfgs: dict[str, dict], where: str) -> None:
    """Refuse (ModelError, exit 3) a base model this tool cannot drive; ``where`` names it in the message."""
    problem = (_pipeline_problem(cfgs.get("index", {})) or _unet_problem(cfgs["unet"])
               or _channels_problem(cfgs["unet"], cfgs["vae"]) or _text_problem(cfgs["unet"], cfgs["text_encoder"])
               or _scheduler_problem(cfgs["scheduler"]))
    if problem:
        raise ModelError(f"base model {where}: {problem}")


def hub_file_selection(files: list[str]) -> list[str]:
    """The files of a hub repository that ``load_base_model`` reads (for ``snapshot_download(allow_patterns=)``).

    One weights file per part: ``<stem>.safetensors``, else ``<stem>.fp16.safetensors``; a part with neither
    is left out (the loader then names it). Configs, ``model_index.json`` and the tokenizer files."""
    have = set(files)
    out = [f for f in ("model_index.json", *CONFIG_FILES.values()) if f in have]
    out += [f"tokenizer/{n}" for n in TOKENIZER_FILES if f"tokenizer/{n}" in have]
    for part, stem in WEIGHT_STEMS.items():
        for name in (f"{part}/{stem}.safetensors", f"{part}/{stem}.fp16.safetensors"):
            if name in have:
                out.append(name)
                break
    return out


# ---- the individual checks (each returns a sentence or None) -----------------------------------------------
def _pipeline_problem(index: dict) -> Optional[str]:
    cls = str(index.get("_class_name", ""))
    if "XL" in cls or "text_encoder_2" in index:
        return (f"{cls or 'the pipeline'} is an SDXL model (two text encoders, pooled-text and size/crop "
                "conditioning): medsoft-aug drives Stable Diffusion 1.x/2.x UNets with one CLIP text encoder")
    if "Inpaint" in cls:
        return _INPAINT.format(n=9)
    return None


_INPAINT = ("the UNet takes {n} input channels (an inpainting checkpoint: 4 latent + 4 masked-image latent + 1 "
            "mask channels); medsoft-aug inpaints by soft-blending latents with a text-to-image UNet of 4 input "
            "channels: use the text-to-image checkpoint (e.g. stable-diffusion-v1-5), not the inpainting one")


def _unet_problem(unet: dict) -> Optional[str]:
    cls = unet.get("_class_name", "UNet2DConditionModel")
    if cls != "UNet2DConditionModel":
        return f"unet/ is a {cls}, not a UNet2DConditionModel"
    added = {k: unet.get(k) for k in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")
             if unet.get(k) is not None}
    if added:
        what = ", ".join(f"{k}={v!r}" for k, v in added.items())
        extra = (" (SDXL-style pooled text embeddings and image size/crop time ids)"
                 if added.get("addition_embed_type") in ("text_time", "text") else "")
        return (f"the UNet needs added conditioning the tool cannot feed: {what}{extra}; only text "
                "cross-attention conditioning is supported")
    if unet.get("num_class_embeds") is not None:
        return f"the UNet is class-conditioned (num_class_embeds={unet['num_class_embeds']}); not supported"
    return None


def _channels_problem(unet: dict, vae: dict) -> Optional[str]:
    if vae.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        return f"vae/ is a {vae.get('_class_name')}, not an AutoencoderKL"
    latent = int(vae.get("latent_channels", 4))
    cin, cout = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 4))
    if cin != latent:
        if cin == 2 * latent + 1:
            return _INPAINT.format(n=cin)
        return f"UNet in_channels {cin} differs from the VAE's latent_channels {latent}"
    if cout != latent:
        return f"UNet out_channels {cout} differs from the VAE's latent_channels {latent}"
    return None


def _text_problem(unet: dict, text: dict) -> Optional[str]:
    archs = text.get("architectures") or []
    if text.get("model_type", "clip_text_model") not in ("clip_text_model", "clip") and \
            not any(a.startswith("CLIPText") for a in archs):
        return f"text_encoder/ is a {text.get('model_type')!r} model, not a CLIP text model"
    width = text.get("hidden_size", (text.get("text_config") or {}).get("hidden_size"))
    xdim = unet.get("cross_attention_dim", 1280)
    if isinstance(xdim, (list, tuple)):
        if len(set(xdim)) != 1:
            return f"the UNet's cross_attention_dim varies per block ({list(xdim)}); not supported"
        xdim = xdim[0]
    if width is None or int(width) != int(xdim):
        return (f"UNet cross_attention_dim {xdim} differs from the text encoder's width (hidden_size "
                f"{width}): the UNet was not trained with this text encoder")
    return None


def _scheduler_problem(sched: dict) -> Optional[str]:
    from diffusers import DDIMScheduler

    cls = sched.get("_class_name", "DDPMScheduler")
    # The names, not _get_compatibles(): that imports every scheduler class (~3 s at each balance/train start).
    compatible = set(DDIMScheduler._compatibles) | {"DDIMScheduler"}
    if cls not in compatible or cls.startswith("EDM"):     # EDM schedulers have sigmas, no beta schedule
        return f"scheduler/ is a {cls}, from which no DDIM scheduler can be made"
    if sched.get("trained_betas") is None and sched.get("beta_schedule", "linear") not in _BETA_SCHEDULES:
        return (f"scheduler beta_schedule {sched.get('beta_schedule')!r} is not one DDIM supports "
                f"({', '.join(_BETA_SCHEDULES)})")
    pred = sched.get("prediction_type", "epsilon")
    if pred not in _PREDICTION_TYPES:
        return f"scheduler prediction_type {pred!r} is not supported ({' or '.join(_PREDICTION_TYPES)})"
    n = sched.get("num_train_timesteps", 1000)
    if not isinstance(n, int) or n < 2:
        return f"scheduler num_train_timesteps {n!r} is not a positive integer"
    return None


def _read_json(path: Path, folder: Path, rel: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"base model folder {folder}: {rel} missing")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"base model folder {folder}: {rel} is not valid JSON ({type(e).__name__})") from e
    if not isinstance(doc, dict):
        raise ModelError(f"base model folder {folder}: {rel} is not a JSON object")
    return doc
