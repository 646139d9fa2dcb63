"""Single-file base checkpoints in the original CompVis layout (``v1-5-pruned-emaonly.safetensors``).

Loaded offline with diffusers' ``StableDiffusionPipeline.from_single_file(config=...)``, where the config folder is
  * the checkpoint's own folder when it holds the diffusers configs (``model_index.json``, ``unet/config.json``,
    ...: e.g. a download of the SD1.5 repository without its per-part weights), else
  * the SD1.5 configs shipped in ``configs/sd15/`` (plus CLIP's tokenizer files written from open_clip's BPE
    merges), used only when the checkpoint's tensor shapes are SD1.5's.
Anything else (SD2 / SDXL / inpainting single files, ``.ckpt`` pickles, other widths without configs) is refused
with ModelError (exit 3) and the exact command that converts the file to a diffusers folder. Only the
safetensors header is read before that decision.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from .base_checks import CONFIG_FILES, check_base_configs, read_base_configs

SD15_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd15"
_PROBES = {  # original-layout key -> SD1.5 shape
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
}
_CLIP_EMBED = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
               "cond_stage_model.transformer.embeddings.token_embedding.weight")


def convert_command(path: Path) -> str:
    out = path.with_suffix("")
    return (f"python -c \"from diffusers import StableDiffusionPipeline as P; "
            f"P.from_single_file('{path}').save_pretrained('{out}-diffusers')\" (once, online: diffusers fetches "
            f"the matching configs), then pass --base-model {out}-diffusers")


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as e:  # noqa: BLE001 - a user file: truncated or not safetensors
        raise ModelError(f"base model {path.name}: not a readable safetensors file ({type(e).__name__})") from e


def single_file_config(path: Path) -> Path:
    """The diffusers config folder to load ``path`` with, or ModelError naming why it cannot be loaded."""
    if path.suffix != ".safetensors":
        raise ModelError(f"base model {path.name}: a pickle checkpoint ({path.suffix}); medsoft-aug reads no pickled "
                         f"base models: use the .safetensors file of the same checkpoint or convert it: "
                         f"{convert_command(path)}")
    shapes = header_shapes(path)
    problem, convertible = _layout_problem(shapes)
    if problem:
        hint = f"; convert it: {convert_command(path)}" if convertible else ""
        raise ModelError(f"base model {path.name}: {problem}{hint}")
    own = path.parent
    if all((own / rel).is_file() for rel in CONFIG_FILES.values()) and (own / "tokenizer").is_dir():
        check_base_configs(read_base_configs(own), str(own))
        return own
    wrong = {k: shapes.get(k) for k, want in _PROBES.items() if shapes.get(k) != want}
    embed = next((shapes[k] for k in _CLIP_EMBED if k in shapes), None)
    if wrong or embed != (49408, 768):
        first = next(iter(wrong.items()), ("text token embedding", embed))
        raise ModelError(f"base model {path.name}: not Stable Diffusion 1.5's shapes ({first[0]}: {first[1]}) and no "
                         f"diffusers configs beside it; convert it: {convert_command(path)}")
    return SD15_CONFIG_DIR


def load_single_file(path: Path, config_dir: Path, dtype) -> tuple[Any, Any, Any, Any, dict]:
    """(unet, vae, text_encoder, tokenizer, scheduler config) of ``path`` with the configs of ``config_dir``."""
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="medsoft_sd_config_") as tmp:
        cfg = _with_tokenizer(config_dir, Path(tmp))
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=str(cfg), local_files_only=True, torch_dtype=dtype, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
        except Exception as e:  # noqa: BLE001 - a user file that does not fit its configs: one clear line
            msg = " ".join(str(e).split())[:200]
            raise ModelError(f"base model {path.name}: cannot load the single-file checkpoint "
                             f"({type(e).__name__}: {msg}); convert it: {convert_command(path)}") from e
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config)


def _with_tokenizer(config_dir: Path, tmp: Path) -> Path:
    """``config_dir`` itself when it has a tokenizer, else a copy of its configs with CLIP's tokenizer files."""
    if (config_dir / "tokenizer").is_dir():
        return config_dir
    from .clip_vocab import write_clip_tokenizer

    out = tmp / "config"
    for rel in (*CONFIG_FILES.values(), "model_index.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(config_dir / rel, out / rel)
    write_clip_tokenizer(out / "tokenizer")
    return out


def _layout_problem(shapes: dict[str, tuple[int, ...]]) -> tuple[Optional[str], bool]:
    """(why the file cannot be loaded here or None, whether converting it to a diffusers folder would help)."""
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        return "an SDXL single-file checkpoint (not supported: SDXL needs added conditioning the tool cannot feed)", False
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "a Stable Diffusion 2.x single-file checkpoint (OpenCLIP text encoder), no configs offline", True
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is None or not any(k in shapes for k in _CLIP_EMBED) or \
            "first_stage_model.encoder.conv_in.weight" not in shapes:
        return "not a Stable Diffusion 1.x checkpoint in the original layout (UNet, VAE and CLIP text encoder)", False
    if len(conv_in) == 4 and conv_in[1] != 4:
        return (f"the UNet takes {conv_in[1]} input channels (an inpainting checkpoint); medsoft-aug inpaints by "
                f"soft-blending with a text-to-image UNet of 4 input channels: use the text-to-image checkpoint"), False
    return None, False
