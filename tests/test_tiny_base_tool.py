"""tools/build_tiny_base.py (the tiny base recipe, outside the package): end to end on a synthetic WORK, a few steps."""
from __future__ import annotations

import importlib.util
import types
import json
from pathlib import Path

import pytest
import torch

from medsoft_aug.models.base import load_base_model

from _models_helpers import single_thread  # noqa: F401 - autouse fixture

TOOL = Path(__file__).resolve().parents[1] / "tools" / "build_tiny_base.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("build_tiny_base", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_end_to_end_small(tool, tmp_path):
    from _train_helpers import make_work

    work = make_work(tmp_path / "w", n_per_class=3, size=40)
    out = tmp_path / "tiny"
    rec = tool.main(["--work", str(work), "--out", str(out), "--vae-steps", "3", "--unet-steps", "3",
                     "--batch", "4", "--class-balance"])
    assert rec["train_rows"] == 6 and rec["eval_rows"] == 3
    fit = json.loads((out / "fit.json").read_text())
    assert fit["unet_steps"] == 3 and fit["unet_loss_first_last"] and fit["vae_loss_first_last"]
    for blend in ("donor", "masked"):        # per-sample evidence of the engine's inpaintings, per class
        for cls in ("benign", "malignant"):
            r = fit[f"inpaint_{blend}"][cls]
            assert r["n"] == r["checked"] == 1 and r["text"].endswith("of 1 moved toward their class")
    assert (out / "README.md").is_file() and (out / "contact_sheet.png").stat().st_size > 1000
    model = load_base_model(str(out))
    assert model.resolution == 64
    assert abs(model.vae.config.scaling_factor - rec["vae_scaling_factor"]) < 1e-4
    # tokenizers learned the merges from the training descriptions: their words are single tokens
    assert model.tokenizer.tokenize("lesion") == ["lesion</w>"]
    # --init continues: same tokenizer and VAE, more UNet steps counted
    out2 = tmp_path / "tiny2"
    rec2 = tool.main(["--work", str(work), "--out", str(out2), "--init", str(out), "--vae-steps", "0",
                      "--unet-steps", "2", "--batch", "4"])
    assert rec2["unet_steps_all"] == 5 and len(rec2["commands"]) == 2
    assert (out2 / "tokenizer" / "vocab.json").read_bytes() == (out / "tokenizer" / "vocab.json").read_bytes()


def test_class_balanced_rows_draw_each_label_equally(tool):
    rows = tool.Rows(torch.zeros(5, 1, 8, 8), torch.zeros(5, 1, 8, 8), torch.zeros(5, 1, 8, 8),
                     ["", "", "", "", "b"], ["normal"] * 4 + ["benign"])
    bal = rows.balanced()
    labels = [bal[i]["label"] for i in range(len(bal))]
    assert labels.count("benign") == labels.count("normal") == 4


def test_word_dropout_keeps_order_and_at_least_one_word(tool):
    task = types.SimpleNamespace(word_dropout=0.5)
    text = "ill defined T2 dark lesion in the L1 vertebral body"
    outs = [tool.BaseFitTask._words(task, text, torch.Generator().manual_seed(s)) for s in range(20)]
    words = text.split()
    for o in outs:
        kept = o.split()
        assert kept and all(w in words for w in kept)
        assert [words.index(w) for w in kept] == sorted(words.index(w) for w in kept)   # order kept
    assert len(set(outs)) > 5 and any(len(o.split()) < len(words) for o in outs)
    assert tool.BaseFitTask._words(types.SimpleNamespace(word_dropout=0.0), text, torch.Generator()) == text


def test_crop_rows_put_the_lesion_centre_map_where_the_lesion_is(tool, tmp_path):
    """--geometry crop: rows are the product's crop around the mask (train/balance's default mapping) and the
    lesion-centre weight map follows the lesion into the crop; under pad it stays on the whole slice."""
    import numpy as np

    from _work_helpers import WorkWriter
    from medsoft_aug.geometry import GridMapping

    w = WorkWriter(tmp_path / "w")
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    mask = ((abs(yy - 60) < 10) & (abs(xx - 30) < 12)).astype(np.float32)     # a body-sized box off centre
    w.add("b0", "benign", "train", np.full((96, 96), 0.3, np.float32), mask, x=34.0, y=58.0, description="bright")
    w.add("n0", "normal", "train", np.full((96, 96), 0.3, np.float32), mask, description="")
    work = w.close()
    for geometry, margin in (("crop", 0.0), ("pad", 0.25)):
        rows = tool.load_rows([work], ("train",), 32, geometry, margin)
        b = rows.label.index("benign")
        expect = GridMapping(32, geometry, margin).to_model(np.zeros((96, 96), np.float32), mask).window
        peak = np.unravel_index(int(rows.spot[b, 0].argmax()), (32, 32))
        scale = 32 / expect.side
        assert abs(peak[0] - (58 - expect.top) * scale) <= 1.5 and abs(peak[1] - (34 - expect.left) * scale) <= 1.5
        assert float(rows.spot[1 - b].abs().max()) == 0.0                              # normal rows: no spot
    assert float(tool.load_rows([work], ("train",), 32, "crop", 0.0).mask[0].mean()) > 0.4   # the box fills it
