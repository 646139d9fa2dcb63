"""--batch-size auto (generate/batching.py): the arithmetic exactly; the probe loop against a simulated CUDA
allocator (no GPU here: torch.cuda's memory calls replaced by a model of a device with a fixed capacity, whose
allocations fail with CUDA's own out-of-memory message); the engine step the probe measures, run on the CPU."""
from __future__ import annotations

import math

import pytest
import torch

from medsoft_aug.generate import batching
from medsoft_aug.generate.batching import (CPU_BATCH_SIZE, choose_batch_size, fixed_batch_size, next_probe,
                                           parse_batch_size, probe_batch_size)

from _cuda_sim import SimulatedAllocator

GiB = 2**30


def test_choose_interpolates_between_fit_and_no_fit():
    # budget = 100 * 0.9 = 90; 8 -> 50, 16 -> 110: slope 7.5 per row, 50 + 5 * 7.5 = 87.5 <= 90 < 95
    assert choose_batch_size({1: 15, 2: 20, 4: 30, 8: 50, 16: 110}, 100, margin=0.1) == 13
    # exactly on the budget fits; one byte over does not
    assert choose_batch_size({4: 90, 8: 130}, 100, 0.1) == 4


def test_choose_exact_cases():
    assert choose_batch_size({4: 90.5, 8: 130}, 100, 0.1) == 1                  # nothing fits: 1
    assert choose_batch_size({1: 10, 2: 20}, 100, 0.1, limit=2) == 2             # limit reached, all fit
    assert choose_batch_size({1: 10, 2: 20, 4: 40, 8: 80}, 100, 0.1, limit=6) == 6   # never above the limit
    # out of memory at 16: the slope of the two largest that fitted (8 -> 4: 10/row): 80 + 1 * 10 = 90
    assert choose_batch_size({4: 40, 8: 80, 16: math.inf}, 100, 0.1) == 9
    assert choose_batch_size({8: 80, 16: math.inf}, 100, 0.1) == 8             # one point: no slope, no guess
    assert choose_batch_size({8: 80, 9: 200}, 100, 0.1) == 8                   # never reaches a size that failed
    # probing stopped because the line predicted 16 would not fit: extrapolated along it, below 2 x 8
    assert choose_batch_size({4: 40, 8: 70}, 100, 0.1) == 10                    # 70 + 2 * 7.5 = 85
    assert choose_batch_size({4: 10, 8: 20}, 100, 0.1) == 15                    # capped below 16
    with pytest.raises(ValueError):
        choose_batch_size({}, 100)


def test_next_probe_doubles_and_stops():
    assert next_probe({}, 100) == 1
    assert next_probe({1: 10}, 100) == 2
    assert next_probe({1: 10, 2: 20}, 100) == 4
    assert next_probe({1: 10, 2: 20, 4: 40}, 100) == 8             # the line predicts 80 <= 90
    assert next_probe({1: 10, 2: 20, 4: 40, 8: 80}, 100) is None    # ... and 160 at 16: not run
    assert next_probe({1: 10, 2: 20, 4: 40, 8: 95}, 100) is None    # 95 > 90: stop
    assert next_probe({1: 10, 2: 20}, 100, limit=3) == 3
    assert next_probe({1: 10, 2: 20, 3: 30}, 100, limit=3) is None
    assert next_probe({1: 5, 2: math.inf}, 100) is None


def test_parse_and_fixed():
    assert parse_batch_size("auto") == "auto" and parse_batch_size(" AUTO ") == "auto"
    assert parse_batch_size("12") == 12 and parse_batch_size(3) == 3
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(ValueError):
            parse_batch_size(bad)
    assert fixed_batch_size("auto") == {"size": CPU_BATCH_SIZE, "how": "cpu default"}
    assert fixed_batch_size(5) == {"size": 5, "how": "given"}


class FakeCuda(SimulatedAllocator):
    """A device of ``total`` bytes holding ``weights``; each row of a step needs ``per_row`` bytes at its peak."""

    def __init__(self, total, weights, per_row):
        super().__init__(total, weights, per_row)
        self.peak = 0
        self.steps: list[int] = []

    def step(self, size):
        self.steps.append(size)
        self.charge(size)


def test_probe_loop_on_a_simulated_device(monkeypatch):
    dev = FakeCuda(total=80 * GiB, weights=4 * GiB, per_row=int(1.5 * GiB))
    dev.install(monkeypatch)
    rec = probe_batch_size(dev.step, "cuda", limit=256)
    # budget 72 GiB: 4 + 1.5 n <= 72 -> n = 45 (45 * 1.5 + 4 = 71.5)
    assert rec["size"] == 45 and rec["how"] == "probe"
    assert dev.steps == [1, 2, 4, 8, 16, 32, 45]          # 64 predicted not to fit: never run; 45 confirmed
    assert rec["peak_bytes"]["32"] == 4 * GiB + 32 * int(1.5 * GiB)
    assert rec["capacity_bytes"] == 80 * GiB


def test_probe_survives_an_out_of_memory_and_accelerate_lowers_the_choice(monkeypatch):
    # the line says 64 fits (a 72 GiB budget) but the device is smaller than mem_get_info claims: 64 fails,
    # the interpolated choice fails too, and accelerate's find_executable_batch_size lowers it by 10%
    dev = FakeCuda(total=80 * GiB, weights=4 * GiB, per_row=GiB)
    dev.install(monkeypatch)
    real_total = 4 * GiB + 40 * GiB

    def step(size):
        dev.steps.append(size)
        if 4 * GiB + size * GiB > real_total:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        dev.peak = max(dev.peak, 4 * GiB + size * GiB)

    rec = probe_batch_size(step, "cuda", limit=256)
    assert rec["peak_bytes"]["64"] is None                    # recorded as "did not fit"
    assert dev.steps[:7] == [1, 2, 4, 8, 16, 32, 64]
    # interpolated 63 (slope of 16 -> 32), then accelerate: 63 -> 56 -> 50 -> 45 -> 40 (x 0.9 per failure)
    assert dev.steps[7:] == [63, 56, 50, 45, 40] and rec["size"] == 40


def test_probe_step_runs_the_engine_on_cpu(tiny_model_dir):
    """The step --batch-size auto measures is the real generation path; on the CPU auto is the fixed default."""
    from medsoft_aug.generate.runner import Generator

    gen = Generator(tiny_model_dir, device="cpu", batch_size="auto", steps=3)
    assert gen.batch_size == CPU_BATCH_SIZE and gen.batch == {"size": CPU_BATCH_SIZE, "how": "cpu default"}
    calls = []
    gen.engine.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    gen.probe_step(3)
    assert calls == [6]                                        # one CFG step on 2 x 3 rows
    assert batching.MARGIN == 0.10
