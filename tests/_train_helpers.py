"""Helpers for the training/adapter tests: tiny seeded diffusers models and a synthetic WORK folder.

The synthetic WORK follows ``medsoft_aug.workdir`` (index.csv, slices/*.npy, masks/*.npy, masks.csv, ingest.json)
so the tests do not depend on the ingest/masks stages.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from _work_helpers import WorkWriter

TEXT_DIM = 32   # tiny "CLIP text" width (UNet cross_attention_dim)
MSC_DIM = 16    # tiny e_MSC width

SD15_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, in_channels=4, out_channels=4)


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=8, in_channels=4, out_channels=4, norm_num_groups=8)


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, sample_size=32)


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         num_train_timesteps=1000)


def fake_encode_prompt(texts: list[str]) -> torch.Tensor:
    """Deterministic stand-in text encoder: (B, 8, TEXT_DIM), seeded by the text's hash; "" -> zeros."""
    out = []
    for t in texts:
        if not t:
            out.append(torch.zeros(8, TEXT_DIM))
            continue
        seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
        out.append(torch.randn(8, TEXT_DIM, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(out)


class FakeMSC(torch.nn.Module):
    """Stand-in frozen MSC: e_MSC = tanh(W [mean(I_m), text hash features]) (B, MSC_DIM)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(1 + TEXT_DIM, MSC_DIM)

    def forward(self, images: torch.Tensor, masks: torch.Tensor, texts: list[str]) -> torch.Tensor:
        im = images * (1 - masks)                                     # I_m (Eq. 2)
        feat = torch.cat([im.mean(dim=(1, 2, 3))[:, None], fake_encode_prompt(texts).mean(1).to(im)], 1)
        return torch.tanh(self.lin(feat))


def make_work(root: Path, n_per_class: int = 4, size: int = 48, seed: int = 0,
              classes: tuple[str, ...] = ("normal", "benign", "malignant")) -> Path:
    """Write a synthetic WORK: random slices in [0,1], Gaussian-blob soft masks, train/val splits."""
    rng = np.random.default_rng(seed)
    out = WorkWriter(Path(root))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for c in classes:
        for i in range(n_per_class):
            sid = f"{c}_{i:02d}"
            h, w = size, size + 8 * (i % 2)                         # some non-square slices
            img = rng.random((h, w), dtype=np.float32)
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2)).astype(np.float32)
            m = np.pad(m, ((0, 0), (0, w - size)))
            split = "val" if i == n_per_class - 1 else "train"
            out.add(sid, c, split, img, m, patient_id=f"p{c}{i}", study_id=f"s{c}{i}",
                    description="" if c == "normal" else f"{c} lesion in the vertebral body")
    return out.close()


def tensor_checksums(module: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter/buffer's bytes, by name."""
    return {n: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for n, t in module.state_dict().items()}


@pytest.fixture(scope="module")
def one_thread():
    """Run torch single-threaded for the module: on a shared, oversubscribed CPU the tiny models are 3-10x
    faster without intra-op threads spinning for cores; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
