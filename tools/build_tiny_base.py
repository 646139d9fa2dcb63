"""Build the shipped tiny base model (``medsoft_aug/models/tiny_base/``): a build tool, not part of the package.

A random tiny VAE cannot reconstruct the sample images, so the tiny preset would make the demo meaningless.
This fits, on one or more ingested + masked WORK folders, with the product's own pieces:

1. the CLIP BPE tokenizer, trained with Hugging Face ``tokenizers`` on the training descriptions
   (``medsoft_aug.models.tokenizer``);
2. the VAE (AutoencoderKL): L1 + MSE reconstruction + a small KL term, on random crops then whole slices; its
   ``scaling_factor`` is set to 1 / std of the training latents (as SD's 0.18215);
3. the UNet and CLIP text encoder together (full training, epsilon prediction), conditioned on the row's text
   (lesion description; "" for normal rows and, for classifier-free guidance, for ``--p-uncond`` of rows), the
   loss weighted in space by 1 + lesion_weight * m_b + spot_weight * (a Gaussian at the lesion centre of
   diseased rows) and in time by min-SNR-gamma; EMA weights; ``--class-balance`` draws each label equally often.
Both training steps run on ``medsoft_aug.train.loop.run_task`` (accelerate, AdamW, seeded sample stream).

It then checks the result on ``--eval-work`` (default: the first WORK's non-training rows) with the product's
``generate.engine.InpaintEngine`` (``tools/tiny_base_checks.py``): VAE PSNR (``evaluate.metrics.psnr``), and
inpainting of normal slices with benign and malignant descriptions, each sample judged by ``generate.evidence``
("k of n moved toward their class"); ``viz.contact_sheet`` draws them. Writes OUT in diffusers layout (fp16
safetensors), ``OUT/fit.json`` (the record) and ``OUT/README.md``.

    python tools/build_tiny_base.py --work WORK [--work WORK2 ...] --eval-work EVAL --out DIR [--init DIR]
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from medsoft_aug.fsutil import atomic_write_json, atomic_write_text, load_npy
from medsoft_aug.geometry import GridMapping
from medsoft_aug.models.base import BaseModel, build_tiny_base, load_base_model, save_base_model
from medsoft_aug.train.data import SliceDataset
from medsoft_aug.train.loop import LoopConfig, make_accelerator, run_task
from medsoft_aug.workdir import read_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_base_checks import check, class_prompts, readme  # noqa: E402  (the tool's own helper beside it)

log = logging.getLogger("build_tiny_base")


# ---- data --------------------------------------------------------------------------------------------------
class Rows(torch.utils.data.Dataset):
    """Slices (N, 1, R, R), soft masks, lesion-centre maps, texts and labels in memory; ``order`` maps dataset
    positions to rows (``balanced()`` repeats rows so that each label fills an equal share)."""

    def __init__(self, image, mask, spot, text, label, order=None):
        self.image, self.mask, self.spot, self.text, self.label = image, mask, spot, text, label
        self.order = list(range(len(text))) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        j = self.order[i]
        return {"image": self.image[j], "soft_mask": self.mask[j], "text": self.text[j], "label": self.label[j],
                "sample_id": str(j), "index": j}

    @property
    def texts(self) -> list[str]:
        return self.text

    def balanced(self) -> "Rows":
        counts = {k: self.label.count(k) for k in set(self.label)}
        most = max(counts.values())
        order = [j for j, lab in enumerate(self.label) for _ in range(round(most / counts[lab]))]
        return Rows(self.image, self.mask, self.spot, self.text, self.label, order)


def load_rows(works: list[Path], splits: tuple[str, ...], resolution: int, geometry: str = "pad",
              margin: float = 0.25) -> Rows:
    """The rows of ``splits`` of the WORK folders at the model grid through the product's grid mapping
    (``geometry``: ``pad`` = the whole slice, ``crop`` = the square around the mask that ``train``/``balance``
    use by default, with ``margin``), with a Gaussian at the lesion centre (index.csv x, y) of diseased rows,
    drawn on the native grid with sigma 3 * max(H, W) / R native pixels (3 model pixels under ``pad``) and then
    mapped like the mask."""
    items, spots = [], []
    mapping = GridMapping(resolution, geometry, margin)
    for work in works:
        index = read_index(work).set_index("sample_id")
        for split in splits:
            ds = SliceDataset(work, split=split, resolution=resolution, mapping=mapping)
            for i in range(len(ds)):
                it = ds[i]
                row = index.loc[it["sample_id"]]
                spot = torch.zeros(1, resolution, resolution)
                if it["label"] != ds.normal_class and row["x"] != "" and row["y"] != "":
                    mask = np.clip(load_npy(work / ds._masks[i]), 0, 1)
                    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]].astype(np.float32)
                    sigma = 3.0 * max(mask.shape) / resolution
                    native = np.exp(-((yy - float(row["y"])) ** 2 + (xx - float(row["x"])) ** 2) / (2 * sigma ** 2))
                    spot = mapping.to_model(native, mask).image
                items.append(it)
                spots.append(spot)
    if not items:
        raise SystemExit(f"no usable rows in splits {splits} of {[str(w) for w in works]}")
    return Rows(torch.stack([it["image"] for it in items]), torch.stack([it["soft_mask"] for it in items]),
                torch.stack(spots), [it["text"] for it in items], [it["label"] for it in items])


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random gain (0.9-1.1) and translation (+-4 px) of (B, 1, R, R) images in [0, 1]."""
    gain = 0.9 + 0.2 * torch.rand(x.shape[0], 1, 1, 1, generator=g)
    dy, dx = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
    return torch.roll(x * gain, shifts=(dy, dx), dims=(2, 3)).clamp(0, 1)


