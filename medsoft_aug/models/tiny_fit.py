"""Build the shipped tiny base model: fit the tiny VAE and train the tiny text-conditioned UNet on ingested slices.

A random tiny VAE cannot reconstruct the sample images, so the tiny preset would make the demo meaningless.
This fits, on one or more ingested + masked WORK folders (64 x 64 slices):

1. the CLIP BPE tokenizer's merges, learned from the training descriptions;
2. the VAE (AutoencoderKL, factor 4): L1 + MSE reconstruction + a small KL term, on random crops then whole
   slices; its ``scaling_factor`` is set to 1 / std of the training latents (as SD's 0.18215);
3. the UNet and CLIP text encoder together (full training, epsilon prediction, DDPM schedule), conditioned on the
   row's text (lesion description; "" for normal rows and, for classifier-free guidance, for 10% of rows),
   with the loss weighted in space by 1 + ``lesion_weight`` * m_b + ``spot_weight`` * (a Gaussian at the lesion
   centre x, y of diseased rows) and in time by min-SNR-5, so that capacity goes to the lesion; EMA weights.
   ``--init`` continues an earlier output (same tokenizer; ``--vae-steps 0`` keeps its VAE).

It then checks the result on ``--eval-work`` (or the first WORK's non-training rows): VAE PSNR, and soft-mask
inpainting (Eq. 7 blending, DDIM) of normal slices with a benign vs a malignant description, reporting the
mean intensity inside the mask for each; a PNG contact sheet shows both. Writes OUT in diffusers layout (fp16
safetensors), ``OUT/fit.json`` (the record) and ``OUT/README.md``.

    python -m medsoft_aug.models.tiny_fit --work WORK [--work WORK2 ...] --out medsoft_aug/models/tiny_base
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..fsutil import atomic_write_json
from ..progress import ProgressFn, report
from .base import BaseModel, build_tiny_base, save_base_model
from .tiny_report import contact_sheet, psnr, write_readme

log = logging.getLogger("medsoft_aug.models.tiny_fit")


def load_rows(works: list[Path], splits: tuple[str, ...], resolution: int) -> dict:
    """Slices, soft masks (N, 1, R, R) in [0, 1], texts and labels of the given splits of the WORK folders."""
    from ..train.data import SliceDataset

    from ..workdir import read_index

    items, spots = [], []
    yy, xx = torch.meshgrid(torch.arange(resolution, dtype=torch.float32),
                            torch.arange(resolution, dtype=torch.float32), indexing="ij")
    for work in works:
        index = read_index(work).set_index("sample_id")
        for split in splits:
            ds = SliceDataset(work, split=split, resolution=resolution)
            for i in range(len(ds)):
                it = ds[i]
                items.append(it)
                row = index.loc[it["sample_id"]]
                spot = torch.zeros(1, resolution, resolution)
                try:   # lesion centre of a diseased row (x, y in the slice grid) -> Gaussian, sigma 3 px
                    if it["label"] != ds.normal_class and row["x"] != "" and row["y"] != "":
                        cx = (float(row["x"]) + 0.5) * resolution / float(row["width"]) - 0.5
                        cy = (float(row["y"]) + 0.5) * resolution / float(row["height"]) - 0.5
                        spot[0] = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2))
                except (KeyError, ValueError):
                    pass
                spots.append(spot)
    if not items:
        raise ValueError(f"no usable rows in splits {splits} of {[str(w) for w in works]}")
    return {"image": torch.stack([it["image"] for it in items]), "mask": torch.stack([it["soft_mask"] for it in items]),
            "spot": torch.stack(spots), "text": [it["text"] for it in items], "label": [it["label"] for it in items]}


def _lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random gain (0.9-1.1) and translation (+-4 px) of (B, 1, R, R) images in [0, 1]."""
    b = x.shape[0]
    gain = 0.9 + 0.2 * torch.rand(b, 1, 1, 1, generator=g)
    dy, dx = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
    return torch.roll(x * gain, shifts=(dy, dx), dims=(2, 3)).clamp(0, 1)


