"""A simulated CUDA allocator for the ``--batch-size auto`` probes (balance and train): no GPU exists here."""
from __future__ import annotations

import torch


class SimulatedAllocator:
    """A device of ``total`` bytes holding ``weights``; a step on ``rows`` rows peaks at weights + rows x
    ``per_row`` (``charge``), or runs out of memory like CUDA. ``install`` puts it behind ``torch.cuda``'s memory
    functions and accelerate's cache clearing."""

    def __init__(self, total, weights, per_row):
        self.total, self.weights, self.per_row = total, weights, per_row
        self.peak = weights

    def charge(self, rows: int) -> None:
        need = self.weights + rows * self.per_row
        if need > self.total:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need} bytes")
        self.peak = max(self.peak, need)

    def install(self, monkeypatch):
        c = torch.cuda
        monkeypatch.setattr(c, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(c, "empty_cache", lambda *a, **k: None)
        monkeypatch.setattr(c, "mem_get_info", lambda *a, **k: (self.total - self.weights, self.total))
        monkeypatch.setattr(c, "memory_reserved", lambda *a, **k: self.weights)
        monkeypatch.setattr(c, "reset_peak_memory_stats", lambda *a, **k: setattr(self, "peak", self.weights))
        monkeypatch.setattr(c, "max_memory_allocated", lambda *a, **k: self.peak)
        import accelerate.utils.memory as am

        monkeypatch.setattr(am, "clear_device_cache", lambda *a, **k: None)
