"""``--batch-size auto`` for every command that has one: the largest batch that fits the device, measured.

Device-independent parts shared by ``balance`` (``generate/batching.py``: one engine step) and ``train``
(``train/autobatch.py``: one training step); each caller only says what one step at a batch size is.

On CUDA (:func:`probe_batch_size`): ``step(size)`` runs at batch sizes 1, 2, 4, ... and
``torch.cuda.max_memory_allocated`` is read after each (weights included: the peak is absolute). The memory the
process may use (:func:`cuda_capacity`) is what it has reserved plus what the device has free
(``torch.cuda.mem_get_info``); a size fits when its peak stays below that minus a safety margin (default 10%, for
allocator fragmentation). Probing stops at the first size that does not fit (or runs out of memory: accelerate's
``should_reduce_batch_size`` recognises the error), at the next size whose peak a straight line through the last
two predicts not to fit, or at ``limit``. :func:`choose_batch_size` then interpolates between the largest size that
fitted and the smallest that did not (peak memory is close to linear in the batch size), and the choice is run once
more through accelerate's ``find_executable_batch_size`` (which lowers it by 10% on an out-of-memory error).

Elsewhere (CPU, MPS) each command uses a fixed, documented default (:func:`fixed_batch_size`).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger("medsoft_aug.batchsize")

MARGIN = 0.10               # fraction of the usable device memory kept free
MAX_BATCH = 256             # never probe beyond this batch size


def parse_batch_size(value: int | str) -> int | str:
    """``--batch-size``: ``auto`` or an integer >= 1 (ValueError otherwise)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    size = int(str(value).strip())
    if size < 1:
        raise ValueError(f"batch size must be >= 1 or auto, got {value}")
    return size


def batch_size_error(value: Any) -> Optional[str]:
    """The one ``Error:`` message for a bad ``--batch-size`` value, or None when it parses."""
    try:
        parse_batch_size(value)
    except (TypeError, ValueError):
        return f"--batch-size must be an integer >= 1 or auto, got {value!r}"
    return None


def fixed_batch_size(requested: int | str, default: int) -> dict[str, Any]:
    """The batch record without probing: a given size, or ``auto`` off CUDA (the command's ``default``)."""
    if parse_batch_size(requested) == "auto":
        return {"size": int(default), "how": "cpu default"}
    return {"size": int(parse_batch_size(requested)), "how": "given"}


def choose_batch_size(peaks: Mapping[int, float], capacity: float, margin: float = MARGIN,
                      limit: int = MAX_BATCH) -> int:
    """The batch size to use, from measured absolute peaks (bytes; ``math.inf``: ran out of memory) per probed
    size and the bytes the process may use (``capacity``).

    ``budget = capacity * (1 - margin)``. The answer is the largest probed size whose peak <= budget, raised by
    linear interpolation towards the smallest probed size above it that did not fit (through those two points,
    or, when that one ran out of memory, along the slope of the two largest sizes that fitted), never reaching
    that size; when probing stopped on a prediction (no size above failed), along the slope of the two largest
    up to below twice the largest; never above ``limit``. 1 when nothing fitted (the run will then say what it could not
    allocate).
    """
    if not peaks:
        raise ValueError("no batch size was probed")
    budget = float(capacity) * (1.0 - float(margin))
    fit = sorted(s for s, p in peaks.items() if p <= budget)
    if not fit:
        return 1
    best = fit[-1]
    over = sorted(s for s, p in peaks.items() if s > best and p > budget)
    s_hi = over[0] if over else 2 * best            # not probed: the line predicted it would not fit
    if over and math.isfinite(peaks[s_hi]):
        slope = (peaks[s_hi] - peaks[best]) / (s_hi - best)
    elif len(fit) >= 2:
        slope = (peaks[best] - peaks[fit[-2]]) / (best - fit[-2])
    else:
        slope = 0.0
    if slope > 0:
        best = min(s_hi - 1, best + int((budget - peaks[best]) // slope))
    return max(1, min(int(limit), best))


def next_probe(peaks: Mapping[int, float], capacity: float, margin: float = MARGIN,
               limit: int = MAX_BATCH) -> Optional[int]:
    """The next size to probe (doubling from 1), or None when probing is done: a probed size did not fit, the
    line through the last two peaks predicts the next size does not fit, or ``limit`` was probed."""
    budget = float(capacity) * (1.0 - float(margin))
    if not peaks:
        return 1
    sizes = sorted(peaks)
    last = sizes[-1]
    if peaks[last] > budget or last >= limit:
        return None
    nxt = min(int(limit), 2 * last)
    if len(sizes) >= 2:
        prev = sizes[-2]
        predicted = peaks[last] + (peaks[last] - peaks[prev]) / (last - prev) * (nxt - last)
        if predicted > budget:
            return None
    return nxt


def cuda_capacity(device: Any) -> float:
    """Bytes this process may use on the CUDA ``device``: what it has reserved plus what the device has free."""
    import torch

    torch.cuda.synchronize(device)
    free, _total = torch.cuda.mem_get_info(device)
    return float(free + torch.cuda.memory_reserved(device))


def probe_batch_size(step: Callable[[int], None], device: Any, limit: int = MAX_BATCH,
                     margin: float = MARGIN) -> dict[str, Any]:
    """CUDA: measure ``step(size)`` (one step of the command's real work at that batch size) at the sizes
    :func:`next_probe` names, choose (:func:`choose_batch_size`), confirm with accelerate's
    ``find_executable_batch_size``. Returns the batch record: ``size``, ``how`` ("probe"), ``margin``,
    ``capacity_bytes``, ``peak_bytes`` per probed size (None: ran out of memory)."""
    import torch
    from accelerate.utils import find_executable_batch_size

    capacity = cuda_capacity(device)
    peaks: dict[int, float] = {}
    while (size := next_probe(peaks, capacity, margin, limit)) is not None:
        peaks[size] = _peak(step, size, device)
    chosen = choose_batch_size(peaks, capacity, margin, limit)

    @find_executable_batch_size(starting_batch_size=chosen)
    def confirm(size: int) -> int:
        step(size)
        torch.cuda.synchronize(device)
        return size

    size = confirm()
    torch.cuda.empty_cache()
    log.info("--batch-size auto: %d (probed %s, %.1f GiB usable)", size,
             {s: round(p / 2**30, 2) for s, p in peaks.items()}, capacity / 2**30)
    return {"size": int(size), "how": "probe", "margin": margin, "capacity_bytes": int(capacity),
            "peak_bytes": {str(s): (None if not math.isfinite(p) else int(p)) for s, p in peaks.items()}}


def _peak(step: Callable[[int], None], size: int, device: Any) -> float:
    """Absolute peak of allocated CUDA memory during ``step(size)`` (bytes; inf when it ran out of memory)."""
    import torch
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step(size)
        torch.cuda.synchronize(device)
    except RuntimeError as e:
        if not should_reduce_batch_size(e):
            raise
        clear_device_cache(garbage_collection=True)
        return math.inf
    return float(torch.cuda.max_memory_allocated(device))
