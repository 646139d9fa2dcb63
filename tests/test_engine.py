"""Engine: batch invariance, exact background, the Eq. 7 blend limits, determinism (tiny models, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medsoft_aug.generate.engine import InpaintEngine, SamplingOptions

from _balance_helpers import MSC_DIM, TEXT_DIM, one_thread, tiny_unet_vae


@pytest.fixture(scope="module")
def engine():
    unet, vae, sched = tiny_unet_vae()
    with one_thread():
        yield InpaintEngine(unet, vae, sched, resolution=64)


def _batch(n, rng, shape=(50, 44)):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    donors, masks = [], []
    for _ in range(n):
        donors.append(rng.uniform(0.1, 0.9, size=shape).astype(np.float32))
        cy, cx, r = rng.integers(15, 35), rng.integers(15, 30), rng.uniform(4, 8)
        m = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1).astype(np.float32)   # soft disc, zero outside
        masks.append(m)
    text = torch.from_numpy(rng.standard_normal((n, 7, TEXT_DIM)).astype(np.float32))
    unc = torch.from_numpy(rng.standard_normal((1, 7, TEXT_DIM)).astype(np.float32))
    e = torch.from_numpy(rng.standard_normal((n, MSC_DIM)).astype(np.float32))
    seeds = [int(s) for s in rng.integers(0, 2**62, size=n)]
    return donors, masks, text, unc, e, seeds


def test_same_sample_alone_or_in_a_batch_of_8(engine):
    # eta > 0 so the per-step DDIM variance noise is covered too.
    rng = np.random.default_rng(11)
    donors, masks, text, unc, e, seeds = _batch(8, rng)
    opts = SamplingOptions(steps=2, guidance=7.5, eta=0.7)
    full = engine.inpaint(donors, masks, text, unc, e, seeds, opts)
    for i in (0, 5):
        alone = engine.inpaint(donors[i:i + 1], masks[i:i + 1], text[i:i + 1], unc, e[i:i + 1], seeds[i:i + 1],
                               opts)[0]
        np.testing.assert_allclose(alone, full[i], atol=2e-5)


def test_pixels_outside_the_mask_are_the_donors_exactly(engine):
    rng = np.random.default_rng(3)
    donors, masks, text, unc, e, seeds = _batch(3, rng)
    out = engine.inpaint(donors, masks, text, unc, e, seeds, SamplingOptions(steps=3))
    for d, m, o in zip(donors, masks, out):
        assert o.shape == d.shape and o.dtype == np.float32
        zero = m == 0
        assert zero.sum() > 100
        assert np.array_equal(o[zero], d[zero])
        inside = m > 0.9
        assert np.abs(o[inside] - d[inside]).mean() > 1e-3        # something was inpainted


def test_seed_and_conditioning_change_the_lesion(engine):
    rng = np.random.default_rng(4)
    donors, masks, text, unc, e, seeds = _batch(1, rng)
    opts = SamplingOptions(steps=3)
    a = engine.inpaint(donors, masks, text, unc, e, seeds, opts)[0]
    b = engine.inpaint(donors, masks, text, unc, e, seeds, opts)[0]
    c = engine.inpaint(donors, masks, text, unc, e, [seeds[0] + 1], opts)[0]
    d = engine.inpaint(donors, masks, text, unc, e * -3.0, seeds, opts)[0]
    assert np.array_equal(a, b)
    inside = masks[0] > 0.5
    assert np.abs(a - c)[inside].max() > 1e-4
    assert np.abs(a - d)[inside].max() > 1e-4                 # e_MSC reaches the UNet through W'_k/W'_v


def test_blend_limits_match_the_vae_and_ignore_the_donor_under_a_full_mask(engine):
    # Eq. 7 with m_b = 0 everywhere: the final latent is z_m = VAE(x0) itself (no noise left after the last step).
    rng = np.random.default_rng(5)
    x0 = torch.from_numpy(rng.uniform(0.1, 0.9, size=(2, 1, 64, 64)).astype(np.float32))
    text = torch.randn(2, 7, TEXT_DIM)
    unc = torch.randn(1, 7, TEXT_DIM)
    e = torch.randn(2, MSC_DIM)
    opts = SamplingOptions(steps=2, eta=0.5)
    out0 = engine.denoise(x0, torch.zeros_like(x0), text, unc, e, [1, 2], opts)
    ref = engine.decode(engine.encode(x0))
    torch.testing.assert_close(out0, ref, atol=1e-5, rtol=0)
    # With m_b = 1 everywhere the donor is never seen: two different donors give the same output.
    ones = torch.ones_like(x0)
    o1 = engine.denoise(x0, ones, text, unc, e, [1, 2], opts)
    o2 = engine.denoise(torch.rand_like(x0), ones, text, unc, e, [1, 2], opts)
    torch.testing.assert_close(o1, o2, atol=1e-6, rtol=0)


def test_blend_source_option(engine):
    rng = np.random.default_rng(8)
    x0 = torch.from_numpy(rng.uniform(0.1, 0.9, size=(1, 1, 64, 64)).astype(np.float32))
    soft = torch.zeros_like(x0)
    soft[..., 16:48, 16:48] = 0.5
    text, unc, e = torch.randn(1, 7, TEXT_DIM), torch.randn(1, 7, TEXT_DIM), torch.randn(1, MSC_DIM)
    run = lambda m, b: engine.denoise(x0, m, text, unc, e, [3], SamplingOptions(steps=2, blend=b))  # noqa: E731
    torch.testing.assert_close(run(torch.zeros_like(x0), "masked"), run(torch.zeros_like(x0), "donor"))
    assert (run(soft, "masked") - run(soft, "donor")).abs().max() > 1e-3
    with pytest.raises(ValueError):
        run(soft, "other")


def _reference_ddim(engine, x0, mask, text, unc, e, seed, steps, guidance):
    """Eq. 7-8 for one sample written out with diffusers' DDIMScheduler (what the default engine path must do)."""
    from diffusers import DDIMScheduler
    import torch.nn.functional as F

    sched = DDIMScheduler.from_config(engine.scheduler.config)
    sched.set_timesteps(steps)
    z_m = engine.encode(x0 * (1 - mask))
    m_b = F.interpolate(mask, size=z_m.shape[-2:], mode="area")
    eps = torch.randn((1, *z_m.shape[1:]), generator=torch.Generator().manual_seed(seed))
    z = eps
    cond = {"encoder_hidden_states": torch.cat([unc, text]),
            "added_cond_kwargs": {"image_embeds": [torch.cat([torch.zeros_like(e), e])[:, None, :]]}}
    ts = sched.timesteps
    with torch.no_grad():
        for i, t in enumerate(ts):
            u, c = engine.unet(torch.cat([z, z]), t, **cond).sample.chunk(2)
            p = sched.step(u + guidance * (c - u), t, z).prev_sample
            zt = sched.add_noise(z_m, eps, ts[i + 1:i + 2]) if i + 1 < len(ts) else z_m
            z = p * m_b + zt * (1 - m_b)
        return engine.decode(z)


