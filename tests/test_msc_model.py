"""The Medical Semantic Controller network (Eq. 3) and its config."""
from __future__ import annotations

import json

import pytest
import torch

from medsoft_aug.errors import ModelError
from medsoft_aug.models.msc import MSCConfig, build_msc, masked_image

from _models_helpers import single_thread  # noqa: F401 - autouse fixture


def _inputs(b=3, lt=7, lv=9, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    e_t, e_v = torch.randn(b, lt, d, generator=g), torch.randn(b, lv, d, generator=g)
    mask = torch.ones(b, lt, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return e_t, mask, e_v


def test_shapes_and_padding_is_ignored():
    cfg = MSCConfig.for_embed_dim(32)
    msc = build_msc(cfg, seed=1).eval()
    e_t, mask, e_v = _inputs()
    out = msc(e_t, mask, e_v)
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    # garbage in padded text positions and extra padding must not change e_MSC
    junk = e_t.clone()
    junk[~mask] = 1e3 * torch.randn(int((~mask).sum()), 32)
    longer = torch.cat([junk, torch.randn(3, 5, 32)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    assert torch.allclose(msc(longer, longer_mask, e_v), out, atol=1e-5)
    # ... but real text tokens and image tokens do
    e_t2 = e_t.clone()
    e_t2[:, 0] += torch.randn(3, 32)            # (a constant shift would vanish in the input LayerNorm)
    assert not torch.allclose(msc(e_t2, mask, e_v), out, atol=1e-3)
    assert not torch.allclose(msc(e_t, mask, e_v + torch.randn_like(e_v)), out, atol=1e-3)
    # each sample is independent of the others in the batch
    assert torch.allclose(msc(e_t[1:2], mask[1:2], e_v[1:2]), out[1:2], atol=1e-5)


def test_seeded_init_and_config_round_trip():
    cfg = MSCConfig(embed_dim=16, width=24, depth=1, heads=3)
    a, b = build_msc(cfg, seed=3), build_msc(cfg, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(build_msc(cfg, seed=4).out_proj.weight, a.out_proj.weight)
    assert MSCConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert MSCConfig.for_embed_dim(512) == MSCConfig(512, 512, 4, 8)
    with pytest.raises(ModelError, match="unknown keys: bogus"):
        MSCConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ModelError, match="not divisible"):
        build_msc(MSCConfig(embed_dim=16, width=10, heads=4))
    e_t, mask, e_v = _inputs(d=32)
    with pytest.raises(ModelError, match="encoder does not match"):
        a(e_t, mask, e_v)


def test_masked_image_eq2():
    g = torch.Generator().manual_seed(5)
    x0, mb = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    im = masked_image(x0, mb)
    assert torch.allclose(im, x0 - x0 * mb)
    assert torch.equal(masked_image(x0, torch.zeros_like(mb)), x0)
    assert torch.equal(masked_image(x0, torch.ones_like(mb)), torch.zeros_like(x0))
