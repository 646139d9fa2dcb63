"""SMIS training throughput: medsoft-aug's trainer, with each fast option, vs the IP-Adapter-tutorial-style step.

Reference (:func:`reference`): the training step as IP-Adapter's ``tutorial_train.py`` writes it, on a plain
diffusers UNet with its own decoupled-attention processors (:class:`TutorialIPAttn`: the image tokens of an
``ImageProjModel`` appended to the text tokens, split off in every cross-attention layer, ``to_k_ip``/``to_v_ip``
trained) - independent of medsoft-aug's code. Every step it VAE-encodes the batch (nothing cached), then plain MSE;
``fp32`` (no autocast) and, on CUDA, ``bf16`` as the tutorial runs it (accelerate autocast, UNet weights fp32, VAE
in bf16). The tutorial also runs the CLIP text and image encoders every step; here both sides get random stand-in
embeddings, so the reference is, if anything, faster than the tutorial.

Ours (:func:`ours`): ``train.loop.run_task`` + ``SMISTask`` exactly as ``medsoft-aug train`` runs them (accelerate,
masked Eq. 6 loss, CFG dropout, frozen UNet in the autocast dtype, 16 decoupled layers in fp32, VAE latents, prompt
embeddings and e_MSC cached once per sample in batches before the first step; the seeded sample stream read
through the data loader). Rows: fp32, bf16 (CUDA; ``--tiny`` on the CPU too), + gradient checkpointing, + loader
workers, + torch.compile. Also the caching itself: batched (``cache_batch``) vs one slice at a time.

Same UNet/VAE shapes, batch and resolution on both sides: SD1.5 (512x512, 16 decoupled layers, random weights) on
CUDA, ``--tiny`` (32x32, 4 layers) on the CPU. Per-step times are medians after warm-up steps; peak memory is
``torch.cuda.max_memory_allocated`` (CUDA only).

    python bench/train_gpu.py                              # CUDA: batch 16, every row (about 5 minutes on an H200)
    python bench/train_gpu.py --tiny --threads 1           # CPU, tiny model; add --options ...,compile for inductor
Prints one JSON line per row and a table; writes $OUT/train_gpu.json when $OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsoft_aug.models.adapter import adapter_parameters, install_adapter  # noqa: E402
from medsoft_aug.train.loop import LoopConfig, make_accelerator, run_task  # noqa: E402
from medsoft_aug.train.smis_stage import SMISTask  # noqa: E402

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
OPTIONS = ("fp32", "bf16", "ckpt", "workers", "compile")
IP_TOKENS = 4                                   # the tutorial's clip_extra_context_tokens


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
        return torch.stack([torch.randn(77, dim, generator=torch.Generator().manual_seed(len(t))) for t in texts])
    return encode


def fake_msc(dim: int):
    def embed(images: torch.Tensor, masks: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return torch.randn(images.shape[0], dim, device=images.device)
    return embed


def build(tiny: bool):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **(TINY_UNET if tiny else SD15_UNET))
    vae = AutoencoderKL(in_channels=3, out_channels=3, **(TINY_VAE if tiny else SD15_VAE))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          num_train_timesteps=1000)
    return unet, vae, sched


# ---- the reference: IP-Adapter's tutorial step ----------------------------------------------------------------
class TutorialIPAttn(torch.nn.Module):
    """IP-Adapter's ``IPAttnProcessor2_0``: the last ``IP_TOKENS`` tokens of encoder_hidden_states are image
    tokens; ``softmax(QK^T)V + scale * softmax(QK_ip^T)V_ip``."""

    def __init__(self, hidden: int, cross: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.to_k_ip = torch.nn.Linear(cross, hidden, bias=False)
        self.to_v_ip = torch.nn.Linear(cross, hidden, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, h = hidden_states.shape[0], attn.heads
        txt, ip = encoder_hidden_states[:, :-IP_TOKENS], encoder_hidden_states[:, -IP_TOKENS:]
        q = attn.to_q(hidden_states)
        d = q.shape[-1] // h

        def heads(x):
            return x.view(b, -1, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(heads(q), heads(attn.to_k(txt)), heads(attn.to_v(txt)))
        ip_out = F.scaled_dot_product_attention(heads(q), heads(self.to_k_ip(ip)), heads(self.to_v_ip(ip)))
        out = (out + self.scale * ip_out).transpose(1, 2).reshape(b, -1, h * d).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def tutorial_adapter(unet, emb_dim: int):
    """The tutorial's processors on every cross-attention layer and its ImageProjModel; returns (proj, params)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    cross, chans = unet.config.cross_attention_dim, unet.config.block_out_channels
    procs = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            procs[name] = AttnProcessor2_0()
            continue
        hidden = chans[-1] if name.startswith("mid_block") else (
            list(reversed(chans))[int(name[len("up_blocks.")])] if name.startswith("up_blocks")
            else chans[int(name[len("down_blocks.")])])
        procs[name] = TutorialIPAttn(hidden, cross)
    mods = [p for p in procs.values() if isinstance(p, torch.nn.Module)]
    unet.set_attn_processor(dict(procs))           # (diffusers pops the entries of the dict it is given)
    proj = torch.nn.Sequential(torch.nn.Linear(emb_dim, IP_TOKENS * cross), torch.nn.Unflatten(1, (IP_TOKENS, cross)),
                               torch.nn.LayerNorm(cross))
    unet.requires_grad_(False)
    params = list(proj.parameters()) + [p for m in mods for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    for m in mods:
        m.to(unet.device)
    return proj.to(unet.device), params, len(mods)


def reference(unet, vae, sched, bs, res, xdim, emb_dim, steps, warmup, dev, precision) -> dict:
    """One tutorial step per iteration: VAE encode, noise, UNet with text + image tokens, MSE, AdamW."""
    proj, params, n = tutorial_adapter(unet, emb_dim)
    amp = precision == "bf16"
    torch.nn.Module.to(vae, dev, torch.bfloat16 if amp else torch.float32)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step():
        img = torch.rand(bs, 3, res, res, device=dev, dtype=vae.dtype) * 2 - 1
        with torch.no_grad():
            z = vae.encode(img).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (bs,), device=dev)
        zt = sched.add_noise(z.float(), noise.float(), t)
        txt = torch.randn(bs, 77, xdim, device=dev)
        emb = torch.randn(bs, emb_dim, device=dev)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            pred = unet(zt, t, encoder_hidden_states=torch.cat([txt, proj(emb)], 1)).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with Memory(dev) as mem:
        for _ in range(warmup):
            step()
        ts = []
        for _ in range(steps):
            sync(dev)
            t0 = time.perf_counter()
            step()
            sync(dev)
            ts.append(time.perf_counter() - t0)
    return row(f"reference {precision} (tutorial step, VAE encode every step)", bs, ts, mem.peak, n_layers=n)