def test_default_is_the_papers_ddim(engine):
    assert SamplingOptions().scheduler == "ddim" and SamplingOptions().steps == 50
    rng = np.random.default_rng(21)
    donors, masks, text, unc, e, seeds = _batch(1, rng)
    from medsoft_aug.geometry import GridMapping

    view = GridMapping(64).to_model(donors[0], masks[0])
    x0, mk = view.image[None], view.mask[None]
    got = engine.denoise(x0, mk, text, unc, e, seeds, SamplingOptions(steps=3))
    ref = _reference_ddim(engine, x0, mk, text, unc, e[:1], seeds[0], 3, 7.5)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_solver_is_deterministic_batch_independent_and_keeps_the_background(engine, name):
    rng = np.random.default_rng(23)
    donors, masks, text, unc, e, seeds = _batch(4, rng)
    opts = SamplingOptions(steps=3, scheduler=name)
    full = engine.inpaint(donors, masks, text, unc, e, seeds, opts)
    again = engine.inpaint(donors, masks, text, unc, e, seeds, opts)
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    alone = engine.inpaint(donors[2:3], masks[2:3], text[2:3], unc, e[2:3], seeds[2:3], opts)[0]
    np.testing.assert_allclose(alone, full[2], atol=2e-5)
    ddim = engine.inpaint(donors[2:3], masks[2:3], text[2:3], unc, e[2:3], seeds[2:3], SamplingOptions(steps=3))[0]
    inside, zero = masks[2] > 0.5, masks[2] == 0
    assert np.abs(ddim - alone)[inside].max() > 1e-4               # the solver really replaced DDIM
    assert np.array_equal(alone[zero], donors[2][zero])


def test_unknown_scheduler_is_refused(engine):
    from medsoft_aug.generate import engine as eng, options, select

    assert options.SCHEDULERS == eng.SCHEDULERS and options.SCORERS == select.SCORERS
    with pytest.raises(ValueError, match="scheduler"):
        eng.make_scheduler("euler", engine.scheduler.config)


def test_per_row_negative_embeddings_equal_each_row_alone_and_the_reference(engine):
    # CFG's unconditional half may be one embedding per row (--negative-prompts): each row of a mixed batch equals
    # that row alone with its own negative, and the written-out Eq. 7-8 with that negative as the uncond text.
    rng = np.random.default_rng(5)
    donors, masks, text, _, e, seeds = _batch(3, rng)
    negs = torch.from_numpy(rng.standard_normal((3, 7, text.shape[-1])).astype(np.float32))
    from medsoft_aug.geometry import GridMapping

    views = [GridMapping(64).to_model(d, m) for d, m in zip(donors, masks)]
    x0, mk = torch.stack([v.image for v in views]), torch.stack([v.mask for v in views])
    opts = SamplingOptions(steps=3)
    full = engine.denoise(x0, mk, text, negs, e, seeds, opts)
    for i in range(3):
        ref = _reference_ddim(engine, x0[i:i + 1], mk[i:i + 1], text[i:i + 1], negs[i:i + 1], e[i:i + 1], seeds[i],
                              3, 7.5)
        np.testing.assert_allclose(full[i:i + 1].numpy(), ref.numpy(), atol=1e-5)
    same = engine.denoise(x0, mk, text, negs[:1].expand(3, -1, -1), e, seeds, opts)
    np.testing.assert_allclose(same.numpy(), engine.denoise(x0, mk, text, negs[:1], e, seeds, opts).numpy(), atol=1e-6)
    assert (full[1] - same[1]).abs().max() > 1e-4                       # the negative matters
    with pytest.raises(ValueError, match="uncond_emb has 2 rows"):
        engine.denoise(x0, mk, text, negs[:2], e, seeds, opts)
