"""The paper's ablations end to end.

w/o SMIS has one definition (M_b >= 0.5 as 0/1, ``masks.soften.apply_mask_mode``),
applied wherever a mask acts: training (model-grid mask, Eq. 6 latent weights) and generation (I_m, the Eq. 7
blend, the pixel composite). Checked on the arrays each step really uses and on generated pixels.

w/o MSC (``train --no-msc``): no MSC, no adapter, no e_MSC; the text K/V of the cross-attention layers are trained
and generation uses them. Checked on generated pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medsoft_aug.masks.soften import apply_mask_mode


def _soft(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    return np.clip((10 - d) / 6, 0, 1).astype(np.float32)          # core 1, a ramp through every value, 0


def test_one_definition_for_numpy_and_torch():
    m = _soft()
    hard = apply_mask_mode(m, "hard")
    assert hard.dtype == np.float32 and set(np.unique(hard)) == {0.0, 1.0}
    assert np.array_equal(hard, (m >= 0.5).astype(np.float32))
    t = torch.from_numpy(m)[None, None]
    assert torch.equal(apply_mask_mode(t, "hard"), torch.from_numpy(hard)[None, None])
    assert apply_mask_mode(m, "soft") is m
    with pytest.raises(ValueError):
        apply_mask_mode(m, "binary")


def test_training_uses_hard_masks_at_model_and_latent_grids():
    from medsoft_aug.train.smis_stage import latent_mask, masked_noise_loss

    m = torch.from_numpy(_soft())[None, None]
    soft_lat, hard_lat = latent_mask(m, (8, 8)), latent_mask(m, (8, 8), "hard")
    assert ((soft_lat > 0) & (soft_lat < 1)).any()                           # soft weights at the edge
    assert set(torch.unique(hard_lat).tolist()) <= {0.0, 1.0}
    assert torch.equal(hard_lat, (soft_lat >= 0.5).float())
    # the Eq. 6 loss weights: an error only where 0 < m_b < 0.5 counts in soft mode, not in hard mode
    ring = ((soft_lat > 0) & (soft_lat < 0.5)).float()
    pred, target = ring.expand(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    assert float(masked_noise_loss(pred, target, soft_lat)) > 0
    assert float(masked_noise_loss(pred, target, hard_lat)) == 0.0


def test_training_dataset_hard_mode(tmp_path):
    from _work_helpers import WorkWriter
    from medsoft_aug.train.data import SliceDataset

    out = WorkWriter(tmp_path / "work")
    for i, label in enumerate(("normal", "benign")):
        out.add(f"s{i}", label, "train", np.full((32, 32), 0.5, np.float32), _soft(), patient_id=f"p{i}",
                study_id=f"st{i}", spacing_row=1.0, spacing_col=1.0, description="")
    work = out.close()
    soft = SliceDataset(work, "train", resolution=16)[1]["soft_mask"]
    hard = SliceDataset(work, "train", resolution=16, mask_mode="hard")[1]["soft_mask"]
    assert torch.equal(hard, apply_mask_mode(soft, "hard")) and not torch.equal(hard, soft)


# ---------------------------------------------------------------------------------------------- generation
def _model_copy(src, dst, mode: str):
    import json
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "medsoft_model.json").read_text())
    meta["mask_mode"] = mode                # the same weights; only the recorded mode differs
    (dst / "medsoft_model.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def balanced(tiny_model_dir, tmp_path_factory):
    """balance with the same weights and seed, soft vs hard mask mode."""
    from _balance_helpers import one_thread, write_work
    from medsoft_aug.generate.stage import balance

    root = tmp_path_factory.mktemp("maskmode")
    work = write_work(root / "work", {"normal": 3, "benign": 1},
                      descriptions={"benign": ["bright round lesion"]})
    outs = {}
    with one_thread():
        for mode in ("soft", "hard"):
            model = _model_copy(tiny_model_dir, root / f"model_{mode}", mode)
            balance(work, model, root / f"out_{mode}", steps=2, device="cpu", batch_size=2, seed=0)
            outs[mode] = root / f"out_{mode}"
    return work, outs


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path)).astype(np.int64)


def test_balance_with_a_hard_model_composites_with_the_hard_mask(balanced):
    import pandas as pd

    work, outs = balanced
    masks = pd.read_csv(work / "masks.csv", dtype=str).set_index("sample_id")["mask"]
    ring_changed = {}
    for mode, out in outs.items():
        man = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
        syn = man[man["origin"] == "synthetic"]
        assert len(syn) == 2
        ring_changed[mode] = 0
        for _, r in syn.iterrows():
            soft = np.load(work / masks[r["donor_id"]])
            used = np.load(out / r["mask"])
            assert np.array_equal(used, apply_mask_mode(soft, mode))           # the mask written is the one used
            img = _png(out / r["image"])
            donor = _png(out / f"real/{r['donor_id']}.png")                   # the donor, same 16-bit writer
            ring = (soft > 0) & (soft < 0.5)
            assert ring.sum() > 20
            assert np.array_equal(img[soft == 0], donor[soft == 0])
            ring_changed[mode] += int((img[ring] != donor[ring]).sum())
            if mode == "hard":
                assert np.array_equal(img[used == 0], donor[used == 0])        # below 0.5 the donor, exactly
    assert ring_changed["hard"] == 0 and ring_changed["soft"] > 0              # soft blends the ring, hard not
    a = [_png(p) for p in sorted((outs["soft"] / "synthetic").rglob("*.png"))]
    b = [_png(p) for p in sorted((outs["hard"] / "synthetic").rglob("*.png"))]
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_hard_mode_blends_latents_with_a_binary_mask(tiny_model_dir, tmp_path):
    """Eq. 7: a mask whose every latent cell averages below 0.5 is all zero in hard mode, so the final latent is
    the kept one and the decoded image does not depend on the noise seed; in soft mode it does."""
    from _balance_helpers import one_thread
    from medsoft_aug.generate.runner import Generator

    with one_thread():
        gens = {mode: Generator(_model_copy(tiny_model_dir, tmp_path / mode, mode), device="cpu", steps=2)
                for mode in ("soft", "hard")}
        g = gens["soft"]
        r = g.engine.resolution
        x0 = torch.rand(2, 1, r, r, generator=torch.Generator().manual_seed(0))
        mask = torch.zeros(2, 1, r, r)
        mask[:, :, r // 2, 2:-2] = 1.0                                      # one row: 1/8 of each latent cell
        text = g.trained.base.encode_prompt(["bright round lesion"] * 2)
        dec = {}
        for mode, gen in gens.items():
            e = gen.e_msc(x0, gen.used_mask(mask), ["bright round lesion"] * 2)
            dec[mode] = [gen.engine.denoise(x0[:1], mask[:1], text[:1], gen.uncond,
                                            None if e is None else e[:1], [s], gen.opts) for s in (1, 2)]
    assert torch.equal(dec["hard"][0], dec["hard"][1])
    assert not torch.equal(dec["soft"][0], dec["soft"][1])


# ---------------------------------------------------------------------------------------------- w/o MSC
def test_no_msc_model_generates_with_its_trained_text_kv(tmp_path):
    from _balance_helpers import one_thread, write_work
    from medsoft_aug.generate.runner import Generator
    from medsoft_aug.models.adapter import adapter_processors
    from medsoft_aug.models.base import build_tiny_base
    from medsoft_aug.train.stage import train

    work = write_work(tmp_path / "work", {"normal": 2, "benign": 2},
                      descriptions={"benign": ["bright round lesion"]})
    with one_thread():
        train(work, tmp_path / "m", no_msc=True, max_steps=2, device="cpu", batch_size=2, checkpoint_every=0)
        gen = Generator(tmp_path / "m", device="cpu", steps=2, guidance=7.5)
        assert gen.trained.msc is None and not adapter_processors(gen.trained.base.unet)
        donor = np.load(next((work / "slices").glob("*.npy")))
        mask = np.load(next((work / "masks").glob("*.npy")))
        run = lambda prompt: gen.inpaint([donor], [mask], [prompt], [3])[0]  # noqa: E731
        trained = run("bright round lesion")
        assert not np.array_equal(trained, run("dark irregular lesion"))       # text conditioning is alive
        # put the base's text K/V back: the same sampling now gives other pixels, so generation used the trained ones
        base = dict(build_tiny_base().unet.named_parameters())
        kv = [n for n, _ in gen.trained.base.unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]
        assert kv
        changed = 0
        with torch.no_grad():
            for n, p in gen.trained.base.unet.named_parameters():
                if n in kv:
                    changed += int(not torch.equal(p, base[n].to(p)))
                    p.copy_(base[n].to(p))
        assert changed == len(kv)                                              # every text K/V was trained
        assert not np.array_equal(trained, run("bright round lesion"))
