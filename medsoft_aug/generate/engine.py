"""Batched soft-mask inpainting (paper Eq. 7-8) on diffusers' ``DDIMScheduler``, one sample per batch row.

Why not ``StableDiffusionInpaintPipeline``: it binarizes masks, downsamples them with nearest
neighbour, encodes the whole image instead of ``I_m`` and tiles one e_MSC across the batch. Here every row of a
batch has its own soft mask, prompt embedding, e_MSC and seed, so mixed batches are exact and fast.

Per sample ``b`` (shapes for one row; ``R`` = model resolution, ``h = w = R / f`` the latent size):

1. ``x0`` (H, W) in [0,1] and ``M_b`` (H, W) in [0,1] at the donor's native grid, mapped to (R, R) through a
   square window of the native grid (``geometry.GridMapping``: a crop around the mask, or the padded slice).
2. ``z_m = VAE(I_m)``, ``I_m = x0 * (1 - M_b)`` (Eq. 2), latent mean times the VAE scaling factor: (4, h, w).
   (``blend="donor"``: ``z_m = VAE(x0)`` instead - see :class:`SamplingOptions`.)
3. ``m_b`` = ``M_b`` area-downsampled to (h, w).
4. Its own ``torch.Generator(seed)`` (on CPU, so results do not depend on the device) draws, in this order:
   the initial noise ``eps`` (4, h, w), then one DDIM variance-noise tensor per step when ``eta > 0``.
5. For each DDIM step t: classifier-free guidance over a 2B batch (uncond = empty-text embedding, or the row's
   negative prompt's, + zero e_MSC),
   ``p_{t-1}`` = DDIM step (Eq. 8), then ``z_{t-1} = p_{t-1} * m_b + z_{m,t-1} * (1 - m_b)`` (Eq. 7) with
   ``z_{m,t-1}`` = ``z_m`` noised with ``eps`` to the level of the next timestep (clean ``z_m`` after the last).
6. Decode, to grayscale [0,1], map back through the same window, and composite in pixel space at the native
   grid: ``out = x0 * (1 - M_b) + decoded * M_b``: pixels where ``M_b == 0`` or outside the window are exactly
   the donor's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import GridMapping, View
from ..masks.soften import apply_mask_mode
from .deepcache import deep_cache

log = logging.getLogger("medsoft_aug.generate.engine")


@dataclass
class SamplingOptions:
    steps: int = 50          # DDIM steps
    guidance: float = 7.5    # classifier-free guidance scale (<= 1 disables the unconditional pass)
    eta: float = 0.0         # DDIM eta: 0 deterministic; > 0 adds sigma_t z per step (Eq. 8)
    # Latent kept outside the mask in Eq. 7: "masked" = VAE(I_m), the paper's text; "donor" = VAE(x0) (as diffusers'
    # inpaint pipeline does). Identical where M_b == 0. With soft masks, I_m is darkened wherever 0 < M_b < 1, and
    # that dark band (and the black hole it surrounds) is context the UNet never saw in training (it is trained on
    # VAE(x0)); on the tiny demo model it pulls every inpainted lesion darker, whatever the class.
    blend: str = "masked"
    # "soft" (SMIS) or "hard" (w/o SMIS: masks.soften.apply_mask_mode, M_b >= 0.5, also on the latent grid)
    mask_mode: str = "soft"
    # "ddim" (the paper's), or a diffusers multistep solver for fewer UNet evaluations: "dpmsolver++"
    # (DPMSolverMultistepScheduler, 2nd order) or "unipc" (UniPCMultistepScheduler); Eq. 7 at the solver's own
    # timesteps either way. eta applies to DDIM only.
    scheduler: str = "ddim"
    # DeepCache (generate/deepcache.py): 0 off (default); N >= 1 runs the whole UNet every N-th step and only its
    # shallow skip branch in between, reusing the cached deep features (1: every step full, equal to off).
    deepcache_interval: int = 0


SCHEDULERS = ("ddim", "dpmsolver++", "unipc")


def make_scheduler(name: str, config):
    """A fresh diffusers scheduler ``name`` (see :data:`SCHEDULERS`) from a scheduler config (SD1.5's betas)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")


def resolve_device(device: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA with fp16 when available, else CPU float32 (with a warning: real models are slow there)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), torch.float16
        log.warning("no CUDA device: generating on the CPU in float32; real (SD1.5-sized) models are very slow "
                    "there, tiny models are fine")
        return torch.device("cpu"), torch.float32
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import UsageError

        raise UsageError("--device cuda requested but CUDA is not available")
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


def unet_conditioning(unet, text_emb: torch.Tensor, e_msc: Optional[torch.Tensor]) -> dict:
    """UNet keyword arguments for text embeddings (B, L, C) and e_MSC (B, D) (one decoupled token per sample).

    e_MSC reaches W'_k / W'_v of the decoupled layers through ``added_cond_kwargs`` (the UNet must carry the
    adapter of ``models.adapter.install_adapter``). ``e_msc=None``: text only (a model without the adapter).
    """
    from ..models.adapter import adapter_kwargs

    if e_msc is None:
        return {"encoder_hidden_states": text_emb}
    return {"encoder_hidden_states": text_emb, **adapter_kwargs(e_msc)}


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


class InpaintEngine:
    """Batched DDIM soft-mask inpainting with per-sample masks, prompts, e_MSC and seeds.

    Args:
        unet: diffusers ``UNet2DConditionModel`` with decoupled cross-attention processors installed.
        vae: diffusers ``AutoencoderKL`` (3-channel images in [-1, 1]).
        scheduler: any diffusers scheduler whose config ``DDIMScheduler.from_config`` accepts (a fresh DDIM
            scheduler is made from it; the argument is not modified).
        resolution: model image size R (pixels, square).
    """

    def __init__(self, unet, vae, scheduler, resolution: int):
        from diffusers import DDIMScheduler

        self.unet = unet
        self.vae = vae
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.resolution = int(resolution)
        self.factor = vae_scale_factor(vae)
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.latent_ch = int(unet.config.in_channels)

    # -- pieces ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, R) in [0,1] -> latents (B, 4, h, w): VAE posterior mean times the scaling factor."""
        x = (images01 * 2.0 - 1.0).expand(-1, 3, -1, -1).to(self.device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.scaling

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> grayscale (B, 1, R, R) float32 in [0, 1] (mean of the 3 channels)."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample.float()
        return ((x.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)

    def _noise(self, seeds: Sequence[int], shape: tuple[int, ...]) -> tuple[list[torch.Generator], torch.Tensor]:
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        eps = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens])
        return gens, eps

    def _scheduler(self, opts: SamplingOptions):
        """The scheduler of one batch, its timesteps set: multistep solvers keep a history, so a fresh one per
        batch (DDIM is stateless: the engine's own)."""
        sched = self.scheduler if opts.scheduler == "ddim" else make_scheduler(opts.scheduler, self.scheduler.config)
        sched.set_timesteps(int(opts.steps), device=self.device)
        return sched

    def _known(self, x0: torch.Tensor, mask: torch.Tensor, opts: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_m (B, 4, h, w): the latent kept outside the mask, m_b (B, 1, h, w): the mask on the latent grid)."""
        if opts.blend not in ("masked", "donor"):
            raise ValueError(f"blend must be 'masked' or 'donor', got {opts.blend!r}")
        h = w = self.resolution // self.factor
        keep = x0 * (1.0 - mask) if opts.blend == "masked" else x0                       # I_m (Eq. 2) or x0
        z_m = self.encode(keep).to(self.dtype)                                           # (B, 4, h, w)
        m_b = F.interpolate(mask.float(), size=(h, w), mode="area")                      # (B, 1, h, w)
        return z_m, apply_mask_mode(m_b, opts.mask_mode).to(self.device, self.dtype)

    def _conditioning(self, text_emb: torch.Tensor, uncond_emb: torch.Tensor, e_msc: Optional[torch.Tensor],
                      cfg: bool) -> dict:
        """UNet keyword arguments for the batch: with ``cfg``, the unconditional half first (empty text, zero
        e_MSC), then the conditional one (2B rows)."""
        dev, dt, b = self.device, self.dtype, text_emb.shape[0]
        text = text_emb.to(dev, dt)
        e = None if e_msc is None else e_msc.to(dev, dt)
        if cfg:
            if uncond_emb.shape[0] not in (1, b):
                raise ValueError(f"uncond_emb has {uncond_emb.shape[0]} rows for a batch of {b}")
            text = torch.cat([uncond_emb.to(dev, dt).expand(b, -1, -1), text])
            e = None if e is None else torch.cat([torch.zeros_like(e), e])
        return unet_conditioning(self.unet, text, e)

    def _step(self, sched, z: torch.Tensor, t: torch.Tensor, cond: dict, gens: list[torch.Generator],
              opts: SamplingOptions) -> torch.Tensor:
        """One guided UNet evaluation and scheduler step from ``z`` at ``t``: p_{t-1} (Eq. 8 for DDIM; with
        ``eta > 0`` each row's variance noise comes from its own generator)."""
        cfg = opts.guidance > 1.0
        zin = sched.scale_model_input(torch.cat([z, z]) if cfg else z, t)
        out = self.unet(zin, t, **cond).sample
        if cfg:
            eps_u, eps_c = out.chunk(2)
            out = eps_u + opts.guidance * (eps_c - eps_u)
        if opts.scheduler != "ddim":
            return sched.step(out, t, z).prev_sample
        var_noise = None
        if opts.eta > 0:
            var_noise = torch.cat([torch.randn((1, *z.shape[1:]), generator=g, dtype=torch.float32)
                                   for g in gens]).to(self.device, self.dtype)
        return sched.step(out, t, z, eta=float(opts.eta), variance_noise=var_noise).prev_sample

    # -- the loop -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x0: torch.Tensor, mask: torch.Tensor, text_emb: torch.Tensor, uncond_emb: torch.Tensor,
                e_msc: torch.Tensor, seeds: Sequence[int], opts: SamplingOptions,
                on_step: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Inpaint one batch at the model grid; ``on_step(done, total)`` is called after each DDIM step.

        Args:
            x0: (B, 1, R, R) donor images in [0, 1]. mask: (B, 1, R, R) soft masks M_b in [0, 1].
            text_emb: (B, L, C) prompt embeddings. uncond_emb: (1, L, C) empty-prompt embedding, or (B, L, C) one
                negative-prompt embedding per row (CFG's unconditional half).
            e_msc: (B, D) medical semantic features, or None (text only). seeds: B ints (one generator each).
        Returns:
            (B, 1, R, R) float32 decoded images in [0, 1] on the CPU (not yet composited).
        """
        # 1. Inputs, the scheduler, the known latent z_m and the latent-grid mask m_b.
        b = x0.shape[0]
        if not (mask.shape[0] == text_emb.shape[0] == len(seeds) == b) or (e_msc is not None and len(e_msc) != b):
            raise ValueError("batch sizes of images, masks, prompts, e_MSC and seeds differ")
        sched = self._scheduler(opts)
        timesteps = sched.timesteps
        z_m, m_b = self._known(x0, mask, opts)
        # 2. Each row's own initial noise, and the conditioning (CFG as one 2B batch).
        h = w = self.resolution // self.factor
        gens, eps = self._noise(seeds, (self.latent_ch, h, w))
        eps = eps.to(self.device, self.dtype)
        z = eps * sched.init_noise_sigma
        cond = self._conditioning(text_emb, uncond_emb, e_msc, opts.guidance > 1.0)
        # 3. Denoise: p_{t-1} inside the mask, z_m noised to the next level outside it (Eq. 7; clean at the end).
        #    --deepcache-interval N: the UNet's deep features cached every N steps (deepcache.py; 0: untouched).
        with deep_cache(self.unet, sched, opts.deepcache_interval):
            for i, t in enumerate(timesteps):
                p = self._step(sched, z, t, cond, gens, opts)
                z_m_t = sched.add_noise(z_m, eps, timesteps[i + 1:i + 2]) if i + 1 < len(timesteps) else z_m
                z = p * m_b + z_m_t * (1.0 - m_b)                                        # Eq. 7
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
        # 4. Decode.
        return self.decode(z).cpu()

    def inpaint(self, donors: Sequence[np.ndarray], masks: Sequence[np.ndarray], text_emb: torch.Tensor,
                uncond_emb: torch.Tensor, e_msc: Optional[torch.Tensor], seeds: Sequence[int],
                opts: Optional[SamplingOptions] = None, mapping: Optional[GridMapping] = None,
                views: Optional[Sequence[View]] = None,
                on_step: Optional[Callable[[int, int], None]] = None) -> list[np.ndarray]:
        """Inpaint donors at their native grids.

        Args:
            donors: B arrays (H_b, W_b) float in [0, 1]. masks: B soft masks of the same shapes.
            text_emb (B, L, C), uncond_emb (1, L, C), e_msc (B, D) or None, seeds: as in :meth:`denoise`.
            mapping: the native <-> model grid mapping (default: ``GridMapping(R)``, a crop around the mask).
            views: the donors already on the model grid through ``mapping`` (e.g. to compute e_MSC from them).
            on_step: as in :meth:`denoise`.
        Returns:
            B float32 arrays (H_b, W_b) in [0, 1]: ``x0 * (1 - M_b) + decoded * M_b`` inside each window, the
            donor's pixels elsewhere.
        """
        opts = opts or SamplingOptions()
        mapping = mapping or GridMapping(self.resolution)
        if mapping.resolution != self.resolution:
            raise ValueError(f"mapping resolution {mapping.resolution} differs from the engine's {self.resolution}")
        for d, m in zip(donors, masks):
            if d.shape != m.shape:
                raise ValueError(f"image shape {d.shape} and mask shape {m.shape} differ")
        views = list(views) if views is not None else [mapping.to_model(d, m) for d, m in zip(donors, masks)]
        x0 = torch.stack([v.image for v in views])                                      # (B, 1, R, R)
        mk = torch.stack([v.mask for v in views])                                       # (B, 1, R, R)
        dec = self.denoise(x0, mk, text_emb, uncond_emb, e_msc, seeds, opts, on_step)
        return [mapping.composite(d, m, dec[i], v.window) for i, (d, m, v) in enumerate(zip(donors, masks, views))]