# ---- ours: the product's trainer -------------------------------------------------------------------------------
def ours(unet, vae, sched, bs, res, xdim, emb_dim, steps, warmup, dev, option) -> dict:
    """``run_task`` + ``SMISTask`` with one fast option; step times from the loop's progress callback."""
    n = install_adapter(unet, emb_dim)
    with torch.no_grad():                      # non-zero W'_v so the adapter branch does real work
        for p in adapter_parameters(unet):
            p.normal_(0, 0.02)
    ds = SyntheticSlices(max(4 * bs, 16), res)
    task = SMISTask(unet, vae, sched, fake_prompt(xdim), fake_msc(emb_dim), cache_batch=bs)
    mp = "no" if option == "fp32" else "bf16"
    cfg = LoopConfig(max_steps=warmup + steps, batch_size=bs, mixed_precision=mp, checkpoint_every=0,
                     log_every=10 ** 9, seed=0, gradient_checkpointing=option == "ckpt",
                     num_workers=4 if option == "workers" else 0, compile=option == "compile")
    stamps: list[float] = []

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("train"):
            sync(dev)
            stamps.append(time.perf_counter())
    with tempfile.TemporaryDirectory() as tmp, Memory(dev) as mem:
        acc = make_accelerator(cfg, tmp, cpu=dev == "cpu")
        t0 = time.perf_counter()
        run_task(task, ds, accelerator=acc, config=cfg, on_progress=on_progress)
        acc.free_memory()
    ts = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]   # stamps[0]: step 0, after setup
    label = {"fp32": "fp32", "bf16": "bf16", "ckpt": "bf16 + gradient checkpointing",
             "workers": "bf16 + 4 loader workers", "compile": "bf16 + torch.compile (inductor)"}[option]
    r = row(f"medsoft-aug {label} (cached latents)", bs, ts, mem.peak, n_layers=n)
    r.update(option=option, setup_cache_s=stamps[0] - t0, first_steps_s=stamps[warmup] - stamps[0])
    return r


