"""SMIS training throughput: medsoft-aug's engine vs the reference step, SD1.5-shaped model, random weights.

Ours: ``train.loop.run_task`` + ``SMISTask`` (accelerate, mixed precision, frozen UNet in the autocast dtype,
16 decoupled layers trainable in fp32, VAE latents / prompt embeddings / e_MSC cached once per sample).
Reference: :func:`reference`, the step as the IP-Adapter tutorial script writes it (VAE encode of the
batch every step), on the same UNet/VAE in the same run. Both: 512x512, masked noise loss (Eq. 6), AdamW.
The text encoder and MSC are stand-ins (random prompt embeddings (B, 77, 768) and e_MSC (B, 512)): ours caches
them in setup either way, so they do not enter the step time.

    python bench/train_gpu.py [--dtype bf16|fp16] [--batches 8,16,32] [--steps 8]    # CUDA
    python bench/train_gpu.py --tiny --steps 3 --warmup 1                             # CPU, seconds
Prints one JSON line per measurement and a table; writes $OUT/train_gpu.json when $OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsoft_aug.models.adapter import adapter_kwargs, adapter_parameters, install_adapter  # noqa: E402
from medsoft_aug.train.loop import LoopConfig, make_accelerator, run_task  # noqa: E402
from medsoft_aug.train.smis_stage import SMISTask, latent_mask, masked_noise_loss  # noqa: E402

SD15_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                 attention_head_dim=8)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512)
TINY_UNET = dict(sample_size=32, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
TINY_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)


class SyntheticSlices(torch.utils.data.Dataset):
    """n random grayscale slices with a box soft mask, R x R; the SliceDataset item contract."""

    def __init__(self, n: int, res: int):
        self.n, self.res = n, res
        self.sample_ids = [f"s{i:05d}" for i in range(n)]
        self.texts = [f"lesion type {i % 7}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        r = self.res
        m = torch.zeros(1, r, r)
        m[:, r // 4: 3 * r // 4, r // 3: 2 * r // 3] = 1
        return {"image": torch.rand(1, r, r, generator=g), "soft_mask": m, "text": self.texts[i], "label": "x",
                "sample_id": self.sample_ids[i], "index": i}


def fake_prompt(dim: int):
    def encode(texts: list[str]) -> torch.Tensor:
        return torch.stack([torch.randn(77, dim, generator=torch.Generator().manual_seed(hash(t) % 2**31))
                            for t in texts])
    return encode


def fake_msc(dim: int):
    def embed(images: torch.Tensor, masks: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return torch.randn(images.shape[0], dim, device=images.device)
    return embed


def build(tiny: bool, msc_dim: int):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **(TINY_UNET if tiny else SD15_UNET))
    vae = AutoencoderKL(in_channels=3, out_channels=3, **(TINY_VAE if tiny else SD15_VAE))
    n = install_adapter(unet, msc_dim)
    with torch.no_grad():                      # non-zero W'_v so the adapter branch does real work
        for p in adapter_parameters(unet):
            p.normal_(0, 0.02)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          num_train_timesteps=1000)
    return unet, vae, sched, n


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def reference(unet, vae, sched, bs, res, xdim, msc_dim, steps, warmup, dev, wdt) -> dict:
    """The IP-Adapter tutorial's step: VAE encode every step, frozen UNet in wdt, adapter fp32 under autocast."""
    for p in unet.parameters():
        if not p.requires_grad:
            p.data = p.data.to(wdt)
    vae.to(dev, wdt)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)

    def step():
        img = torch.rand(bs, 3, res, res, device=dev, dtype=wdt) * 2 - 1
        with torch.no_grad():
            z = vae.encode(img).latent_dist.sample() * vae.config.scaling_factor
        m = torch.zeros(bs, 1, res, res, device=dev)
        m[..., res // 4: 3 * res // 4, res // 3: 2 * res // 3] = 1
        m = latent_mask(m, z.shape[-2:])
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (bs,), device=dev)
        zt = sched.add_noise(z, noise, t)
        txt = torch.randn(bs, 77, xdim, device=dev, dtype=wdt)
        e = torch.randn(bs, msc_dim, device=dev, dtype=wdt)
        with torch.autocast(dev, dtype=wdt, enabled=dev == "cuda"):
            pred = unet(zt, t, encoder_hidden_states=txt, **adapter_kwargs(e)).sample
        loss = masked_noise_loss(pred, noise, m)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    ts = []
    for _ in range(steps):
        sync(dev)
        t0 = time.perf_counter()
        step()
        sync(dev)
        ts.append(time.perf_counter() - t0)
    return _row("reference (VAE encode every step)", bs, ts, dev)


