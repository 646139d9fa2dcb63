"""The native-grid <-> model-grid mapping shared by train, generate and evaluate (one place, below the stages).

``resize_pair`` takes a slice and its soft mask (H, W) to the model grid (1, R, R): bilinear (antialiased) image,
area-averaged mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_pair(image: np.ndarray, mask: np.ndarray, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) image and mask -> (1, R, R) tensors: bilinear (antialiased) image, area-averaged mask, both clipped
    to [0, 1]."""
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    msk = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    size = (resolution, resolution)
    if img.shape[-2:] != size:
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
    if msk.shape[-2:] != size:
        # "area" is exact averaging when shrinking; for enlarging it is nearest, so use bilinear there.
        shrink = msk.shape[-2] >= resolution and msk.shape[-1] >= resolution
        msk = F.interpolate(msk, size=size, mode="area") if shrink else \
            F.interpolate(msk, size=size, mode="bilinear", align_corners=False)
    return img[0].clamp_(0, 1), msk[0].clamp_(0, 1)
