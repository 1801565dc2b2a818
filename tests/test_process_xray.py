"""Tests of the X-ray fluorescence (xray) accumulator against synthetic runs with known truth.

Tolerances are derived from the statistics of each (cell, pixel):

- the spacing ``mu1 - mu0`` is a difference of two Gaussian means; a full-sample mean of N
  entries has the standard error ``sigma / sqrt(N)``. The processor uses a window of +-2.5 sigma
  (hard rejection), whose asymptotic variance is larger by ``1 / M2(2.5) = 1 / 0.900`` (M2 =
  truncated second moment of N(0, 1), computed below with scipy), so the expected error is
  ``se = sqrt(sigma0^2 / N0 + sigma1^2 / N1) / sqrt(M2)`` with N0, N1 the true numbers of 0- and
  1-photon frames of that pixel;
- each pixel must lie within ``5.5 se`` (safety factor: P(|z| > 5.5) = 3.8e-8, i.e. a false
  failure probability < 1e-3 over the ~10^4 pixels tested) plus a bias allowance of
  ``0.25 se``; the bias measured on 8192 pixels is below 0.05 se for the spacing and about
  -0.1 se (-0.1 % of sigma) for the widths at these statistics (the finite-N bias of a square
  root), so the average pull must also be within ``0.1`` (spacing) and ``0.2`` (widths) of 0,
  9 and 18 standard errors of that average;
- the spread of the pulls must be ~1 (0.9..1.15), which checks the claimed efficiency and the
  reported errors.
"""

import numpy as np
import pytest
from scipy.stats import norm

from calib_mpi.badpixels import BadPixels
from calib_mpi.process.xray import (
    Status,
    XrayAccumulator,
    estimate_origin,
    find_peaks,
    flag_deviation,
)
from calib_mpi.process.xray_refine import refine
from calib_mpi.synthetic.xray import XrayRun, make_xray_run

WINDOW = 2.5  # XrayAccumulator default window_sigmas
FLOAT_KEYS = (
    "photon_spacing",
    "spacing_error",
    "peak_position",
    "position_error",
    "peak_stddev",
    "peak_error",
    "quality",
    "gain_adu_per_kev",
)


def truncated_m2(a: float) -> float:
    """E[x^2 1{|x| < a}] for x ~ N(0, 1)."""
    return float(2 * norm.cdf(a) - 1 - 2 * a * norm.pdf(a))


def sigma_variance_factor(a: float) -> float:
    """N var(sigma_hat) / sigma^2 of the windowed (|x| < a sigma) scale estimator."""
    m0 = 2 * norm.cdf(a) - 1
    m2 = m0 - 2 * a * norm.pdf(a)
    m4 = 3 * m2 - 2 * a**3 * norm.pdf(a)
    c = m2 / m0
    e_psi2 = m4 - 2 * c * m2 + c * c * m0
    slope = 2 * a * (a * a - c) * norm.pdf(a) - 2 * c * m0
    return float(e_psi2 / slope**2)  # per entry of the whole peak


@pytest.fixture(scope="module")
def clean() -> XrayRun:
    return make_xray_run(seed=3, n_cells=2, n_trains=1500)


@pytest.fixture(scope="module")
def broken() -> XrayRun:
    return make_xray_run(
        seed=4,
        n_cells=3,
        n_trains=600,
        n_dead=4,
        n_no_photons=4,
        n_noisy=4,
        n_deviant=4,
        empty_cells=(2,),
        invalid_fraction=0.1,
    )


def accumulate(run: XrayRun, chunks=None, order=None, **kwargs) -> XrayAccumulator:
    """Feed the run's frame stream (optionally permuted / in chunks) to a fresh accumulator."""
    analog, cells = run.frames()
    n_cells = run.analog.shape[1]
    origin = estimate_origin(analog, cells, n_cells)
    acc = XrayAccumulator(n_cells, origin, **kwargs)
    idx = np.arange(cells.size) if order is None else order
    bounds = [0, idx.size] if chunks is None else list(chunks)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        acc.update(analog[idx[lo:hi]], cells[idx[lo:hi]])
    return acc


@pytest.fixture(scope="module")
def clean_result(clean: XrayRun) -> dict[str, np.ndarray]:
    return accumulate(clean).finalize()


