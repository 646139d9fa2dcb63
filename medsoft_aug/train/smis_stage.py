"""Soft Mask Inpainting Strategy training (paper Sec. 2.2, Eq. 5-6) as a ``TrainTask``.

One step, per batch of B samples (R = resolution, h = R / VAE factor, C = latent channels):
    z0 = scale * (mu + sigma * n)            (B, C, h, w)  VAE posterior of x0; mu, sigma cached once per sample
    m_b = area-downsample(M_b)               (B, 1, h, w)  adaptive average pooling of the soft mask (then
                                                           M_b >= 0.5 in the "w/o SMIS" hard mask mode)
    eps ~ N(0, I), t ~ U{0..T-1},  z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps    (DDPM forward process)
    CFG dropout, per sample: text only / e_MSC only / both dropped, each with probability 0.05
        (dropped text = the empty-prompt embedding, dropped e_MSC = zeros - the uncond used by generation)
    L = sum(m_b * (eps_theta(z_t, t, C, e_MSC) - eps)^2) / (C * sum(m_b))           (Eq. 6, per batch)

Frozen parts (VAE, text encoder, MSC, encoder) are run once per sample/text in ``setup`` and cached: latent
posteriors (mu, sigma), e_MSC of the masked image + description, prompt embeddings of each distinct text. They run
on the training device in batches of ``cache_batch`` samples in dataset order (read by ``cache_workers`` loader
processes, progress reported as "cache smis"); the chunks are fixed, so the cache is a function of the dataset and
``cache_batch`` only (the loop refuses a resume with another ``cache_batch``) and equals per-sample encoding within
float tolerance (tested). On CUDA the caches stay on the GPU when they take under ``DEVICE_CACHE_BYTES``.

Trainable weights (``train``): "adapter" = W'_k/W'_v of the decoupled layers (default, the paper);
"full" = the whole UNet (+ adapter) (extension); "text_kv" = the text cross-attention W_k/W_v of the same 16
layers, used by the ``--no-msc`` ablation, which installs no adapter and feeds no e_MSC (text-only conditioning).
"""
from __future__ import annotations

import logging
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

from ..progress import ProgressFn, report
from .data import ordered_batches, vae_input

log = logging.getLogger("medsoft_aug.train.smis")

Trainable = Literal["adapter", "full", "text_kv"]
EncodePrompt = Callable[[list[str]], torch.Tensor]                          # texts -> (B, L, C_text)
MSCEmbed = Callable[[torch.Tensor, torch.Tensor, list[str]], torch.Tensor]  # x0, M_b (B,1,R,R), texts -> (B, D)
DEVICE_CACHE_BYTES = 4 << 30


def masked_noise_loss(pred: torch.Tensor, target: torch.Tensor, m_b: torch.Tensor) -> torch.Tensor:
    """Eq. 6: sum(m_b * (pred - target)^2) / (C * sum(m_b)) over the batch.

    pred, target (B, C, h, w); m_b (B, 1, h, w) in [0, 1]. An all-zero mask gives loss 0 (and zero gradient).
    """
    c = pred.shape[1]
    err = (pred.float() - target.float()) ** 2 * m_b.float()
    return err.sum() / (m_b.float().sum() * c).clamp_min(1e-8)


def latent_mask(mask: torch.Tensor, size: tuple[int, int], mask_mode: str = "soft") -> torch.Tensor:
    """M_b (B, 1, R, R) -> m_b (B, 1, h, w) by area averaging (exact for integer factors); in ``hard`` mode then
    thresholded (``masks.soften.apply_mask_mode``), as generation does for the Eq. 7 blend."""
    from ..masks.soften import apply_mask_mode

    return apply_mask_mode(F.adaptive_avg_pool2d(mask.float(), size), mask_mode)


