"""SMIS training (Eq. 6), CFG dropout, frozen weights, checkpoint/resume equivalence - tiny models on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _train_helpers import MSC_DIM, FakeMSC, ddpm, fake_encode_prompt, make_work, tensor_checksums, tiny_unet, tiny_vae
from medsoft_aug.models.adapter import adapter_state_dict, install_adapter
from medsoft_aug.train.data import SliceDataset
from medsoft_aug.train.loop import LoopConfig, list_checkpoints, make_accelerator, run_task
from medsoft_aug.train.smis_stage import SMISTask, latent_mask, masked_noise_loss
from _train_helpers import one_thread  # noqa: F401 - module fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_masked_loss_matches_numpy_and_has_no_gradient_outside_mask():
    g = torch.Generator().manual_seed(7)
    pred = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    m = torch.rand(3, 1, 8, 8, generator=g)
    m[m < 0.4] = 0.0                                       # a real "outside"
    loss = masked_noise_loss(pred, eps, m)
    p, e, mm = pred.detach().numpy(), eps.numpy(), m.numpy()
    want = float((mm * (p - e) ** 2).sum() / (mm.sum() * 4))
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    outside = (m == 0).expand_as(pred)
    assert outside.any() and (~outside).any()
    assert torch.all(pred.grad[outside] == 0)
    assert torch.all(pred.grad[~outside] != 0)


def test_masked_loss_all_zero_mask_is_zero_and_finite():
    pred = torch.randn(2, 4, 4, 4, requires_grad=True)
    loss = masked_noise_loss(pred, torch.randn(2, 4, 4, 4), torch.zeros(2, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all() and torch.all(pred.grad == 0)


def test_latent_mask_is_block_average():
    from skimage.measure import block_reduce

    m = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    got = latent_mask(m, (8, 8)).numpy()
    want = block_reduce(m.numpy(), (1, 1, 4, 4), np.mean)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _task(seed=0, **kw):
    unet, vae = tiny_unet(seed), tiny_vae(seed)
    install_adapter(unet, MSC_DIM, gamma=1.0)
    msc = FakeMSC(seed).requires_grad_(False)
    return SMISTask(unet, vae, ddpm(), fake_encode_prompt, msc, **kw), msc


def test_cfg_dropout_rates_and_uncond(tmp_path):
    work = make_work(tmp_path / "w", n_per_class=3)
    ds = SliceDataset(work, "train", resolution=32)
    task, _ = _task()
    task.setup(torch.device("cpu"), torch.float32, ds)
    n = 6000
    batch = {"text": [ds.texts[1]] * n, "sample_id": [ds.sample_ids[1]] * n, "index": torch.ones(n, dtype=torch.long)}
    text, e = task._conditioning(batch, torch.Generator().manual_seed(0))
    full_t, full_e = task._conditioning(batch, None)
    t_drop = (text == task.uncond).flatten(1).all(1)
    e_drop = (e == 0).all(1)
    assert torch.equal(full_t[0], task.text_cache[ds.texts[1]]) and (full_e != 0).any(1).all()
    for frac in ((t_drop & ~e_drop).float().mean(), (~t_drop & e_drop).float().mean(),
                 (t_drop & e_drop).float().mean()):
        assert 0.04 < frac < 0.06                           # 0.05 each (3 sigma ~ 0.0085)


def _run(work, project, steps, stop_after=None, resume=None, checkpoint_every=1):
    ds = SliceDataset(work, "train", resolution=32)
    val = SliceDataset(work, "val", resolution=32)
    task, msc = _task()
    cfg = LoopConfig(max_steps=steps, batch_size=3, grad_accum=2, checkpoint_every=checkpoint_every,
                     checkpoints_keep=2, seed=5)
    acc = make_accelerator(cfg, project, cpu=True)
    res = run_task(task, ds, accelerator=acc, config=cfg, val_dataset=val, resume=resume, stop_after=stop_after)
    acc.free_memory()
    return task, msc, res


@pytest.mark.parametrize("checkpointing", [False, True])
def test_only_adapter_weights_change(tmp_path, checkpointing):
    work = make_work(tmp_path / "w", n_per_class=3)
    task, msc = _task()
    before = {"unet": tensor_checksums(task.unet), "vae": tensor_checksums(task.vae), "msc": tensor_checksums(msc)}
    ds = SliceDataset(work, "train", resolution=32)
    cfg = LoopConfig(max_steps=3, batch_size=4, checkpoint_every=0, seed=1, gradient_checkpointing=checkpointing)
    acc = make_accelerator(cfg, tmp_path / "p", cpu=True)
    res = run_task(task, ds, accelerator=acc, config=cfg)
    acc.free_memory()
    assert res.steps == 3 and np.isfinite(res.train_loss)
    after = {"unet": tensor_checksums(task.unet), "vae": tensor_checksums(task.vae), "msc": tensor_checksums(msc)}
    assert after["vae"] == before["vae"] and after["msc"] == before["msc"]
    changed = {k for k in before["unet"] if before["unet"][k] != after["unet"][k]}
    assert changed and all(".to_k_ip." in k or ".to_v_ip." in k for k in changed)
    assert any(".to_v_ip." in k for k in changed)


def test_resume_equals_uninterrupted_run(tmp_path):
    work = make_work(tmp_path / "w", n_per_class=3)
    full, _, res_full = _run(work, tmp_path / "a", steps=4)
    _, _, res_stop = _run(work, tmp_path / "b", steps=4, stop_after=3)
    assert res_stop.steps == 3
    cks = list_checkpoints(tmp_path / "b")
    assert [c.name for c in cks] == ["checkpoint_1", "checkpoint_2"]           # steps 2 and 3; rotation keeps 2
    resumed, _, res_res = _run(work, tmp_path / "b", steps=4, resume="latest")
    assert res_res.resumed_from == 3 and res_res.steps == 4
    a, b = adapter_state_dict(full.unet), adapter_state_dict(resumed.unet)
    for k in a:
        assert torch.equal(b[k], a[k]), k                                     # bit-identical
    assert any(a[k].abs().sum() > 0 for k in a if "to_v_ip" in k)
    assert res_res.history[-1]["train_loss"] == pytest.approx(res_full.history[-1]["train_loss"], rel=1e-5)
    assert "val_loss" in res_full.history[-1]


def test_resume_with_other_batch_size_is_refused(tmp_path):
    from medsoft_aug.errors import UsageError

    work = make_work(tmp_path / "w", n_per_class=2)
    _run(work, tmp_path / "p", steps=2, stop_after=1)
    ds = SliceDataset(work, "train", resolution=32)
    task, _ = _task()
    cfg = LoopConfig(max_steps=2, batch_size=2, grad_accum=2, checkpoint_every=1, seed=5)
    acc = make_accelerator(cfg, tmp_path / "p", cpu=True)
    with pytest.raises(UsageError, match="batch_size=3 \\(now 2\\)"):
        run_task(task, ds, accelerator=acc, config=cfg, resume=list_checkpoints(tmp_path / "p")[-1])
    acc.free_memory()
