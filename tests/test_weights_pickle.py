"""A code-running pickle given as encoder weights (issue 8 section 2): refused by torch.load(weights_only=True),
reported as exit 3 naming the file, never with advice to pass weights_only=False; the code never runs."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from medsoft_aug.cli.app import app
from medsoft_aug.errors import ModelError
from medsoft_aug.models.encoders import load_encoder, save_encoder_dir

from _masks_helpers import make_work
from _models_helpers import tiny_encoder


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def evil_dir(tmp_path_factory):
    """An open_clip folder whose only weights file is a pickle that runs a shell command when unpickled."""
    folder = tmp_path_factory.mktemp("evil_encoder")
    save_encoder_dir(tiny_encoder(), folder, hf_model_name="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract")
    (folder / "open_clip_model.safetensors").unlink()
    marker = folder.parent / "PWNED"
    torch.save({"state_dict": _Evil(marker)}, folder / "open_clip_pytorch_model.bin")
    return folder, marker


def test_load_encoder_refuses_code_pickle(evil_dir):
    folder, marker = evil_dir
    with pytest.raises(ModelError) as e:
        load_encoder(str(folder))
    msg = str(e.value)
    assert e.value.exit_code == 3 and "open_clip_pytorch_model.bin" in msg and "refused" in msg
    assert "weights_only=False" not in msg and "\n" not in msg
    assert not marker.exists()


def test_train_cli_code_pickle_exit_3(evil_dir, tmp_path):
    from medsoft_aug.masks.stage import build_masks

    folder, marker = evil_dir
    work = make_work(tmp_path / "w", [dict(sample_id="a", x=20, y=20, label="normal"),
                                      dict(sample_id="b", x=30, y=30, label="tumor")])
    build_masks(work)
    r = CliRunner().invoke(app, ["train", str(work), "--out", str(tmp_path / "M"), "--encoder", str(folder),
                                 "--device", "cpu", "--max-steps", "1"])
    assert r.exit_code == 3, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "open_clip_pytorch_model.bin" in errors[0]
    assert "weights_only=False" not in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    shutil.rmtree(tmp_path / "M", ignore_errors=True)
