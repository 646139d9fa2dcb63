"""Training fast paths against the plain path, tiny models on the CPU: batched caches = per-slice caches,
gradient checkpointing, torch.compile, loader workers (bit-identical, resume exact), bf16, and the MODEL_DIR record.
Speed itself is measured in bench/train_gpu.py, not here."""
from __future__ import annotations

import os

import pytest
import torch

from _models_helpers import msc_batch, tiny_encoder
from _train_helpers import MSC_DIM, TEXT_DIM, FakeMSC, ddpm, fake_encode_prompt, make_work, tiny_unet, tiny_vae
from _train_helpers import one_thread  # noqa: F401 - module fixture
from medsoft_aug.models.adapter import adapter_state_dict, install_adapter
from medsoft_aug.train.data import SliceDataset, collate
from medsoft_aug.train.loop import LoopConfig, list_checkpoints, make_accelerator, run_task
from medsoft_aug.train.smis_stage import SMISTask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_work(tmp_path_factory.mktemp("fast") / "W", n_per_class=3)


def _task(unet=None, **kw):
    unet = unet if unet is not None else tiny_unet(0)
    install_adapter(unet, MSC_DIM, gamma=1.0)
    return SMISTask(unet, tiny_vae(0), ddpm(), fake_encode_prompt, FakeMSC(0).requires_grad_(False), **kw)


def _run(task, ds, project, **cfg_kw):
    cfg = LoopConfig(**{"max_steps": 3, "batch_size": 3, "checkpoint_every": 0, "seed": 2, **cfg_kw})
    acc = make_accelerator(cfg, project, cpu=True)
    res = run_task(task, ds, accelerator=acc, config=cfg)
    acc.free_memory()
    return res


def test_batched_caches_equal_per_slice_caches_and_report_progress(work):
    ds = SliceDataset(work, "train", resolution=32)
    seen = []
    one, many = _task(cache_batch=1), _task(cache_batch=4)
    one.setup(torch.device("cpu"), torch.float32, ds)
    many.setup(torch.device("cpu"), torch.float32, ds, on_progress=lambda *a: seen.append(a))
    for a, b in ((one.lat_mu, many.lat_mu), (one.lat_sigma, many.lat_sigma), (one.e_msc, many.e_msc)):
        assert a.shape[0] == len(ds) and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    n = len(ds)
    assert seen[0] == ("cache smis", 0, n) and seen[-1] == ("cache smis", n, n) and len(seen) == 1 + -(-n // 4)
    # MSC stage: encoder features one sample at a time vs in chunks of 3 (texts padded together)
    from medsoft_aug.train.msc_stage import MSCTask

    batch = msc_batch(5, seed=4)
    items = [{k: (v[i] if k != "index" else int(v[i])) for k, v in batch.items()} for i in range(5)]
    a, b = MSCTask(tiny_encoder(), seed=0, cache_batch=1), MSCTask(tiny_encoder(), seed=0, cache_batch=3)
    a.setup(torch.device("cpu"), torch.float32, items)
    b.setup(torch.device("cpu"), torch.float32, items, on_progress=lambda *x: seen.append(x))
    assert a._cache.keys() == b._cache.keys() and len(a._cache) == 5 and seen[-1] == ("cache msc", 5, 5)
    for k in a._cache:
        assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(a._cache[k], b._cache[k]))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(work):
    ds = SliceDataset(work, "train", resolution=32)
    batch = collate([ds[i] for i in range(3)])
    calls = []
    results = []
    for ckpt in (False, True):
        task = _task()
        task.setup(torch.device("cpu"), torch.float32, ds)
        if ckpt:
            task.enable_gradient_checkpointing()
            for m in task.unet.modules():                    # count the checkpointed block calls
                if getattr(m, "gradient_checkpointing", False):
                    f = m._gradient_checkpointing_func
                    m._gradient_checkpointing_func = lambda *a, f=f, **k: calls.append(1) or f(*a, **k)
        task.unet.train()
        loss, _ = task.loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in task.unet.named_parameters() if p.requires_grad}))
    assert calls, "no block ran under gradient checkpointing"
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, rtol=1e-5) and g0.keys() == g1.keys()
    assert any(g.abs().sum() > 0 for g in g0.values())
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-7), k