class SMISTask:
    """Eq. 5-6 training of the decoupled cross-attention (or the ablations), driven by ``loop.run_task``."""

    name = "smis"

    def __init__(self, unet, vae, scheduler, encode_prompt: EncodePrompt, msc_embed: Optional[MSCEmbed], *,
                 train: Trainable = "adapter", p_drop_text: float = 0.05, p_drop_msc: float = 0.05,
                 p_drop_both: float = 0.05, cache_latents: bool = True, cache_batch: int = 8,
                 cache_workers: int = 0, mask_mode: str = "soft"):
        from ..models.adapter import adapter_parameters, adapter_processors

        if train not in ("adapter", "full", "text_kv"):
            raise ValueError(f"unknown trainable set {train!r}")
        has_adapter = bool(adapter_processors(unet))
        if (msc_embed is None) == has_adapter:
            raise ValueError("an adapter must be installed exactly when an MSC embedding is given")
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.encode_prompt, self.msc_embed = encode_prompt, msc_embed
        self.p = (p_drop_text, p_drop_msc, p_drop_both)
        self.cache_latents, self.cache_batch, self.cache_workers = cache_latents, int(cache_batch), cache_workers
        self.train_mode, self.mask_mode = train, mask_mode
        vae.requires_grad_(False)
        unet.requires_grad_(False)
        if train == "full":
            unet.requires_grad_(True)
        elif train == "adapter":
            if not has_adapter:
                raise ValueError("train='adapter' needs an installed adapter")
            for p in adapter_parameters(unet):
                p.requires_grad_(True)
        else:
            for n, p in unet.named_parameters():
                if ".attn2.to_k." in n or ".attn2.to_v." in n:
                    p.requires_grad_(True)
        self._model = self._eval_model = unet        # training forwards / validation forwards
        self.device = torch.device("cpu")
        self.lat_mu = self.lat_sigma = self.e_msc = None
        self.text_cache: dict[str, torch.Tensor] = {}
        self.cache_rows: dict[str, int] = {}

    # -- TrainTask protocol ---------------------------------------------------------------------------------
    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.unet]

    def bind(self, modules: list[torch.nn.Module]) -> None:
        """Use the accelerate-prepared UNet (DDP wrapper / autocast) for training forwards."""
        self._model = self._eval_model = modules[0]

    def compile_model(self, backend: str = "inductor") -> None:
        """``torch.compile`` the prepared UNet for training forwards (static shapes: every training batch has
        ``batch_size`` samples, so one graph serves the run); validation runs the eager module."""
        self._model = torch.compile(self._eval_model, backend=backend, dynamic=False)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def setup(self, device: torch.device, dtype: torch.dtype, dataset, on_progress: ProgressFn = None) -> None:
        """Move the frozen parts to ``device``; frozen UNet weights to ``dtype`` (mixed precision); fill caches."""
        self.device = torch.device(device)
        self.unet.to(self.device)
        for p in self.unet.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
        self.vae.to(self.device).eval()
        if self.vae.dtype != dtype:
            torch.nn.Module.to(self.vae, dtype)      # plain cast (diffusers' .to warns about fp32 modules: none here)
        texts = sorted(set(dataset.texts) | {""})
        self.text_cache = self._encode_texts(texts)
        self.uncond = self.text_cache[""]
        if self.cache_latents or self.msc_embed is not None:
            self._fill_caches(dataset, on_progress)

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(0, len(texts), self.cache_batch):
            chunk = texts[i:i + self.cache_batch]
            emb = self.encode_prompt(chunk).to(self.device, torch.float32)     # (b, L, C_text)
            out.update(zip(chunk, emb))
        return out

    @torch.no_grad()
    def _fill_caches(self, dataset, on_progress: ProgressFn = None) -> None:
        """VAE posteriors and e_MSC of every sample, in fixed chunks of ``cache_batch`` on the device."""
        mus, sigmas, es, done = [], [], [], 0
        report(on_progress, "cache smis", 0, len(dataset))
        for batch in ordered_batches(dataset, self.cache_batch, self.cache_workers, pin=self.device.type == "cuda"):
            img = batch["image"].to(self.device, non_blocking=True)
            msk = batch["soft_mask"].to(self.device, non_blocking=True)
            if self.cache_latents:
                mu, sigma = self._posterior(img)
                mus.append(mu.cpu())
                sigmas.append(sigma.cpu())
            if self.msc_embed is not None:
                es.append(self.msc_embed(img, msk, batch["text"]).float().cpu())
            done += len(batch["text"])
            report(on_progress, "cache smis", done, len(dataset))
        self.cache_rows = {sid: i for i, sid in enumerate(dataset.sample_ids)}
        if self.cache_latents:
            self.lat_mu, self.lat_sigma = self._keep(torch.cat(mus)), self._keep(torch.cat(sigmas))
        if self.msc_embed is not None:
            self.e_msc = self._keep(torch.cat(es))
        log.debug("cached %d latents / e_MSC", len(dataset))

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        """A cache tensor on the GPU when it is small enough (no host copy per step), else on the CPU."""
        return t.to(self.device) if self.device.type == "cuda" and t.nbytes <= DEVICE_CACHE_BYTES // 3 else t

    def _rows(self, batch: dict) -> Optional[torch.Tensor]:
        """Cache rows of the batch's samples, or None when any is not cached (e.g. validation samples)."""
        try:
            return torch.tensor([self.cache_rows[s] for s in batch["sample_id"]], dtype=torch.long)
        except KeyError:
            return None

    def _gather(self, cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Rows of a cache on the training device. On CUDA through pinned memory with non-blocking copies: a
        pageable host-to-device copy would wait for every queued kernel (a host sync each step)."""
        if self.device.type != "cuda":
            return cache[rows].to(self.device)
        if cache.device.type == "cuda":
            return cache[rows.pin_memory().to(self.device, non_blocking=True)]
        return cache[rows].pin_memory().to(self.device, non_blocking=True)

    def _posterior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, R, R) in [0, 1] -> VAE posterior mean and std (B, C, h, w), float32."""
        dist = self.vae.encode(vae_input(image).to(self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        rows = self._rows(batch)
        if self.cache_latents and rows is not None:
            mu, sigma = self._gather(self.lat_mu, rows), self._gather(self.lat_sigma, rows)
        else:
            with torch.no_grad():
                mu, sigma = self._posterior(batch["image"])
        z = mu + sigma * torch.randn(mu.shape, generator=generator, device=self.device)
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (z - shift) * cfg.scaling_factor

    def _conditioning(self, batch: dict, generator: Optional[torch.Generator]):
        """Prompt embeddings (B, L, C_text) and e_MSC (B, D) or None, with CFG dropout when a generator is given."""
        text = torch.stack([self.text_cache[t] if t in self.text_cache else self._encode_texts([t])[t]
                            for t in batch["text"]])
        e, rows = None, self._rows(batch)
        if self.msc_embed is not None and rows is not None:
            e = self._gather(self.e_msc, rows)
        elif self.msc_embed is not None:                                   # not cached (validation samples)
            with torch.no_grad():
                e = self.msc_embed(batch["image"], batch["soft_mask"], batch["text"]).float()
        if generator is not None:
            b = text.shape[0]
            r = torch.rand(b, generator=generator, device=self.device)
            pt, pm, pb = self.p
            both = (r >= pt + pm) & (r < pt + pm + pb)
            drop_text = (r < pt) | both
            drop_msc = ((r >= pt) & (r < pt + pm)) | both
            text = torch.where(drop_text[:, None, None], self.uncond.expand_as(text), text)
            if e is not None:
                e = torch.where(drop_msc[:, None], torch.zeros_like(e), e)
        return text, e

    def _step_loss(self, model, batch: dict, generator: torch.Generator, dropout: bool) -> torch.Tensor:
        from ..models.adapter import adapter_kwargs

        z0 = self._latents(batch, generator)                                             # (B, C, h, w)
        m_b = latent_mask(batch["soft_mask"], z0.shape[-2:], self.mask_mode)            # (B, 1, h, w)
        noise = torch.randn(z0.shape, generator=generator, device=self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator,
                          device=self.device)
        z_t = self.scheduler.add_noise(z0, noise, t)
        text, e = self._conditioning(batch, generator if dropout else None)
        kwargs = adapter_kwargs(e) if e is not None else {}
        pred = model(z_t, t, encoder_hidden_states=text, **kwargs).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        return masked_noise_loss(pred, target, m_b)

    def loss(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 6 with CFG dropout; the logs hold the detached loss tensor (reading it would sync the GPU)."""
        loss = self._step_loss(self._model, batch, generator, dropout=True)
        return loss, {"loss": loss.detach()}

    def evaluate(self, batch: dict) -> dict[str, float]:
        """Validation masked loss without CFG dropout, with noise fixed by the batch's first index."""
        g = torch.Generator(self.device).manual_seed(1_000_003 + int(batch["index"][0]))
        return {"loss": float(self._step_loss(self._eval_model, batch, g, dropout=False))}

    def export_state(self) -> dict[str, torch.Tensor]:
        """The trained UNet tensors by parameter name (W'_k/W'_v keys contain ``.processor.to_k_ip``)."""
        return {n: p.detach().float().cpu().contiguous() for n, p in self.unet.named_parameters()
                if p.requires_grad}
