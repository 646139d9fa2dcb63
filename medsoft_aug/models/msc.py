"""The Medical Semantic Controller (paper Sec. 2.1, Eq. 3): e_MSC = MSC(e_t (+) e_v).

A small pre-norm transformer encoder over the concatenation of the frozen encoder's text tokens e_t (lesion
description) and visual tokens e_v (masked image I_m), with token-type embeddings and a learned output token
whose final state is projected back to the encoder's joint space D (the space of e_r, the CLIP image feature).

Shapes: e_t (B, Lt, D) with mask (B, Lt) bool (True = real token), e_v (B, Lv, D) -> e_MSC (B, D).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

TOKEN_OUT, TOKEN_TEXT, TOKEN_IMAGE = 0, 1, 2


@dataclass
class MSCConfig:
    """Hyper-parameters of the MSC (JSON-serialisable; stored in medsoft_model.json).

    embed_dim: D, the encoder's joint space (BiomedCLIP 512, tiny 64) - input token and output width.
    width: transformer width; depth: layers; heads: attention heads; mlp_ratio: FFN width / width.
    """

    embed_dim: int = 512
    width: int = 512
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    @classmethod
    def for_embed_dim(cls, embed_dim: int) -> "MSCConfig":
        """Default sizes for an encoder of joint dimension ``embed_dim`` (BiomedCLIP 512 -> 4 x 512 wide;
        small encoders get a 2-layer MSC as wide as D)."""
        if embed_dim >= 256:
            return cls(embed_dim=embed_dim, width=embed_dim, depth=4, heads=8)
        heads = 4 if embed_dim % 4 == 0 else 1
        return cls(embed_dim=embed_dim, width=embed_dim, depth=2, heads=heads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MSCConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"MSC config has unknown keys: {', '.join(unknown)}")
        return cls(**d)


class MedicalSemanticController(nn.Module):
    """Transformer encoder over [out token; e_t; e_v] -> e_MSC (B, D)."""

    def __init__(self, config: MSCConfig):
        super().__init__()
        if config.width % config.heads:
            raise ModelError(f"MSC width {config.width} is not divisible by heads {config.heads}")
        self.config = config
        d, w = config.embed_dim, config.width
        self.in_norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, w)
        self.type_embed = nn.Embedding(3, w)
        self.out_token = nn.Parameter(torch.zeros(1, 1, w))
        layer = nn.TransformerEncoderLayer(w, config.heads, int(w * config.mlp_ratio), config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, d)
        nn.init.normal_(self.out_token, std=0.02)
        nn.init.normal_(self.type_embed.weight, std=0.02)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                image_tokens: torch.Tensor) -> torch.Tensor:
        """e_t (B, Lt, D), mask (B, Lt) bool, e_v (B, Lv, D) -> e_MSC (B, D)."""
        b, lt, d = text_tokens.shape
        lv = image_tokens.shape[1]
        if d != self.config.embed_dim or image_tokens.shape[2] != d:
            raise ModelError(f"MSC expects {self.config.embed_dim}-dim tokens, got text {d} / image "
                             f"{image_tokens.shape[2]} (encoder does not match the MSC)")
        dev = self.out_proj.weight.device
        types = torch.cat([torch.full((lt,), TOKEN_TEXT, device=dev), torch.full((lv,), TOKEN_IMAGE, device=dev)])
        x = torch.cat([text_tokens, image_tokens], dim=1).to(dev, self.in_proj.weight.dtype)   # (B, Lt+Lv, D)
        x = self.in_proj(self.in_norm(x)) + self.type_embed(types)[None]                        # (B, Lt+Lv, W)
        out = self.out_token.expand(b, -1, -1) + self.type_embed.weight[TOKEN_OUT]             # (B, 1, W)
        x = torch.cat([out, x], dim=1)                                                           # (B, 1+L, W)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=dev), ~text_mask.to(dev).bool(),
                         torch.zeros(b, lv, dtype=torch.bool, device=dev)], dim=1)              # True = ignore
        x = self.encoder(x, src_key_padding_mask=pad)
        return self.out_proj(self.out_norm(x[:, 0]))                                             # (B, D)


def build_msc(config: MSCConfig, seed: int = 0) -> MedicalSemanticController:
    """A freshly initialised MSC; the init depends only on ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MedicalSemanticController(config)


def masked_image(image: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: I_m = x0 * (1 - M_b); both (B, 1, H, W) in [0, 1]."""
    return image * (1.0 - soft_mask)


def msc_inputs(encoder, images: torch.Tensor, soft_masks: torch.Tensor,
               texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen-encoder inputs of the MSC: (e_t (B, Lt, D), mask (B, Lt), e_v (B, Lv, D)) of the lesion texts and
    the masked images I_m; ``encoder`` is a :class:`~medsoft_aug.models.encoders.MedicalEncoder`."""
    e_t, mask = encoder.text_tokens(texts)
    e_v = encoder.image_tokens(masked_image(images, soft_masks))
    return e_t, mask, e_v


@torch.no_grad()
def predict_e_msc(encoder, msc: MedicalSemanticController, images: torch.Tensor, soft_masks: torch.Tensor,
                  texts: list[str]) -> torch.Tensor:
    """e_MSC (B, D) for images (B, 1, H, W) in [0, 1], soft masks M_b (B, 1, H, W) and lesion texts (inference)."""
    e_t, mask, e_v = msc_inputs(encoder, images, soft_masks, texts)
    return msc(e_t, mask, e_v)
