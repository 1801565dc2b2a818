"""Dark statistics and flags as pure functions (no MPI)."""

import numpy as np
import pytest

from calib_mpi.badpixels import BadPixels
from calib_mpi.process.dark import (
    DarkAccumulator,
    DarkLimits,
    flag_bad_pixels,
    group_sums,
    module_reference,
    unit_quantiles,
)


def _frames(rng, n, n_cells, shape=(8, 8)):
    cells = rng.integers(-1, n_cells, n)
    a = rng.normal(5000, 5, (n,) + shape).round().astype(np.uint16)
    d = rng.normal(4800, 8, (n,) + shape).round().astype(np.uint16)
    return a, d, cells


def test_group_sums_match_brute_force():
    rng = np.random.default_rng(0)
    a, _, cells = _frames(rng, 300, 5)
    uniq, n, s1, s2 = group_sums(a, cells, 5)
    for i, c in enumerate(uniq):
        x = a[cells == c].astype(np.int64)
        assert n[i] == len(x)
        assert np.array_equal(s1[i], x.sum(0)) and np.array_equal(s2[i], (x * x).sum(0))
    assert -1 not in uniq


def test_accumulator_matches_numpy_and_ignores_chunking_and_order():
    rng = np.random.default_rng(1)
    runs = [_frames(rng, 200, 4) for _ in range(3)]
    one = DarkAccumulator(4, (8, 8))
    many = DarkAccumulator(4, (8, 8))
    for g, (a, d, c) in enumerate(runs):
        one.update(g, a, d, c)
        perm = rng.permutation(len(c))
        for part in np.array_split(perm, 7):
            many.update(g, a[part], d[part], c[part])
    r1, r2 = one.result(), many.result()
    for k in r1:
        assert np.array_equal(r1[k], r2[k], equal_nan=True), k
    for g, (a, _, c) in enumerate(runs):
        for cell in range(4):
            x = a[c == cell].astype(np.float64)
            np.testing.assert_allclose(r1["offset"][g, cell], x.mean(0), rtol=1e-7)
            np.testing.assert_allclose(r1["noise"][g, cell], x.std(0), rtol=1e-5)
            assert r1["count"][g, cell] == len(x)
    gl = r1["gain_level"]
    np.testing.assert_allclose(r1["threshold"][0], (gl[0] + gl[1]) / 2)


def test_cell_without_frames_is_nan_and_flagged():
    acc = DarkAccumulator(3, (4, 4))
    rng = np.random.default_rng(2)
    for g in range(3):
        a = rng.normal(100, 2, (10, 4, 4)).astype(np.uint16)
        acc.update(g, a, a + 1000 * g, np.zeros(10, int))  # only cell 0
    r = acc.result()
    assert np.isnan(r["offset"][:, 1:]).all()
    ref = module_reference([unit_quantiles(r["offset"])])
    bad = flag_bad_pixels(r, ref, module_reference([unit_quantiles(r["noise"])]), DarkLimits())
    assert (bad[:, 1:] & BadPixels.NO_DARK_DATA).all()
    assert (bad[:, 1:] & BadPixels.OFFSET_NOISE_EVAL_ERROR).all()
    assert not (bad[:, 0] & BadPixels.NO_DARK_DATA).any()


def test_module_reference_is_robust():
    rng = np.random.default_rng(3)
    vals = rng.normal(5000, 10, (3, 2, 64, 64))
    vals[0, 0, :5, :5] = 0  # outliers do not move the reference
    qs = [unit_quantiles(vals[..., i * 16:(i + 1) * 16]) for i in range(4)]
    centre, width = module_reference(qs)
    assert np.all(np.abs(centre - 5000) < 1.0)
    assert np.all(np.abs(width - 10) < 1.0)


@pytest.mark.parametrize("case", ["offset", "noise", "gain", "zero"])
def test_flags(case):
    shape = (3, 1, 4, 4)
    rng = np.random.default_rng(4)
    res = {"offset": (5000 + rng.normal(0, 1, shape)).astype(np.float32),
           "noise": (5 + rng.normal(0, 0.1, shape)).astype(np.float32),
           "gain_level": np.array([4800, 6400, 7600], np.float32)[:, None, None, None]
           + np.zeros(shape, np.float32),
           "gain_level_std": np.full(shape, 8, np.float32),
           "count": np.full((3, 1), 100)}
    if case == "offset":
        res["offset"][1, 0, 2, 3] += 50
    if case == "noise":
        res["noise"][2, 0, 1, 1] = 9
    if case == "gain":
        res["gain_level"][1, 0, 0, 0] = 4810  # 10 ADU above high gain: < 3 sigma separated
    if case == "zero":
        res["noise"][0, 0, 3, 3] = 0
    ref_o = (np.full((3, 1), 5000.0), np.full((3, 1), 1.0))
    ref_n = (np.full((3, 1), 5.0), np.full((3, 1), 0.1))
    bad = flag_bad_pixels(res, ref_o, ref_n, DarkLimits())
    expected = np.zeros(shape, np.uint32)
    if case == "offset":
        expected[1, 0, 2, 3] = BadPixels.OFFSET_OUT_OF_THRESHOLD
    if case == "noise":
        expected[2, 0, 1, 1] = BadPixels.NOISE_OUT_OF_THRESHOLD
    if case == "gain":
        expected[0:2, 0, 0, 0] = BadPixels.GAIN_THRESHOLDING_ERROR
    if case == "zero":
        expected[0, 0, 3, 3] = (BadPixels.DATA_STD_IS_ZERO | BadPixels.NOISE_OUT_OF_THRESHOLD)
    assert np.array_equal(bad, expected)
