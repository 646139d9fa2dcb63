"""ResNet-18 classifier for the downstream evaluation: model (1-channel input), classical augmentation,
a seeded training loop that records which samples it was fed, and prediction.

All randomness (initialisation, draw order, augmentation) comes from the run seed through explicit
``torch.Generator`` objects, so a run is reproducible given (seed, method, data).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

# Grayscale ImageNet statistics (mean and std of the RGB means): inputs are normalised with them, which suits
# ImageNet-pretrained weights and is harmless from scratch.
GRAY_MEAN, GRAY_STD = 0.449, 0.226


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "cpu"
    weights: Optional[Path] = None       # local ResNet-18 weights (safetensors, or .pth loaded weights_only)


@dataclass
class TrainRecord:
    fed_ids: set[str] = field(default_factory=set)   # every sample id actually put in a training batch
    n_draws: int = 0                                  # samples fed, summed over epochs
    final_loss: float = float("nan")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load weights from ``.safetensors`` or a torch file with ``weights_only=True`` (never arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse means the file is unusable
        raise InputError(f"weights file {path.name} cannot be read ({type(e).__name__})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"weights file {path.name} is not a state dict of tensors")
    return sd


def build_resnet18(num_classes: int, weights: Optional[Path] = None) -> nn.Module:
    """torchvision ResNet-18 with a 1-channel stem. From ``weights`` (ImageNet 3-channel or 1-channel), conv1 is
    adapted by summing over input channels and the final ``fc`` is re-initialised when its shape differs."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights is None:
        return model
    sd = dict(load_state_dict_file(weights))
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4 and w.shape[1] == 3:
        sd["conv1.weight"] = w.sum(dim=1, keepdim=True)
    own = model.state_dict()
    for k in ("fc.weight", "fc.bias"):
        if k in sd and sd[k].shape != own[k].shape:
            del sd[k]
    bad = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd and not k.startswith("fc.")]
    if bad or missing or not any(k in own for k in sd):
        raise InputError(f"weights file {Path(weights).name} is not a ResNet-18 state dict "
                         f"({len(missing)} missing, {len(bad)} mismatched tensors)")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return model


@dataclass(frozen=True)
class ClassicalAugment:
    """The ``classical`` baseline: anatomy-preserving augmentation a user would actually run on sagittal slices
    (no flips: a left-right flip swaps anterior and posterior). Each training draw gets its own parameters,
    drawn uniformly in these ranges (gamma log-uniformly) from the run's seeded generator; the operations are
    torchvision's (``transforms.v2.functional``): affine (bilinear, zero fill), gamma, contrast, brightness,
    Gaussian noise. Recorded in ``metrics.json`` under ``classical.augmentation``."""
    rotation_deg: float = 10.0                  # +- degrees
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05                     # +- fraction of the image size, each axis
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.9, 1.1)  # torchvision contrast factor (blend with the image mean)
    brightness: tuple[float, float] = (0.9, 1.1)  # torchvision brightness factor (multiplicative)
    noise_sigma: tuple[float, float] = (0.0, 0.03)  # std of additive Gaussian noise, intensity units [0, 1]
    flips: bool = False                         # never: recorded so the report can say so

    def to_dict(self) -> dict:
        return {"library": "torchvision.transforms.v2.functional", "order": [
            "affine", "adjust_gamma", "adjust_contrast", "adjust_brightness", "gaussian_noise", "clamp [0, 1]"],
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}}


CLASSICAL = ClassicalAugment()


