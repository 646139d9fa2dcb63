"""Plan arithmetic, donors, prompts, seeds, shards (pure; no model, no disk)."""
from __future__ import annotations

import math

import pytest

from medsoft_aug.errors import InputError, UsageError
from medsoft_aug.generate.plan import derive_seed, n_to_generate, plan_balance, prompt_key
from medsoft_aug.generate.scaleout import parse_shard, shard_items
from medsoft_aug.generate.prompts import default_prompts

from _balance_helpers import make_index, make_masks

PROMPTS = {"benign": ["bright round lesion"], "malignant": ["dark lesion a", "dark lesion b"]}


def _plan(counts, **kw):
    idx = make_index(counts, split_counts=kw.pop("split_counts", None), descriptions=kw.pop("descriptions", None))
    return plan_balance(idx, make_masks(idx, bad=kw.pop("bad", ())), prompts=kw.pop("prompts", PROMPTS), **kw)


def test_ratio_one_fills_every_class_to_normal():
    p = _plan({"normal": 10, "benign": 3, "malignant": 1})
    assert p.to_generate == {"benign": 7, "malignant": 9}
    assert p.counts_after == {"benign": 10, "malignant": 10, "normal": 10}
    assert len(p.items) == 16


@pytest.mark.parametrize("n_normal,n_c,ratio", [(7, 0, 0.5), (7, 1, 0.5), (30, 2, 0.1), (10, 0, 0.3),
                                                (3, 0, 1 / 3), (100, 7, 0.07)])
def test_counts_match_hand_formula(n_normal, n_c, ratio):
    # Independent reference: exact decimal arithmetic by hand (r printed with repr, times N, rounded up).
    from decimal import ROUND_CEILING, Decimal

    target = int((Decimal(repr(ratio)) * n_normal).to_integral_value(rounding=ROUND_CEILING))
    assert n_to_generate(ratio, n_normal, n_c) == max(0, target - n_c)


def test_ratio_half_rounds_up_without_float_error():
    p = _plan({"normal": 7, "benign": 1, "malignant": 2}, ratio=0.5, classes=["benign", "malignant"])
    assert p.target == {"benign": 4, "malignant": 4}          # ceil(3.5)
    assert p.to_generate == {"benign": 3, "malignant": 2}
    assert n_to_generate(0.07, 100, 0) == 7                    # 0.07 * 100 = 7.000000000000001 in floats
    assert math.ceil(0.07 * 100) == 8                          # ... which a naive ceil gets wrong


def test_class_above_target_gets_none_and_test_rows_never_count():
    p = _plan({"normal": 6, "benign": 9, "malignant": 1}, classes=["benign", "malignant"],
              split_counts={"test": {"malignant": 2}})
    assert p.counts_before["malignant"] == 1                   # test rows never count
    assert p.to_generate == {"benign": 0, "malignant": 5}
    assert all(it.label == "malignant" for it in p.items)


def test_classes_restricts_and_unknown_class_is_input_error():
    p = _plan({"normal": 5, "benign": 1, "malignant": 1}, classes=["benign"])
    assert set(p.to_generate) == {"benign"}
    with pytest.raises(InputError, match="'tumour': no real training sample"):
        _plan({"normal": 5, "benign": 1}, classes=["tumour"])


@pytest.mark.parametrize("given,near", [("Benign", "benign"), ("BENIGN ", "benign"), ("benigm", "benign"),
                                        ("Spinal-Canal stenosis", "spinal_canal_stenosis")])
def test_class_with_no_training_sample_is_refused_with_the_near_match(given, near):
    # Before: 'Benign' (prompts match case-insensitively) became a new class of synthetic samples and no real ones.
    counts = {"normal": 5, "benign": 1, "spinal_canal_stenosis": 2}
    with pytest.raises(InputError, match=f"did you mean '{near}'") as e:
        _plan(counts, classes=[given], prompts={**PROMPTS, "spinal canal stenosis": ["narrow canal"]})
    assert e.value.exit_code == 3


def test_class_only_in_test_split_is_refused():
    with pytest.raises(InputError, match="'malignant'.*only val/test samples"):
        _plan({"normal": 6, "benign": 1}, classes=["malignant"], split_counts={"test": {"malignant": 2}})


