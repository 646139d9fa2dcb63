"""bench/efficacy.py's selection variants: options, and the cost it reads from what `balance` really writes."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from medsoft_aug import api

from _balance_helpers import one_thread, write_work


@pytest.fixture(scope="module")
def efficacy(repo_root):
    spec = importlib.util.spec_from_file_location("bench_efficacy", repo_root / "bench" / "efficacy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_efficacy", mod)
    spec.loader.exec_module(mod)
    return mod


def test_selection_variants_parse(efficacy):
    a = efficacy.parse(["--quick", "--variants", "medsoft", "sel-classifier", "sel-feature"])
    assert a.variants == ["medsoft", "sel-classifier", "sel-feature"] and a.candidates == 3
    assert a.min_score is None and a.n_studies == 32
    assert set(efficacy.SELECTION.values()) == set(efficacy.KEEP_BEST)
    with pytest.raises(SystemExit):
        efficacy.parse(["--variants", "sel-nothing"])


def test_balance_cost_from_balance_json(efficacy, tmp_path, tiny_model_dir):
    work = write_work(tmp_path / "work", {"normal": 4, "benign": 2, "malignant": 3},
                      descriptions={"benign": ["bright round lesion"], "malignant": ["dark irregular lesion"]})
    with one_thread():
        for name, sel in (("k1", {}), ("k2", dict(candidates=2, scorer="classifier", min_score=0.0))):
            api.balance(work, tiny_model_dir, tmp_path / name, steps=2, device="cpu", **sel)
    plain, selected = efficacy.balance_cost(tmp_path / "k1"), efficacy.balance_cost(tmp_path / "k2")
    assert (plain["candidates"], plain["scorer"], plain["kept"]) == (1, None, 3)
    assert (selected["candidates"], selected["scorer"], selected["floor"], selected["kept"]) == (2, "classifier",
                                                                                               0.0, 3)
    for c in (plain, selected):
        assert c["seconds_per_kept_sample"] == pytest.approx(c["generate_s"] / 3, abs=1e-3)
        assert set(c["evidence"]) == {"benign", "malignant"}
        assert c["evidence"]["benign"].endswith("of 2 moved toward their class")


def test_sampling_variants_are_valid_balance_options_on_medsofts_model(efficacy):
    from medsoft_aug.generate.options import BalanceOptions

    for name, kw in efficacy.SAMPLING.items():
        BalanceOptions(**kw)._check_values()                   # a typo in a field name or value fails here
        assert name in efficacy.ON_MEDSOFT
    a = efficacy.parse(["--quick", "--variants", "medsoft", "negatives", "deepcache-3", "ddim-20"])
    assert a.variants == ["medsoft", "negatives", "deepcache-3", "ddim-20"]
