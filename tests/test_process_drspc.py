"""Tests of the pulsed-capacitor (drspc) accumulator against synthetic sweeps with known truth."""

import numpy as np
import pytest
from scipy.stats import norm

from calib_mpi.badpixels import BadPixels
from calib_mpi.process.drspc import DEFAULT_WINDOWS, DrspcAccumulator, injected_rows_mask
from calib_mpi.synthetic.drspc import DrspcSweep, make_drspc_sweep

N_CELLS = 3
N_TRAINS = 560


@pytest.fixture(scope="module")
def sweep() -> DrspcSweep:
    return make_drspc_sweep(seed=7, n_cells=N_CELLS, n_trains=N_TRAINS)


@pytest.fixture(scope="module")
def broken_sweep() -> DrspcSweep:
    return make_drspc_sweep(seed=11, n_cells=N_CELLS, n_trains=N_TRAINS,
                            n_dead=3, n_no_switch=3, n_noisy=3)


def run(frames, chunk=None, order=None, mask=None, **kwargs) -> dict[str, np.ndarray]:
    """Feed ``frames`` (analog, digital, cells, trains) to a fresh accumulator, return results."""
    analog, digital, cells, trains = frames
    idx = np.arange(cells.size) if order is None else order
    bounds = [0, idx.size] if chunk is None else [*range(0, idx.size, chunk), idx.size]
    acc = DrspcAccumulator(N_CELLS, **kwargs)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        sel = idx[lo:hi]
        acc.update(analog[sel], digital[sel], cells[sel], trains[sel], pixel_mask=mask)
    return acc.finalize()


def assert_identical(res_a: dict[str, np.ndarray], res_b: dict[str, np.ndarray]) -> None:
    assert res_a.keys() == res_b.keys()
    for key in res_a:
        assert res_a[key].dtype == res_b[key].dtype, key
        equal_nan = res_a[key].dtype.kind == "f"
        assert np.array_equal(res_a[key], res_b[key], equal_nan=equal_nan), key


@pytest.fixture(scope="module")
def result(sweep) -> dict[str, np.ndarray]:
    return run(sweep.frames())


def standard_errors(sigma: float, t0: int, t1: int) -> tuple[float, float]:
    """Standard errors of the least-squares slope and offset for x = t0..t1-1, noise ``sigma``."""
    x = np.arange(t0, t1, dtype=np.float64)
    sxx = np.sum((x - x.mean()) ** 2)
    return sigma / np.sqrt(sxx), sigma * np.sqrt(1 / x.size + x.mean() ** 2 / sxx)


def test_output_shapes_and_dtypes(result):
    for key in ("slope", "offset", "gain_level", "gain_level_std", "residual_rms"):
        assert result[key].shape == (2, N_CELLS, 64, 64) and result[key].dtype == np.float32
    for key in ("threshold", "ratio"):
        assert result[key].shape == (1, N_CELLS, 64, 64) and result[key].dtype == np.float32
    assert result["n_points"].dtype == np.int32
    assert result["bad_pixels"].dtype == np.uint32
    expected_n = [t1 - t0 for t0, t1 in DEFAULT_WINDOWS]
    assert np.array_equal(np.unique(result["n_points"][0]), [expected_n[0]])
    assert np.array_equal(np.unique(result["n_points"][1]), [expected_n[1]])
    assert not result["bad_pixels"].any()


