"""Hard masks from label slices: phantom slices and the real label maps in ../shared/realdata."""
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from _masks_helpers import phantom_seg
from medsoft_aug.errors import InputError
from medsoft_aug.masks.from_seg import guess_numbering, hard_mask_from_seg, integer_labels, label_set
from medsoft_aug.masks.levels import parse_level
from medsoft_aug.masks.soften import soften


def _mask(seg, level, numbering, **kw):
    return hard_mask_from_seg(integer_labels(seg), parse_level(level), numbering, **kw)


def test_vertebra_disc_and_numeric_levels_verse():
    seg = phantom_seg()
    m, note = _mask(seg, "L3", "verse")
    np.testing.assert_array_equal(m, seg == 22)
    m, note = _mask(seg, "L3/L4", "verse")
    np.testing.assert_array_equal(m, seg == 122)
    assert note == "disc label 122"
    m, _ = _mask(seg, "23", "totalseg")  # numeric label: used as is, whatever the numbering
    np.testing.assert_array_equal(m, seg == 23)


def test_disc_without_disc_label_is_union_of_adjacent_vertebrae():
    seg = phantom_seg(disc_offset=None)
    m, note = _mask(seg, "L4-L5", "verse")
    np.testing.assert_array_equal(m, (seg == 23) | (seg == 24))
    assert note.startswith("union")
    # TotalSegmentator total: L2 = 30, L3 = 29; no disc labels.
    seg_t = phantom_seg(labels=(31, 30, 29, 28), disc_offset=None)
    m, _ = _mask(seg_t, "L2/L3", "totalseg")
    np.testing.assert_array_equal(m, (seg_t == 30) | (seg_t == 29))


def test_totalseg_s1_falls_back_to_sacrum():
    seg = phantom_seg(labels=(28, 27, 25), disc_offset=None)  # L4, L5, sacrum (no S1 label 26)
    m, _ = _mask(seg, "S1", "totalseg")
    np.testing.assert_array_equal(m, seg == 25)


def test_verse_vertebra_includes_endplate_label():
    seg = phantom_seg()
    seg[seg == 22] = 22.0
    rows = np.nonzero((seg == 22).any(1))[0]
    seg[rows[0], :][seg[rows[0], :] == 22] = 222  # top endplate row of L3
    m, _ = _mask(seg, "L3", "verse")
    np.testing.assert_array_equal(m, (seg == 22) | (seg == 222))


def test_missing_level_is_an_error_never_empty():
    seg = phantom_seg()
    with pytest.raises(InputError, match="L6"):
        _mask(seg, "L6", "verse")
    with pytest.raises(InputError, match="label 77"):
        _mask(seg, "77", "verse")
    with pytest.raises(InputError, match="neither"):
        _mask(phantom_seg(labels=(20, 21)), "L4/L5", "verse")


def test_float_labels_with_tolerance_and_interpolated_rejected():
    rng = np.random.default_rng(5)
    seg = phantom_seg().astype(np.float64)
    noisy = seg + rng.uniform(-1e-6, 1e-6, seg.shape) * (seg > 0)
    np.testing.assert_array_equal(integer_labels(noisy), seg.astype(np.int32))
    bad = seg.copy()
    bad[40, 40] = 21.5
    with pytest.raises(InputError, match="non-integer"):
        integer_labels(bad)
    bad[40, 40] = np.nan
    with pytest.raises(InputError, match="NaN"):
        integer_labels(bad)


def test_total_mr_component_nearest_to_point():
    seg = phantom_seg(labels=(19, 19, 19, 19), disc_offset=1)  # all vertebrae 19, discs 20
    comps, n = ndimage.label(seg == 19)
    assert n == 4
    r, c = np.argwhere(comps == 3)[5]
    m, note = _mask(seg, "L3", "totalseg-mr", x=float(c) + 0.2, y=float(r), spacing=(1.0, 1.0))
    np.testing.assert_array_equal(m, comps == 3)
    # a point outside every component: the nearest one in mm (rows 3 mm apart dominate with spacing 3,0.1)
    m, _ = _mask(seg, "L3/L4", "totalseg-mr", x=2.0, y=float(r), spacing=(3.0, 0.1))
    dcomp, _ = ndimage.label(seg == 20)
    assert m.any() and len(np.unique(dcomp[m])) == 1
    with pytest.raises(InputError, match="without x, y"):
        _mask(seg, "L3", "totalseg-mr")


def test_guess_numbering_rules():
    assert guess_numbering({5, 6, 7, 105, 106, 205, 206})[0] == "verse"
    assert guess_numbering({20, 21, 22, 120, 121})[0] == "verse"
    assert guess_numbering({5, 6, 30, 31, 32, 33, 52, 64, 79, 86})[0] == "totalseg"
    assert guess_numbering({5, 6, 7, 19, 20, 23, 25, 46})[0] == "totalseg-mr"
    assert guess_numbering({20, 21, 22, 23, 24})[0] is None  # fits every numbering
    assert guess_numbering(set())[0] is None


# ---- real label maps (../shared/realdata) --------------------------------------------------------------------

def _sagittal(path, labels_wanted):
    """The sagittal (RAS axis 0) slice with most voxels of the wanted labels, as float (like ingest writes)."""
    a = np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)
    counts = np.isin(a, labels_wanted).sum(axis=(1, 2))
    return a[int(np.argmax(counts))].astype(np.float64)


def _inside_checks(seg, level, numbering, want_labels, spacing, **kw):
    hard, _ = _mask(seg, level, numbering, spacing=spacing, **kw)
    vert = np.isin(np.rint(seg), want_labels)
    np.testing.assert_array_equal(hard, vert)
    soft = soften(hard, 3.0, spacing)
    assert soft.min() >= 0 and soft.max() <= 1 and soft.max() > 0.5
    core = soft >= 0.5
    assert vert[np.unravel_index(np.argmax(soft), soft.shape)]
    assert (core & vert).sum() >= 0.85 * core.sum()  # the soft mask's body lies inside the vertebra


def test_real_tptbox_verse_levels(realdata):
    seg = _sagittal(realdata / "tptbox/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz", [5, 6, 7])
    assert label_set(integer_labels(seg)) >= {5, 6, 7, 105, 106}
    assert guess_numbering(label_set(integer_labels(seg)))[0] == "verse"
    for level, lab in (("C5", 5), ("C6", 6), ("C7", 7)):
        _inside_checks(seg, level, "verse", [lab, lab + 200], (1.5, 1.5))
    hard, note = _mask(seg, "C5/C6", "verse")
    assert note == "disc label 105" and hard.any()


def test_real_totalsegmentator_ct_total_numbering(realdata):
    seg = _sagittal(realdata / "totalsegmentator/example_seg.nii.gz", [30, 31, 32, 33])
    assert guess_numbering(label_set(integer_labels(seg)))[0] == "totalseg"
    for level, lab in (("L2", 30), ("L1", 31), ("T12", 32), ("T11", 33)):
        _inside_checks(seg, level, "totalseg", [lab], (3.0, 3.0))


def test_real_totalsegmentator_mr_single_vertebra_class(realdata):
    seg = _sagittal(realdata / "totalsegmentator/example_seg_mr.nii.gz", [19])
    lab = integer_labels(seg)
    comps, n = ndimage.label(lab == 19, structure=np.ones((3, 3)))
    assert n >= 1
    k = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
    r, c = np.argwhere(comps == k).mean(0)
    hard, _ = _mask(seg, "L2", "totalseg-mr", x=float(c), y=float(r), spacing=(3.0, 3.0))
    np.testing.assert_array_equal(hard, comps == k)
