"""Model-backed generation: load MODEL_DIR once, then inpaint batches of donor arrays.

For each batch of donors (slices and soft masks at their native grids): the model-grid views through the grid
mapping recorded in MODEL_DIR (``geometry.GridMapping``, the one training used), prompt embeddings (CLIP text
encoder of the base model), e_MSC = MSC(e_t (+) e_v) of the prompt and the donor's masked image I_m (Eq. 2-3),
and the engine's batched DDIM soft inpainting (Eq. 7-8), composited back at the native grid. The runner returns
arrays; it reads and writes no files (``balance`` and ``evaluate quality`` do).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import UsageError
from ..geometry import GridMapping, View, mapping_for_model
from ..masks.soften import apply_mask_mode
from .engine import InpaintEngine, SamplingOptions, resolve_device
from .fastpath import FastPath, apply_fast_path, weight_dtype

log = logging.getLogger("medsoft_aug.generate.runner")


class Generator:
    """Holds the loaded model (a ``models.modeldir.TrainedModel``), its grid mapping and the engine. ``trained``
    (an already loaded TrainedModel) may be given instead of ``model_dir``; ``mapping`` overrides the one
    recorded in MODEL_DIR (see ``geometry.mapping_for_model``)."""

    def __init__(self, model_dir: Optional[Path], *, device: str = "auto", batch_size: int = 8, steps: int = 50,
                 guidance: float = 7.5, eta: float = 0.0, trained: Any = None, base_model: Optional[str] = None,
                 blend: str = "masked", mapping: Optional[GridMapping] = None,
                 scheduler: str = "ddim", fast: Optional[FastPath] = None):
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
        apply_fast_path(base.unet, base.vae, fast)                                 # --channels-last, --compile
        self.engine = InpaintEngine(base.unet, base.vae, base.inference_scheduler(), self.mapping.resolution)
        self.mask_mode = str(self.trained.meta.get("mask_mode", "soft"))         # recorded by train
        self.opts = SamplingOptions(steps=int(steps), guidance=float(guidance), eta=float(eta), blend=blend,
                                    mask_mode=self.mask_mode, scheduler=scheduler)
        self.batch_size = int(batch_size)
        self.uncond = base.encode_prompt([""])                                     # (1, L, C)

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
                seeds: Sequence[int], on_step: Optional[Callable[[int, int], None]] = None) -> list[np.ndarray]:
        """Inpaint one batch: donors and soft masks (H_b, W_b) in [0, 1] at their native grids, one prompt and
        seed each -> B float32 arrays (H_b, W_b) in [0, 1], exactly the donor's outside the model window and
        wherever :meth:`used_mask` is 0. The model's mask mode applies on every grid: native (composite), model
        (I_m, e_MSC), latent (Eq. 7). ``on_step(done, total)`` is called after each DDIM step."""
        windows = [self.mapping.window(m) for m in masks]                      # the soft mask's, as in training
        masks = [self.used_mask(m) for m in masks]
        views = [self.mapping.to_model(d, m, w) for d, m, w in zip(donors, masks, windows)]
        views = [View(v.image, self.used_mask(v.mask), v.window) for v in views]
        x0 = torch.stack([v.image for v in views])                                # (B, 1, R, R)
        mr = torch.stack([v.mask for v in views])                                 # (B, 1, R, R)
        texts = list(prompts)
        text_emb = self.trained.base.encode_prompt(texts)
        e = self.e_msc(x0, mr, texts)
        return self.engine.inpaint(list(donors), list(masks), text_emb, self.uncond, e, list(seeds), self.opts,
                                   mapping=self.mapping, views=views, on_step=on_step)
