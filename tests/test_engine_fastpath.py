"""Engine fast-path options vs the eager fp32 engine on the tiny model (CPU): channels_last, bf16, compile, SDPA."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medsoft_aug.generate.engine import InpaintEngine, SamplingOptions
from medsoft_aug.generate.fastpath import FastPath, apply_fast_path, uses_sdpa, weight_dtype

from _balance_helpers import MSC_DIM, TEXT_DIM, one_thread, tiny_unet_vae

BF16_ATOL = 0.03      # bf16 (8-bit mantissa) through 3 steps, VAE included, images in [0, 1]: measured 0.014
FP16_ATOL = 5e-3      # fp16: measured 0.002


def _batch(n=2, seed=31):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    donors = [rng.uniform(0.1, 0.9, size=(48, 48)).astype(np.float32) for _ in range(n)]
    masks = [np.clip(1.5 - np.hypot(yy - 24, xx - 20 - 4 * i) / 7, 0, 1).astype(np.float32) for i in range(n)]
    text = torch.from_numpy(rng.standard_normal((n, 7, TEXT_DIM)).astype(np.float32))
    unc = torch.from_numpy(rng.standard_normal((1, 7, TEXT_DIM)).astype(np.float32))
    e = torch.from_numpy(rng.standard_normal((n, MSC_DIM)).astype(np.float32))
    return donors, masks, text, unc, e, [5, 6]


def _run(fast, dtype=torch.float32):
    unet, vae, sched = tiny_unet_vae()
    unet, vae = unet.to(dtype), vae.to(dtype)
    apply_fast_path(unet, vae, fast)
    eng = InpaintEngine(unet, vae, sched, resolution=64)
    with one_thread():
        return np.stack(eng.inpaint(*_batch(), SamplingOptions(steps=3))), unet


@pytest.fixture(scope="module")
def eager():
    return _run(None)[0]


def test_sdpa_is_the_default_attention():
    unet, _, _ = tiny_unet_vae()
    assert uses_sdpa(unet)
    names = {type(p).__name__ for p in unet.attn_processors.values()}
    assert names == {"AttnProcessor2_0", "IPAdapterAttnProcessor2_0"}


def test_channels_last_equals_eager(eager):
    out, unet = _run(FastPath(channels_last=True))
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out, eager, atol=1e-5)


def test_bf16_within_tolerance(eager):
    assert weight_dtype(FastPath(dtype="bf16"), torch.float32) == torch.bfloat16
    assert weight_dtype(FastPath(), torch.float16) == torch.float16
    out, unet = _run(FastPath(dtype="bf16"), torch.bfloat16)
    assert unet.dtype == torch.bfloat16 and out.dtype == np.float32
    diff = np.abs(out - eager)
    assert diff.max() < BF16_ATOL and diff.max() > 0


def test_fp16_within_tolerance(eager):
    out, _ = _run(FastPath(dtype="fp16"), torch.float16)
    assert np.abs(out - eager).max() < FP16_ATOL


def test_compile_graph_capture_equals_eager(eager):
    # TorchDynamo graph capture (backend "eager": no C++ code generation) of the UNet with the decoupled processors;
    # inductor (the --compile default) with MEDSOFT_TEST_INDUCTOR=1 (minutes on a 2-core CPU).
    backend = "inductor" if os.environ.get("MEDSOFT_TEST_INDUCTOR") == "1" else "eager"
    out, unet = _run(FastPath(compile=True, compile_backend=backend))
    assert unet._compiled_call_impl is not None
    np.testing.assert_allclose(out, eager, atol=1e-5)


def test_bad_dtype_is_refused():
    from medsoft_aug.errors import UsageError

    with pytest.raises(UsageError, match="--dtype"):
        FastPath(dtype="int8").check()


def test_balance_passes_the_options_and_records_them(tmp_path, tiny_model_dir):
    import json

    from typer.testing import CliRunner

    from _balance_helpers import write_work
    from medsoft_aug.cli.app import app

    work = write_work(tmp_path / "work", {"normal": 2, "benign": 1}, descriptions={"benign": ["bright"]})
    args = ["balance", str(work), "--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--dtype", "float8"])
    assert r.exit_code == 2 and "--dtype" in r.stderr and not (tmp_path / "o").exists()
    with one_thread():
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--dtype", "bf16", "--channels-last"])
    assert r.exit_code == 0, r.stderr
    rec = json.loads((tmp_path / "o" / "balance.json").read_text())
    assert rec["engine"] == {"dtype": "bf16", "channels_last": True, "compile": False} and rec["generated"] == 1