# ---- the two training tasks (TrainTask protocol of medsoft_aug.train) ----------------------------------------
class VAEFitTask:
    """Reconstruction (MSE + 0.5 L1) + kl_weight * KL of grayscale slices as 3-channel [-1, 1]; random half-size
    crops during the first 70% of steps (4x cheaper; the VAE is fully convolutional)."""

    name = "tiny_vae"

    def __init__(self, vae, max_steps: int, kl_weight: float = 1e-3):
        self.vae, self.max_steps, self.kl_weight, self.step = vae, max_steps, kl_weight, 0
        vae.train().requires_grad_(True)

    def trainable_modules(self):
        return [self.vae]

    def bind(self, modules):
        self.vae = modules[0]

    def after_step(self, step: int) -> None:
        self.step = step

    def loss(self, batch: dict, g: torch.Generator):
        x = augment(batch["image"], g)
        if self.step < int(0.7 * self.max_steps):
            crop = x.shape[-1] // 2
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g))
            x = x[..., oy:oy + crop, ox:ox + crop]
        x = (x * 2 - 1).expand(-1, 3, -1, -1)
        post = self.vae.encode(x).latent_dist
        y = self.vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=g)).sample
        rec = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        loss = rec + self.kl_weight * post.kl().mean() / post.mean[0].numel()
        return loss, {"rec": float(rec.detach())}


class BaseFitTask:
    """Epsilon-prediction training of UNet + text encoder on cached VAE latents (module docstring, step 3).

    Loss per sample: mean(w * (eps_theta - eps)^2) / mean(w) * min(SNR_t, gamma) / SNR_t, with
    w = 1 + lesion_weight * m_b + spot_weight * spot / max(spot); EMA copies are updated after every step."""

    name = "tiny_unet"

    def __init__(self, model: BaseModel, lesion_weight: float = 4.0, spot_weight: float = 8.0,
                 min_snr: float = 5.0, p_uncond: float = 0.1, ema_decay: float = 0.995, word_dropout: float = 0.0):
        self.model, self.p_uncond, self.ema_decay = model, p_uncond, ema_decay
        self.word_dropout = word_dropout
        self.lesion_weight, self.spot_weight, self.min_snr = lesion_weight, spot_weight, min_snr
        self.unet, self.te = model.unet, model.text_encoder
        for m in (self.unet, self.te):
            m.train().requires_grad_(True)
        model.vae.eval().requires_grad_(False)
        self.ema = [copy.deepcopy(self.unet).requires_grad_(False), copy.deepcopy(self.te).requires_grad_(False)]

    def trainable_modules(self):
        return [self.unet, self.te]

    def bind(self, modules):
        self.unet, self.te = modules

    @torch.no_grad()
    def setup(self, device, dtype, dataset: Rows) -> None:
        vae = self.model.vae
        means, stds = [], []
        for i in range(0, len(dataset.text), 64):
            post = vae.encode((dataset.image[i:i + 64] * 2 - 1).expand(-1, 3, -1, -1)).latent_dist
            means.append(post.mean)
            stds.append(post.std)
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        h = self.mean.shape[-1]
        m_b = F.interpolate(dataset.mask, size=(h, h), mode="area")                 # Eq. 6's m_b
        spot = F.interpolate(dataset.spot, size=(h, h), mode="area")
        self.weight = 1.0 + self.lesion_weight * m_b + self.spot_weight * spot / spot.amax().clamp_min(1e-6)
        snr = self.model.train_scheduler.alphas_cumprod / (1 - self.model.train_scheduler.alphas_cumprod)
        self.t_weight = snr.clamp(max=self.min_snr) / snr if self.min_snr > 0 else torch.ones_like(snr)

    def loss(self, batch: dict, g: torch.Generator):
        idx, sched = batch["index"], self.model.train_scheduler
        sf = float(self.model.vae.config.scaling_factor)
        z0 = (self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=g)) * sf
        eps = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
        drop = torch.rand(len(idx), generator=g) < self.p_uncond
        prompts = ["" if d else self._words(text, g) for text, d in zip(batch["text"], drop)]
        ids = self.model.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids
        pred = self.unet(sched.add_noise(z0, eps, t), t, self.te(ids)[0]).sample
        w = self.weight[idx]
        loss = (((pred - eps) ** 2 * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3)) * self.t_weight[t]).mean()
        return loss, {"loss": float(loss.detach())}

    def _words(self, text: str, g: torch.Generator) -> str:
        """``text`` with each word dropped with probability ``word_dropout`` (at least one kept), so that the
        text encoder learns what single words (bright, hypointense, ...) mean rather than whole sentences."""
        words = text.split()
        if self.word_dropout <= 0 or len(words) < 2:
            return text
        keep = (torch.rand(len(words), generator=g) >= self.word_dropout).tolist()
        if not any(keep):
            keep[int(torch.randint(0, len(words), (1,), generator=g))] = True
        return " ".join(w for w, k in zip(words, keep) if k)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for e, m in zip(self.ema, (self.unet, self.te)):
            for pe, pm in zip(e.parameters(), m.parameters()):
                pe.lerp_(pm, 1 - decay)

    def finish(self) -> None:
        """Put the EMA weights into the model (frozen, eval mode)."""
        self.model.unet, self.model.text_encoder = self.ema[0].eval(), self.ema[1].eval()