@pytest.fixture(scope="module")
def broken_result(broken: XrayRun) -> dict[str, np.ndarray]:
    return accumulate(broken).finalize()


def check_pulls(err, se, max_pull=5.5, bias=0.25, mean_tol=0.1, std_range=(0.9, 1.15)):
    """Assert the per-pixel errors ``err`` are consistent with standard errors ``se``."""
    pull = err / se
    assert np.all(np.isfinite(pull))
    worst = np.abs(pull).max()
    assert worst < max_pull + bias, f"worst pull {worst:.2f}"
    assert abs(pull.mean()) < mean_tol, f"mean pull (bias) {pull.mean():.3f}"
    assert std_range[0] < pull.std() < std_range[1], f"pull spread {pull.std():.3f}"


def spacing_se(run: XrayRun) -> np.ndarray:
    n0, n1 = run.n_photons[0], run.n_photons[1]
    return np.sqrt(run.noise**2 / n0 + run.sigma1**2 / n1) / np.sqrt(truncated_m2(WINDOW))


def test_all_clean_pixels_evaluated(clean, clean_result):
    res = clean_result
    assert np.all(res["bad_pixels"] == 0)
    for key in FLOAT_KEYS:
        assert res[key].dtype == np.float32
        assert np.all(np.isfinite(res[key])), key
    assert res["photon_spacing"].shape == (1, 2, 64, 64)
    assert res["peak_position"].shape == (2, 2, 64, 64)
    assert res["n_entries"].dtype == np.int32 and res["bad_pixels"].dtype == np.uint32
    # 5+ photons (rare) may lie beyond the 512 bins: every sample is counted exactly once
    assert np.all(res["n_entries"] + res["underflow"] + res["overflow"] == 1500)
    assert np.all(res["underflow"] == 0) and np.all(res["overflow"] <= 2)
    assert np.all((res["quality"] >= 0.5) & (res["quality"] <= 1))
    np.testing.assert_allclose(res["gain_adu_per_kev"], res["photon_spacing"] / 8.04, rtol=1e-6)


def test_spacing_within_derived_tolerance(clean, clean_result):
    err = clean_result["photon_spacing"][0].astype(np.float64) - clean.spacing
    check_pulls(err, spacing_se(clean))


def test_tolerance_check_can_fail(clean, clean_result):
    """A 1-sigma bias, or one pixel 6 sigma off, would be caught."""
    se = spacing_se(clean)
    err = clean_result["photon_spacing"][0].astype(np.float64) - clean.spacing
    with pytest.raises(AssertionError, match="bias"):
        check_pulls(err + se, se)
    one_off = err.copy()
    one_off[1, 10, 20] = 6.0 * se[1, 10, 20]
    with pytest.raises(AssertionError, match="worst"):
        check_pulls(one_off, se)
    with pytest.raises(AssertionError, match="spread"):
        check_pulls(err, se / 1.3)


def test_reported_spacing_error(clean, clean_result):
    err = clean_result["photon_spacing"][0].astype(np.float64) - clean.spacing
    reported = clean_result["spacing_error"][0].astype(np.float64)
    ratio = np.median(reported / spacing_se(clean))
    assert 0.95 < ratio < 1.05  # the reported error uses the fitted widths and window counts
    check_pulls(err, reported)


def test_peak_positions_and_widths(clean, clean_result):
    res = clean_result
    n = clean.n_photons[:2]
    truth_mu = (clean.offset, clean.offset + clean.spacing)
    truth_sigma = (clean.noise, clean.sigma1)
    m2 = truncated_m2(WINDOW)
    f_sigma = sigma_variance_factor(WINDOW)
    for q in (0, 1):
        se_mu = truth_sigma[q] / np.sqrt(n[q] * m2)
        check_pulls(res["peak_position"][q] - truth_mu[q], se_mu)
        se_sigma = truth_sigma[q] * np.sqrt(f_sigma / n[q])
        check_pulls(res["peak_stddev"][q] - truth_sigma[q], se_sigma, mean_tol=0.2)
        check_pulls(res["peak_stddev"][q] - truth_sigma[q], res["peak_error"][q], mean_tol=0.2)


