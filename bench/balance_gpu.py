"""Generation throughput and quality, one run: medsoft-aug's engine (paper settings, each fast option, each solver
preset) vs diffusers' stock StableDiffusionInpaintPipeline with the same weights and decoupled processors.

Default (GPU): SD1.5-shaped random weights (UNet 320/640/1280/1280 with 16 decoupled cross-attention layers
installed by ``medsoft_aug.models.adapter.install_adapter``; SD VAE), 512x512, CFG 7.5, a soft mask per sample,
the device's default dtype (fp16 on CUDA). Random weights time correctly but make the quality columns a check of
numerical agreement only. ``--tiny``: the shipped fitted tiny base model (``load_base_model("tiny")``, 64 px), on
a CPU, where the quality columns mean something (a trained model's own trajectories).

Every variant runs the same donors, masks, prompts and seeds. Quality: PSNR and SSIM inside the mask (soft mask
as weights; ``medsoft_aug.evaluate.metrics``) of each variant's output against the eager fp32 engine at the paper's
50 DDIM steps ("reference"). Speed: median seconds per batch after a warm-up, img/s, peak CUDA memory, and the
ratio to the stock pipeline at the same batch size. Prints one JSON line per variant and a table; writes
``$OUT/balance_gpu.json`` when OUT is set.

DeepCache (``--deepcache 2,3,5``): the paper's 50 DDIM steps with the UNet's deep features cached every N steps
(``generate/deepcache.py``); "full UNet/img" counts the evaluations of the whole UNet (the others run only its
shallow branch). Peak memory per batch size (``--mem-sizes 1,2,4,8``): one paper-settings batch (2 steps: the
peak is per step) at each size; CUDA: ``torch.cuda.max_memory_allocated`` (absolute, weights included), the
figure ``balance --batch-size auto`` measures; CPU: the growth of the process's RSS over the run above its RSS
before it, sampled every 2 ms (psutil), labelled as such. Then, on CUDA, what ``balance --batch-size auto``
would choose (``generate.batching.probe_batch_size`` with one engine step per probed size, up to
``--auto-limit`` rows; the probed peaks are printed).

Usage: python bench/balance_gpu.py [--tiny] [--batch 16] [--reps 2] [--no-compile] [--presets dpmsolver++:20,...]
       [--deepcache 2,3,5] [--mem-sizes 1,2,4,8]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import threading
import time

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--tiny", action="store_true")
ap.add_argument("--batch", type=int, default=None, help="batch size (default 16 on CUDA, 4 with --tiny)")
ap.add_argument("--reps", type=int, default=2, help="timed repetitions per variant (median)")
ap.add_argument("--steps", type=int, default=50, help="DDIM steps at paper settings")
ap.add_argument("--presets", default="ddim:20,dpmsolver++:20,unipc:20,ddim:10,dpmsolver++:10,unipc:10",
                help="scheduler:steps, comma separated (ddim:N is plain DDIM with fewer steps, for comparison)")
ap.add_argument("--deepcache", default="2,3,5", help="DeepCache intervals at paper settings (empty: none)")
ap.add_argument("--mem-sizes", default="1,2,4,8", help="batch sizes whose peak memory is measured (empty: none)")
ap.add_argument("--auto-limit", type=int, default=64,
                help="largest batch the --batch-size auto probe tries (CUDA; 0: skip the probe)")
ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (default off on CPU)")
ap.add_argument("--budget", type=float, default=420.0, help="stop starting new variants after this many s")
a = ap.parse_args()
T0 = time.time()

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402

from medsoft_aug.evaluate.metrics import psnr, ssim  # noqa: E402
from medsoft_aug.generate.batching import fixed_batch_size, probe_batch_size  # noqa: E402
from medsoft_aug.generate.engine import InpaintEngine, SamplingOptions  # noqa: E402
from medsoft_aug.generate.fastpath import FastPath, apply_fast_path  # noqa: E402
from medsoft_aug.models.adapter import install_adapter  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = torch.float16 if dev == "cuda" else torch.float32
bs = a.batch or (16 if dev == "cuda" and not a.tiny else 4)
res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
             "default_dtype": str(dt), "batch": bs, "threads": torch.get_num_threads()}


def sync() -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def build():
    """(unet, vae, scheduler, resolution, prompt embeddings (B, L, C), uncond (1, L, C), msc_dim), fp32 on CPU."""
    torch.manual_seed(0)
    if a.tiny:
        from medsoft_aug.models.base import load_base_model

        base = load_base_model("tiny")
        msc_dim = 16
        install_adapter(base.unet, msc_dim, 1.0)
        texts = ["bright round lesion", "dark irregular lesion"] * bs
        pe, unc = base.encode_prompt(texts[:bs]).float(), base.encode_prompt([""]).float()
        return base.unet, base.vae, base.inference_scheduler(), base.resolution, pe, unc, msc_dim
    from medsoft_aug.models.base import sd15_unet_config

    unet = UNet2DConditionModel(**sd15_unet_config())
    install_adapter(unet, 512, 1.0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, sample_size=512)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    g = torch.Generator().manual_seed(1)
    return unet, vae, sched, 512, torch.randn(bs, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g), 512


UNET, VAE, SCHED, H, PE, UNC, MSC = build()
UNET, VAE = UNET.eval().requires_grad_(False), VAE.eval().requires_grad_(False)
res["resolution"] = H


def inputs():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    yy, xx = np.mgrid[0:H, 0:H]
    donors, masks = [], []
    for _ in range(bs):
        d = ndimage.gaussian_filter(rng.uniform(0, 1, (H, H)), H / 32)
        donors.append(((d - d.min()) / (np.ptp(d) + 1e-8) * 0.6 + 0.2).astype(np.float32))
        cy, cx = rng.uniform(0.35, 0.65, 2) * H
        masks.append(np.clip(1.5 - np.hypot(yy - cy, xx - cx) / (0.12 * H), 0, 1).astype(np.float32))
    e = torch.from_numpy(rng.standard_normal((bs, MSC)).astype(np.float32))
    return donors, masks, e, [1000 + i for i in range(bs)]


DONORS, MASKS, E, SEEDS = inputs()


def models(dtype, fast=None):
    """Copies of the fp32 UNet/VAE on the device in ``dtype`` with ``fast``'s memory format / compile applied."""
    unet, vae = copy.deepcopy(UNET).to(dev, dtype), copy.deepcopy(VAE).to(dev, dtype)
    apply_fast_path(unet, vae, fast)
    return unet, vae