def train(task, rows: Rows, steps: int, batch: int, lr: float, seed: int, project: Path) -> list[float]:
    """``steps`` optimizer steps of ``task`` under the product's training loop; the loss history."""
    cfg = LoopConfig(max_steps=steps, batch_size=batch, lr=lr, seed=seed, checkpoint_every=0,
                     log_every=max(1, steps // 20))
    res = run_task(task, rows, accelerator=make_accelerator(cfg, project, cpu=True), config=cfg)
    return [h["train_loss"] for h in res.history if "train_loss" in h]


# ---- the build ---------------------------------------------------------------------------------------------
def build(args: argparse.Namespace, command: str) -> dict:
    """Fit (or continue, ``--init``) the tiny base, save it to ``args.out``, check it, write fit.json + README."""
    t0 = time.time()
    torch.manual_seed(args.seed)
    resolution = args.resolution or (64 if args.init is None else load_base_model(str(args.init)).resolution)
    data = load_rows(args.work, tuple(args.splits.split(",")), resolution, args.geometry, args.crop_margin)
    prior = json.loads((args.init / "fit.json").read_text()) if args.init and (args.init / "fit.json").is_file() \
        else {}
    if args.init is not None:
        model = with_resolution(load_base_model(str(args.init)), resolution)
    else:
        model = build_tiny_base(seed=args.seed, corpus=sorted({t for t in data.text if t}) or None)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        vae_losses = _fit_vae(model, data, args, Path(tmp)) if args.vae_steps > 0 else []
        vae_s, t = time.time() - t, time.time()
        unet_losses = _fit_unet(model, data, args, Path(tmp)) if args.unet_steps > 0 else []
        unet_s = time.time() - t
    save_base_model(model, args.out, fp16=True)
    grid = (model.resolution, args.geometry, args.crop_margin)
    ev = load_rows([args.eval_work], ("train", "val", "test"), *grid) if args.eval_work else \
        load_rows(args.work[:1], tuple(s for s in ("val", "test") if s not in args.splits.split(",")), *grid)
    commands = list(prior.get("commands", [])) + [command]
    record = {"command": command, "commands": commands, "train_rows": len(data.text),
              "labels": {k: data.label.count(k) for k in sorted(set(data.label))}, "resolution": model.resolution,
              "geometry": args.geometry, "crop_margin": args.crop_margin if args.geometry == "crop" else None,
              "vae_scaling_factor": round(float(model.vae.config.scaling_factor), 5),
              "vae_steps": args.vae_steps, "unet_steps": args.unet_steps,
              "vae_steps_all": prior.get("vae_steps_all", 0) + args.vae_steps,
              "unet_steps_all": prior.get("unet_steps_all", 0) + args.unet_steps,
              "batch": args.batch, "seed": args.seed, "lr": args.lr, "lesion_weight": args.lesion_weight,
              "spot_weight": args.spot_weight, "class_balance": args.class_balance,
              "vae_loss_first_last": _ends(vae_losses), "unet_loss_first_last": _ends(unet_losses),
              "vae_seconds": round(vae_s, 1), "unet_seconds": round(unet_s, 1),
              "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()} CPU, {_ncpu()} cores"}
    record.update(check(model, ev, class_prompts(data.text, data.label), args.out / "contact_sheet.png",
                        seed=args.seed, guidance=args.eval_guidance))
    record["total_seconds"] = round(time.time() - t0, 1)
    record["total_seconds_all"] = round(record["total_seconds"] + prior.get("total_seconds_all", 0.0), 1)
    record["load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    atomic_write_json(args.out / "fit.json", record)
    atomic_write_text(args.out / "README.md", readme(record, args.out))
    return record


def with_resolution(model: BaseModel, resolution: int) -> BaseModel:
    """The model at another square size (UNet and VAE are convolutional: the same weights, their configs' sample
    sizes changed; the product reads the resolution back from unet sample_size x the VAE factor)."""
    factor = model.vae_scale_factor
    if resolution % (factor * 2 ** (len(model.unet.config.block_out_channels) - 1)):
        raise SystemExit(f"--resolution {resolution} is not a multiple of the model's latent grid")
    model.unet.register_to_config(sample_size=resolution // factor)
    model.vae.register_to_config(sample_size=resolution)
    model.resolution = resolution
    return model


def _fit_vae(model: BaseModel, data: Rows, args, tmp: Path) -> list[float]:
    losses = train(VAEFitTask(model.vae, args.vae_steps), data, args.vae_steps, args.batch, 2e-3, args.seed,
                   tmp / "vae")
    model.vae.eval().requires_grad_(False)
    with torch.no_grad():                                       # latents of unit std, as SD's 0.18215 does
        z = torch.cat([model.vae.encode((data.image[i:i + 64] * 2 - 1).expand(-1, 3, -1, -1)).latent_dist.mean
                       for i in range(0, len(data.text), 64)])
    model.vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return losses


def _fit_unet(model: BaseModel, data: Rows, args, tmp: Path) -> list[float]:
    task = BaseFitTask(model, lesion_weight=args.lesion_weight, spot_weight=args.spot_weight,
                       p_uncond=args.p_uncond, word_dropout=args.word_dropout)
    losses = train(task, data.balanced() if args.class_balance else data, args.unet_steps, args.batch, args.lr,
                   args.seed, tmp / "unet")
    task.finish()
    return losses


def _ends(losses: list[float]) -> Optional[list[float]]:
    return [round(float(losses[0]), 5), round(float(losses[-1]), 5)] if losses else None


def _ncpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python tools/build_tiny_base.py", description=__doc__.split("\n")[0])
    ap.add_argument("--work", action="append", required=True, type=Path, help="ingested + masked WORK (repeatable)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (diffusers layout)")
    ap.add_argument("--eval-work", type=Path, default=None, help="WORK to check on (default: non-training rows)")
    ap.add_argument("--splits", default="train", help="comma-separated splits to fit on (default: train)")
    ap.add_argument("--init", type=Path, default=None, help="continue from an earlier output (its tokenizer, VAE)")
    ap.add_argument("--resolution", type=int, default=None,
                    help="model grid size in pixels (default: 64, or --init's); with --init another size refits "
                         "the same convolutional weights at that size")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of the UNet + text encoder")
    ap.add_argument("--lesion-weight", type=float, default=4.0, help="extra loss weight on the soft mask m_b")
    ap.add_argument("--spot-weight", type=float, default=8.0, help="extra loss weight at the lesion centre")
    ap.add_argument("--p-uncond", type=float, default=0.1, help="share of rows trained with the empty text")
    ap.add_argument("--word-dropout", type=float, default=0.0,
                    help="drop each word of a training description with this probability")
    ap.add_argument("--geometry", choices=("pad", "crop"), default="pad",
                    help="grid mapping of the rows (geometry.GridMapping): pad = whole slice, crop = around the mask")
    ap.add_argument("--crop-margin", type=float, default=0.25, help="crop only: context around the mask's box")
    ap.add_argument("--class-balance", action="store_true", help="draw each label equally often")
    ap.add_argument("--eval-guidance", type=float, default=15.0, help="CFG scale of the inpainting check")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    command = "python tools/build_tiny_base.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rec = build(args, command)
    log.info("done: %s", json.dumps({k: v for k, v in rec.items() if k.startswith(("inpaint", "vae_psnr"))}))
    return rec


if __name__ == "__main__":
    main()
