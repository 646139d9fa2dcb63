"""Training-free UNet feature caching (DeepCache) around the engine's denoising loop, opt-in.

DeepCache (X. Ma, G. Fang, X. Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024,
arXiv:2312.00858): the deep features of a UNet change slowly between adjacent denoising steps, so on every N-th
step ("cache step") the whole UNet runs and the output of its deep part is kept; on the N-1 steps in between only
the shallow skip branch is recomputed (``conv_in`` -> the last layer of the last up block -> ``conv_out``, branch
0) and the cached deep features stand in for the rest. The paper's abstract reports 2.3x on SD1.5 (50 steps)
for a 0.05 decline in CLIP score; quality on this project's model is measured in bench/balance_gpu.py
(bench/RESULTS.md).

The work is done by the ``DeepCache`` package's ``DeepCacheSDHelper`` (0.1.1, Apache-2.0): it wraps the forward of
every UNet block and the UNet's own forward, and takes the step index from the timestep the UNet is called
with (``pipe.scheduler.timesteps.index(t)``). It only needs an object with ``unet`` and ``scheduler``
attributes, not a diffusers pipeline, so it fits the engine, which calls the UNet directly: the decoupled
cross-attention processors (``models.adapter``) and ``added_cond_kwargs`` pass through the wrapped blocks
unchanged, and one UNet call per step (CFG as one 2B batch) is what the helper expects. Each batch gets a fresh
helper (its first step is a cache step), so rows never see another batch's features and the output of a row
does not depend on what else is in its batch beyond what the plain engine already allows.

``interval`` 1 wraps the UNet but makes every step a cache step: the output equals the plain engine's exactly
(tested). Not combined with ``--compile`` (the wrappers keep Python state per call, which TorchDynamo would
specialise on). On CUDA the helper reads the timestep with ``.item()``: one host sync per UNet call (the step
index is then looked up in a CPU copy of the timesteps).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator, Optional


@contextmanager
def deep_cache(unet, scheduler, interval: Optional[int], branch: int = 0) -> Iterator[object]:
    """Within the block, ``unet`` calls at ``scheduler.timesteps`` use DeepCache with cache ``interval`` N
    (None or 0: off, the UNet untouched) and cache branch ``branch`` (0: the shallowest skip branch); the UNet's
    modules are restored on exit, also when the block fails."""
    if not interval:
        yield None
        return
    if int(interval) < 1:
        raise ValueError(f"deepcache interval must be >= 1, got {interval}")
    from DeepCache import DeepCacheSDHelper

    had_forward = {id(m) for m in unet.modules() if "forward" in vars(m)}     # e.g. accelerate's hooks: kept
    steps = SimpleNamespace(timesteps=scheduler.timesteps.cpu())    # looked up per call: no device syncs there
    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=unet, scheduler=steps))
    helper.set_params(cache_interval=int(interval), cache_branch_id=int(branch), skip_mode="uniform")
    helper.enable()
    try:
        yield helper
    finally:
        helper.disable()
        for m in unet.modules():     # the helper restores bound methods as instance attributes: use the class's
            if id(m) not in had_forward:
                vars(m).pop("forward", None)
