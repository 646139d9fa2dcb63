"""SliceDataset: rows, texts, mask resizing (vs an independent block average), hard masks, VAE input range."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _train_helpers import make_work
from medsoft_aug.errors import InputError
from medsoft_aug.fsutil import load_npy
from medsoft_aug.geometry import GridMapping
from medsoft_aug.train.data import SliceDataset, collate, vae_input


def test_rows_texts_and_item_contract(tmp_path):
    work = make_work(tmp_path / "w", n_per_class=3, size=48)
    ds = SliceDataset(work, "train", resolution=24)
    assert len(ds) == 6 and ds.normal_class == "normal"
    assert set(ds.labels) == {"normal", "benign", "malignant"}
    for sid, text, label in zip(ds.sample_ids, ds.texts, ds.labels):
        assert (text == "") == (label == "normal")
    assert len(SliceDataset(work, "train", resolution=24, diseased_only=True)) == 4
    item = ds[0]
    assert item["image"].shape == (1, 24, 24) and item["soft_mask"].shape == (1, 24, 24)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    b = collate([ds[0], ds[1]])
    assert b["image"].shape == (2, 1, 24, 24) and b["index"].tolist() == [0, 1] and len(b["text"]) == 2
    x = vae_input(b["image"])
    assert x.shape == (2, 3, 24, 24) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[:, 0], b["image"][:, 0] * 2 - 1)


def test_mask_resize_is_area_average_and_hard_mode_thresholds(tmp_path):
    from skimage.measure import block_reduce

    rng = np.random.default_rng(4)
    img = rng.random((48, 48), dtype=np.float32)
    mask = rng.random((48, 48), dtype=np.float32)
    m = GridMapping(16, mode="pad").to_model(img, mask).mask
    np.testing.assert_allclose(m[0].numpy(), block_reduce(mask, (3, 3), np.mean), rtol=1e-6, atol=1e-7)
    work = make_work(tmp_path / "w", n_per_class=2, size=48)
    soft = SliceDataset(work, "train", resolution=16)[1]["soft_mask"]
    hard = SliceDataset(work, "train", resolution=16, mask_mode="hard")[1]["soft_mask"]
    assert torch.equal(hard, (soft >= 0.5).float()) and 0 < hard.sum() < hard.numel()


def test_items_go_through_the_generation_mapping(tmp_path):
    work = make_work(tmp_path / "w", n_per_class=2, size=48)
    for mapping in (GridMapping(16), GridMapping(16, mode="pad"), GridMapping(16, margin=1.0)):
        ds = SliceDataset(work, "train", resolution=16, mapping=mapping)
        for i in range(len(ds)):
            sid = ds.sample_ids[i]
            view = mapping.to_model(load_npy(work / "slices" / f"{sid}.npy"), load_npy(work / "masks" / f"{sid}.npy"))
            assert torch.equal(ds[i]["image"], view.image) and torch.equal(ds[i]["soft_mask"], view.mask)
    with pytest.raises(InputError, match="mapping resolution"):
        SliceDataset(work, "train", resolution=24, mapping=GridMapping(16))


def test_bad_work_is_input_error(tmp_path):
    with pytest.raises(InputError, match="index.csv"):
        SliceDataset(tmp_path, "train")
    work = make_work(tmp_path / "w", n_per_class=2, size=32)
    (work / "slices" / "benign_00.npy").write_bytes(b"not npy")
    ds = SliceDataset(work, "train", resolution=16)
    with pytest.raises(InputError, match="benign_00"):
        ds[ds.sample_ids.index("benign_00")]