def augment(x: torch.Tensor, g: torch.Generator, aug: ClassicalAugment = CLASSICAL) -> torch.Tensor:
    """Classical augmentation of a batch (B, 1, H, W) in [0, 1] with per-sample parameters drawn on the CPU from
    ``g`` (the noise through a seed drawn from ``g``), so the result depends only on ``g``'s state. Returns (B, 1, H, W) in [0, 1]."""
    from torchvision.transforms.v2 import functional as TF

    b, _, h, w = x.shape
    u = lambda lo, hi: (lo + (hi - lo) * torch.rand(b, generator=g)).tolist()  # noqa: E731
    ang, scale = u(-aug.rotation_deg, aug.rotation_deg), u(*aug.scale)
    tx, ty = u(-aug.translate * w, aug.translate * w), u(-aug.translate * h, aug.translate * h)
    gamma = [math.exp(v) for v in u(math.log(aug.gamma[0]), math.log(aug.gamma[1]))]
    contrast, bright, sigma = u(*aug.contrast), u(*aug.brightness), u(*aug.noise_sigma)
    noise_seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))
    out = []
    with torch.random.fork_rng(devices=[]):       # gaussian_noise draws from torch's global RNG: seed it from g
        torch.manual_seed(noise_seed)
        for i in range(b):
            xi = TF.affine(x[i], angle=ang[i], translate=[tx[i], ty[i]], scale=scale[i], shear=[0.0, 0.0],
                           interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
            xi = TF.adjust_gamma(xi.clamp(0, 1), gamma[i])
            xi = TF.adjust_brightness(TF.adjust_contrast(xi, contrast[i]), bright[i])
            out.append(TF.gaussian_noise(xi, mean=0.0, sigma=sigma[i], clip=True))
    return torch.stack(out).clamp(0, 1)


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (restored afterwards) and use deterministic algorithms inside the block."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused when this torch build supports it for the device (about 5x faster on CPU)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - GRAY_MEAN) / GRAY_STD


def train_model(images: torch.Tensor, targets: torch.Tensor, ids: list[str], draws: list[int], num_classes: int,
                cfg: TrainConfig, seed: int, augment_draws: bool = False,
                on_step: Optional[Callable[[], None]] = None) -> tuple[nn.Module, TrainRecord]:
    """Train a ResNet-18 from ``draws`` (indices into ``images`` (N, 1, R, R) / ``targets`` (N,) / ``ids``; an
    index may repeat, e.g. oversampling) for ``cfg.epochs`` epochs, reshuffling the draws every epoch.

    Returns the model (eval mode) and a :class:`TrainRecord` of the sample ids actually fed to it.
    """
    rec = TrainRecord()
    draws_t = torch.as_tensor(draws, dtype=torch.long)
    if draws_t.numel() < 2:
        raise InputError(f"need at least 2 training samples, got {draws_t.numel()}")
    dev = torch.device(cfg.device)
    with deterministic(seed):
        model = build_resnet18(num_classes, cfg.weights).to(dev)
        g = torch.Generator().manual_seed(seed)
        opt = _adamw(model, cfg)
        steps_per_epoch = sum(1 for s in range(0, draws_t.numel(), cfg.batch_size)
                              if min(cfg.batch_size, draws_t.numel() - s) >= 2)
        # Cosine decay to zero over the run: the last-epoch model (the one evaluated) is much less seed-dependent
        # than with a constant learning rate.
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
        model.train()
        for _ in range(cfg.epochs):
            order = draws_t[torch.randperm(draws_t.numel(), generator=g)]
            for start in range(0, order.numel(), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                if idx.numel() < 2:      # BatchNorm needs two samples; a lone leftover is skipped
                    continue
                x = images[idx]
                if augment_draws:
                    x = augment(x, g)
                x, y = _normalize(x).to(dev), targets[idx].to(dev)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                rec.fed_ids.update(ids[i] for i in idx.tolist())
                rec.n_draws += idx.numel()
                rec.final_loss = float(loss.detach())
            if on_step is not None:
                on_step()
    model.eval()
    return model, rec


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: str, batch_size: int = 64) -> torch.Tensor:
    """Class probabilities (N, K) float64 on the CPU for images (N, 1, R, R) in [0, 1]."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = _normalize(images[start:start + batch_size]).to(device)
        out.append(torch.softmax(model(x).float(), dim=1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)
