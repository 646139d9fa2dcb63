"""Generation throughput: medsoft-aug's batched soft-mask DDIM engine vs diffusers' stock
StableDiffusionInpaintPipeline, same weights, same decoupled processors, same run.

SD1.5-shaped random weights (UNet 320/640/1280/1280 with 16 decoupled cross-attention layers installed by
``medsoft_aug.models.adapter.install_adapter``; SD VAE), 512x512, 50 DDIM steps, CFG 7.5, a soft mask per sample,
fp16 on CUDA. Random weights are fine for timing. Prints one JSON line per measurement and a table; writes
``$OUT/balance_gpu.json`` when OUT is set.

Usage: python bench/balance_gpu.py [--tiny] [--batches 1,8,16] [--budget SECONDS] [--compile]
``--tiny``: the tiny architecture at 64 px and 5 steps, for a CPU check that everything runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--batches", default="1,8,16")
ap.add_argument("--budget", type=float, default=420.0, help="stop starting new measurements after this many s")
ap.add_argument("--compile", action="store_true", help="also time both with torch.compile + channels_last")
a = ap.parse_args()
T0 = time.time()

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402

from medsoft_aug.generate.engine import InpaintEngine, SamplingOptions  # noqa: E402
from medsoft_aug.models.adapter import install_adapter  # noqa: E402
from medsoft_aug.models.base import sd15_unet_config  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = torch.float16 if dev == "cuda" else torch.float32
res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
             "dtype": str(dt)}


def sync() -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


if a.tiny:
    from diffusers import UNet2DConditionModel

    ucfg = dict(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vcfg = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    H, steps, msc_dim = 64, 5, 16
else:
    from diffusers import UNet2DConditionModel

    ucfg = sd15_unet_config()
    vcfg = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512)
    H, steps, msc_dim = 512, 50, 512
xdim = ucfg["cross_attention_dim"]
torch.manual_seed(0)
unet = UNet2DConditionModel(**ucfg)
res["decoupled_cross_attn_layers"] = install_adapter(unet, msc_dim, 1.0)
vae = AutoencoderKL(in_channels=3, out_channels=3, **vcfg)
unet, vae = unet.to(dev, dt).eval().requires_grad_(False), vae.to(dev, dt).eval().requires_grad_(False)
sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
engine = InpaintEngine(unet, vae, sched, H)
pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                      safety_checker=None, feature_extractor=None, image_encoder=None,
                                      requires_safety_checker=False)
pipe.mask_processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor, do_normalize=False,
                                        do_binarize=False, do_convert_grayscale=True)
pipe.set_progress_bar_config(disable=True)

rng = np.random.default_rng(0)


def inputs(bs: int):
    yy, xx = np.mgrid[0:H, 0:H]
    donors = [rng.uniform(0.1, 0.9, (H, H)).astype(np.float32) for _ in range(bs)]
    masks = []
    for _ in range(bs):
        cy, cx = rng.uniform(0.3, 0.7, 2) * H
        masks.append(np.clip(1.5 - np.hypot(yy - cy, xx - cx) / (0.12 * H), 0, 1).astype(np.float32))
    pe = torch.randn(bs, 77, xdim, device=dev, dtype=dt)
    e = torch.randn(bs, msc_dim, device=dev, dtype=dt)
    return donors, masks, pe, e


def run_engine(bs: int) -> float:
    donors, masks, pe, e = inputs(bs)
    sync()
    t = time.time()
    engine.inpaint(donors, masks, pe, torch.zeros_like(pe[:1]), e, list(range(bs)),
                   SamplingOptions(steps=steps, guidance=7.5))
    sync()
    return time.time() - t


def run_stock(bs: int) -> float:
    donors, masks, pe, e = inputs(bs)
    img = torch.from_numpy(np.stack(donors))[:, None].expand(-1, 3, -1, -1).to(dev, dt)
    m = torch.from_numpy(np.stack(masks))[:, None].to(dev, dt)
    sync()
    t = time.time()
    with torch.no_grad():
        pipe(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe), image=img, mask_image=m, height=H,
             width=H, num_inference_steps=steps, guidance_scale=7.5,
             ip_adapter_image_embeds=[torch.cat([torch.zeros_like(e), e])[:, None, :]], output_type="pt",
             strength=1.0, generator=torch.Generator(dev).manual_seed(0))
    sync()
    return time.time() - t


rows: list[dict] = []


def measure(label: str, fn, bs: int, reps: int) -> None:
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn(bs)  # warm-up
    med = statistics.median(fn(bs) for _ in range(reps))
    r = {"variant": label, "batch": bs, "s_per_batch": med, "img_per_s": bs / med,
         "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}
    rows.append(r)
    print(json.dumps(r), flush=True)


batches = [int(b) for b in a.batches.split(",")]
for bs in batches:
    if time.time() - T0 > a.budget * 0.6:
        break
    reps = 1 if bs > 1 else 2
    measure("stock-pipeline", run_stock, bs, reps)
    measure("medsoft-engine", run_engine, bs, reps)
if a.compile and time.time() - T0 < a.budget * 0.5:
    unet.to(memory_format=torch.channels_last)
    compiled = torch.compile(unet)
    pipe.unet = compiled
    engine.unet = compiled
    bs = batches[-1] if len(batches) > 1 else batches[0]
    measure("stock-pipeline+compile", run_stock, bs, 1)
    measure("medsoft-engine+compile", run_engine, bs, 1)

ratios = {}
for r in rows:
    if r["variant"].startswith("medsoft-engine"):
        stock = [s for s in rows if s["batch"] == r["batch"]
                 and s["variant"] == r["variant"].replace("medsoft-engine", "stock-pipeline")]
        if stock:
            ratios[f"{r['variant']}@{r['batch']}"] = r["img_per_s"] / stock[0]["img_per_s"]
res.update(rows=rows, speedup_vs_stock=ratios, wall_s=time.time() - T0, resolution=H, steps=steps, guidance=7.5)
print(f"{'variant':26s} {'bs':>3s} {'img/s':>8s} {'memGiB':>7s}")
for r in rows:
    print(f"{r['variant']:26s} {r['batch']:3d} {r['img_per_s']:8.3f} {r['peak_mem_GiB'] or 0:7.2f}")
print(json.dumps({"speedup_vs_stock": ratios, "device": res["device"], "wall_s": round(res["wall_s"], 1)}))
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "balance_gpu.json"), "w") as fh:
        json.dump(res, fh, indent=1)
