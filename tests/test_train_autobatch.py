"""`train --batch-size auto` (train/autobatch.py over the shared medsoft_aug/batchsize.py): the probe measures
real training steps (forward, backward, optimizer step of the SMIS task, tiny models on the CPU) against a
simulated CUDA allocator (torch.cuda's memory calls replaced by a device of fixed capacity, whose allocations
fail with CUDA's own out-of-memory message) and leaves weights, optimizer and RNG exactly as they were; the
choice is recorded; a resumed auto run reuses the recorded size (never re-probes) and ends bit-identical."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from _train_helpers import MSC_DIM, FakeMSC, ddpm, fake_encode_prompt, make_work, tiny_unet, tiny_vae
from _train_helpers import one_thread  # noqa: F401 - module fixture
from medsoft_aug.models.adapter import adapter_state_dict, install_adapter
from medsoft_aug.train import autobatch
from medsoft_aug.train.data import SliceDataset
from medsoft_aug.train.loop import LoopConfig, _prepare, make_accelerator, run_task
from medsoft_aug.train.smis_stage import SMISTask

pytestmark = pytest.mark.usefixtures("one_thread")
from _cuda_sim import SimulatedAllocator

GiB = 2**30


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_work(tmp_path_factory.mktemp("autobatch") / "W", n_per_class=3, size=32)


def _task():
    unet, vae = tiny_unet(0), tiny_vae(0)
    install_adapter(unet, MSC_DIM, gamma=1.0)
    return SMISTask(unet, vae, ddpm(), fake_encode_prompt, FakeMSC(0).requires_grad_(False))


class SimulatedCuda(SimulatedAllocator):
    """A device of ``total`` bytes holding ``weights``; a training step on B samples peaks at weights + B *
    per_row, charged when the UNet's forward runs (B read from the UNet's input, not from the probe's argument)."""

    def __init__(self, total, weights, per_row):
        super().__init__(total, weights, per_row)
        self.events: list = []

    def forward_hook(self, module, args):
        rows = args[0].shape[0]
        self.events.append(("forward", rows))
        self.charge(rows)


def _probe_setup(work, tmp_path, dev):
    ds = SliceDataset(work, "train", resolution=32)
    task = _task()
    cfg = LoopConfig(max_steps=1, batch_size="auto", checkpoint_every=0, seed=1)
    acc = make_accelerator(cfg, tmp_path / "p", cpu=True)
    task.setup(acc.device, torch.float32, ds)
    prepared, optimizer = _prepare(task, acc, cfg)
    task.unet.register_forward_pre_hook(dev.forward_hook)
    inner = optimizer.optimizer
    inner.register_step_post_hook(lambda *a: dev.events.append(("step", None)))
    for p in (p for p in task.unet.parameters() if p.requires_grad):
        p.register_hook(lambda g: dev.events.append(("backward", None)) or g)
        break
    return ds, task, acc, prepared, optimizer


def test_probe_measures_real_training_steps_and_leaves_the_run_untouched(work, tmp_path, monkeypatch):
    dev = SimulatedCuda(total=20 * GiB, weights=2 * GiB, per_row=int(1.5 * GiB))
    dev.install(monkeypatch)
    ds, task, acc, prepared, optimizer = _probe_setup(work, tmp_path, dev)
    before = {k: v.clone() for k, v in adapter_state_dict(task.unet).items()}
    rng = torch.get_rng_state()
    rec = autobatch.probe_train_batch(task, ds, acc, prepared, optimizer)
    # budget 18 GiB: 2 + 1.5 B <= 18 -> B = 10; 16 predicted (26 GiB) not to fit: never run; 10 confirmed
    assert rec["size"] == 10 and rec["how"] == "probe" and rec["capacity_bytes"] == 20 * GiB
    # each probed size is one whole training step: forward, backward, optimizer step
    assert dev.events == [e for b in (1, 2, 4, 8, 10) for e in (("forward", b), ("backward", None), ("step", None))]
    assert rec["peak_bytes"] == {str(b): 2 * GiB + b * int(1.5 * GiB) for b in (1, 2, 4, 8)}
    after = adapter_state_dict(task.unet)
    assert all(torch.equal(after[k], before[k]) for k in before)      # weights restored bit for bit
    assert not any(optimizer.optimizer.state.values())               # a fresh AdamW again
    assert all(p.grad is None for p in task.unet.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    acc.free_memory()


def test_probe_survives_out_of_memory_and_accelerate_lowers_the_choice(work, tmp_path, monkeypatch):
    # mem_get_info promises 40 GiB but the step fails above 24 samples: the probe at 32 runs out of memory, the
    # interpolated 31 (slope of 8 -> 16) too; accelerate's find_executable_batch_size lowers it by 10% per failure
    dev = SimulatedCuda(total=40 * GiB, weights=2 * GiB, per_row=GiB)
    dev.install(monkeypatch)
    real = 2 * GiB + 24 * GiB
    ds, task, acc, prepared, optimizer = _probe_setup(work, tmp_path, dev)

    def smaller_device(module, args):
        if dev.weights + args[0].shape[0] * dev.per_row > real:     # (dev's own hook recorded the forward)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    task.unet.register_forward_pre_hook(smaller_device)
    before = {k: v.clone() for k, v in adapter_state_dict(task.unet).items()}
    rec = autobatch.probe_train_batch(task, ds, acc, prepared, optimizer)
    assert rec["peak_bytes"]["32"] is None and rec["peak_bytes"]["16"] == 18 * GiB
    sizes = [r for k, r in dev.events if k == "forward"]
    assert sizes == [1, 2, 4, 8, 16, 32, 31, 27, 24] and rec["size"] == 24     # 31 -> 27 -> 24 (x 0.9)
    after = adapter_state_dict(task.unet)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(optimizer.optimizer.state.values())
    acc.free_memory()


def test_resolve_given_cpu_default_and_refusal_of_a_used_optimizer(work, tmp_path):
    ds = SliceDataset(work, "train", resolution=32)
    task = _task()
    cfg = LoopConfig(max_steps=1, batch_size="auto", checkpoint_every=0)
    acc = make_accelerator(cfg, tmp_path / "p", cpu=True)
    task.setup(acc.device, torch.float32, ds)
    prepared, opt = _prepare(task, acc, cfg)
    assert autobatch.resolve_batch(6, task, ds, acc, prepared, opt, None) == {"size": 6, "how": "given"}
    assert autobatch.resolve_batch("auto", task, ds, acc, prepared, opt, "latest") == \
        {"size": autobatch.CPU_BATCH_SIZE, "how": "cpu default"} == {"size": 4, "how": "cpu default"}
    for p in opt.optimizer.param_groups[0]["params"]:
        opt.optimizer.state[p]["step"] = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="has not stepped"):
        autobatch.probe_train_batch(task, ds, acc, prepared, opt)
    acc.free_memory()


