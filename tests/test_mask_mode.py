"""The paper's "w/o SMIS" ablation has one definition (M_b >= 0.5 as 0/1, ``masks.soften.apply_mask_mode``),
applied wherever a mask acts: training (model-grid mask, Eq. 6 latent weights) and generation (I_m, the Eq. 7
blend, the pixel composite). Checked on the arrays each step really uses and on generated pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medsoft_aug.masks.soften import apply_mask_mode


def _soft(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    return np.clip((10 - d) / 6, 0, 1).astype(np.float32)          # core 1, a ramp through every value, 0


def test_one_definition_for_numpy_and_torch():
    m = _soft()
    hard = apply_mask_mode(m, "hard")
    assert hard.dtype == np.float32 and set(np.unique(hard)) == {0.0, 1.0}
    assert np.array_equal(hard, (m >= 0.5).astype(np.float32))
    t = torch.from_numpy(m)[None, None]
    assert torch.equal(apply_mask_mode(t, "hard"), torch.from_numpy(hard)[None, None])
    assert apply_mask_mode(m, "soft") is m
    with pytest.raises(ValueError):
        apply_mask_mode(m, "binary")


def test_training_uses_hard_masks_at_model_and_latent_grids():
    from medsoft_aug.train.smis_stage import latent_mask, masked_noise_loss

    m = torch.from_numpy(_soft())[None, None]
    soft_lat, hard_lat = latent_mask(m, (8, 8)), latent_mask(m, (8, 8), "hard")
    assert ((soft_lat > 0) & (soft_lat < 1)).any()                           # soft weights at the edge
    assert set(torch.unique(hard_lat).tolist()) <= {0.0, 1.0}
    assert torch.equal(hard_lat, (soft_lat >= 0.5).float())
    # the Eq. 6 loss weights: an error only where 0 < m_b < 0.5 counts in soft mode, not in hard mode
    ring = ((soft_lat > 0) & (soft_lat < 0.5)).float()
    pred, target = ring.expand(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    assert float(masked_noise_loss(pred, target, soft_lat)) > 0
    assert float(masked_noise_loss(pred, target, hard_lat)) == 0.0


def test_training_dataset_hard_mode(tmp_path):
    from _work_helpers import WorkWriter
    from medsoft_aug.train.data import SliceDataset

    out = WorkWriter(tmp_path / "work")
    for i, label in enumerate(("normal", "benign")):
        out.add(f"s{i}", label, "train", np.full((32, 32), 0.5, np.float32), _soft(), patient_id=f"p{i}",
                study_id=f"st{i}", spacing_row=1.0, spacing_col=1.0, description="")
    work = out.close()
    soft = SliceDataset(work, "train", resolution=16)[1]["soft_mask"]
    hard = SliceDataset(work, "train", resolution=16, mask_mode="hard")[1]["soft_mask"]
    assert torch.equal(hard, apply_mask_mode(soft, "hard")) and not torch.equal(hard, soft)
