"""Helpers for the models/MSC tests: cached tiny encoder, synthetic MSC batches, checksums."""
from __future__ import annotations

import functools
import hashlib

import pytest
import torch

TEXTS = ["benign hemangioma, bright lesion in the vertebral body",
         "malignant metastasis, dark destructive lesion",
         "multiple myeloma lesion",
         "typical vertebral hemangioma with coarse trabecular pattern"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One torch thread per test module: on the shared 2-core machine, intra-op threads spin against other
    processes and a tiny model runs ~10x slower with 2 threads than with 1. Import it into a test module to use."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def tiny_encoder():
    """The tiny encoder, built once per test session (it is frozen; tests must not modify it)."""
    from medsoft_aug.models.encoders import load_encoder

    return load_encoder("tiny")


def msc_batch(n: int = 4, size: int = 48, seed: int = 0, width: int | None = None) -> dict:
    """A batch as train.data.SliceDataset gives it: image/soft_mask (n, 1, H, W) in [0, 1], texts, ids."""
    g = torch.Generator().manual_seed(seed)
    w = width or size
    image = torch.rand(n, 1, size, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    centres = torch.rand(n, 2, generator=g) * torch.tensor([size / 2, w / 2]) + torch.tensor([size / 4, w / 4])
    masks = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
                         for cy, cx in centres])[:, None]
    return {"image": image, "soft_mask": masks, "text": [TEXTS[i % len(TEXTS)] for i in range(n)],
            "label": ["benign" if i % 2 == 0 else "malignant" for i in range(n)],
            "sample_id": [f"s{seed}_{i}" for i in range(n)], "index": torch.arange(n)}


def checksum(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
