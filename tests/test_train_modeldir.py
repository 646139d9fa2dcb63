"""MODEL_DIR save/load round trip (identical predictions), validation errors, safetensors-only files."""
from __future__ import annotations

import json

import pytest
import torch

from medsoft_aug.errors import ModelError
from medsoft_aug.models.adapter import adapter_kwargs, adapter_parameters, install_adapter
from medsoft_aug.models.modeldir import META_FILE, load_model_dir, save_model_dir
from _train_helpers import one_thread  # noqa: F401 - module fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from medsoft_aug.models.base import load_base_model
    from medsoft_aug.models.encoders import load_encoder
    from medsoft_aug.models.msc import MSCConfig, build_msc

    out = tmp_path_factory.mktemp("model")
    base = load_base_model("tiny-random")
    base_info = base.describe()
    enc = load_encoder("tiny")
    msc = build_msc(MSCConfig.for_embed_dim(enc.embed_dim), seed=3).eval()
    n = install_adapter(base.unet, enc.embed_dim, gamma=0.8)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapter_parameters(base.unet):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for p in msc.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    state = {k: v for k, v in base.unet.state_dict().items() if "_ip." in k}
    files = save_model_dir(out, trained_unet_state=state, base_info={**base_info, "ref": "tiny-random"},
                           encoder_info=enc.describe(), msc=msc,
                           adapter_info={"gamma": 0.8, "msc_dim": enc.embed_dim, "n_layers": n},
                           resolution=base.resolution, training={"arguments": {"seed": 0}})
    return out, base, enc, msc, files


def _predict(unet, e, text):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([3, 700]), encoder_hidden_states=text, **adapter_kwargs(e)).sample


def test_round_trip_gives_identical_predictions(saved):
    out, base, enc, msc, files = saved
    assert sorted(files) == ["adapter.safetensors", "msc.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == sorted([META_FILE, *files])
    meta = json.loads((out / META_FILE).read_text())
    assert meta["files"] == files and meta["adapter"]["gamma"] == 0.8 and meta["versions"]["torch"]
    loaded = load_model_dir(out)
    assert loaded.gamma == 0.8 and not loaded.no_msc
    g = torch.Generator().manual_seed(9)
    x0 = torch.rand(2, 1, 64, 64, generator=g)
    mb = torch.rand(2, 1, 64, 64, generator=g)
    texts = ["malignant metastasis in the vertebral body", "benign hemangioma"]
    from medsoft_aug.models.msc import msc_inputs

    with torch.no_grad():
        e_ref = msc(*msc_inputs(enc, x0, mb, texts))
    e = loaded.msc_embed(x0, mb, texts)
    assert torch.equal(e, e_ref)
    text = base.encode_prompt(texts)
    assert torch.equal(loaded.base.encode_prompt(texts), text)
    assert torch.equal(_predict(loaded.base.unet, e, text), _predict(base.unet, e_ref, text))


def test_wrong_base_and_corrupt_files_are_model_errors(saved, tmp_path):
    import shutil

    out = saved[0]
    bad = tmp_path / "m"
    shutil.copytree(out, bad)
    meta = json.loads((bad / META_FILE).read_text())
    meta["base_model"]["sha256"] = "0" * 64
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model was trained on base tiny-random"):
        load_model_dir(bad)
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    data = bytearray((bad / "adapter.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model_dir(bad)
    (bad / "msc.safetensors").unlink()
    with pytest.raises(ModelError, match="missing msc.safetensors"):
        load_model_dir(bad)
    (bad / META_FILE).unlink()
    with pytest.raises(ModelError, match="not a complete"):
        load_model_dir(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