def test_outsized_plan_is_refused_before_any_item_is_built():
    with pytest.raises(UsageError, match="999999999 synthetic samples.*100x the 3 training.*--max-synthetic") as e:
        _plan({"normal": 1, "benign": 1, "malignant": 1}, ratio=1e9, classes=["benign"])
    assert e.value.exit_code == 2
    assert "e+" not in str(e.value)
    # just above the default limit: 100 x 12 train rows = 1200
    with pytest.raises(UsageError):
        _plan({"normal": 10, "benign": 1, "malignant": 1}, ratio=121, classes=["benign"])
    p = _plan({"normal": 10, "benign": 1, "malignant": 1}, ratio=120, classes=["benign"])
    assert p.total == 1199
    # an explicit --max-synthetic allows a larger plan, and can also lower the limit
    big = _plan({"normal": 10, "benign": 1, "malignant": 1}, ratio=500, classes=["benign"], max_synthetic=5000)
    assert big.total == 4999 and sum(1 for _ in big.iter_items(2, 7)) == len(big.items[1::7])
    with pytest.raises(UsageError, match="more than --max-synthetic 10"):
        _plan({"normal": 10, "benign": 1, "malignant": 1}, max_synthetic=10)


def test_streamed_items_equal_the_materialised_plan_and_donor_uses_are_counted():
    p = _plan({"normal": 7, "benign": 2, "malignant": 0, "odd": 3}, ratio=3.0,
              prompts={**PROMPTS, "odd": ["x {level}", "y"]})
    items = p.items
    assert items == list(p.iter_items())
    for k in (1, 2, 3):
        assert list(p.iter_items(k, 3)) == shard_items(items, k, 3)
    counted: dict = {}
    for it in items:
        counted[it.donor_id] = counted.get(it.donor_id, 0) + 1
    assert p.donor_uses() == counted                             # arithmetic == counting the items
    prompts: dict = {}
    for it in items:
        prompts.setdefault(it.label, [])
        if it.prompt not in prompts[it.label]:
            prompts[it.label].append(it.prompt)
    assert p.prompts() == prompts and p.to_dict()["total_to_generate"] == len(items)


def test_dicom_output_keeps_only_dicom_donors_and_refuses_when_none():
    idx = make_index({"normal": 6, "benign": 1})
    fmts = ["dicom", "nifti", "dicom-series", "raster", "nifti", "dicom"]
    idx.loc[idx.label == "normal", "source_format"] = fmts
    masks = make_masks(idx)
    p = plan_balance(idx, masks, prompts=PROMPTS, output_format="dicom")
    src = dict(zip(idx.sample_id, idx.source_format))
    assert {src[it.donor_id] for it in p.items} <= {"dicom", "dicom-series"}
    doc = p.to_dict(with_items=False)
    assert doc["output_format"] == "dicom" and doc["donors"]["pool"] == 3 and doc["donors"]["eligible"] == 6
    assert doc["donors"]["excluded_not_dicom"] == {"nifti": 2, "raster": 1}
    assert plan_balance(idx, masks, prompts=PROMPTS).to_dict()["donors"]["pool"] == 6    # PNG: every donor
    idx.loc[idx.label == "normal", "source_format"] = "nifti"
    with pytest.raises(InputError, match="needs DICOM donors.*nifti: 6.*png or nifti"):
        plan_balance(idx, masks, prompts=PROMPTS, output_format="dicom")


def test_donors_spread_evenly_and_only_ok_normals_from_train():
    counts = {"normal": 7, "benign": 1, "malignant": 1}
    p = _plan(counts, classes=["benign", "malignant"], bad=("train-normal-002",),
              split_counts={"test": {"normal": 3}})
    uses = p.donor_uses()
    assert "train-normal-002" not in uses and not any(d.startswith("test-") for d in uses)
    assert len(uses) == 6 and sum(uses.values()) == 12
    assert max(uses.values()) - min(uses.values()) <= 1


def test_deterministic_and_seed_dependent():
    a = _plan({"normal": 9, "benign": 2, "malignant": 3}, seed=5)
    b = _plan({"normal": 9, "benign": 2, "malignant": 3}, seed=5)
    c = _plan({"normal": 9, "benign": 2, "malignant": 3}, seed=6)
    assert a.items == b.items
    assert [i.seed for i in a.items] != [i.seed for i in c.items]
    assert [i.donor_id for i in a.items] != [i.donor_id for i in c.items]
    assert len({i.seed for i in a.items}) == len(a.items)
    assert len({i.sample_id for i in a.items}) == len(a.items)
    assert a.items[0].sample_id == "syn-benign-00000"
    assert a.items[0].seed == derive_seed(5, "syn-benign-00000")


def test_prompts_from_descriptions_and_file():
    descs = {"benign": ["real desc one", "real desc two"]}
    p = _plan({"normal": 4, "benign": 2, "malignant": 1}, descriptions=descs)
    assert p.prompt_source == {"benign": "descriptions", "malignant": "file"}
    assert {i.prompt for i in p.items if i.label == "benign"} == {"real desc one", "real desc two"}
    assert {i.prompt for i in p.items if i.label == "malignant"} == {"dark lesion a", "dark lesion b"}
    p2 = _plan({"normal": 4, "benign": 2}, descriptions=descs, prompt_mode="file")
    assert {i.prompt for i in p2.items} == {"bright round lesion"}
    with pytest.raises(InputError, match="no prompt for class 'odd'"):
        _plan({"normal": 4, "odd": 1})


