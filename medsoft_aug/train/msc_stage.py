"""MSC pretraining task (paper Eq. 4): L_MSC = ||e_MSC - e_r||_2^2 on training-split diseased samples.

``MSCTask`` implements the ``TrainTask`` protocol (see ``medsoft_aug.train``). Batches are those of
``train.data.SliceDataset(..., diseased_only=True)``: image x0 (B, 1, H, W) and soft mask M_b (B, 1, H, W) in
[0, 1], lesion texts. The frozen encoder gives e_t (description), e_v (I_m = x0 * (1 - M_b), Eq. 2) and e_r (x0,
L2-normalised); only the MSC trains. Because the encoder is frozen and the inputs of a sample do not change
between epochs, its features are cached per sample (keyed by sample id and a hash of the image, mask and text
bytes, so an augmented or changed input is recomputed): a step costs only the MSC.

Exact resume: the cache is filled once, in ``setup``, over the training set in fixed chunks of ``cache_batch``
samples in dataset order, and never grows during training. A sample's features therefore never depend on which
other samples shared its batch when they were computed (batched encoder kernels and text padding are not
bit-stable across batch compositions), so a run resumed at any step sees the same features as one that never
stopped. Samples not in the cache (validation, or a training set above ``cache_max_items``) are computed with their
batch, whose composition is a pure function of the step.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..models.encoders import MedicalEncoder
from ..models.msc import MSCConfig, MedicalSemanticController, build_msc, masked_image
from ..progress import ProgressFn, report

log = logging.getLogger("medsoft_aug.train.msc_stage")

_Feat = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # e_t (Lt, D), e_v (Lv, D), e_r (D) - one sample, CPU


class MSCTask:
    """TrainTask "msc": trains a MedicalSemanticController against a frozen MedicalEncoder."""

    name = "msc"

    def __init__(self, encoder: MedicalEncoder, config: Optional[MSCConfig] = None, seed: int = 0,
                 cache_features: bool = True, cache_max_items: int = 50_000, cache_batch: int = 8,
                 msc: Optional[MedicalSemanticController] = None, cache_workers: int = 0):
        self.encoder = encoder
        self.config = config or (msc.config if msc is not None else MSCConfig.for_embed_dim(encoder.embed_dim))
        if self.config.embed_dim != encoder.embed_dim:
            raise ModelError(f"MSC embed_dim {self.config.embed_dim} does not match encoder {encoder.ref} "
                             f"({encoder.embed_dim})")
        self.msc = msc if msc is not None else build_msc(self.config, seed=seed)
        self.cache_features = cache_features
        self.cache_max_items = int(cache_max_items)
        self.cache_batch = int(cache_batch)
        self.cache_workers = int(cache_workers)
        self._cache: dict[str, _Feat] = {}
        self.cache_hits = 0
        self.cache_misses = 0

    # ---- TrainTask protocol ----------------------------------------------------------------------------------
    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.msc]

    def setup(self, device: torch.device, dtype: torch.dtype, dataset: object = None,
              on_progress: ProgressFn = None) -> None:
        """Put the MSC on the training device (it trains in float32; mixed precision is accelerate's autocast)
        and fill the feature cache over ``dataset`` (see the module docstring)."""
        self.msc.to(device)
        if dataset is not None:
            self.fill_cache(dataset, on_progress)

    @torch.no_grad()
    def fill_cache(self, dataset, on_progress: ProgressFn = None) -> None:
        """Encoder features of every sample of ``dataset`` (items as ``SliceDataset`` gives them), computed by the
        encoder on its device in fixed chunks of ``cache_batch`` in dataset order (read by ``cache_workers``
        loader processes; progress "cache msc"); skipped above ``cache_max_items`` samples."""
        from .data import ordered_batches

        self._cache.clear()
        if not self.cache_features or len(dataset) > self.cache_max_items:
            if self.cache_features:
                log.info("msc: %d training samples exceed the feature cache (%d): features computed every step",
                         len(dataset), self.cache_max_items)
            return
        done = 0
        report(on_progress, "cache msc", done, len(dataset))
        for batch in ordered_batches(dataset, self.cache_batch, self.cache_workers):
            keys = self._keys(batch)
            for key, feat in zip(keys, self._encode(batch, range(len(keys)))):
                self._cache[key] = feat
            done += len(keys)
            report(on_progress, "cache msc", done, len(dataset))
        log.debug("msc: cached encoder features of %d samples", len(self._cache))

    def bind(self, modules: list[torch.nn.Module]) -> None:
        """Use the modules accelerate prepared (e.g. DDP-wrapped) for the forward passes."""
        [self.msc] = modules

    def loss(self, batch: dict, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4: mean over the batch of ||e_MSC - e_r||_2^2; logs also report the cosine similarity."""
        e_t, mask, e_v, e_r = self.features(batch)
        pred = self.msc(e_t, mask, e_v)                                          # (B, D)
        loss = (pred - e_r.to(pred)).pow(2).sum(dim=-1).mean()
        cos = F.cosine_similarity(pred.detach().float(), e_r.to(pred.device).float(), dim=-1).mean()
        return loss, {"loss": float(loss.detach()), "cos": float(cos)}

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict[str, float]:
        """Validation metrics of one batch: loss (Eq. 4) and mean cosine similarity of e_MSC to e_r."""
        _, logs = self.loss(batch)
        return logs

    def export_state(self) -> dict[str, torch.Tensor]:
        module = getattr(self.msc, "module", self.msc)   # unwrap DDP if the loop wrapped it in place
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    # ---- features --------------------------------------------------------------------------------------------
    def features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder features of a batch, padded: e_t (B, Lt, D), mask (B, Lt), e_v (B, Lv, D), e_r (B, D),
        on the MSC's device."""
        n_items = len(batch["text"])
        keys = self._keys(batch) if self._cache else [None] * n_items
        todo = [i for i, k in enumerate(keys) if k is None or k not in self._cache]
        fresh = dict(zip(todo, self._encode(batch, todo))) if todo else {}
        self.cache_misses += len(todo)
        self.cache_hits += n_items - len(todo)
        feats = [fresh[i] if i in fresh else self._cache[keys[i]] for i in range(n_items)]
        return _pad(feats, self._device())

    def _keys(self, batch: dict) -> list[str]:
        texts = list(batch["text"])
        ids = [str(s) for s in batch.get("sample_id", range(len(texts)))]
        return [self._key(sid, batch["image"][i], batch["soft_mask"][i], texts[i]) for i, sid in enumerate(ids)]

    @torch.no_grad()
    def _encode(self, batch: dict, rows) -> list[_Feat]:
        """Frozen-encoder features (e_t trimmed to its tokens, e_v, e_r; on CPU) of the batch rows ``rows``."""
        rows = list(rows)
        sel = torch.tensor(rows, dtype=torch.long)
        x0, mb = batch["image"][sel], batch["soft_mask"][sel]
        e_t, mask = self.encoder.text_tokens([batch["text"][i] for i in rows])   # (n, Lt, D), (n, Lt)
        e_v = self.encoder.image_tokens(masked_image(x0, mb))                      # (n, Lv, D)
        e_r = self.encoder.image_embed(x0)                                         # (n, D)
        return [(e_t[j, :int(mask[j].sum())].cpu(), e_v[j].cpu(), e_r[j].cpu()) for j in range(len(rows))]

    def _device(self) -> torch.device:
        return next(self.msc.parameters()).device

    @staticmethod
    def _key(sample_id: str, image: torch.Tensor, mask: torch.Tensor, text: str) -> str:
        h = hashlib.blake2b(digest_size=16)
        for t in (image, mask):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        h.update(text.encode("utf-8"))
        return f"{sample_id}:{h.hexdigest()}"


def _pad(feats: list[_Feat], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    lt = max(f[0].shape[0] for f in feats)
    d = feats[0][0].shape[1]
    e_t = torch.zeros(len(feats), lt, d)
    mask = torch.zeros(len(feats), lt, dtype=torch.bool)
    for i, (t, _, _) in enumerate(feats):
        e_t[i, :t.shape[0]] = t
        mask[i, :t.shape[0]] = True
    e_v = torch.stack([f[1] for f in feats])
    e_r = torch.stack([f[2] for f in feats])
    return e_t.to(device), mask.to(device), e_v.to(device), e_r.to(device)