def test_fit_matches_truth_within_derived_tolerance(sweep, result):
    # analog noise plus the uniform rounding to integer ADU (variance 1/12)
    sigma = np.sqrt(sweep.noise**2 + 1 / 12)
    truths = {
        "slope": (sweep.slope_high, sweep.slope_medium),
        "offset": (sweep.offset_high, sweep.offset_medium),
    }
    n_samples = sweep.slope_high.size
    # Bonferroni: a correct fit exceeds the tolerance anywhere with probability < 1e-3
    k = norm.isf(1e-3 / (2 * n_samples))
    assert 5.0 < k < 6.0
    for g, (t0, t1) in enumerate(DEFAULT_WINDOWS):
        se = dict(zip(("slope", "offset"), standard_errors(sigma, t0, t1), strict=True))
        for name, truth in truths.items():
            z = (result[name][g] - truth[g]) / se[name]
            assert np.max(np.abs(z)) < k, (name, g)
            # the spread matches the standard error: the tolerance is neither too loose nor
            # hiding a systematic error
            assert abs(np.mean(z)) < 5 / np.sqrt(n_samples), (name, g)
            assert 0.95 < np.std(z) < 1.05, (name, g)
            # a plausible bug (pixel axes transposed) must fail the same check
            z_wrong = (result[name][g] - truth[g].transpose(0, 2, 1)) / se[name]
            assert np.mean(np.abs(z_wrong) >= k) > 0.25, (name, g)
        # residual RMS estimates the noise: E[SSR] = (n - 2) σ²
        n = t1 - t0
        expected_rms = sigma * np.sqrt((n - 2) / n)
        assert abs(np.mean(result["residual_rms"][g]) / expected_rms - 1) < 0.01
    # a 5% error in the high-gain slope (a wrong calibration) is caught everywhere
    se_slope_high = standard_errors(sigma, *DEFAULT_WINDOWS[0])[0]
    assert np.all(np.abs(1.05 * result["slope"][0] - sweep.slope_high) > k * se_slope_high)


def test_gain_levels_threshold_ratio(sweep, result):
    sigma_d = np.sqrt(sweep.noise**2 + 1 / 12)
    k = norm.isf(1e-3 / (2 * sweep.slope_high.size))
    for g, truth in enumerate((sweep.gain_level_high, sweep.gain_level_medium)):
        n = DEFAULT_WINDOWS[g][1] - DEFAULT_WINDOWS[g][0]
        assert np.max(np.abs(result["gain_level"][g] - truth)) < k * sigma_d / np.sqrt(n)
        assert abs(np.mean(result["gain_level_std"][g]) / sigma_d - 1) < 0.01
    expected_threshold = (result["gain_level"][0] + result["gain_level"][1]) / 2
    np.testing.assert_allclose(result["threshold"][0], expected_threshold, rtol=1e-6)
    np.testing.assert_allclose(result["ratio"][0], result["slope"][0] / result["slope"][1],
                               rtol=1e-6)
    true_ratio = sweep.slope_high / sweep.slope_medium
    assert np.median(np.abs(result["ratio"][0] / true_ratio - 1)) < 0.05


@pytest.mark.parametrize("pixel", [(0, 0, 0), (1, 17, 42), (2, 63, 63), (2, 5, 60)])
def test_against_polyfit_reference(sweep, result, pixel):
    cell, row, col = pixel
    for g, (t0, t1) in enumerate(DEFAULT_WINDOWS):
        x = np.arange(t0, t1, dtype=np.float64)
        y = sweep.analog[t0:t1, cell, row, col].astype(np.float64)
        dig = sweep.digital[t0:t1, cell, row, col].astype(np.float64)
        slope, offset = np.polyfit(x, y, 1)
        rms = np.sqrt(np.mean((y - (slope * x + offset)) ** 2))
        assert result["slope"][g, cell, row, col] == pytest.approx(slope, rel=1e-6)
        assert result["offset"][g, cell, row, col] == pytest.approx(offset, rel=1e-6)
        assert result["residual_rms"][g, cell, row, col] == pytest.approx(rms, rel=1e-5)
        assert result["gain_level"][g, cell, row, col] == pytest.approx(dig.mean(), rel=1e-6)
        assert result["gain_level_std"][g, cell, row, col] == pytest.approx(dig.std(), rel=1e-5)
        assert result["n_points"][g, cell, row, col] == t1 - t0