def cache_rate(unet, vae, sched, bs, res, xdim, emb_dim, dev, cache_batch, mp) -> dict:
    """Samples per second of SMISTask.setup (VAE posteriors, e_MSC, prompts) with ``cache_batch`` per batch."""
    install_adapter(unet, emb_dim)
    n = max(2 * bs, 8)
    task = SMISTask(unet, vae, sched, fake_prompt(xdim), fake_msc(emb_dim), cache_batch=cache_batch)
    dtype = torch.bfloat16 if mp == "bf16" else torch.float32
    task.setup(torch.device(dev), dtype, SyntheticSlices(cache_batch, res))        # warm-up
    sync(dev)
    t0 = time.perf_counter()
    task.setup(torch.device(dev), dtype, SyntheticSlices(n, res))
    sync(dev)
    s = time.perf_counter() - t0
    return {"engine": f"cache setup, {cache_batch} slice(s) per batch ({mp})", "samples": n, "img_per_s": n / s}


# ---- measurement helpers ---------------------------------------------------------------------------------------
def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


class Memory:
    """Peak GPU memory of a block (``torch.cuda.max_memory_allocated``, GiB); None on the CPU, where the allocator's
    reuse of freed blocks makes a per-row figure meaningless."""

    def __init__(self, dev: str):
        self.dev, self.peak = dev, None

    def __enter__(self):
        if self.dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.dev == "cuda":
            self.peak = torch.cuda.max_memory_allocated() / 2 ** 30
        return False


def row(name: str, bs: int, ts: list[float], peak, **extra) -> dict:
    med = statistics.median(ts)
    return {"engine": name, "batch": bs, "steps": len(ts), "s_per_step": med, "img_per_s": bs / med,
            "peak_mem_GiB": peak, **extra}


def machine(dev: str) -> str:
    if dev == "cuda":
        return torch.cuda.get_device_name()
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def measure(a, dev: str, bs: int) -> list[dict]:
    res, xdim, emb = (32, 32, 16) if a.tiny else (512, 768, 512)
    jobs = [(reference, "fp32")] + ([(reference, "bf16")] if dev == "cuda" else [])
    jobs += [(ours, o) for o in a.options.split(",")]
    rows = []
    for fn, opt in jobs:
        unet, vae, sched = build(a.tiny)
        unet.to(dev)
        try:
            rows.append(fn(unet, vae, sched, bs, res, xdim, emb, a.steps, a.warmup, dev, opt))
        except torch.OutOfMemoryError:
            rows.append({"engine": f"{fn.__name__} {opt}", "batch": bs, "oom": True})
        finally:
            del unet, vae
            if dev == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    for cb in (1, bs):
        unet, vae, sched = build(a.tiny)
        rows.append(cache_rate(unet.to(dev), vae, sched, bs, res, xdim, emb, dev, cb, "bf16" if dev == "cuda" else "no"))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(out: dict) -> None:
    print(f"\n{out['machine']}; {out['resolution']}x{out['resolution']}; medians of {out['steps']} steps after "
          f"{out['warmup']} warm-up")
    ref = {r["batch"]: r["img_per_s"] for r in out["rows"] if r.get("engine", "").startswith("reference fp32")
           and "oom" not in r}
    print(f"{'step':62s} {'batch':>5s} {'img/s':>9s} {'x ref fp32':>10s} {'peak GiB':>9s} {'setup s':>8s}")
    for r in out["rows"]:
        if r.get("oom"):
            print(f"{r['engine']:62s} {r['batch']:5d}   out of memory")
            continue
        if "samples" in r:
            print(f"{r['engine']:62s} {r['samples']:5d} {r['img_per_s']:9.2f}")
            continue
        mem = f"{r['peak_mem_GiB']:.2f}" if r["peak_mem_GiB"] is not None else "-"
        setup = f"{r['setup_cache_s']:.1f}" if "setup_cache_s" in r else "-"
        print(f"{r['engine']:62s} {r['batch']:5d} {r['img_per_s']:9.2f} {r['img_per_s'] / ref[r['batch']]:10.2f} "
              f"{mem:>9s} {setup:>8s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model at 32 px on the CPU")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 16 on CUDA, 4 tiny)")
    ap.add_argument("--options", default=None, help=f"our rows, from {','.join(OPTIONS)} (default: all on CUDA; "
                    "tiny: all but compile, which inductor needs minutes to build on a small CPU)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if a.threads:
        torch.set_num_threads(a.threads)
    a.options = a.options or ",".join(OPTIONS if dev == "cuda" else OPTIONS[:-1])
    if dev == "cpu" and not a.tiny:
        sys.exit("no CUDA GPU: the SD1.5 shape needs one; use --tiny on a CPU")
    out = {"machine": machine(dev), "device": dev, "resolution": 32 if a.tiny else 512, "steps": a.steps,
           "warmup": a.warmup, "torch": torch.__version__, "rows": []}
    for bs in [int(b) for b in (a.batches or ("4" if a.tiny else "16")).split(",")]:
        out["rows"] += measure(a, dev, bs)
    table(out)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "train_gpu.json"), "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