def fit_vae(vae, images: torch.Tensor, steps: int, batch: int, seed: int, lr: float = 2e-3,
            kl_weight: float = 1e-3, on_progress: ProgressFn = None) -> list[float]:
    """Fit the VAE to grayscale images (N, 1, R, R) in [0, 1] (as 3-channel [-1, 1]); returns the loss curve."""
    g = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    crop = images.shape[-1] // 2
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        x = _augment(images[idx], g)
        if step < int(0.7 * steps):                   # random crops first: 4x cheaper, fully convolutional
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g))
            x = x[..., oy:oy + crop, ox:ox + crop]
        x = (x * 2 - 1).expand(-1, 3, -1, -1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        y = vae.decode(z).sample
        rec = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(rec.detach()))
        report(on_progress, "vae", step + 1, steps)
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, 4, h, w) of grayscale images (N, 1, R, R) in [0, 1] (unscaled)."""
    means, stds = [], []
    for i in range(0, images.shape[0], chunk):
        post = vae.encode((images[i:i + chunk] * 2 - 1).expand(-1, 3, -1, -1)).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode_gray(vae, z: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> grayscale (N, 1, R, R) in [0, 1] (mean of the 3 decoded channels)."""
    return ((vae.decode(z).sample.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)


def train_unet(model: BaseModel, data: dict, steps: int, batch: int, seed: int, lr: float = 1e-3,
               lesion_weight: float = 4.0, spot_weight: float = 8.0, min_snr: float = 5.0, p_uncond: float = 0.1,
               ema_decay: float = 0.995, class_balance: bool = False,
               on_progress: ProgressFn = None) -> list[float]:
    """Full training of model.unet and model.text_encoder on the latents of ``data`` (EMA weights kept).

    Loss: epsilon MSE weighted in space by 1 + lesion_weight * m_b + spot_weight * (Gaussian at the lesion centre
    of diseased rows), and in time by min-SNR-gamma (min(SNR, gamma) / SNR, Hang et al. 2023) so that the
    unpredictable noise texture of low noise levels does not drown the lesion's appearance.
    ``class_balance``: draw rows with probability 1 / (rows of their label), so each label (normal, benign,
    malignant) fills an equal share of every batch on average instead of normal rows dominating."""
    g = torch.Generator().manual_seed(seed)
    sf = float(model.vae.config.scaling_factor)
    mean, std = encode_latents(model.vae, data["image"])
    h = mean.shape[-1]
    m_b = F.interpolate(data["mask"], size=(h, h), mode="area")                 # (N, 1, h, w), Eq. 6's m_b
    spot = F.interpolate(data["spot"], size=(h, h), mode="area")
    weight = 1.0 + lesion_weight * m_b + spot_weight * spot / spot.amax().clamp_min(1e-6)
    sched = model.train_scheduler
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    t_weight = (snr.clamp(max=min_snr) / snr) if min_snr > 0 else torch.ones_like(snr)
    unet, te = model.unet, model.text_encoder
    params = list(unet.parameters()) + list(te.parameters())
    for m in (unet, te):
        m.train().requires_grad_(True)
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    tok = model.tokenizer
    texts = data["text"]
    labels = data["label"]
    counts = {k: labels.count(k) for k in set(labels)}
    probs = torch.tensor([1.0 / counts[k] for k in labels], dtype=torch.float64) if class_balance else None
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        if probs is not None:
            idx = torch.multinomial(probs, batch, replacement=True, generator=g)
        else:
            idx = torch.randint(0, mean.shape[0], (batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * sf
        eps = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        zt = sched.add_noise(z0, eps, t)
        drop = torch.rand(batch, generator=g) < p_uncond
        prompts = ["" if d else texts[int(i)] for i, d in zip(idx, drop)]
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        ctx = te(ids)[0]
        pred = unet(zt, t, ctx).sample
        w = weight[idx]
        loss = (((pred - eps) ** 2 * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3)) * t_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, m in zip(ema, (unet, te)):
                for pe, pm in zip(e.parameters(), m.parameters()):
                    pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        report(on_progress, "unet", step + 1, steps)
    model.unet, model.text_encoder = ema[0].eval(), ema[1].eval()
    return losses


@torch.no_grad()
def inpaint(model: BaseModel, x0: torch.Tensor, mask: torch.Tensor, texts: list[str], steps: int = 25,
            guidance: float = 7.5, seed: int = 0, known: str = "masked") -> torch.Tensor:
    """Soft-mask inpainting of x0 (B, 1, R, R) in [0, 1] inside ``mask`` (B, 1, R, R) per Eq. 7 (DDIM, CFG, no
    MSC), composited in pixel space; a self-contained check of the base model (generation has its own engine).
    ``known``: "masked" = z_m is the latent of I_m (the paper), "full" = of x0 (for comparison)."""
    vae, unet = model.vae, model.unet
    sf = float(vae.config.scaling_factor)
    sched = model.inference_scheduler()
    sched.set_timesteps(steps)
    z_m = encode_latents(vae, x0 * (1 - mask) if known == "masked" else x0)[0] * sf   # latents of I_m (Eq. 2)
    m_b = F.interpolate(mask, size=z_m.shape[-2:], mode="area")
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(z_m.shape, generator=g)
    z = eps * sched.init_noise_sigma
    cond = model.encode_prompt(texts)
    uncond = model.encode_prompt([""] * len(texts))
    ts = list(sched.timesteps)
    for i, t in enumerate(ts):
        out = unet(torch.cat([z, z]), t, torch.cat([uncond, cond])).sample
        e_u, e_c = out.chunk(2)
        p = sched.step(e_u + guidance * (e_c - e_u), t, z).prev_sample
        known = sched.add_noise(z_m, eps, ts[i + 1].reshape(1)) if i + 1 < len(ts) else z_m
        z = p * m_b + known * (1 - m_b)                                             # Eq. 7
    dec = decode_gray(vae, z / sf)
    return x0 * (1 - mask) + dec * mask


def evaluate(model: BaseModel, data: dict, train_texts: list[str], train_labels: list[str],
             sheet: Optional[Path], n_show: int = 6, seed: int = 0, guidance: float = 7.5) -> dict:
    """VAE PSNR on ``data`` and benign vs malignant inpainting into its normal rows (mask-mean intensities).

    Each inpainted slice gets its own description of the class (the class's distinct training descriptions in
    turn), as the balance stage does, rather than one description for all: a single description's result
    depends much on that description. The contact sheet shows the z_m = VAE(x0) results (the demo's blend)."""
    mean, _ = encode_latents(model.vae, data["image"])
    rec = decode_gray(model.vae, mean)
    out: dict = {"eval_rows": int(data["image"].shape[0]),
                 "vae_psnr_db": round(psnr(rec, data["image"]), 2),
                 "vae_psnr_db_in_mask": round(psnr(rec, data["image"], weight=data["mask"]), 2)}
    prompts: dict[str, list[str]] = {}
    for cls in ("benign", "malignant"):
        cand = list(dict.fromkeys(t for t, lab in zip(train_texts, train_labels) if lab == cls and t))
        if cand:
            prompts[cls] = cand
    normal = [i for i, t in enumerate(data["text"]) if t == ""]
    panels = {}
    if normal and prompts:
        sel = torch.tensor(normal[: max(n_show, 8)])
        x0, mk = data["image"][sel], data["mask"][sel]
        core = (mk > 0.5).float()
        out["mask_mean_original"] = round(float((x0 * core).sum() / core.sum()), 4)
        out["eval_guidance"] = guidance
        out["eval_normal_rows"] = int(len(sel))
        for known in ("masked", "full"):
            for cls, texts in list(prompts.items()) + [("empty", [""])]:
                per_row = [texts[i % len(texts)] for i in range(len(sel))]
                gen = inpaint(model, x0, mk, per_row, seed=seed, known=known, guidance=guidance)
                sfx = "" if known == "masked" else "_known_x0"
                if known == "full":
                    panels[cls] = gen
                else:
                    out[f"prompt_{cls}"] = per_row[0]
                    out[f"prompts_{cls}"] = len(set(per_row))
                out[f"mask_mean_{cls}{sfx}"] = round(float((gen * core).sum() / core.sum()), 4)
                out[f"mask_p95_{cls}{sfx}"] = round(float(torch.quantile(gen[core > 0], 0.95)), 4)
                out[f"mask_p05_{cls}{sfx}"] = round(float(torch.quantile(gen[core > 0], 0.05)), 4)
        if sheet is not None:
            contact_sheet(sheet, [x0[:n_show], mk[:n_show]] + [panels[c][:n_show] for c in prompts],
                          ["normal x0", "soft mask"] + [f"{c} prompt" for c in prompts],
                          recon=(data["image"][:n_show], rec[:n_show]))
    return out


def fit_tiny_base(works: list[Path], out: Path, eval_work: Optional[Path] = None,
                  splits: tuple[str, ...] = ("train",), vae_steps: int = 600, unet_steps: int = 1500,
                  batch: int = 16, seed: int = 0, init: Optional[Path] = None, lr: float = 1e-3,
                  lesion_weight: float = 4.0, spot_weight: float = 8.0, class_balance: bool = False,
                  eval_guidance: float = 7.5, on_progress: ProgressFn = None) -> dict:
    """Fit and save the tiny base model (see module docstring); returns the fit record (also OUT/fit.json).
    ``init``: continue from an earlier tiny_fit output (its tokenizer is kept; ``vae_steps`` may be 0)."""
    t0 = time.time()
    if init is not None:
        from .base import load_base_model

        model = load_base_model(str(init))
        model.ref = "tiny-fit"
        prior = json.loads((Path(init) / "fit.json").read_text()) if (Path(init) / "fit.json").is_file() else {}
    else:
        model = build_tiny_base(seed=seed)
        prior = {}
    res = model.resolution
    data = load_rows(works, splits, res)
    corpus = sorted({t for t in data["text"] if t})
    if init is None:
        model = build_tiny_base(seed=seed, corpus=corpus or None)
    for m in (model.unet, model.vae, model.text_encoder):
        m.requires_grad_(True)
    log.info("tiny_fit: %d training rows, resolution %d", len(data["text"]), res)
    t = time.time()
    vae_losses = fit_vae(model.vae, data["image"], vae_steps, batch, seed, on_progress=on_progress) \
        if vae_steps > 0 else [float("nan")]
    model.vae.eval().requires_grad_(False)
    vae_s = time.time() - t
    if vae_steps > 0 or init is None:
        mean, _ = encode_latents(model.vae, data["image"])
        model.vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    sf = float(model.vae.config.scaling_factor)
    t = time.time()
    unet_losses = train_unet(model, data, unet_steps, batch, seed + 1, lr=lr, lesion_weight=lesion_weight,
                             spot_weight=spot_weight, class_balance=class_balance, on_progress=on_progress)
    unet_s = time.time() - t
    for m in (model.unet, model.vae, model.text_encoder):
        m.eval().requires_grad_(False)
    if eval_work is not None:
        ev_data = load_rows([eval_work], ("train", "val", "test"), res)
    else:
        others = tuple(s for s in ("val", "test") if s not in splits)
        ev_data = load_rows(works[:1], others, res) if others else data
    out = Path(out)
    save_base_model(model, out, fp16=True)
    command = ("python -m medsoft_aug.models.tiny_fit " + " ".join(f"--work {w}" for w in works) +
               (f" --eval-work {eval_work}" if eval_work else "") + (f" --init {init}" if init else "") +
               f" --out {out} --splits {','.join(splits)} --vae-steps {vae_steps} --unet-steps {unet_steps}"
               f" --batch {batch} --seed {seed}" + (f" --lr {lr:g}" if lr != 1e-3 else "") +
               (f" --lesion-weight {lesion_weight:g}" if lesion_weight != 4.0 else "") +
               (f" --spot-weight {spot_weight:g}" if spot_weight != 8.0 else "") +
               (" --class-balance" if class_balance else "") +
               (f" --eval-guidance {eval_guidance:g}" if eval_guidance != 7.5 else ""))
    record = {
        "command": command, "commands": prior.get("commands", []) + [command],
        "previous_seconds": prior.get("total_seconds_all", 0.0),
        "train_rows": len(data["text"]), "labels": {k: data["label"].count(k) for k in sorted(set(data["label"]))},
        "resolution": res, "vae_scaling_factor": round(sf, 5), "bpe_corpus_texts": len(corpus),
        "vae_steps": vae_steps, "unet_steps": unet_steps,
        "vae_steps_all": prior.get("vae_steps_all", prior.get("vae_steps", 0)) + vae_steps,
        "unet_steps_all": prior.get("unet_steps_all", prior.get("unet_steps", 0)) + unet_steps, "batch": batch, "seed": seed,
        "lr": lr, "lesion_weight": lesion_weight, "spot_weight": spot_weight, "class_balance": class_balance,
        "vae_loss_first_last": [round(float(np.mean(vae_losses[:20])), 5),
                                round(float(np.mean(vae_losses[-20:])), 5)] if vae_steps > 0 else None,
        "unet_loss_first_last": [round(float(np.mean(unet_losses[:50])), 5),
                                 round(float(np.mean(unet_losses[-50:])), 5)],
        "vae_seconds": round(vae_s, 1), "unet_seconds": round(unet_s, 1),
        "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()} CPU, {_ncpu()} cores",
    }
    record.update(evaluate(model, ev_data, data["text"], data["label"], out / "contact_sheet.png", seed=seed,
                           guidance=eval_guidance))
    record["total_seconds"] = round(time.time() - t0, 1)
    record["load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    record["total_seconds_all"] = round(record["total_seconds"] + record["previous_seconds"], 1)
    atomic_write_json(out / "fit.json", record)
    write_readme(out / "README.md", record)
    return record


def _ncpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m medsoft_aug.models.tiny_fit", description=__doc__.split("\n")[0])
    ap.add_argument("--work", action="append", required=True, type=Path, help="ingested + masked WORK (repeatable)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (diffusers layout)")
    ap.add_argument("--eval-work", type=Path, default=None, help="WORK to evaluate on (default: non-training rows)")
    ap.add_argument("--splits", default="train", help="comma-separated splits to fit on (default: train)")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the UNet + text encoder")
    ap.add_argument("--lesion-weight", type=float, default=4.0, help="extra loss weight on the soft mask m_b")
    ap.add_argument("--spot-weight", type=float, default=8.0, help="extra loss weight at the lesion centre")
    ap.add_argument("--class-balance", action="store_true",
                    help="sample rows so that each label is drawn equally often (oversamples diseased rows)")
    ap.add_argument("--eval-guidance", type=float, default=7.5, help="CFG scale of the inpainting check")
    ap.add_argument("--init", type=Path, default=None, help="continue from an earlier tiny_fit output folder")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    last = {"t": 0.0}

    def progress(stage: str, done: int, total: int) -> None:
        if time.time() - last["t"] > 15 or done == total:
            last["t"] = time.time()
            log.info("%s %d/%d", stage, done, total)

    rec = fit_tiny_base(a.work, a.out, a.eval_work, tuple(a.splits.split(",")), a.vae_steps, a.unet_steps,
                        a.batch, a.seed, a.init, lr=a.lr, lesion_weight=a.lesion_weight,
                        spot_weight=a.spot_weight, class_balance=a.class_balance,
                        eval_guidance=a.eval_guidance, on_progress=progress)
    log.info("done: %s", {k: v for k, v in rec.items() if not k.startswith("prompt")})


if __name__ == "__main__":
    main()
