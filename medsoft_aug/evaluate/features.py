"""Feature extractors for FID.

* ``inception``: torchvision's Inception-v3 architecture with the user's local weights file (the torchvision
  ImageNet weights, ``.safetensors`` or ``.pth`` read with ``torch.load(weights_only=True)``); features are the
  2048-d pool3 activations (global average pool before ``fc``) at 299 x 299, inputs scaled to [-1, 1] as the
  Google weights expect. FID values are comparable with other runs using the same weights, not with the TF-ported
  ``pt_inception-2015-12-05`` weights of pytorch-fid / clean-fid.
* ``biomedclip``: the model's frozen medical image encoder (``MedicalEncoder.image_embed``, L2-normalised).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

log = logging.getLogger("medsoft_aug.evaluate.features")

INCEPTION_SIZE = 299


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Inception-v3 (torchvision architecture) from a local weights file, ``fc`` replaced by identity, eval mode.

    Raises ModelError when the file is missing, unreadable, or not an Inception-v3 state dict.
    """
    from torchvision.models import inception_v3

    from .trainer import load_state_dict_file

    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"Inception weights {path} not found")
    try:
        sd = load_state_dict_file(path)
    except Exception as e:  # noqa: BLE001 - InputError from the loader -> ModelError (the same exit code 3)
        raise ModelError(f"Inception weights {path.name}: {e}") from None
    aux = any(k.startswith("AuxLogits.") for k in sd)
    model = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError:
        raise ModelError(f"{path.name} is not a torchvision Inception-v3 state dict") from None
    model.fc = nn.Identity()
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def inception_features(model: nn.Module, images: Sequence[np.ndarray], batch_size: int = 16,
                       size: Optional[int] = None) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of grayscale images (H, W) in [0, 1] (each zero-padded to square, resized
    bilinearly to ``size`` x ``size``, replicated to 3 channels, scaled to [-1, 1])."""
    from .data import to_square_tensor

    size = size or INCEPTION_SIZE
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([to_square_tensor(im, size) for im in images[start:start + batch_size]])   # (B, 1, S, S)
        x = (x.expand(-1, 3, -1, -1) * 2.0 - 1.0).to(dev)
        f = model(x)
        if isinstance(f, tuple):   # InceptionOutputs in train mode; eval returns a tensor
            f = f[0]
        out.append(f.double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2048))


@torch.no_grad()
def encoder_features(encoder, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Medical encoder image features (N, D) float64 of grayscale images (H, W) in [0, 1]."""
    from .data import to_square_tensor

    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        s = max(max(im.shape) for im in chunk)
        x = torch.stack([to_square_tensor(im, s) for im in chunk])                                  # (B, 1, S, S)
        out.append(encoder.image_embed(x).double().cpu())
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).numpy()
