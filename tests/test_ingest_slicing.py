"""Slice geometry: the sagittal display convention, the recorded ops and their exact inverse."""
import json

import numpy as np
import pytest

from medsoft_aug.ingest.slicing import (apply_geometry, geometry_json, make_geometry, slice_spacing,
                                        slice_to_voxel, slice_to_world)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_sagittal_display_matches_hand_computation(rng):
    X, Y, Z = 4, 7, 9
    vol = rng.random((X, Y, Z)).astype(np.float32)
    i = 2
    geom = make_geometry(vol.shape, i, None)
    sl = apply_geometry(vol, geom)
    assert sl.shape == (Z, Y) and geom["out_shape"] == [Z, Y]
    # Hand reference: row 0 = most superior (k = Z-1), col 0 = most anterior (j = Y-1).
    ref = np.empty((Z, Y), np.float32)
    for r in range(Z):
        for c in range(Y):
            ref[r, c] = vol[i, Y - 1 - c, Z - 1 - r]
    np.testing.assert_array_equal(sl, ref)
    np.testing.assert_array_equal(sl, vol[i].T[::-1, ::-1])
    assert sl.flags["C_CONTIGUOUS"]


def test_slice_to_voxel_round_trip_every_pixel(rng):
    vol = rng.random((5, 6, 8))
    geom = json.loads(geometry_json(make_geometry(vol.shape, 3, None)))  # through its JSON form
    sl = apply_geometry(vol, geom)
    for r in range(sl.shape[0]):
        for c in range(sl.shape[1]):
            i, j, k = slice_to_voxel(geom, r, c)
            assert i == 3
            assert vol[int(i), int(j), int(k)] == sl[r, c]


def test_fractional_coordinates_and_world(rng):
    A = np.eye(4)
    A[:3, :3] = np.diag([1.5, 0.5, 0.8])
    A[:3, 3] = [-10, 20, 5]
    geom = make_geometry((5, 6, 8), 1, A)
    i, j, k = slice_to_voxel(geom, 2.25, 3.5)
    assert (i, j, k) == (1.0, 6 - 1 - 3.5, 8 - 1 - 2.25)
    w = slice_to_world(geom, 2.25, 3.5)
    np.testing.assert_allclose(w, A[:3, :3] @ [i, j, k] + A[:3, 3])
    # display convention: down the rows = inferior, right along the columns = posterior
    assert slice_to_world(geom, 3, 3)[2] < slice_to_world(geom, 2, 3)[2]
    assert slice_to_world(geom, 2, 4)[1] < slice_to_world(geom, 2, 3)[1]
    assert slice_spacing((1.5, 0.5, 0.8), geom) == (0.8, 0.5)


def test_2d_identity_and_seg_same_ops(rng):
    img = rng.random((7, 5))
    geom = make_geometry(img.shape, None, None)
    assert geom["ops"] == [] and geom["slice_index"] is None
    np.testing.assert_array_equal(apply_geometry(img, geom), img)
    assert slice_to_voxel(geom, 3, 4) == (3.0, 4.0)
    assert slice_spacing((0.3, 0.4), geom) == (0.3, 0.4)
    vol = rng.random((3, 4, 6))
    seg = rng.integers(0, 30, (3, 4, 6)).astype(np.float32)
    g3 = make_geometry(vol.shape, 0, None)
    s_img, s_seg = apply_geometry(vol, g3), apply_geometry(seg, g3)
    for r, c in [(0, 0), (5, 3), (2, 1)]:
        ijk = tuple(int(v) for v in slice_to_voxel(g3, r, c))
        assert s_seg[r, c] == seg[ijk] and s_img[r, c] == vol[ijk]
    with pytest.raises(ValueError):
        apply_geometry(rng.random((3, 4, 5)), g3)
