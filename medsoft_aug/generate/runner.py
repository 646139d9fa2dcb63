"""Model-backed generation for ``balance``: load MODEL_DIR once, then inpaint plan items batch by batch.

For each batch: the donors' slices and soft masks (native grid) from WORK, prompt embeddings (CLIP text encoder
of the base model), e_MSC = MSC(e_t (+) e_v) of the prompt and the donor's masked image I_m (Eq. 2-3), the
engine's batched DDIM soft inpainting (Eq. 7-8), then the output writers. Each finished sample's image and mask are
written atomically before its manifest row is yielded.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import torch

from ..errors import InputError, SampleFailure
from ..fsutil import atomic_save_npy, load_npy, sha256_file
from .engine import InpaintEngine, SamplingOptions, resolve_device
from .plan import PlanItem

log = logging.getLogger("medsoft_aug.generate.runner")


def _load_trained(model_dir: Path, device: torch.device, dtype: torch.dtype, base_model: Optional[str] = None):
    from ..models.modeldir import load_model_dir

    return load_model_dir(model_dir, device=device, dtype=dtype, base_model=base_model)


class Generator:
    """Holds the loaded model and the engine. ``trained`` (a TrainedModel: base, encoder, msc) may be given
    directly instead of ``model_dir``."""

    def __init__(self, model_dir: Optional[Path], *, device: str = "auto", batch_size: int = 8, steps: int = 50,
                 guidance: float = 7.5, eta: float = 0.0, trained: Any = None, base_model: Optional[str] = None,
                 blend: str = "masked"):
        self.device, self.dtype = resolve_device(device)
        self.trained = trained if trained is not None else \
            _load_trained(Path(model_dir), self.device, self.dtype, base_model)
        base = self.trained.base
        sched = base.inference_scheduler() if hasattr(base, "inference_scheduler") else base.train_scheduler
        self.engine = InpaintEngine(base.unet, base.vae, sched, base.resolution)
        self.opts = SamplingOptions(steps=int(steps), guidance=float(guidance), eta=float(eta), blend=blend)
        self.batch_size = int(batch_size)
        self.uncond = base.encode_prompt([""])                                     # (1, L, C)

    @torch.no_grad()
    def e_msc(self, x0: torch.Tensor, masks: torch.Tensor, texts: list[str]) -> Optional[torch.Tensor]:
        """e_MSC (B, D) from the MSC, or None for a text-only model (ablation "w/o MSC")."""
        msc = getattr(self.trained, "msc", None)
        if msc is None:
            return None
        x0, masks = x0.to(self.device), masks.to(self.device)
        if hasattr(self.trained, "msc_embed"):
            return self.trained.msc_embed(x0, masks, texts)
        from ..models.msc import predict_e_msc

        return predict_e_msc(self.trained.encoder, msc, x0, masks, texts).float()

    def run(self, work: Path, index: pd.DataFrame, masks: pd.DataFrame, todo: list[PlanItem], out: Path,
            output_format: str, images_root: Optional[Path], consts: dict[str, str]
            ) -> Iterator[tuple[int, dict[str, dict], list[SampleFailure]]]:
        """Yield (items done so far, new manifest rows by id, failures) after each batch."""
        from ..train.data import resize_pair
        from .stage import synthetic_paths

        by_id = index.set_index("sample_id", drop=False)
        mask_of = dict(zip(masks["sample_id"], masks["mask"]))
        res = self.engine.resolution
        done = 0
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            fails: list[SampleFailure] = []
            ok, donors, dmasks = [], [], []
            for it in batch:
                try:
                    img, msk = _donor_arrays(work, by_id, mask_of, it)
                except InputError as e:
                    fails.append(SampleFailure(it.sample_id, str(e)))
                    continue
                ok.append(it)
                donors.append(img)
                dmasks.append(msk)
            rows: dict[str, dict] = {}
            if ok:
                pairs = [resize_pair(d, m, res) for d, m in zip(donors, dmasks)]
                x0 = torch.stack([p[0] for p in pairs])                           # (B, 1, R, R)
                mr = torch.stack([p[1] for p in pairs])                           # (B, 1, R, R)
                texts = [it.prompt for it in ok]
                text_emb = self.trained.base.encode_prompt(texts)
                e = self.e_msc(x0, mr, texts)
                outs = self.engine.inpaint(donors, dmasks, text_emb, self.uncond, e, [it.seed for it in ok],
                                           self.opts, model_grid=(x0, mr))
                for it, img, msk in zip(ok, outs, dmasks):
                    try:
                        rows[it.sample_id] = self._write(it, img, msk, by_id.loc[it.donor_id].to_dict(), out,
                                                         output_format, images_root, consts, synthetic_paths)
                    except InputError as err:
                        fails.append(SampleFailure(it.sample_id, str(err)))
            done += len(batch)
            yield done, rows, fails

    def _write(self, it: PlanItem, img: np.ndarray, msk: np.ndarray, donor: dict, out: Path, fmt: str,
               images_root: Optional[Path], consts: dict[str, str], paths) -> dict[str, str]:
        from . import writers

        img_rel, mask_rel = paths(it, fmt)
        dst = out / img_rel
        if fmt == "png":
            writers.write_png16(dst, img)
        elif fmt == "nifti":
            writers.write_nifti_slice(dst, img, donor)
        else:
            writers.write_dicom_derived(dst, img, donor, images_root, sample_id=it.sample_id,
                                        description=it.prompt)
        atomic_save_npy(out / mask_rel, msk.astype(np.float32))
        return {"sample_id": it.sample_id, "patient_id": donor.get("patient_id", ""), "split": "train",
                "label": it.label, "origin": "synthetic", "image": img_rel, "mask": mask_rel,
                "donor_id": it.donor_id, "prompt": it.prompt, "seed": str(it.seed), **consts,
                "sha256": sha256_file(dst)}


def _donor_arrays(work: Path, by_id: pd.DataFrame, mask_of: dict, it: PlanItem) -> tuple[np.ndarray, np.ndarray]:
    if it.donor_id not in by_id.index:
        raise InputError(f"donor {it.donor_id} not in index.csv")
    src = work / by_id.loc[it.donor_id, "image"]
    msrc = work / mask_of.get(it.donor_id, "")
    if not src.is_file() or not msrc.is_file():
        raise InputError(f"donor {it.donor_id}: slice or soft mask file missing in WORK")
    img, msk = load_npy(src).astype(np.float32), load_npy(msrc).astype(np.float32)
    if img.ndim != 2 or img.shape != msk.shape:
        raise InputError(f"donor {it.donor_id}: slice {img.shape} and mask {msk.shape} shapes differ")
    return np.clip(img, 0, 1), np.clip(msk, 0, 1)