def ours(unet, vae, sched, bs, res, xdim, msc_dim, steps, warmup, dev, mp) -> dict:
    ds = SyntheticSlices(max(4 * bs, 16), res)
    task = SMISTask(unet, vae, sched, fake_prompt(xdim), fake_msc(msc_dim))
    cfg = LoopConfig(max_steps=warmup + steps, batch_size=bs, mixed_precision=mp, checkpoint_every=0,
                     log_every=10 ** 9, seed=0)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        acc = make_accelerator(cfg, tmp, cpu=dev == "cpu")
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        orig_setup = task.setup

        def timed_setup(*a):
            orig_setup(*a)
            sync(dev)
            stamps.append(time.perf_counter())
        task.setup = timed_setup
        run_task(task, ds, accelerator=acc, config=cfg,
                 on_progress=lambda s, d, t: stamps.append(time.perf_counter()) if d > 0 else None)
        acc.free_memory()
    ts = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]   # stamps[0] = end of setup
    row = _row("medsoft-aug run_task (cached latents)", bs, ts, dev)
    row["setup_cache_s"] = stamps[0] - t0
    return row


def _row(name: str, bs: int, ts: list[float], dev: str) -> dict:
    med = statistics.median(ts)
    return {"engine": name, "batch": bs, "steps_per_s": 1 / med, "img_per_s": bs / med, "s_per_step": med,
            "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2 ** 30 if dev == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model at 32 px on the CPU (smoke test)")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if a.tiny:
        torch.set_num_threads(1)           # a smoke test; intra-op threads only spin on a shared CPU
    wdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype] if dev == "cuda" else torch.float32
    mp = a.dtype if dev == "cuda" else "no"
    res, xdim, msc_dim = (32, 32, 16) if a.tiny else (512, 768, 512)
    batches = [2, 4] if a.tiny else [int(b) for b in a.batches.split(",")]
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "dtype": a.dtype if dev == "cuda"
           else "fp32", "resolution": res, "rows": []}
    for bs in batches:
        for fn in (reference, ours):
            unet, vae, sched, n = build(a.tiny, msc_dim)
            out["n_decoupled_layers"] = n
            unet.to(dev)
            try:
                row = fn(unet, vae, sched, bs, res, xdim, msc_dim, a.steps, a.warmup, dev,
                         wdt if fn is reference else mp)
            except torch.OutOfMemoryError:
                print(json.dumps({"engine": fn.__name__, "batch": bs, "oom": True}), flush=True)
                break
            finally:
                del unet, vae
                if dev == "cuda":
                    torch.cuda.empty_cache()
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    print(f"device {out['device']} {out['dtype']} {res}x{res}, {out.get('n_decoupled_layers')} decoupled layers")
    for r in out["rows"]:
        mem = f"{r['peak_mem_GiB']:.1f} GiB" if r["peak_mem_GiB"] is not None else "-"
        print(f"{r['engine']:40s} bs{r['batch']:3d} {r['steps_per_s']:7.2f} steps/s {r['img_per_s']:8.2f} img/s "
              f"mem {mem}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "train_gpu.json"), "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
