"""build_masks on synthetic WORK folders: outputs, per-sample errors, reruns."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _masks_helpers import make_work, phantom_seg
from medsoft_aug.api import build_masks
from medsoft_aug.errors import InputError, PartialFailure, UsageError
from medsoft_aug.masks.soften import soften
from medsoft_aug.workdir import MASK_COLUMNS, read_masks


def _good_samples():
    seg = phantom_seg(shape=(96, 80))
    return [
        dict(sample_id="n1", label="normal", seg=seg, level="L2", spacing=(0.8, 0.6)),
        dict(sample_id="n2", label="normal", seg=seg, level="L4/L5"),
        dict(sample_id="t1", label="tumor", shape=(70, 50), x=20.5, y=30, spacing=(1.2, 0.7)),
        dict(sample_id="t2", label="tumor", seg=seg, level="L3", x=40, y=40),
    ]


def test_build_masks_writes_masks_csv_json(tmp_path):
    work = make_work(tmp_path / "w", _good_samples())
    res = build_masks(work, sigma_mm=2.0, box_mm=20.0, preview=tmp_path / "p.png")
    assert (res.total, res.ok, res.failed, res.computed) == (4, 4, 0, 4)
    df = read_masks(work)
    assert list(df.columns) == MASK_COLUMNS and (df.status == "ok").all()
    assert df.set_index("sample_id").mask_source.to_dict() == {"n1": "seg", "n2": "seg", "t1": "coords",
                                                              "t2": "seg"}
    seg = phantom_seg(shape=(96, 80))
    m = np.load(work / "masks/n1.npy")
    assert m.dtype == np.float32 and m.shape == seg.shape
    np.testing.assert_allclose(m, soften(seg == 21, 2.0, (0.8, 0.6)), atol=1e-6)
    t1 = np.load(work / "masks/t1.npy")
    assert t1.shape == (70, 50) and 0 <= t1.min() and t1.max() <= 1 and t1[30, 20] == pytest.approx(1, abs=1e-3)
    # area: rows |r-30|*1.2 <= 10 -> 17 rows; cols |c-20.5|*0.7 <= 10 -> 28 cols
    assert int(df.set_index("sample_id").loc["t1", "area_px"]) == 17 * 28
    rec = json.loads((work / "masks.json").read_text())
    assert rec["counts"]["ok"] == 4 and rec["options"]["sigma_mm"] == 2.0
    assert rec["numbering"]["decided"] == {"verse": 3}
    png = Image.open(tmp_path / "p.png")
    assert png.mode == "RGB" and png.size[0] > 600
    assert not list(work.rglob("*.tmp"))


def test_partial_failure_lists_each_problem(tmp_path):
    seg = phantom_seg(shape=(64, 48))
    samples = _good_samples() + [
        dict(sample_id="absent", seg=seg, level="T1"),
        dict(sample_id="shape", seg=phantom_seg(shape=(64, 48)), shape=(60, 48), level="L2"),
        dict(sample_id="outside", x=500, y=3),
        dict(sample_id="nothing"),
        dict(sample_id="nospacing", x=5, y=5, spacing=None),
    ]
    samples += [dict(sample_id="corrupt", seg=seg, level="L2"), dict(sample_id="escape", x=3, y=3)]
    work = make_work(tmp_path / "w", samples)
    (work / "seg/corrupt.npy").write_bytes((work / "seg/corrupt.npy").read_bytes()[:100])  # truncated
    idx = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False)
    idx.loc[idx.sample_id == "escape", "image"] = "../elsewhere.npy"
    idx.to_csv(work / "index.csv", index=False)
    with pytest.raises(PartialFailure) as ei:
        build_masks(work)
    probs = {f.sample_id: f.problem for f in ei.value.failures}
    assert set(probs) == {"absent", "shape", "outside", "nothing", "nospacing", "corrupt", "escape"}
    assert "T1" in probs["absent"] and "shape" in probs["shape"] and "outside" in probs["outside"]
    assert "no x, y" in probs["nothing"] and "spacing" in probs["nospacing"]
    assert "unreadable" in probs["corrupt"] and "escapes WORK" in probs["escape"]
    df = read_masks(work).set_index("sample_id")
    assert (df.loc[list(probs), "status"] == "error").all() and (df.loc[list(probs), "mask"] == "").all()
    assert not any((work / "masks" / f"{s}.npy").exists() for s in probs)
    assert ei.value.result.ok == 4
    assert len(json.loads((work / "masks.json").read_text())["failures"]) == 7


def test_all_failed_is_input_error_and_writes_nothing(tmp_path):
    work = make_work(tmp_path / "w", [dict(sample_id="a"), dict(sample_id="b", x=-3, y=2)])
    with pytest.raises(InputError, match="no mask could be built"):
        build_masks(work)
    assert not (work / "masks.csv").exists() and not (work / "masks.json").exists()
    assert not (work / "masks").exists() or not list((work / "masks").iterdir())


def test_missing_index_and_bad_options(tmp_path):
    with pytest.raises(InputError, match="index.csv"):
        build_masks(tmp_path)
    work = make_work(tmp_path / "w", _good_samples())
    for kw in (dict(source="box"), dict(sigma_mm=-1.0), dict(box_mm=0.0), dict(numbering="nnunet"),
               dict(preview=tmp_path / "x.jpg")):
        with pytest.raises(UsageError):
            build_masks(work, **kw)


def test_rerun_reuses_and_force_or_changes_recompute(tmp_path):
    work = make_work(tmp_path / "w", _good_samples())
    build_masks(work)
    before = {p.name: p.read_bytes() for p in (work / "masks").iterdir()}
    csv1 = (work / "masks.csv").read_bytes()
    res = build_masks(work)
    assert (res.reused, res.computed) == (4, 0)
    assert (work / "masks.csv").read_bytes() == csv1
    assert {p.name: p.read_bytes() for p in (work / "masks").iterdir()} == before
    assert build_masks(work, force=True).computed == 4
    assert {p.name: p.read_bytes() for p in (work / "masks").iterdir()} == before  # deterministic
    # changed input (seg of one sample) and changed option: recomputed
    seg = np.load(work / "seg/n1.npy")
    seg[seg == 21] = 0
    seg[10:20, 10:20] = 21
    np.save(work / "seg/n1.npy", seg)
    res = build_masks(work)
    assert (res.reused, res.computed) == (3, 1)
    assert build_masks(work, sigma_mm=1.0).computed == 4


def test_sample_failing_on_rerun_loses_its_stale_mask(tmp_path):
    work = make_work(tmp_path / "w", _good_samples())
    build_masks(work)
    idx = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False)
    idx.loc[idx.sample_id == "t2", "level"] = "C1"
    idx.to_csv(work / "index.csv", index=False)
    with pytest.raises(PartialFailure):
        build_masks(work)
    assert not (work / "masks/t2.npy").exists()


def test_source_options_and_auto_fallback(tmp_path):
    work = make_work(tmp_path / "w", _good_samples())
    with pytest.raises(PartialFailure) as ei:
        build_masks(work, source="coords")  # n1, n2 have no x, y
    assert {f.sample_id for f in ei.value.failures} == {"n1", "n2"}
    with pytest.raises(PartialFailure) as ei:
        build_masks(work, source="seg")  # t1 has no seg
    assert {f.sample_id for f in ei.value.failures} == {"t1"}
    # auto: a level that names no vertebra is an error for that sample, not a silent coords box (issue 8)
    work2 = make_work(tmp_path / "w2", [dict(sample_id="a", seg=phantom_seg(), level="??", x=30, y=30),
                                        dict(sample_id="b", seg=phantom_seg(), level="L99", x=30, y=30),
                                        dict(sample_id="c", seg=phantom_seg(), level="L2", x=30, y=30)])
    with pytest.raises(PartialFailure) as ei:
        build_masks(work2)
    probs = {f.sample_id: f.problem for f in ei.value.failures}
    assert set(probs) == {"a", "b"} and "L99" in probs["b"] and "not a known vertebra" in probs["b"]
    assert ei.value.result.by_source == {"seg": 1}


def test_ambiguous_numbering_takes_majority_and_dilation(tmp_path):
    from scipy import ndimage

    ambiguous = phantom_seg(labels=(28, 27, 26), disc_offset=None)  # values <= 28 fit every numbering
    total = ambiguous.copy()
    total[0:3, 0:3] = 79  # spinal cord: a label only TotalSegmentator total has
    work = make_work(tmp_path / "w", [dict(sample_id="a", seg=ambiguous, level="L4"),
                                      dict(sample_id="b", seg=total, level="L5")])
    res = build_masks(work, sigma_mm=0.0, dilate_mm=2.0)
    assert res.numbering["decided"] == {"totalseg": 2} and res.numbering["ambiguous"] == 1
    yy, xx = np.mgrid[-2:3, -2:3]
    ref = ndimage.binary_dilation(ambiguous == 28, structure=yy ** 2 + xx ** 2 <= 4)  # L4 = 28 in total
    np.testing.assert_array_equal(np.load(work / "masks/a.npy"), ref.astype(np.float32))


def test_fatal_error_removes_what_the_run_created(tmp_path, monkeypatch):
    import medsoft_aug.masks.stage as stage

    work = make_work(tmp_path / "w", _good_samples())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(stage, "atomic_write_json", boom)
    with pytest.raises(OSError):
        build_masks(work, preview=tmp_path / "p.png")
    assert not (work / "masks.csv").exists() and not (tmp_path / "p.png").exists()
    assert not list((work / "masks").glob("*"))


def test_all_failing_rerun_keeps_previous_outputs(tmp_path):
    work = make_work(tmp_path / "w", _good_samples())
    build_masks(work)
    csv1 = (work / "masks.csv").read_bytes()
    idx = pd.read_csv(work / "index.csv", dtype=str, keep_default_na=False)
    idx["level"], idx["x"], idx["y"] = "C1", "", ""
    idx.to_csv(work / "index.csv", index=False)
    with pytest.raises(InputError):
        build_masks(work, source="seg")
    assert (work / "masks.csv").read_bytes() == csv1 and (work / "masks/n1.npy").exists()