def engine_fn(unet, vae, opts):
    eng = InpaintEngine(unet, vae, SCHED, H)
    pe, unc = PE.to(dev, unet.dtype), UNC.to(dev, unet.dtype)
    return lambda: eng.inpaint(DONORS, MASKS, pe, unc, E.to(dev, unet.dtype), SEEDS, opts)


def stock_fn(unet, vae, steps):
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=SCHED,
                                          safety_checker=None, feature_extractor=None, image_encoder=None,
                                          requires_safety_checker=False)
    pipe.mask_processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor, do_normalize=False,
                                            do_binarize=False, do_convert_grayscale=True)
    pipe.set_progress_bar_config(disable=True)
    d = unet.dtype
    img = torch.from_numpy(np.stack(DONORS))[:, None].expand(-1, 3, -1, -1).to(dev, d)
    m = torch.from_numpy(np.stack(MASKS))[:, None].to(dev, d)
    pe, e = PE.to(dev, d), E.to(dev, d)
    ip = [torch.cat([torch.zeros_like(e), e])[:, None, :]]

    def run():
        with torch.no_grad():
            pipe(prompt_embeds=pe, negative_prompt_embeds=UNC.to(dev, d).expand(bs, -1, -1), image=img,
                 mask_image=m, height=H, width=H, num_inference_steps=steps, guidance_scale=7.5,
                 ip_adapter_image_embeds=ip, output_type="pt", strength=1.0,
                 generator=torch.Generator(dev).manual_seed(0))
    return run


