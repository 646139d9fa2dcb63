"""DeepCache in the engine (generate/deepcache.py) on the tiny adapter UNet (CPU): interval 1 equals the plain
engine exactly, interval N > 1 differs, is deterministic, skips the deep layers, and leaves the UNet as it was."""
from __future__ import annotations

import numpy as np
import pytest

from medsoft_aug.generate.deepcache import deep_cache
from medsoft_aug.generate.engine import InpaintEngine, SamplingOptions

from _balance_helpers import one_thread, tiny_unet_vae
from test_engine_fastpath import _batch

STEPS = 4


@pytest.fixture(scope="module")
def engine():
    unet, vae, sched = tiny_unet_vae()
    return InpaintEngine(unet, vae, sched, resolution=64)


def _run(engine, interval, scheduler="ddim"):
    with one_thread():
        return np.stack(engine.inpaint(*_batch(), SamplingOptions(steps=STEPS, scheduler=scheduler,
                                                                  deepcache_interval=interval)))


@pytest.fixture(scope="module")
def plain(engine):
    return _run(engine, 0)


def test_interval_1_equals_the_plain_engine_exactly(engine, plain):
    np.testing.assert_array_equal(_run(engine, 1), plain)


@pytest.fixture(scope="module")
def cached3(engine):
    return _run(engine, 3)


def test_interval_3_differs(cached3, plain):
    assert np.abs(cached3 - plain).max() > 1e-4
    assert np.abs(cached3 - plain).mean() < 0.2       # still an inpainting of the same donors, not noise


def test_cached_steps_skip_the_deep_blocks_deterministically(engine, cached3):
    """On a cached step the layers inside the mid block do not run (forward hooks; the wrapped block itself is
    still called, returning its cached output)."""
    calls = []
    hooks = [engine.unet.mid_block.resnets[0].register_forward_hook(lambda *a: calls.append("mid")),
             engine.unet.conv_in.register_forward_hook(lambda *a: calls.append("in"))]
    try:
        again = _run(engine, 3)
    finally:
        for h in hooks:
            h.remove()
    assert calls.count("in") == STEPS                  # the shallow branch runs every step
    assert calls.count("mid") == 2                     # steps 0 and 3 only
    np.testing.assert_array_equal(again, cached3)


def test_unet_restored_after_use_and_after_failure(engine, plain):
    unet = engine.unet
    before = {n for n, m in unet.named_modules() if "forward" in vars(m)}
    sched = engine.scheduler
    sched.set_timesteps(STEPS)
    with pytest.raises(RuntimeError, match="boom"):
        with deep_cache(unet, sched, 2):
            assert "forward" in vars(unet.mid_block)
            raise RuntimeError("boom")
    assert {n for n, m in unet.named_modules() if "forward" in vars(m)} == before
    np.testing.assert_array_equal(_run(engine, 0), plain)


def test_works_with_a_multistep_solver(engine):
    a = _run(engine, 2, "dpmsolver++")
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
