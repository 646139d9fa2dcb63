"""Checks and records of the tiny base model fit: PSNR, a PNG contact sheet, the README of ``tiny_base/``."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..fsutil import atomic_write_bytes, atomic_write_text


def psnr(x: torch.Tensor, ref: torch.Tensor, weight: Optional[torch.Tensor] = None) -> float:
    """PSNR in dB of images in [0, 1] (peak 1) over all pixels, or weighted by ``weight`` (same shape)."""
    err = (x.float() - ref.float()) ** 2
    mse = float((err * weight).sum() / weight.sum()) if weight is not None else float(err.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def contact_sheet(path: Path, columns: list[torch.Tensor], titles: list[str], scale: int = 3,
                  recon: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """Grid PNG: one column per (N, 1, R, R) tensor in [0, 1], titled; optional extra block of VAE
    (original, reconstruction) pairs underneath."""
    from PIL import Image, ImageDraw

    def col(t: torch.Tensor) -> np.ndarray:
        return np.concatenate([im[0].numpy() for im in t.float().clamp(0, 1)], axis=0)

    blocks = [np.concatenate([col(c) for c in columns], axis=1)]
    if recon is not None:
        orig, rec = recon
        pairs = np.concatenate([np.concatenate([o[0].numpy(), r[0].numpy()], axis=1)
                                for o, r in zip(orig.clamp(0, 1), rec.clamp(0, 1))], axis=1)
        width = blocks[0].shape[1]
        pairs = pairs[:, :width] if pairs.shape[1] >= width else np.pad(pairs, ((0, 0), (0, width - pairs.shape[1])))
        blocks.append(np.full((4, width), 1.0))
        blocks.append(pairs)
    grid = np.concatenate(blocks, axis=0)
    img = Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).convert("RGB")
    head = Image.new("RGB", (img.width, 14), (255, 255, 255))
    draw = ImageDraw.Draw(head)
    r = columns[0].shape[-1] * scale
    for i, t in enumerate(titles):
        draw.text((i * r + 2, 1), t, fill=(0, 0, 0))
    sheet = Image.new("RGB", (img.width, img.height + head.height), (255, 255, 255))
    sheet.paste(head, (0, 0))
    sheet.paste(img, (0, head.height))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_readme(path: Path, rec: dict) -> None:
    """README of the shipped tiny base model: how it was made, on what, how long, how good."""
    size = sum(p.stat().st_size for p in Path(path).parent.rglob("*.safetensors"))
    commands = "\n".join(rec.get("commands") or [rec["command"]])
    g = rec.get

    def line(cls: str, sfx: str = "") -> str:
        return (f"{cls}: mean {g(f'mask_mean_{cls}{sfx}')}, 5th pct {g(f'mask_p05_{cls}{sfx}')}, "
                f"95th pct {g(f'mask_p95_{cls}{sfx}')}")

    more = ("; each later command continues the previous output's UNet and text encoder with --init, keeping its "
            "VAE") if len(rec.get("commands") or []) > 1 else ""
    load = f" (1-minute load average {rec['load_average']:.1f} at the end)" if "load_average" in rec else ""
    text = f"""# medsoft-aug tiny base model (`--base-model tiny`)

A Stable-Diffusion-shaped latent diffusion model small enough for a CPU, in diffusers layout (unet/, vae/,
text_encoder/, tokenizer/, scheduler/; fp16 safetensors, {size / 2**20:.1f} MiB of weights). Architecture:
`medsoft_aug/models/configs/tiny_base.json` (64 x 64 px, VAE factor 4 -> 16 x 16 x 4 latents, a 1.0M-parameter
UNet with 4 cross-attention layers, CLIP text encoder 64 wide with a byte-level BPE vocabulary learned from the
training descriptions). It exists so that the demo and the tests run offline on a CPU; it is not a medical model.

## How it was made

Training data: a phantom set made like `sample_data/` but with another seed, so that no demo row (in particular
no test-split row) ever fed the base model:

```bash
python -m medsoft_aug.sample_data /tmp/phantom_fit --n-studies 160 --seed 11
medsoft-aug ingest --labels /tmp/phantom_fit/labels.csv --images /tmp/phantom_fit --out /tmp/phw
medsoft-aug masks build /tmp/phw
medsoft-aug ingest --labels sample_data/labels.csv --images sample_data --out /tmp/mw_s && medsoft-aug masks build /tmp/mw_s
{commands}
```
(`medsoft_aug.models.tiny_fit`: VAE fitted first, then UNet + text encoder trained together, EMA weights{more}.)
{rec['train_rows']} ingested + masked 64 x 64 slices ({', '.join(f'{k} {v}' for k, v in rec['labels'].items())}),
{g('vae_steps_all', rec['vae_steps'])} VAE steps and {g('unet_steps_all', rec['unet_steps'])} UNet steps of batch {rec['batch']}.
Time: {g('total_seconds_all', rec['total_seconds']) / 60:.1f} min in all on {rec['machine']} shared with other
engineers' jobs{load}, {rec['torch_threads']} torch thread.

## Checks (on the {rec['eval_rows']} slices of `sample_data/`, none of which was trained on)

- VAE reconstruction PSNR: {rec['vae_psnr_db']} dB (whole slice), {rec['vae_psnr_db_in_mask']} dB inside the soft masks.
- Inpainting into the soft masks of {g('eval_normal_rows', 8)} normal slices (Eq. 7 blend, 25 DDIM steps,
  guidance {g('eval_guidance', 7.5)}, no MSC; each slice with its own description of the class), grey values inside
  the mask core (M_b > 0.5); the original slices there have mean {g('mask_mean_original')}:
  - z_m = latent of I_m (the paper): {line('benign')}; {line('malignant')}; {line('empty')}
  - z_m = latent of x0 (the demo's `--blend donor`): {line('benign', '_known_x0')}; {line('malignant', '_known_x0')};
    {line('empty', '_known_x0')}
  With I_m the mask region comes out darker than the original for every prompt: at 16 x 16 latents the latents
  next to the blacked-out hole carry it into the blend.
- `contact_sheet.png`: columns = normal slice, soft mask, inpainted with benign prompts, with malignant
  prompts (z_m of x0); underneath, pairs of (slice, VAE reconstruction).

Prompts: {g('prompts_benign', 1)} benign training descriptions in turn, the first "{g('prompt_benign')}";
{g('prompts_malignant', 1)} malignant ones, the first "{g('prompt_malignant')}".
Full record: `fit.json`.
"""
    atomic_write_text(path, text)


def load_record(folder: Path) -> dict:
    return json.loads((Path(folder) / "fit.json").read_text())