rows: list[dict] = []
REF: list[np.ndarray] = []
FULL: dict[str, int] = {}          # variant -> whole-UNet evaluations per image (DeepCache: fewer than calls)


def measure(label: str, fn, unets: int, quality: bool = True) -> None:
    """Warm-up (its output is the quality sample), then ``a.reps`` timed runs; one row."""
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.time()
    out = fn()
    sync()
    warm = time.time() - t
    times = []
    for _ in range(a.reps):
        t = time.time()
        fn()
        sync()
        times.append(time.time() - t)
    med = statistics.median(times)
    r = {"variant": label, "batch": bs, "unet_evals_per_img": unets,
         "full_unet_evals_per_img": FULL.get(label, unets), "warmup_s": round(warm, 3),
         "s_per_batch": round(med, 4), "img_per_s": round(bs / med, 3),
         "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None}
    if quality and out is not None:
        if not REF:
            REF.extend(out)
        r["psnr_in_mask_dB"] = round(float(np.mean([min(psnr(ref, o, weights=m), 99.0)
                                                    for ref, o, m in zip(REF, out, MASKS)])), 2)
        r["ssim_in_mask"] = round(float(np.mean([ssim(ref, o, weights=m) for ref, o, m in zip(REF, out, MASKS)])), 4)
    rows.append(r)
    print(json.dumps(r), flush=True)


def variants():
    """(label, thunk making the run function, UNet evaluations per image, quality?) in run order."""
    paper = SamplingOptions(steps=a.steps, guidance=7.5)
    yield "reference: engine eager fp32, DDIM", lambda: engine_fn(*models(torch.float32), paper), 2 * a.steps, True
    yield f"stock pipeline ({str(dt)[6:]})", lambda: stock_fn(*models(dt), a.steps), 2 * a.steps, False
    yield f"engine eager ({str(dt)[6:]})", lambda: engine_fn(*models(dt), paper), 2 * a.steps, True
    yield "engine channels_last", lambda: engine_fn(*models(dt, FastPath(channels_last=True)), paper), 2 * a.steps, True
    for name, half in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        yield f"engine {name}", lambda half=half: engine_fn(*models(half), paper), 2 * a.steps, True
    if not a.no_compile and dev == "cuda":
        yield ("engine fp16 + channels_last + compile",
               lambda: engine_fn(*models(dt, FastPath(channels_last=True, compile=True)), paper), 2 * a.steps, True)
    for n in [int(x) for x in a.deepcache.split(",") if x]:
        opts = SamplingOptions(steps=a.steps, guidance=7.5, deepcache_interval=n)
        label = f"engine DDIM {a.steps} + deepcache {n} ({str(dt)[6:]})"
        FULL[label] = 2 * -(-a.steps // n)
        yield label, lambda o=opts: engine_fn(*models(dt), o), 2 * a.steps, True
    for preset in a.presets.split(","):
        name, steps = preset.split(":")
        opts = SamplingOptions(steps=int(steps), guidance=7.5, scheduler=name)
        yield f"engine {name} {steps} steps ({str(dt)[6:]})", lambda o=opts: engine_fn(*models(dt), o), \
            2 * int(steps), True


for label, make, unets, q in variants():
    if time.time() - T0 > a.budget:
        print(json.dumps({"skipped": label, "reason": "budget"}))
        continue
    if dev == "cpu" and label == "engine fp16":
        print(json.dumps({"skipped": label, "reason": "fp16 convolutions on a CPU are emulated (minutes)"}))
        continue
    measure(label, make(), unets, q)

class PeakRSS:
    """CPU: the largest RSS growth of this process above its RSS at entry, sampled every 2 ms (psutil)."""

    def __enter__(self):
        import psutil

        self.proc, self.base, self.peak, self.stop = psutil.Process(), 0, 0, threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.growth = max(0, self.peak - self.base)


def batch_of(size: int, steps: int):
    """A run function for one engine batch of ``size`` rows (the bench's inputs repeated), default dtype."""
    reps = -(-size // bs)
    d, m = (DONORS * reps)[:size], (MASKS * reps)[:size]
    e, pe = E.repeat(reps, 1)[:size], PE.repeat(reps, 1, 1)[:size]
    return lambda: ENG.inpaint(d, m, pe.to(dev, dt), UNC.to(dev, dt), e.to(dev, dt), list(range(size)),
                               SamplingOptions(steps=steps, guidance=7.5))


def memory_per_batch_size() -> list[dict]:
    """Peak memory of one paper-settings batch (2 steps) at each of ``--mem-sizes`` (engine, default dtype)."""
    out = []
    for size in [int(x) for x in a.mem_sizes.split(",") if x]:
        run = batch_of(size, 2)
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run()
            sync()
            r = {"batch": size, "peak_MiB": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                 "kind": "CUDA max_memory_allocated (absolute, weights included)"}
        else:
            run()                                   # warm-up: allocator caches and lazy inits not counted
            with PeakRSS() as p:
                run()
            r = {"batch": size, "peak_MiB": round(p.growth / 2**20, 1),
                 "kind": "CPU peak RSS growth over the run (sampled every 2 ms)"}
        out.append(r)
        print(json.dumps(r), flush=True)
    return out


def auto_batch() -> dict:
    """What ``balance --batch-size auto`` would choose here (CUDA: the real probe, one step per size, up to
    ``--auto-limit`` rows; elsewhere the fixed default)."""
    if dev != "cuda":
        return {"auto_batch": fixed_batch_size("auto")}
    t = time.time()
    rec = probe_batch_size(lambda n: batch_of(n, 1)(), torch.device("cuda"), limit=a.auto_limit)
    r = {"auto_batch": rec, "probe_s": round(time.time() - t, 1)}
    print(json.dumps(r), flush=True)
    return r


ENG = InpaintEngine(*models(dt), SCHED, H) if a.mem_sizes or a.auto_limit else None
MEM = memory_per_batch_size() if a.mem_sizes else []
AUTO = auto_batch() if a.auto_limit else {}
stock = next((r for r in rows if r["variant"].startswith("stock")), None)
for r in rows:
    r["vs_stock"] = round(r["img_per_s"] / stock["img_per_s"], 3) if stock else None
res.update(rows=rows, memory_per_batch_size=MEM, **AUTO, wall_s=round(time.time() - T0, 1), guidance=7.5,
           paper_steps=a.steps)
print(f"\n{'variant':44s} {'UNet/img':>8s} {'full':>5s} {'img/s':>8s} {'x stock':>7s} {'memGiB':>6s} {'PSNR':>6s} "
      f"{'SSIM':>6s}")
for r in rows:
    print(f"{r['variant']:44s} {r['unet_evals_per_img']:8d} {r['full_unet_evals_per_img']:5d} {r['img_per_s']:8.3f} "
          f"{r['vs_stock'] or 0:7.2f} {r['peak_mem_GiB'] or 0:6.2f} {r.get('psnr_in_mask_dB', float('nan')):6.2f} "
          f"{r.get('ssim_in_mask', float('nan')):6.3f}")
if MEM:
    print(f"\npeak memory per batch size ({MEM[0]['kind']}):")
    print("  " + "  ".join(f"batch {m['batch']}: {m['peak_MiB']} MiB" for m in MEM))
if AUTO:
    print(f"--batch-size auto here: {AUTO['auto_batch']['size']} ({AUTO['auto_batch']['how']})")
print(json.dumps({"device": res["device"], "batch": bs, "wall_s": res["wall_s"]}))
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "balance_gpu.json"), "w") as fh:
        json.dump(res, fh, indent=1)