def test_chunking_and_order_give_identical_results(broken):
    ref_acc = accumulate(broken)
    ref = ref_acc.finalize()
    n = broken.frames()[1].size
    rng = np.random.default_rng(0)
    cuts = np.unique(np.concatenate(([0, n], rng.integers(1, n, 40))))
    variants = {
        "chunks of 37": accumulate(broken, chunks=[*range(0, n, 37), n]),
        "shuffled, random chunks": accumulate(broken, chunks=cuts, order=rng.permutation(n)),
        "sort path": accumulate(broken, method="sort"),
        "bincount path": accumulate(broken, chunks=[0, n // 3, n], method="bincount"),
    }
    half_a = accumulate(broken, chunks=[0, n // 2])
    half_b = accumulate(broken, chunks=[n // 2, n], order=np.arange(n))
    half_a.merge(half_b)
    variants["merged ranks"] = half_a
    for name, acc in variants.items():
        assert np.array_equal(acc.counts, ref_acc.counts), name
        res = acc.finalize()
        assert res.keys() == ref.keys()
        for key in ref:
            assert res[key].dtype == ref[key].dtype
            assert np.array_equal(res[key], ref[key], equal_nan=True), (name, key)


def test_invalid_frames_ignored(broken, broken_result):
    analog, cells = broken.frames()
    assert np.count_nonzero(cells == -1) > 0
    valid = cells >= 0
    origin = estimate_origin(analog, cells, 3)
    assert np.array_equal(origin, estimate_origin(analog[valid], cells[valid], 3))
    acc = XrayAccumulator(3, origin)
    acc.update(analog[valid], cells[valid])
    acc.update(analog[~valid], cells[~valid])  # only invalid frames: no effect
    res = acc.finalize()
    for key in broken_result:
        assert np.array_equal(res[key], broken_result[key], equal_nan=True), key
    with pytest.raises(ValueError, match="n_cells"):
        acc.update(analog[:2], np.array([0, 3]))


def test_broken_pixels_flagged(broken, broken_result):
    res = broken_result
    bits = res["bad_pixels"][0]
    assert np.array_equal(bits, broken.expected_bits)
    eval_error = (bits & BadPixels.FF_GAIN_EVAL_ERROR) != 0
    no_entries = (bits & BadPixels.FF_NO_ENTRIES) != 0
    assert np.count_nonzero(eval_error) == 12
    for kind in ("dead", "no_photons", "noisy"):
        c, r, k = broken.broken[kind].T
        assert np.all(bits[c, r, k] == BadPixels.FF_GAIN_EVAL_ERROR), kind
    c, r, k = broken.broken["deviant"].T
    assert np.all(bits[c, r, k] == BadPixels.FF_GAIN_DEVIATION)
    # deviant pixels keep a (correct) value
    np.testing.assert_allclose(res["photon_spacing"][0, c, r, k], broken.spacing[c, r, k], atol=3)
    for key in FLOAT_KEYS:
        assert np.all(np.isnan(res[key][:, eval_error | no_entries])), key
        assert np.all(np.isfinite(res[key][:, bits == 0])), key
    # empty cell: no samples at all
    assert np.all(bits[2] == BadPixels.FF_NO_ENTRIES)
    assert np.all(res["n_entries"][0, 2] == 0)
    n_valid = broken.valid.sum(axis=0)[:, None, None]
    total = res["n_entries"][0] + res["underflow"][0] + res["overflow"][0]
    assert np.all(total == n_valid)


def test_flag_deviation():
    rng = np.random.default_rng(1)
    spacing = rng.normal(65.0, 1.0, (1, 2, 64, 64))
    spacing[0, 0, 3, 4] = 80.0
    spacing[0, 1, 5, 6] = 50.0
    spacing[0, 1, 7, 8] = np.nan
    bits = flag_deviation(spacing, 8.0)
    assert bits.dtype == np.uint32 and bits.shape == spacing.shape
    flagged = np.argwhere(bits != 0)
    assert flagged.tolist() == [[0, 0, 3, 4], [0, 1, 5, 6]]
    assert np.all(bits[bits != 0] == BadPixels.FF_GAIN_DEVIATION)
    # per cell: a cell offset by 10 ADU is not deviant with respect to itself
    spacing[0, 1] += 10.0
    assert np.array_equal(flag_deviation(spacing, 8.0), bits)
    assert not flag_deviation(np.full((1, 1, 64, 64), np.nan), 5.0).any()


def test_underflow_overflow_accounting():
    origin = np.full((2, 64, 64), 1000, np.int32)
    acc = XrayAccumulator(2, origin, n_bins=64)
    values = [999, 1000, 1063, 1064, 0, 65535, 1010, 1010]
    cells = np.array([0, 0, 0, 0, 1, 1, 1, -1])
    analog = np.empty((len(values), 64, 64), np.uint16)
    analog[:] = np.array(values, np.uint16)[:, None, None]
    acc.update(analog, cells)
    counts = acc.counts.reshape(2, 64, 64, 64)
    assert np.all(counts[0, :, :, 0] == 1) and np.all(counts[0, :, :, 63] == 1)
    assert np.all(counts[1, :, :, 10] == 1)
    assert counts.sum() == 3 * 4096
    res = acc.finalize()
    assert np.array_equal(res["underflow"][0, :, 0, 0], [1, 1])
    assert np.array_equal(res["overflow"][0, :, 0, 0], [1, 1])
    assert np.array_equal(res["n_entries"][0, :, 0, 0], [2, 1])
    assert np.all(res["bad_pixels"] == BadPixels.FF_GAIN_EVAL_ERROR)  # no peaks in 3 samples
    # int16 input: negative values are below any non-negative origin
    acc16 = XrayAccumulator(2, origin, n_bins=64)
    analog16 = analog.astype(np.int16)  # 65535 -> -1
    acc16.update(analog16, cells)
    res16 = acc16.finalize()
    assert np.array_equal(res16["underflow"][0, :, 0, 0], [1, 2])
    assert np.array_equal(res16["overflow"][0, :, 0, 0], [1, 0])


def test_no_entries_everywhere_without_data():
    acc = XrayAccumulator(2, np.zeros((2, 64, 64), np.int32))
    acc.update(np.zeros((3, 64, 64), np.uint16), np.full(3, -1))
    res = acc.finalize()
    assert np.all(res["bad_pixels"] == BadPixels.FF_NO_ENTRIES)
    assert np.all(res["n_entries"] == 0)
    for key in FLOAT_KEYS:
        assert np.all(np.isnan(res[key])), key


def test_uint16_counts_overflow_is_refused():
    acc = XrayAccumulator(1, np.zeros((1, 64, 64), np.int32), count_dtype=np.uint16)
    frames = np.broadcast_to(np.zeros((64, 64), np.uint16), (65536, 64, 64))
    with pytest.raises(OverflowError, match="uint32"):
        acc.update(frames, np.zeros(65536, np.int64))
    assert acc.counts.sum() == 0 and acc.frames_per_cell[0] == 0
    assert acc.counts.nbytes == 4096 * 512 * 2


def test_estimate_origin():
    rng = np.random.default_rng(2)
    analog = rng.integers(4000, 6000, (30, 64, 64)).astype(np.uint16)
    cells = np.tile(np.array([0, 2, -1]), 10)
    origin = estimate_origin(analog, cells, 3, margin=50, quantile=0.25)
    assert origin.dtype == np.int32 and origin.shape == (3, 64, 64)
    for c in (0, 2):
        q = np.quantile(analog[cells == c], 0.25, axis=0, method="lower")
        assert np.array_equal(origin[c], q - 50)
    assert np.all(origin[1] == np.floor(np.median(origin[[0, 2]] + 50)) - 50)
    perm = rng.permutation(30)
    assert np.array_equal(estimate_origin(analog[perm], cells[perm], 3, 50, 0.25), origin)


def test_origin_keeps_noise_peak_inside(clean):
    analog, cells = clean.frames()
    origin = estimate_origin(analog[:200], cells[:200], 2)  # 100 frames per cell
    below = clean.offset - origin
    assert np.all(below > 5 * clean.noise)


def test_overlapping_peaks_unbiased():
    """Noise 10-14 ADU at 60-75 ADU spacing: the peak tails overlap the windows; without the
    neighbour-tail subtraction the spacing is biased by about -0.4 standard errors."""
    run = make_xray_run(seed=6, n_cells=1, n_trains=1500, noise=(10.0, 14.0))
    res = accumulate(run).finalize()
    ok = res["bad_pixels"][0] == 0
    assert np.count_nonzero(ok) > 4000
    err = res["photon_spacing"][0].astype(np.float64) - run.spacing
    check_pulls(err[ok], spacing_se(run)[ok], std_range=(0.9, 1.2))
    check_pulls(err[ok], res["spacing_error"][0][ok].astype(np.float64))


def test_eval_status_of_broken_pixels(broken, broken_result):
    status = broken_result["eval_status"][0]
    assert status.dtype == np.uint8
    bits = broken_result["bad_pixels"][0]
    assert np.all(status[2] == Status.NO_ENTRIES)
    eval_error = (bits & BadPixels.FF_GAIN_EVAL_ERROR) != 0
    assert np.all((status != Status.OK) == (eval_error | (status == Status.NO_ENTRIES)))
    for kind in ("dead", "no_photons"):  # one peak only
        c, r, k = broken.broken[kind].T
        assert np.all(status[c, r, k] == Status.NO_ONE_PHOTON_PEAK), kind


def _box_sums(density: np.ndarray, half: int = 5) -> np.ndarray:
    """Exact box sums (width 2 half + 1, zero padded) of integer histograms ``(rows, bins)``."""
    cum = np.concatenate([np.zeros((density.shape[0], 1), np.int64),
                          np.cumsum(density, axis=1)], axis=1)
    n = density.shape[1]
    idx = np.arange(n)
    return cum[:, np.minimum(idx + half + 1, n)] - cum[:, np.maximum(idx - half, 0)]


def _gauss(n_bins: int, peaks: list[tuple[float, float, float]]) -> np.ndarray:
    x = np.arange(n_bins)
    return np.rint(sum(a * np.exp(-0.5 * ((x - m) / s) ** 2) for a, m, s in peaks)).astype(int)


def test_find_peaks_lowest_significant_maximum():
    hists = np.stack([
        # mean photon number 2: noise peak lower than the 1- and 2-photon peaks
        _gauss(512, [(40, 100, 6), (80, 170, 7), (80, 240, 8)]),
        # low occupancy: small 1-photon peak, no 2-photon peak
        _gauss(512, [(400, 100, 6), (40, 170, 7)]),
        # a tiny bump below the noise peak is not significant; nothing above it
        _gauss(512, [(3, 40, 3), (400, 100, 6)]),
    ])
    got = find_peaks(_box_sums(hists), 5, 10.0, 5.0, 30.0)
    assert got.tolist() == [[100, 170, 240], [100, 170, -1], [100, -1, -1]]
    # box sums with equal maxima 12 bins apart on one peak: only the lower one is a peak
    hs = _gauss(512, [(250, 100, 8), (60, 180, 8)])
    hs[95:106] = 280
    hs[[94, 106]] = 300
    (p0, p1, p2), = find_peaks(hs[None], 5, 10.0, 5.0, 30.0)
    assert p0 == 94 and abs(p1 - 180) <= 1 and p2 == -1  # 179, 180: a rounded plateau


def test_nan_positions_never_index_the_histogram():
    """Regression: a NaN peak position (a diverged row, or a missing 2-photon peak) was cast to
    int (-2**63) inside the windowed sums and raised IndexError."""
    rows = np.stack([_gauss(512, [(400, 100, 6), (40, 170, 7), (3, 240, 8)])] * 3)
    p0 = np.array([100.0, np.nan, 100.0])
    p1 = np.array([170.0, 170.0, np.nan])
    fit = refine(rows, p0, p1, WINDOW, 10, p2=np.array([240.0, np.nan, 240.0]))
    assert fit["ok"].tolist() == [True, False, False]
    assert abs(fit["mu0"][0] - 100) < 0.1 and abs(fit["mu1"][0] - 170) < 0.1
    assert np.all(np.isnan(fit["mu1"][1:])) and np.all(np.isnan(fit["mu2"][1:]))


@pytest.mark.parametrize("n_trains", [160, 200])
def test_few_trains_do_not_crash(n_trains):
    run = make_xray_run(seed=n_trains, n_cells=1, n_trains=n_trains, n_dead=2, n_noisy=2)
    res = accumulate(run).finalize()
    ok = res["eval_status"][0] == Status.OK
    assert ok.any() and np.array_equal(ok, np.isfinite(res["photon_spacing"][0]))