def _loop(work, project, batch_size, stop_after=None, resume=None):
    ds, val = SliceDataset(work, "train", resolution=32), SliceDataset(work, "val", resolution=32)
    task = _task()
    cfg = LoopConfig(max_steps=4, batch_size=batch_size, grad_accum=2, checkpoint_every=1, seed=5)
    acc = make_accelerator(cfg, project, cpu=True)
    res = run_task(task, ds, accelerator=acc, config=cfg, val_dataset=val, resume=resume, stop_after=stop_after)
    acc.free_memory()
    return task, res


def test_resumed_auto_run_reuses_the_probed_size_without_probing(work, tmp_path, monkeypatch):
    """A probe (simulated: CUDA chose 3) before the first step; the resumed run takes 3 from its checkpoint and
    never probes; it ends bit-identical to an uninterrupted run with --batch-size 3."""
    given, _ = _loop(work, tmp_path / "given", 3)
    probed = {"size": 3, "how": "probe", "margin": 0.1, "capacity_bytes": 100, "peak_bytes": {"1": 10, "2": 20}}
    calls = []
    monkeypatch.setattr(autobatch, "probe_here", lambda acc: True)
    monkeypatch.setattr(autobatch, "probe_train_batch", lambda *a, **k: calls.append(1) or dict(probed))
    _, stopped = _loop(work, tmp_path / "auto", "auto", stop_after=3)
    assert stopped.batch == probed and calls == [1]
    state = json.loads(max((tmp_path / "auto" / "checkpoints").glob("checkpoint_*/trainer_state.json")).read_text())
    assert state["batch"] == probed and state["batch_size"] == 3

    def no_probe(*a, **k):
        raise AssertionError("a resumed auto run probed again")

    monkeypatch.setattr(autobatch, "probe_train_batch", no_probe)
    resumed, res = _loop(work, tmp_path / "auto", "auto", resume="latest")
    assert res.resumed_from == 3 and res.batch == probed
    a, b = adapter_state_dict(given.unet), adapter_state_dict(resumed.unet)
    assert all(torch.equal(a[k], b[k]) for k in a)


class Stop(Exception):
    pass


def test_auto_on_cpu_recorded_and_stopped_resumed_equals_uninterrupted(work, tmp_path):
    from medsoft_aug.train.stage import train

    opts = dict(max_steps=3, msc_steps=2, batch_size="auto", checkpoint_every=1, resolution=32, device="cpu",
                seed=3)
    train(work, tmp_path / "A", **opts)

    def stop(name, done, total):
        if name == "train smis" and done == 2:
            raise Stop

    with pytest.raises(Stop):
        train(work, tmp_path / "B", on_progress=stop, **opts)
    res = train(work, tmp_path / "B", resume="latest", **opts)
    assert res.stages["smis"]["resumed_from"] == 2
    for f in ("msc.safetensors", "adapter.safetensors"):
        assert (tmp_path / "B" / f).read_bytes() == (tmp_path / "A" / f).read_bytes(), f
    meta = json.loads((tmp_path / "B" / "medsoft_model.json").read_text())
    assert meta["training"]["arguments"]["batch_size"] == "auto"
    for stage in ("msc", "smis"):
        assert meta["training"]["stages"][stage]["batch"] == {"size": 4, "how": "cpu default"}
    again = train(work, tmp_path / "A", **opts)                      # same options: skipped
    assert again.skipped


@pytest.mark.parametrize("bad", ["0", "-2", "x", "1.5", "auto4"])
def test_cli_bad_batch_size_is_one_error_line_exit_2(work, tmp_path, monkeypatch, bad):
    import medsoft_aug.models.base as base
    from medsoft_aug.cli.app import app

    monkeypatch.setattr(base, "load_base_model", lambda *a, **k: pytest.fail("a model was loaded"))
    res = CliRunner().invoke(app, ["train", str(work), "--out", str(tmp_path / "M"), "--device", "cpu",
                                   "--batch-size", bad])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [f"Error: --batch-size must be an integer >= 1 or auto, got {bad!r}"], res.stderr
    assert not (tmp_path / "M").exists()


def test_cli_help_explains_auto_and_grad_accum():
    from medsoft_aug.cli.app import app

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.stdout.split())
    assert res.exit_code == 0 and "auto" in text and "micro-batch only" in text and "--grad-accum" in text
