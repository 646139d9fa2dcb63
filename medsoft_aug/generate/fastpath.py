"""Engine fast-path options: weight dtype, channels_last memory format, ``torch.compile`` of the UNet, SDPA.

All are opt-in except SDPA, which diffusers uses by default (``AttnProcessor2_0`` on self-attention,
``IPAdapterAttnProcessor2_0`` on the 16 decoupled layers: both call ``F.scaled_dot_product_attention``);
:func:`uses_sdpa` checks it. Each option is tested on the CPU against the eager fp32 engine (tiny model):
channels_last equal within 1e-5, bf16 within the tolerance stated in the tests, compile equal within 1e-5.
Only the UNet is compiled (it runs 2 x steps times per batch; the VAE twice): a batch of the same size reuses the
compiled graph, a new batch size (the last, smaller batch of a run) compiles once more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

DTYPES = ("fp32", "fp16", "bf16")     # torch is imported only when a model is loaded (balance --dry-run stays light)


@dataclass(frozen=True)
class FastPath:
    dtype: str = "auto"          # auto (CUDA: fp16, CPU: fp32) | fp32 | fp16 | bf16: UNet, VAE and adapter weights
    channels_last: bool = False  # UNet and VAE in torch.channels_last (NHWC convolutions, faster on tensor cores)
    compile: bool = False        # torch.compile the UNet in place (nn.Module.compile)
    compile_backend: str = "inductor"

    def check(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "channels_last": self.channels_last, "compile": self.compile}


def weight_dtype(fast: Optional[FastPath], default: "torch.dtype") -> "torch.dtype":
    """The dtype to load weights in: ``fast.dtype`` unless ``auto`` (then ``default``, from the device)."""
    import torch

    if fast is None or fast.dtype == "auto":
        return default
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[fast.dtype]


def uses_sdpa(unet) -> bool:
    """True when every attention processor of ``unet`` is one of diffusers' SDPA (``*2_0``) processors."""
    return all(type(p).__name__.endswith("2_0") for p in unet.attn_processors.values())


def apply_fast_path(unet, vae, fast: Optional[FastPath]) -> None:
    """Apply ``fast``'s memory format and compilation to ``unet`` and ``vae`` in place (dtype is set at load)."""
    import torch

    if fast is None:
        return
    fast.check()
    if fast.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if fast.compile:
        unet.compile(backend=fast.compile_backend)
