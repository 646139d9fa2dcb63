"""Decoupled cross-attention (Eq. 5): layer count on SD1.5, hand computation, state round trip."""
from __future__ import annotations

import math

import pytest
import torch

from _train_helpers import MSC_DIM, SD15_UNET, TEXT_DIM, one_thread, tiny_unet  # noqa: F401
from medsoft_aug.errors import ModelError
from medsoft_aug.models.adapter import (adapter_kwargs, adapter_parameters, adapter_processors, adapter_state_dict,
                                        install_adapter, load_adapter_state, set_gamma)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sd15_config_gets_16_decoupled_layers():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
    n = install_adapter(unet, msc_dim=512, gamma=1.0)
    assert n == 16
    procs = adapter_processors(unet)
    assert len(procs) == 16 and all(name.endswith("attn2.processor") for name in procs)
    # W'_k/W'_v read e_MSC (512) directly and map to each layer's width
    widths = sorted({p.to_k_ip[0].weight.shape for p in procs.values()})
    assert widths == [(320, 512), (640, 512), (1280, 512)]
    assert len(adapter_parameters(unet)) == 32


def _hand_eq5(attn, h, c, e, gamma):
    """softmax(QK^T/sqrt d)V + gamma softmax(QK'^T/sqrt d)V', per head, then the output projection."""
    proc = attn.processor
    heads = attn.heads
    q, k, v = h @ attn.to_q.weight.T, c @ attn.to_k.weight.T, c @ attn.to_v.weight.T
    kp, vp = e @ proc.to_k_ip[0].weight.T, e @ proc.to_v_ip[0].weight.T
    d = q.shape[-1] // heads
    outs = []
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1) @ v[..., sl]
        b = torch.softmax(q[..., sl] @ kp[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1) @ vp[..., sl]
        outs.append(a + gamma * b)
    z = torch.cat(outs, dim=-1)
    return z @ attn.to_out[0].weight.T + attn.to_out[0].bias


@pytest.mark.parametrize("n_tokens", [1, 3])
def test_processor_matches_hand_computation_of_eq5(n_tokens):
    unet = tiny_unet()
    gamma = 0.7
    install_adapter(unet, msc_dim=MSC_DIM, gamma=gamma)
    name, proc = next(iter(adapter_processors(unet).items()))
    attn = unet.get_submodule(name.rsplit(".processor", 1)[0])
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in list(attn.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    h = torch.randn(2, 10, attn.to_q.in_features, generator=g)         # (B, N queries, C)
    c = torch.randn(2, 7, TEXT_DIM, generator=g)                        # text tokens (B, 7, C_text)
    e = torch.randn(2, n_tokens, MSC_DIM, generator=g)                  # e_MSC tokens (B, T, D)
    with torch.no_grad():
        got = attn(h, encoder_hidden_states=(c, [e]))
        want = _hand_eq5(attn, h, c, e, gamma)
        base = _hand_eq5(attn, h, c, e, 0.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - base).abs().max() > 1e-2        # the second term contributes


def test_fresh_adapter_leaves_unet_unchanged_and_gamma_scales_it():
    base = tiny_unet(seed=3).eval()
    unet = tiny_unet(seed=3).eval()
    assert install_adapter(unet, msc_dim=MSC_DIM, gamma=1.0) == 4   # down 1 + mid 1 + up 2
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 500])
    txt = torch.randn(2, 8, TEXT_DIM, generator=g)
    e = torch.randn(2, MSC_DIM, generator=g)
    with torch.no_grad():
        ref = base(z, t, encoder_hidden_states=txt).sample
        out0 = unet(z, t, encoder_hidden_states=txt, **adapter_kwargs(e)).sample
        torch.testing.assert_close(out0, ref)                       # W'_v = 0 at install
        for p in adapter_parameters(unet):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        out1 = unet(z, t, encoder_hidden_states=txt, **adapter_kwargs(e)).sample
        set_gamma(unet, 0.0)
        out_g0 = unet(z, t, encoder_hidden_states=txt, **adapter_kwargs(e)).sample
    assert (out1 - ref).abs().max() > 1e-3
    torch.testing.assert_close(out_g0, ref)


def test_adapter_state_round_trip_and_mismatch():
    a, b = tiny_unet(seed=1), tiny_unet(seed=2)
    install_adapter(a, MSC_DIM)
    install_adapter(b, MSC_DIM)
    with torch.no_grad():
        for p in adapter_parameters(a):
            p.normal_()
    state = adapter_state_dict(a)
    assert len(state) == 8 and all(".processor.to_" in k for k in state)
    load_adapter_state(b, state)
    for k, v in adapter_state_dict(b).items():
        assert torch.equal(v, state[k])
    c = tiny_unet()
    install_adapter(c, MSC_DIM + 1)
    with pytest.raises(ModelError, match="shape"):
        load_adapter_state(c, state)
    with pytest.raises(ModelError, match="missing"):
        load_adapter_state(b, {k: v for k, v in list(state.items())[1:]})
