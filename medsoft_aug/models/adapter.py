"""Decoupled cross-attention (paper Eq. 5) on every cross-attention layer of a diffusers UNet.

    Z_new = softmax(Q K^T / sqrt(d)) V + gamma * softmax(Q K'^T / sqrt(d)) V',   K' = e_MSC W'_k, V' = e_MSC W'_v

implemented by diffusers' ``IPAdapterAttnProcessor2_0`` (``scale`` = gamma, ``to_k_ip``/``to_v_ip`` = W'_k/W'_v,
``cross_attention_dim`` = the MSC width D, one e_MSC token per sample). The UNet gets an identity
``encoder_hid_proj`` (``MultiIPAdapterImageProjection``) so the processors read e_MSC directly; call the UNet with
``added_cond_kwargs=adapter_kwargs(e_msc)``. The base weights are untouched: the adapter lives in the processors.

Initialisation: W'_v is zero, so a freshly installed adapter leaves the base model's output unchanged (as a
zero-initialised ControlNet/LoRA branch does); W'_k keeps torch's default init, drawn from ``seed`` when given
(training passes one derived from the run seed, so a run resumed in a fresh process starts from the same W'_k; the
global RNG is left untouched). Note: with a single e_MSC token the
second softmax is over one key and is identically 1, so the adapter branch equals ``gamma * e_MSC W'_v`` for every
query and W'_k receives no gradient (it changes only through AdamW's weight decay). That is Eq. 5 with e_MSC (B, D)
as the paper writes it; a multi-token e_MSC would make W'_k matter.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from ..errors import ModelError

log = logging.getLogger("medsoft_aug.models.adapter")

ADAPTER_KEYS = (".to_k_ip.", ".to_v_ip.")


class _Identity(nn.Module):
    """Identity image projection: e_MSC (B*1, D) -> (B*1, D) unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _cross_attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Map processor name (``...attn2.processor``) -> Attention module for every cross-attention layer."""
    from diffusers.models.attention_processor import Attention

    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            out[f"{name}.processor"] = module
    return out


def install_adapter(unet: nn.Module, msc_dim: int, gamma: float = 1.0, dtype: torch.dtype = torch.float32,
                    seed: Optional[int] = None) -> int:
    """Install decoupled cross-attention processors on every cross-attention layer of ``unet`` (in place).

    Args:
        unet: a ``UNet2DConditionModel`` (any device, including ``meta``).
        msc_dim: D, the width of e_MSC (the MSC / BiomedCLIP embedding size; 512 for BiomedCLIP).
        gamma: weight of the medical-semantic attention term (Eq. 5), >= 0.
        dtype: dtype of the new W'_k/W'_v (float32 for training; the inference dtype when loading).
        seed: seed of W'_k's initialisation (None: the global RNG, as torch does; loading overwrites it anyway).

    Returns the number of decoupled layers (16 on SD1.5). Self-attention layers keep their processors.
    Only the adapter tensors are left trainable by this function if the caller froze the UNet before.
    """
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    if msc_dim <= 0:
        raise ModelError(f"adapter: msc_dim must be positive, got {msc_dim}")
    if gamma < 0:
        raise ModelError(f"adapter: gamma must be >= 0, got {gamma}")
    cross = _cross_attention_modules(unet)
    if not cross:
        raise ModelError("adapter: the UNet has no cross-attention layers")
    device = next(unet.parameters()).device
    procs = dict(unet.attn_processors)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(int(seed))
        for name, attn in cross.items():
            proc = IPAdapterAttnProcessor2_0(hidden_size=attn.to_k.out_features, cross_attention_dim=msc_dim,
                                             scale=float(gamma), num_tokens=(1,))
            for lin in proc.to_v_ip:
                nn.init.zeros_(lin.weight)
            procs[name] = proc.to(device=device, dtype=dtype)
    unet.set_attn_processor(procs)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([_Identity()])
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    log.debug("installed %d decoupled cross-attention layers (D=%d, gamma=%g)", len(cross), msc_dim, gamma)
    return len(cross)


def adapter_processors(unet: nn.Module) -> dict[str, nn.Module]:
    """The installed decoupled processors by name (empty when no adapter is installed)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    return {k: p for k, p in unet.attn_processors.items() if isinstance(p, IPAdapterAttnProcessor2_0)}


def set_gamma(unet: nn.Module, gamma: float) -> None:
    """Change gamma (the scale of Eq. 5's second term) on every installed decoupled layer."""
    procs = adapter_processors(unet)
    if not procs:
        raise ModelError("adapter: no decoupled cross-attention layers installed")
    for p in procs.values():
        p.scale = [float(gamma)] * len(p.num_tokens)


def adapter_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """W'_k and W'_v of every decoupled layer (the parameters trained by default)."""
    return [p for n, p in unet.named_parameters() if any(k in n for k in ADAPTER_KEYS)]


def adapter_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """W'_k/W'_v tensors keyed by their UNet parameter names (``...attn2.processor.to_k_ip.0.weight``), detached,
    contiguous, on CPU - ready for ``safetensors.torch.save_file``."""
    state = {n: t.detach().to("cpu").contiguous() for n, t in unet.state_dict().items()
             if any(k in n for k in ADAPTER_KEYS)}
    if not state:
        raise ModelError("adapter: no decoupled cross-attention layers installed")
    return state


def load_adapter_state(unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy W'_k/W'_v from ``state`` into an installed adapter; the key set and shapes must match exactly."""
    own = {n: t for n, t in unet.state_dict().items() if any(k in n for k in ADAPTER_KEYS)}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ModelError(f"adapter weights do not fit this UNet: {len(missing)} missing, {len(extra)} unexpected "
                         f"tensors (e.g. {(missing or extra)[0]})")
    for n, t in state.items():
        if tuple(t.shape) != tuple(own[n].shape):
            raise ModelError(f"adapter weight {n} has shape {tuple(t.shape)}, the UNet needs {tuple(own[n].shape)}")
    with torch.no_grad():
        for n, t in own.items():
            t.copy_(state[n].to(device=t.device, dtype=t.dtype))


def adapter_kwargs(e_msc: torch.Tensor) -> dict:
    """UNet keyword arguments feeding e_MSC (B, D) to the decoupled layers: ``added_cond_kwargs``."""
    if e_msc.ndim != 2:
        raise ValueError(f"e_MSC must be (B, D), got shape {tuple(e_msc.shape)}")
    return {"added_cond_kwargs": {"image_embeds": [e_msc[:, None, :]]}}  # (B, 1 token, D)
