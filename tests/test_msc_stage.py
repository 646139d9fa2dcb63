"""MSC pretraining task (Eq. 4) against the frozen tiny encoder."""
from __future__ import annotations

import pytest
import torch

from medsoft_aug.errors import ModelError
from medsoft_aug.models.msc import MSCConfig, predict_e_msc
from medsoft_aug.train.msc_stage import MSCTask

from _models_helpers import single_thread, checksum, msc_batch, tiny_encoder  # noqa: F401 - single_thread: autouse fixture


def test_loss_is_eq4_on_hand_computed_features():
    enc = tiny_encoder()
    task = MSCTask(enc, seed=0)
    batch = msc_batch(4, seed=1, width=56)
    loss, logs = task.loss(batch)
    # independent computation: Eq. 2 by hand, encoder features directly, Eq. 4 as a squared L2 norm
    x0, m = batch["image"], batch["soft_mask"]
    i_m = x0 - x0 * m
    e_t, mask = enc.text_tokens(batch["text"])
    with torch.no_grad():
        pred = task.msc(e_t, mask, enc.image_tokens(i_m))
    e_r = enc.image_embed(x0)
    expected = torch.stack([torch.dot(p - r, p - r) for p, r in zip(pred, e_r)]).mean()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(pred, e_r, dim=-1).mean()
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert logs["cos"] == pytest.approx(float(cos), abs=1e-5)
    assert torch.allclose(predict_e_msc(enc, task.msc, x0, m, batch["text"]), pred, atol=1e-5)


def _items(batch: dict) -> list[dict]:
    """A batch split back into dataset items (what ``setup`` reads)."""
    return [{k: (v[i] if k != "index" else int(v[i])) for k, v in batch.items()} for i in range(len(batch["text"]))]


def test_feature_cache_hits_and_invalidates():
    task = MSCTask(tiny_encoder(), seed=0, cache_batch=2)
    batch = msc_batch(3, seed=2)
    task.setup(torch.device("cpu"), torch.float32, _items(batch))     # filled once, in fixed chunks
    first = task.loss(batch)[0]
    assert (task.cache_misses, task.cache_hits) == (0, 3)
    changed = dict(batch, image=batch["image"].clone())
    changed["image"][0] = 1 - changed["image"][0]                    # same id, new pixels -> recomputed
    task.loss(changed)
    assert (task.cache_misses, task.cache_hits) == (1, 5)
    task.loss(changed)
    assert (task.cache_misses, task.cache_hits) == (2, 7)             # a miss is never added during training
    uncached = MSCTask(tiny_encoder(), seed=0, cache_features=False)
    uncached.setup(torch.device("cpu"), torch.float32, _items(batch))
    assert torch.allclose(uncached.loss(batch)[0], first, rtol=1e-5) and not uncached._cache


def test_cached_features_do_not_depend_on_which_samples_shared_a_batch():
    """Resumed runs see the same features as uninterrupted ones: the cache is a function of the dataset only."""
    batch = msc_batch(5, seed=4)
    a, b = MSCTask(tiny_encoder(), seed=0, cache_batch=2), MSCTask(tiny_encoder(), seed=0, cache_batch=2)
    a.setup(torch.device("cpu"), torch.float32, _items(batch))
    b.loss({k: v[:3] if k != "index" else v[:3] for k, v in batch.items()})   # on-the-fly misses first ...
    b.setup(torch.device("cpu"), torch.float32, _items(batch))            # ... do not change what is cached
    assert a._cache.keys() == b._cache.keys()
    for k in a._cache:
        assert all(torch.equal(x, y) for x, y in zip(a._cache[k], b._cache[k]))


def test_training_reduces_loss_and_only_msc_changes():
    enc = tiny_encoder()
    frozen = checksum(enc.model)
    task = MSCTask(enc, seed=0)
    [module] = task.trainable_modules()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
    batch = msc_batch(8, seed=3)
    before = task.evaluate(batch)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, _ = task.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.evaluate(batch)
    assert after["loss"] < 0.2 * before["loss"] and after["cos"] > before["cos"]
    assert checksum(enc.model) == frozen
    state = task.export_state()
    assert set(state) == set(module.state_dict()) and all(v.device.type == "cpu" for v in state.values())


def test_mismatched_config_is_refused():
    with pytest.raises(ModelError, match="does not match encoder"):
        MSCTask(tiny_encoder(), config=MSCConfig(embed_dim=512))


def test_with_slice_dataset(tmp_path):
    """Batches from the data module (diseased training rows of a synthetic WORK)."""
    from medsoft_aug.train.data import SliceDataset, collate
    from _train_helpers import make_work

    work = make_work(tmp_path / "w", n_per_class=3)
    ds = SliceDataset(work, split="train", resolution=32, diseased_only=True)
    batch = collate([ds[i] for i in range(len(ds))])
    assert set(batch["label"]) == {"benign", "malignant"}
    task = MSCTask(tiny_encoder(), seed=0)
    loss, logs = task.loss(batch)
    assert torch.isfinite(loss) and 0 < logs["loss"] and -1 <= logs["cos"] <= 1
