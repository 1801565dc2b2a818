"""Dark statistics and flags as pure functions (no MPI)."""

import numpy as np
import pytest

from calib_mpi.badpixels import BadPixels
from calib_mpi.process import _jit, kernels
from calib_mpi.process.dark import (
    DarkAccumulator,
    DarkLimits,
    flag_bad_pixels,
    module_reference,
    unit_quantiles,
)


def _frames(rng, n, n_cells, shape=(8, 8)):
    cells = rng.integers(-1, n_cells, n)
    a = rng.normal(5000, 5, (n,) + shape).round().astype(np.uint16)
    d = rng.normal(4800, 8, (n,) + shape).round().astype(np.uint16)
    return a, d, cells


def test_group_by_cell():
    cells = np.array([3, -1, 0, 3, 7, 0, 2])
    order, starts, cells_u = kernels.group_by_cell(cells, 4)
    assert cells_u.tolist() == [0, 2, 3]
    groups = [order[starts[g]:starts[g + 1]].tolist() for g in range(len(cells_u))]
    assert groups == [[2, 5], [6], [0, 3]]


@pytest.mark.parametrize("sizes", [(1, 2, 3, 7, 8, 15), (0, 16, 4, 5, 0, 1), (6, 9, 0, 2, 12, 31)])
@pytest.mark.parametrize("block", [(0, 0), (64, 0), (448, 64)])
def test_dark_kernel_is_exact_and_matches_numpy(block, sizes):
    """The compiled kernel and the numpy fallback give the same exact integer sums, on a
    block of a full frame (the no-copy path) with values up to 65535, for cells with 1 to 31
    frames in the slab (every combination of the kernel's sets of 8, 4, 2 and 1), frames of
    a cell scattered over the slab, and frames of no cell (-1) left out."""
    rng = np.random.default_rng(5)
    cells = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)] + [[-1, -1]])
    cells = cells[rng.permutation(len(cells))]
    n_frames = len(cells)
    frames = rng.integers(0, 65536, (n_frames, 2, 512, 128), dtype=np.uint16)
    frames[0, :, block[0]:block[0] + 64, block[1]:block[1] + 64] = 65535
    group = kernels.group_by_cell(cells, 6)
    assert np.diff(group[1]).tolist() == [n for n in sizes if n]
    fast = [np.zeros((6, 64, 64), np.uint64) for _ in range(4)]
    slow = [np.zeros((6, 64, 64), np.uint64) for _ in range(4)]
    kernels.dark_sums(frames, *block, group, fast)
    kernels._dark_sums_numpy(frames, *block, *group, *slow)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)
    blk = frames[:, :, block[0]:block[0] + 64, block[1]:block[1] + 64].astype(np.uint64)
    for c in range(6):
        x = blk[cells == c]
        assert np.array_equal(fast[0][c], x[:, 0].sum(0))
        assert np.array_equal(fast[1][c], (x[:, 0] ** 2).sum(0))
        assert np.array_equal(fast[3][c], (x[:, 1] ** 2).sum(0))
    assert kernels.HAVE_NUMBA, "numba is part of the environment; the fast path must be tested"
    assert _jit.backend() in ("prebuilt", "jit")


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