def test_bit_identical_whatever_chunking_and_order(sweep, result):
    frames = sweep.frames()
    n_frames = frames[2].size
    rng = np.random.default_rng(3)
    assert_identical(result, run(frames, chunk=7))
    assert_identical(result, run(frames, chunk=256, order=rng.permutation(n_frames)))
    assert_identical(result, run(frames, chunk=1000, order=rng.permutation(n_frames)))
    # several frames of one cell in one chunk, sorted by cell then train descending
    by_cell = np.lexsort((-frames[3], frames[2]))
    assert_identical(result, run(frames, chunk=500, order=by_cell))


def test_merge_of_partial_accumulators_is_exact(sweep, result):
    analog, digital, cells, trains = sweep.frames()
    parts = [DrspcAccumulator(N_CELLS) for _ in range(3)]
    rank = np.random.default_rng(5).integers(0, 3, cells.size)
    for r, acc in enumerate(parts):
        sel = rank == r
        acc.update(analog[sel], digital[sel], cells[sel], trains[sel])
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    assert_identical(result, parts[2].finalize())


def test_invalid_frames_are_ignored(sweep):
    analog, digital, cells, trains = sweep.frames()
    invalid = np.random.default_rng(4).random(cells.size) < 0.1
    without = run((analog[~invalid], digital[~invalid], cells[~invalid], trains[~invalid]))
    garbage_analog = analog.copy()
    garbage_analog[invalid] = 60000
    marked = cells.copy()
    marked[invalid] = -1
    with_invalid = run((garbage_analog, digital, marked, trains), chunk=300)
    assert_identical(without, with_invalid)
    assert with_invalid["n_points"].min() < DEFAULT_WINDOWS[0][1] - DEFAULT_WINDOWS[0][0]


@pytest.mark.parametrize("kind", ["rows", "irregular"])
def test_pixel_mask_restricts_the_update(sweep, result, kind):
    analog, digital, cells, trains = sweep.frames()
    if kind == "rows":
        mask = injected_rows_mask(2, top_asic=False)
    else:  # not whole rows: takes the per-pixel path
        mask = (np.add.outer(np.arange(64), np.arange(64)) % 3) == 0
    garbage = np.random.default_rng(8).integers(0, 2**16, analog.shape, dtype=np.uint16)
    res = run((np.where(mask, analog, garbage), np.where(mask, digital, garbage), cells, trains),
              mask=mask)
    assert np.all(res["n_points"][:, :, ~mask] == 0)
    assert np.all(res["bad_pixels"][:, :, ~mask] & BadPixels.CI_EVAL_ERROR)
    for key in result:
        if res[key].dtype.kind == "f":
            assert np.all(np.isnan(res[key][:, :, ~mask])), key
        # pixels inside the mask see exactly the data of an unmasked run
        assert np.array_equal(res[key][:, :, mask], result[key][:, :, mask]), key
    # the complementary call must not find leftovers of the first one in its pixels
    acc = DrspcAccumulator(N_CELLS)
    for m in (mask, ~mask):
        acc.update(np.where(m, analog, garbage), np.where(m, digital, garbage), cells, trains,
                   pixel_mask=m)
    assert_identical(result, acc.finalize())


@pytest.mark.parametrize("top_asic", [False, True])
def test_eight_masked_runs_equal_one_full_run(sweep, result, top_asic):
    """Each run carries the sweep on its injected rows and other data elsewhere."""
    analog, digital, cells, trains = sweep.frames()
    rng = np.random.default_rng(6)
    acc = DrspcAccumulator(N_CELLS)
    for k in rng.permutation(8):
        mask = injected_rows_mask(k, top_asic)
        run_analog = rng.integers(0, 2**16, analog.shape, dtype=np.uint16)
        run_digital = rng.integers(0, 2**16, analog.shape, dtype=np.uint16)
        run_analog[:, mask] = analog[:, mask]
        run_digital[:, mask] = digital[:, mask]
        order = rng.permutation(cells.size)
        for part in np.array_split(order, 3):
            acc.update(run_analog[part], run_digital[part], cells[part], trains[part],
                       pixel_mask=mask)
    assert_identical(result, acc.finalize())


