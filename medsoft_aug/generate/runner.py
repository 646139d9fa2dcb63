"""Model-backed generation: load MODEL_DIR once, then inpaint batches of donor arrays.

For each batch of donors (slices and soft masks at their native grids): the model-grid views through the grid
mapping recorded in MODEL_DIR (``geometry.GridMapping``, the one training used), prompt embeddings (CLIP text
encoder of the base model), e_MSC = MSC(e_t (+) e_v) of the prompt and the donor's masked image I_m (Eq. 2-3),
and the engine's batched DDIM soft inpainting (Eq. 7-8), composited back at the native grid. The runner returns
arrays; it reads and writes no files (``balance`` and ``evaluate quality`` do).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import UsageError
from ..geometry import GridMapping, View, mapping_for_model
from ..masks.soften import apply_mask_mode
from .batching import MAX_BATCH, fixed_batch_size, probe_batch_size
from .engine import InpaintEngine, SamplingOptions, resolve_device
from .fastpath import FastPath, apply_fast_path, weight_dtype

log = logging.getLogger("medsoft_aug.generate.runner")


class Generator:
    """Holds the loaded model (a ``models.modeldir.TrainedModel``), its grid mapping and the engine. ``trained``
    (an already loaded TrainedModel) may be given instead of ``model_dir``; ``mapping`` overrides the one
    recorded in MODEL_DIR (see ``geometry.mapping_for_model``)."""

    def __init__(self, model_dir: Optional[Path], *, device: str = "auto", batch_size: int | str = 8,
                 steps: int = 50, guidance: float = 7.5, eta: float = 0.0, trained: Any = None,
                 base_model: Optional[str] = None, blend: str = "masked", mapping: Optional[GridMapping] = None,
                 scheduler: str = "ddim", fast: Optional[FastPath] = None, deepcache_interval: int = 0,
                 batch_limit: Optional[int] = None):
        """``batch_size``: engine rows per batch, or ``auto`` (``batching``: probed on CUDA, else the CPU default;
        ``batch_limit``: the rows the run needs, the largest size worth probing). ``deepcache_interval``: see
        ``engine.SamplingOptions``."""
        from ..models.modeldir import load_model_dir

        self.device, self.dtype = resolve_device(device)
        self.dtype = weight_dtype(fast, self.dtype)                                # --dtype (fastpath.py)
        self.trained = trained if trained is not None else \
            load_model_dir(Path(model_dir), device=self.device, dtype=self.dtype, base_model=base_model)
        base = self.trained.base
        self.mapping = mapping or mapping_for_model(self.trained.meta)
        multiple = base.vae_scale_factor * 2 ** (len(base.unet.config.block_out_channels) - 1)
        if self.mapping.resolution % multiple:
            raise UsageError(f"--resolution must be a multiple of {multiple} for this base model, "
                             f"got {self.mapping.resolution}")
        probe = batch_size == "auto" and self.device.type == "cuda"
        compile_later = probe and fast is not None and fast.compile                # probe the eager UNet
        apply_fast_path(base.unet, base.vae, replace(fast, compile=False) if compile_later else fast)
        self.engine = InpaintEngine(base.unet, base.vae, base.inference_scheduler(), self.mapping.resolution)
        self.mask_mode = str(self.trained.meta.get("mask_mode", "soft"))         # recorded by train
        self.opts = SamplingOptions(steps=int(steps), guidance=float(guidance), eta=float(eta), blend=blend,
                                    mask_mode=self.mask_mode, scheduler=scheduler,
                                    deepcache_interval=int(deepcache_interval or 0))
        self.uncond = base.encode_prompt([""])                                     # (1, L, C)
        self.batch = (probe_batch_size(self.probe_step, self.device, limit=max(1, batch_limit or MAX_BATCH))
                      if probe else fixed_batch_size(batch_size))                  # balance.json's "batch"
        self.batch_size = int(self.batch["size"])
        if compile_later:
            apply_fast_path(base.unet, base.vae, FastPath(compile=True, compile_backend=fast.compile_backend))

    @torch.no_grad()
    def probe_step(self, size: int) -> None:
        """One denoising step of the whole generation path (prompt encoding, e_MSC, VAE encode, one UNet step
        with CFG, VAE decode) at ``size`` rows of synthetic inputs: what ``--batch-size auto`` measures."""
        r = self.mapping.resolution
        g = torch.Generator("cpu").manual_seed(0)
        x0 = torch.rand((size, 1, r, r), generator=g)
        yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
        mask = ((yy - r / 2) ** 2 + (xx - r / 2) ** 2 < (r / 4) ** 2).float().expand(size, 1, r, r)
        texts = [""] * size
        text_emb = self.trained.base.encode_prompt(texts)
        e = self.e_msc(x0, mask, texts)
        self.engine.denoise(x0, mask, text_emb, self.uncond, e, list(range(size)), replace(self.opts, steps=1))

    @torch.no_grad()
    def e_msc(self, x0: torch.Tensor, masks: torch.Tensor, texts: list[str]) -> Optional[torch.Tensor]:
        """e_MSC (B, D) from the MSC, or None for a text-only model (ablation "w/o MSC")."""
        if self.trained.msc is None:
            return None
        return self.trained.msc_embed(x0.to(self.device), masks.to(self.device), texts)

    def used_mask(self, mask):
        """The mask generation really uses for a WORK soft mask (numpy or torch): itself (soft) or
        M_b >= 0.5 (hard, the w/o-SMIS model): what balance writes beside each synthetic image."""
        return apply_mask_mode(mask, self.mask_mode)

    def inpaint(self, donors: Sequence[np.ndarray], masks: Sequence[np.ndarray], prompts: Sequence[str],
                seeds: Sequence[int], on_step: Optional[Callable[[int, int], None]] = None,
                negatives: Optional[Sequence[str]] = None) -> list[np.ndarray]:
        """Inpaint one batch: donors and soft masks (H_b, W_b) in [0, 1] at their native grids, one prompt and
        seed each -> B float32 arrays (H_b, W_b) in [0, 1], exactly the donor's outside the model window and
        wherever :meth:`used_mask` is 0. The model's mask mode applies on every grid: native (composite), model
        (I_m, e_MSC), latent (Eq. 7). ``on_step(done, total)`` is called after each DDIM step. ``negatives``: one
        CFG negative text per row ("" = the empty text; None: all empty)."""
        windows = [self.mapping.window(m) for m in masks]                      # the soft mask's, as in training
        masks = [self.used_mask(m) for m in masks]
        views = [self.mapping.to_model(d, m, w) for d, m, w in zip(donors, masks, windows)]
        views = [View(v.image, self.used_mask(v.mask), v.window) for v in views]
        x0 = torch.stack([v.image for v in views])                                # (B, 1, R, R)
        mr = torch.stack([v.mask for v in views])                                 # (B, 1, R, R)
        texts = list(prompts)
        text_emb = self.trained.base.encode_prompt(texts)
        e = self.e_msc(x0, mr, texts)
        uncond = self.trained.base.encode_prompt(list(negatives)) if negatives and any(negatives) else self.uncond
        return self.engine.inpaint(list(donors), list(masks), text_emb, uncond, e, list(seeds), self.opts,
                                   mapping=self.mapping, views=views, on_step=on_step)