def test_compiled_unet_trains_like_eager(work, tmp_path):
    # TorchDynamo graph capture of forward + backward (backend "eager": no C++ code generation, seconds); inductor
    # (the --compile default) with MEDSOFT_TEST_INDUCTOR=1 (minutes on a 2-core CPU). A one-block UNet keeps the
    # trace short.
    from diffusers import UNet2DConditionModel

    backend = "inductor" if os.environ.get("MEDSOFT_TEST_INDUCTOR") == "1" else "eager"
    ds = SliceDataset(work, "train", resolution=32)
    states, losses = [], []
    for compile_ in (False, True):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32,), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                                    cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8)
        task = _task(unet)
        res = _run(task, ds, tmp_path / str(compile_), max_steps=2, batch_size=2, compile=compile_,
                   compile_backend=backend)
        assert isinstance(task._model, torch._dynamo.eval_frame.OptimizedModule) == compile_
        states.append(adapter_state_dict(unet))
        losses.append([h["train_loss"] for h in res.history])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], rtol=1e-4, atol=1e-5)
    assert any(states[0][k].abs().sum() > 0 for k in states[0] if "to_v_ip" in k)


def test_loader_workers_change_nothing_and_resume_stays_exact(work, tmp_path):
    """Two worker processes read the stream: the same weights, bit for bit, as reading in-process, also across a
    stop and resume; a resume with another cache batch is refused (its cached latents would differ)."""
    from medsoft_aug.errors import UsageError

    ds = SliceDataset(work, "train", resolution=32)

    def run(project, workers, **kw):
        task = _task(cache_batch=kw.pop("cache_batch", 8))
        cfg = LoopConfig(max_steps=3, batch_size=3, checkpoint_every=1, seed=2, num_workers=workers)
        acc = make_accelerator(cfg, project, cpu=True)
        try:
            run_task(task, ds, accelerator=acc, config=cfg, **kw)
        finally:
            acc.free_memory()
        return adapter_state_dict(task.unet)

    plain = run(tmp_path / "a", 0)
    run(tmp_path / "b", 2, stop_after=2)
    with pytest.raises(UsageError, match="cache_batch=8 \\(now 4\\)"):
        run(tmp_path / "b", 2, resume="latest", cache_batch=4)
    resumed = run(tmp_path / "b", 2, resume="latest")
    assert [c.name for c in list_checkpoints(tmp_path / "b")][-1] == "checkpoint_1"
    for k in plain:
        assert torch.equal(plain[k], resumed[k]), k


def test_bf16_trains_on_the_cpu_and_fp16_there_exits_3(work, tmp_path):
    from typer.testing import CliRunner

    from medsoft_aug.cli.app import app

    ds = SliceDataset(work, "train", resolution=32)
    task = _task()
    res = _run(task, ds, tmp_path / "p", max_steps=2, mixed_precision="bf16")
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in res.history)
    dtypes = {p.dtype for p in task.unet.parameters() if not p.requires_grad}
    assert dtypes == {torch.bfloat16} and {p.dtype for p in task.unet.parameters() if p.requires_grad} == {torch.float32}
    out = tmp_path / "M"
    r = CliRunner().invoke(app, ["train", str(work), "-o", str(out), "--device", "cpu", "--mixed-precision", "fp16",
                                 "--max-steps", "1"])
    assert r.exit_code == 3 and r.stderr.startswith("Error: ") and "fp16 needs a CUDA GPU" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_every_option_is_recorded_and_speed_only_ones_do_not_force_a_retrain():
    from medsoft_aug.train.stage import TrainOptions, same_options

    rec = TrainOptions(compile=True, cache_batch=16, num_workers=4, gradient_checkpointing=True,
                       mixed_precision="bf16").record()
    assert {k: rec[k] for k in ("compile", "cache_batch", "num_workers", "gradient_checkpointing",
                                "mixed_precision")} == {"compile": True, "cache_batch": 16, "num_workers": 4,
                                                        "gradient_checkpointing": True, "mixed_precision": "bf16"}
    new = TrainOptions().record()
    old = {k: v for k, v in new.items() if k not in ("compile", "cache_batch", "num_workers")}   # older MODEL_DIR
    assert same_options(old, new) and same_options({**new, "num_workers": 8}, new)
    assert not same_options({**new, "compile": True}, new) and not same_options({**new, "cache_batch": 2}, new)