def test_injected_rows_mask():
    # formats.md 3.4 example: drspc k = 1 → top-ASIC rows 6, 14, ..., 62
    top = injected_rows_mask(1, top_asic=True)
    assert np.array_equal(np.flatnonzero(top.any(axis=1)), np.arange(6, 64, 8))
    bottom = injected_rows_mask(1, top_asic=False)
    assert np.array_equal(np.flatnonzero(bottom.any(axis=1)), np.arange(1, 64, 8))
    for top_asic in (False, True):
        masks = np.array([injected_rows_mask(k, top_asic) for k in range(8)])
        assert masks.shape == (8, 64, 64) and masks.dtype == bool
        assert np.array_equal(masks.sum(axis=0), np.ones((64, 64)))  # every pixel exactly once
        assert np.array_equal(masks.all(axis=2), masks.any(axis=2))  # whole rows
    # chip row ρ = 63 - lr on top ASICs: both orientations inject the same chip rows
    for k in range(8):
        assert np.array_equal(injected_rows_mask(k, True), injected_rows_mask(k, False)[::-1])
    with pytest.raises(ValueError):
        injected_rows_mask(8, top_asic=False)


def test_too_few_points_give_nan_and_eval_error(sweep):
    analog, digital, cells, trains = sweep.frames()
    # window 1 holds a single train: one point per (cell, pixel)
    res = run(sweep.frames(), windows=((42, 122), (500, 501)))
    bad = res["bad_pixels"][1]
    assert np.all(res["n_points"][1] == 1)
    assert np.all(bad & BadPixels.CI_EVAL_ERROR) and np.all(bad & BadPixels.VALUE_IS_NAN)
    for key in ("slope", "offset", "residual_rms"):
        assert np.all(np.isnan(res[key][1])), key
    assert np.all(np.isnan(res["ratio"]))
    assert np.all(res["bad_pixels"][0] & BadPixels.VALUE_IS_NAN)  # ratio is NaN
    assert not np.any(res["bad_pixels"][0] & BadPixels.CI_EVAL_ERROR)
    assert np.all(np.isfinite(res["gain_level"][1]))  # the mean of one point exists
    # two points at the same train: zero denominator
    sel = trains == 500
    twice = tuple(np.concatenate([arr[sel], arr[sel]]) for arr in (analog, digital, cells, trains))
    res = run(twice, windows=((42, 122), (500, 501)))
    assert np.all(res["n_points"][1] == 2)
    assert np.all(res["bad_pixels"][1] & BadPixels.CI_EVAL_ERROR)
    assert np.all(np.isnan(res["slope"][1]))
    # no data at all
    res = DrspcAccumulator(N_CELLS).finalize()
    assert np.all(res["bad_pixels"] & BadPixels.CI_EVAL_ERROR)
    assert np.all(np.isnan(res["gain_level"])) and np.all(res["n_points"] == 0)


def test_broken_pixels_are_flagged(broken_sweep):
    res = run(broken_sweep.frames())
    bad = res["bad_pixels"]

    def flags(coords: np.ndarray) -> np.ndarray:
        return bad[:, :, coords[:, 0], coords[:, 1]]  # (window, cell, pixel)

    dead = flags(broken_sweep.dead)
    assert np.all(dead & BadPixels.CI_GAIN_OF_OF_THRESHOLD)
    assert np.all(dead & BadPixels.GAIN_THRESHOLDING_ERROR)
    no_switch = flags(broken_sweep.no_switch)
    assert np.all(no_switch[1] & BadPixels.CI_GAIN_OF_OF_THRESHOLD)
    assert np.all(no_switch & BadPixels.GAIN_THRESHOLDING_ERROR)
    assert not np.any(no_switch[0] & BadPixels.CI_GAIN_OF_OF_THRESHOLD)
    noisy = flags(broken_sweep.noisy)
    assert np.all(noisy & BadPixels.CI_LINEAR_DEVIATION)
    good = np.ones((64, 64), dtype=bool)
    good[broken_sweep.broken[:, 0], broken_sweep.broken[:, 1]] = False
    assert not bad[:, :, good].any()


