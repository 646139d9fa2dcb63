"""Level names <-> labels and coordinate boxes (hand-computed references)."""
import numpy as np
import pytest

from medsoft_aug.errors import InputError
from medsoft_aug.masks import levels as lv
from medsoft_aug.masks.from_coords import box_mask
from medsoft_aug.masks.levels import parse_level


def test_verse_numbering_table():
    assert [lv.VERSE[n] for n in ("C1", "C7", "T1", "T12", "L1", "L5", "L6", "S1", "T13")] == \
        [1, 7, 8, 19, 20, 24, 25, 26, 28]
    assert lv.vertebra_labels("L3", "verse") == [22, 222]
    assert lv.disc_label("L4", "verse") == 123


def test_totalseg_numbering_table():
    # TotalSegmentator total v2: 25 sacrum, 26 S1, 27 L5 ... 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1.
    assert [lv.TOTALSEG[n] for n in ("S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11", "T1", "C7", "C1")] == \
        [26, 27, 28, 29, 30, 31, 32, 33, 43, 44, 50]
    with pytest.raises(InputError, match="L6"):
        lv.vertebra_labels("L6", "totalseg")
    with pytest.raises(InputError):
        lv.vertebra_labels("L3", "totalseg-mr")
    assert lv.disc_label("L4", "totalseg") is None


@pytest.mark.parametrize("text,kind,upper,lower,label", [
    ("L3", "vertebra", "L3", None, None), ("t12", "vertebra", "T12", None, None),
    ("sacrum", "vertebra", "S1", None, None), ("L4/L5", "disc", "L4", "L5", None),
    ("L4-L5", "disc", "L4", "L5", None), ("l5_s1", "disc", "L5", "S1", None), ("L4/5", "disc", "L4", "L5", None),
    ("T12/L1", "disc", "T12", "L1", None), ("L5-S1", "disc", "L5", "S1", None),
    ("22", "label", None, None, 22), ("22.0", "label", None, None, 22),
])
def test_parse_level(text, kind, upper, lower, label):
    lev = parse_level(text)
    assert (lev.kind, lev.upper, lev.lower, lev.label) == (kind, upper, lower, label)


@pytest.mark.parametrize("text", ["", "L9", "X3", "L3/L5", "L5/L4", "2.5", "-3", "L3 level"])
def test_parse_level_rejects(text):
    with pytest.raises(InputError):
        parse_level(text)


def test_box_mask_matches_hand_computation_anisotropic():
    rng = np.random.default_rng(11)
    for _ in range(5):
        shape = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
        x, y = rng.uniform(0, shape[1] - 1), rng.uniform(0, shape[0] - 1)
        sp = (rng.uniform(0.4, 2.0), rng.uniform(0.4, 2.0))
        box = rng.uniform(5, 30)
        m = box_mask(shape, x, y, box, sp)
        ref = np.zeros(shape, bool)
        for r in range(shape[0]):
            for c in range(shape[1]):
                ref[r, c] = abs(r - y) * sp[0] <= box / 2 and abs(c - x) * sp[1] <= box / 2
        np.testing.assert_array_equal(m, ref)


def test_box_mask_sizes_and_errors():
    m = box_mask((100, 100), 50, 50, 20.0, (0.5, 2.0))  # 41 rows (+-20 px), 11 cols (+-5 px)
    assert m.sum() == 41 * 11
    assert box_mask((10, 10), 0, 0, 40.0, (1, 1)).sum() == 100  # clipped, still non-empty
    with pytest.raises(InputError, match="outside"):
        box_mask((10, 10), 10.0, 3, 4.0, (1, 1))
    with pytest.raises(InputError, match="outside"):
        box_mask((10, 10), 3, -1, 4.0, (1, 1))
    with pytest.raises(InputError, match="no pixel"):
        box_mask((10, 10), 4.5, 4.5, 0.5, (1, 1))
