"""`balance`'s options dataclass: one ``check_inputs`` before any work, the Python API with an options object or
keyword arguments, and every option reachable from the CLI under its own name."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from medsoft_aug import api
from medsoft_aug.errors import InputError, UsageError
from medsoft_aug.generate.options import BalanceOptions

from _balance_helpers import write_work


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return write_work(tmp_path_factory.mktemp("opts") / "work", {"normal": 4, "benign": 1, "malignant": 2})


@pytest.mark.parametrize("bad, flag", [
    (dict(steps=0), "--steps"), (dict(output_format="jpeg"), "--output-format"), (dict(blend="x"), "--blend"),
    (dict(scheduler="euler"), "--scheduler"), (dict(scheduler="unipc", eta=0.5), "--eta"),
    (dict(geometry="warp"), "--geometry"), (dict(resolution=4), "--resolution"), (dict(candidates=0), "--candidates"),
    (dict(scorer="vibes"), "--scorer"), (dict(dtype="fp8"), "--dtype"), (dict(shard="3/2"), "--shard"),
    (dict(negative_prompts="others"), "--negative-prompts"),
])
def test_check_inputs_names_the_bad_option_before_reading_work(tmp_path, bad, flag):
    with pytest.raises(UsageError, match=flag):
        BalanceOptions(**bad).check_inputs(tmp_path / "no-such-work", tmp_path / "m", tmp_path / "o")


def test_check_inputs_then_checks_work_and_the_targets(work, tmp_path):
    with pytest.raises(InputError, match="not found"):
        BalanceOptions().check_inputs(tmp_path / "no-such-work", tmp_path / "m", tmp_path / "o")
    for model, out, msg in ((None, tmp_path / "o", "--model"), (tmp_path / "m", None, "--out"),
                            (tmp_path / "m", work / "o", "inside")):
        with pytest.raises(UsageError, match=msg):
            BalanceOptions().check_inputs(work, model, out)
    with pytest.raises(UsageError, match="--images"):
        BalanceOptions(output_format="dicom").check_inputs(work, tmp_path / "m", tmp_path / "o")
    inp = BalanceOptions(shard="2/3").check_inputs(work, tmp_path / "m", tmp_path / "o")
    assert (inp.k, inp.n, inp.normal_class, inp.out, inp.model_dir) == (2, 3, "normal", tmp_path / "o", tmp_path / "m")
    assert BalanceOptions(dry_run=True).check_inputs(work, None, None).out is None     # a dry run needs neither


def test_api_takes_an_options_object_and_or_keywords(work):
    opts = api.BalanceOptions(dry_run=True, target_ratio=0.5, seed=3)
    by_object = api.balance(work, options=opts)
    assert by_object == api.balance(work, dry_run=True, target_ratio=0.5, seed=3)
    assert by_object["to_generate"] == {"benign": 1, "malignant": 0}
    overridden = api.balance(work, None, None, opts, target_ratio=1.0)        # keywords override the object's
    assert overridden["to_generate"] == {"benign": 3, "malignant": 2} and opts.target_ratio == 0.5
    with pytest.raises(TypeError):
        api.balance(work, dry_run=True, no_such_option=1)


def test_every_option_is_a_cli_parameter_of_the_same_name():
    from medsoft_aug.cli.balance_cmd import _NOT_OPTIONS, balance_command

    params = set(inspect.signature(balance_command).parameters) - {"ctx", *_NOT_OPTIONS}
    assert params == {f.name for f in dataclasses.fields(BalanceOptions)}


def test_help_and_dry_run_import_neither_numpy_nor_torch(work):
    """`--help` needs neither numpy nor torch, `balance --dry-run` no torch (bench/startup.py times them)."""
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom medsoft_aug.cli.app import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "print('numpy' in sys.modules, 'torch' in sys.modules)\n"
            f"r = CliRunner().invoke(app, ['balance', {str(work)!r}, '--dry-run'])\nassert r.exit_code == 0, r.output\n"
            "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "False"]


def test_model_hash_uses_the_recorded_weights_hashes_and_a_replaced_file_is_refused(work, tiny_model_dir, tmp_path):
    import hashlib
    import shutil

    from typer.testing import CliRunner

    from medsoft_aug.cli.app import app
    from medsoft_aug.fsutil import sha256_file
    from medsoft_aug.generate.stage import _MODEL_FILES, model_dir_sha256

    h = hashlib.sha256()
    for name in _MODEL_FILES:
        if (tiny_model_dir / name).is_file():
            h.update(f"{name}:{sha256_file(tiny_model_dir / name)}\n".encode())
    assert model_dir_sha256(tiny_model_dir) == h.hexdigest()         # = every file hashed
    bad = shutil.copytree(tiny_model_dir, tmp_path / "bad")
    raw = bytearray((bad / "adapter.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (bad / "adapter.safetensors").write_bytes(bytes(raw))
    r = CliRunner().invoke(app, ["balance", str(work), "--model", str(bad), "-o", str(tmp_path / "o"), "--steps", "1",
                                 "--device", "cpu"])
    assert r.exit_code == 3 and "adapter.safetensors" in r.stderr and not (tmp_path / "o").exists(), r.stderr