def test_limits_are_configurable(sweep):
    frames = sweep.frames()
    res = run(frames, residual_limits=(5.0, 50.0))
    assert np.all(res["bad_pixels"][0] & BadPixels.CI_LINEAR_DEVIATION)
    assert not np.any(res["bad_pixels"][1] & BadPixels.CI_LINEAR_DEVIATION)
    res = run(frames, slope_limits=((4.0, 100.0), (2.0, 3.0)))
    assert np.all(res["bad_pixels"][1] & BadPixels.CI_GAIN_OF_OF_THRESHOLD)
    assert not np.any(res["bad_pixels"][0])
    res = run(frames, min_gain_separation=1e6)
    assert np.all(res["bad_pixels"] & BadPixels.GAIN_THRESHOLDING_ERROR)


def test_gain_levels_not_increasing_flag_both(sweep):
    analog, digital, cells, trains = sweep.frames()
    swapped = np.where(trains[:, None, None] < 300, digital + 2000, digital).astype(np.uint16)
    res = run((analog, swapped, cells, trains))
    assert np.all(res["bad_pixels"] & BadPixels.GAIN_THRESHOLDING_ERROR)


def test_input_validation():
    acc = DrspcAccumulator(4)
    frame = np.zeros((2, 64, 64), dtype=np.uint16)
    with pytest.raises(TypeError):
        acc.update(frame.astype(np.float32), frame, np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(ValueError):
        acc.update(frame, frame, np.array([0, 4]), np.zeros(2, int))
    with pytest.raises(ValueError):
        acc.update(frame, frame[:1], np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(ValueError):
        DrspcAccumulator(4, windows=((42, 122),))
    # int16 input (old lab files) and extreme uint16 values are summed without overflow
    big = np.full((300, 64, 64), 65535, dtype=np.uint16)
    trains = np.arange(42, 342) % 80 + 42
    acc.update(big, big, np.zeros(300, int), trains)
    res = acc.finalize()
    assert res["gain_level"][0, 0, 0, 0] == 65535 and res["slope"][0, 0, 0, 0] == 0
    acc = DrspcAccumulator(1)
    acc.update(-frame[:, :, :].astype(np.int16) - 5, frame.astype(np.int16),
               np.zeros(2, int), np.array([50, 60]))
    assert acc.finalize()["offset"][0, 0, 0, 0] == -5


@pytest.mark.parametrize("mask", ["none", "rows", "cols", "irregular"])
def test_compiled_kernel_equals_numpy(monkeypatch, mask):
    """The compiled ``drspc_sums`` kernel (JIT) gives the numpy path's sums exactly: values up to
    65535, invalid cells, steps outside/at the window edges, strided (transposed) views."""
    from calib_mpi.process import _jit

    if _jit._jit_module() is None:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(5)
    n = 300
    frames = rng.integers(0, 65536, (n, 2, 128, 128), dtype=np.uint16)
    frames[0] = 65535
    cells = rng.integers(-1, 4, n)
    trains = rng.integers(0, 130, n)
    trains[:4] = (10, 49, 50, 99)
    windows = ((10, 50), (50, 100))
    block = frames[:, :, 64:, :64].swapaxes(2, 3)
    pm = {"none": None, "rows": injected_rows_mask(3, False),
          "cols": injected_rows_mask(3, False).T, "irregular": rng.random((64, 64)) < 0.3}[mask]
    out = []
    for fast in (_jit._jit_module().drspc_sums, None):
        monkeypatch.setattr(_jit, "kernel", lambda name, f=fast: f)
        acc = DrspcAccumulator(4, windows=windows)
        for lo in range(0, n, 128):
            acc.update(block[lo:lo + 128, 0], block[lo:lo + 128, 1], cells[lo:lo + 128],
                       trains[lo:lo + 128], pixel_mask=pm)
        out.append(acc._sums.copy())
    assert out[0].any() and np.array_equal(out[0], out[1])