def test_shipped_defaults_cover_tumour_and_rsna_classes_with_level():
    d = default_prompts()
    for cls in ("benign", "malignant", "hemangioma", "metastasis", "Spinal Canal Stenosis/Moderate",
                "left_neural_foraminal_narrowing_severe", "right neural foraminal narrowing moderate"):
        assert prompt_key(cls) in d, cls
    p = _plan({"normal": 3, "spinal_canal_stenosis_severe": 1}, prompts=d)
    assert all("at L3" in i.prompt for i in p.items)


def test_bad_ratio_and_no_normals():
    with pytest.raises(UsageError):
        _plan({"normal": 3, "benign": 1}, ratio=0.0)
    with pytest.raises(InputError, match="normal class"):
        _plan({"benign": 3})


def test_shards_partition_the_plan():
    p = _plan({"normal": 20, "benign": 3, "malignant": 5})
    parts = [shard_items(p.items, k, 3) for k in (1, 2, 3)]
    ids = [i.sample_id for part in parts for i in part]
    assert sorted(ids) == sorted(i.sample_id for i in p.items) and len(set(ids)) == len(ids)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) == (1, 1)
    for bad in ("0/3", "4/3", "a/b", "1"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_real_descriptions_are_moved_to_the_donors_level():
    idx = make_index({"normal": 4, "benign": 1}, descriptions={"benign": ["round bright lesion in the L3 body, "
                                                                           "not L3/L4"]})
    idx.loc[idx.label == "normal", "level"] = ["L1", "L5", "L2", "L3"]
    level = dict(zip(idx.sample_id, idx.level))
    p = plan_balance(idx, make_masks(idx), prompts=PROMPTS)
    assert len(p.items) == 3
    for it in p.items:
        assert it.prompt == f"round bright lesion in the {level[it.donor_id]} body, not L3/L4"


def test_negative_prompts_other_classes_interleave_every_other_disease_class():
    prompts = {"benign": ["bright a", "bright b"], "malignant": ["dark a"], "fracture": ["wedge a", "wedge b",
                                                                                           "wedge c"]}
    counts = {"normal": 9, "benign": 2, "malignant": 1, "fracture": 3}
    none = _plan(counts, prompts=prompts)
    assert none.negative_prompts == "none" and {i.negative_prompt for i in none.items} == {""}
    p = _plan(counts, prompts=prompts, negative_prompts="other-classes")
    assert [(i.sample_id, i.prompt, i.seed, i.donor_id) for i in p.items] == \
        [(i.sample_id, i.prompt, i.seed, i.donor_id) for i in none.items]         # only the negatives differ
    by = {c: [i.negative_prompt for i in p.items if i.label == c] for c in counts if c != "normal"}
    # other classes in sorted order (benign: fracture, malignant; ...), interleaved text by text; the k-th item
    # uses the k-th of the interleaved list, cycling
    for c, negs in by.items():
        ref = {"benign": ["wedge a", "dark a", "wedge b", "wedge c"],
               "malignant": ["bright a", "wedge a", "bright b", "wedge b", "wedge c"],
               "fracture": ["bright a", "dark a", "bright b"]}[c]
        assert negs == [ref[k % len(ref)] for k in range(len(negs))], c
    assert p.to_dict()["negative_prompts"] == "other-classes"
    only = _plan(counts, prompts=prompts, negative_prompts="other-classes", classes=["malignant"])
    assert {i.negative_prompt for i in only.items} <= {"bright a", "wedge a", "bright b", "wedge b", "wedge c"}
    with pytest.raises(UsageError, match="no other disease class"):
        _plan({"normal": 4, "benign": 1}, negative_prompts="other-classes")
    with pytest.raises(UsageError, match="--negative-prompts must be one of"):
        _plan(counts, negative_prompts="others")


def test_negative_prompts_name_the_donors_level_like_the_prompt():
    idx = make_index({"normal": 4, "benign": 1, "malignant": 1},
                     descriptions={"benign": ["bright lesion in L3"], "malignant": ["dark lesion in L3"]})
    idx.loc[idx.label == "normal", "level"] = ["L1", "L5", "L2", "L4"]
    idx.loc[idx.label != "normal", "level"] = "L3"
    level = dict(zip(idx.sample_id, idx.level))
    p = plan_balance(idx, make_masks(idx), prompts=PROMPTS, negative_prompts="other-classes")
    for it in p.items:
        other = "dark" if it.label == "benign" else "bright"
        assert it.negative_prompt == f"{other} lesion in {level[it.donor_id]}"
