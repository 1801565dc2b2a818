"""Tests of the current-source (drscs) processor and merge rule against synthetic truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import gammaln

from calib_mpi.badpixels import BadPixels
from calib_mpi.process.drscs import (
    ERROR_CODES,
    DrscsParams,
    choose_current,
    merge_results,
    process_scan,
    scaled_x,
)
from calib_mpi.synthetic.drscs import (
    KIND_ALL_LOST,
    KIND_FAILS_ONE_CURRENT,
    KIND_NORMAL,
    make_drscs_scans,
)

PARAMS = DrscsParams()
E = PARAMS.transition_exclude
N_SERIES = 400
# Tolerance factor on least-squares standard errors: over the ~10^4 comparisons of this file a
# Gaussian deviation beyond 5 sigma has probability ~6e-3 in total, while any bias larger than
# a few tenths of the (tiny) standard error, e.g. from one transition or plateau sample in a
# fit, is still caught.
N_SIGMA = 5.0
SIGMA = np.hypot(5.0, np.sqrt(1 / 12))  # synthetic analog noise and integer rounding (ADU)


def _fields_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def scans():
    return make_drscs_scans(seed=11, n_steps=300, shape=(N_SERIES,))


@pytest.fixture(scope="module")
def results(scans):
    return [
        process_scan(scans.analog[c], scans.digital[c], scans.valid[c])
        for c in range(len(scans.truth.currents))
    ]


def _parts(lo: int, hi: int, n_int: int, p: DrscsParams = PARAMS) -> list[tuple[int, int]]:
    """Kept sub-intervals of a fit range (spec steps 7-8), written independently of the code."""
    step = (hi - lo) // n_int
    parts = [(lo + i * step, hi if i == n_int - 1 else lo + (i + 1) * step) for i in range(n_int)]
    if n_int >= 3:
        parts = parts[p.fit_cutoff_left : n_int - p.fit_cutoff_right]
    return parts


def _stage_sigma(valid: np.ndarray, lo: int, hi: int, n_int: int, sigma: float):
    """Standard errors of the stage slope and offset (mean of independent sub-fits)."""
    x = scaled_x(np.arange(valid.size))
    var_s = var_o = 0.0
    parts = _parts(lo, hi, n_int)
    for s, e in parts:
        xs = x[s:e][valid[s:e]]
        sxx = ((xs - xs.mean()) ** 2).sum()
        var_s += sigma**2 / sxx
        var_o += sigma**2 * (1.0 / xs.size + xs.mean() ** 2 / sxx)
    return np.sqrt(var_s) / len(parts), np.sqrt(var_o) / len(parts)


def _linear_region(truth, c: int, p: int, n_steps: int) -> list[tuple[int, int]]:
    """Steps where the noise-free analog is on the line of each gain (truth)."""
    b1, b2 = truth.switch_step[c, :, p]
    t1, t2 = truth.transition[c, :, p]
    return [(0, b1), (b1 + int(t1), b2), (b2 + int(t2), truth.saturation_start[c, p])]


def test_error_codes_of_injected_failures(scans, results):
    for c, res in enumerate(results):
        code = res["error_code"]
        assert code.dtype == np.int16
        np.testing.assert_array_equal(code, scans.truth.expected_error[c])
        assert set(np.unique(code)) <= set(ERROR_CODES) - {-1}


def test_bad_pixel_bits(scans, results):
    eval_error = np.uint32(BadPixels.CI_EVAL_ERROR)
    for res in results:
        failed = res["error_code"] != 0
        bad = res["bad_pixels"]
        assert bad.dtype == np.uint32 and bad.shape == (3, N_SERIES)
        assert np.all((bad[:, failed] & eval_error) != 0)
        assert np.all(bad[:, ~failed] == 0)
        nan = np.isnan(res["slope"]) | np.isnan(res["offset"])
        assert np.array_equal((bad & np.uint32(BadPixels.VALUE_IS_NAN)) != 0, nan)
    lost = results[0]["bad_pixels"][:, KIND_ALL_LOST]
    assert np.all(lost == eval_error | np.uint32(BadPixels.VALUE_IS_NAN))


def test_residual_threshold_flags_linear_deviation(scans):
    res = process_scan(
        scans.analog[1], scans.digital[1], scans.valid[1], DrscsParams(residual_threshold=4.0)
    )
    flagged = (res["bad_pixels"] & np.uint32(BadPixels.CI_LINEAR_DEVIATION)) != 0
    assert np.array_equal(flagged, res["residual"] > 4.0)
    assert 0 < flagged.sum() < flagged.size


def test_stage_bounds_within_transition_exclusion(scans, results):
    truth = scans.truth
    normal = truth.kind == KIND_NORMAL
    for c, res in enumerate(results):
        sb = res["stage_bounds"]
        assert sb.shape == (3, 2, N_SERIES) and sb.dtype == np.int32
        for j in range(2):
            diff = sb[j + 1, 0, normal] - truth.switch_step[c, j, normal]
            assert np.all(np.abs(diff) <= E), (c, j, np.unique(diff))
        np.testing.assert_array_equal(sb[0, 0, normal], 0)
        np.testing.assert_array_equal(sb[0, 1, normal], sb[1, 0, normal])
        np.testing.assert_array_equal(sb[1, 1, normal], sb[2, 0, normal])
        assert np.all(sb[0, :, 1] == [0, 300]) and np.all(sb[1:, :, 1] == -1)  # never switched
        np.testing.assert_array_equal(sb[2, 1, normal], res["saturation_start"][normal])


def test_saturation_start(scans, results):
    truth = scans.truth
    n_steps = scans.analog.shape[1]
    normal = truth.kind == KIND_NORMAL
    seen = 0
    for c, res in enumerate(results):
        det = res["saturation_start"][normal]
        true = truth.saturation_start[c, normal]
        # a plateau reached in the last min_flat steps cannot be recognised: the rule needs
        # a trailing run of min_flat flat steps; otherwise at most 2 steps early (the last
        # linear steps before the kink may rise by less than the flat limit) or 1 late
        # (first sample >= 14000 decided by noise).
        visible = true <= n_steps - PARAMS.min_flat - 2
        diff = det[visible] - true[visible]
        assert np.all((diff >= -2) & (diff <= 1)), np.unique(diff)
        assert np.all(det[~visible] >= true[~visible] - 2)
        seen += visible.sum()
    assert seen > N_SERIES  # the scans do exercise saturation
    assert results[0]["saturation_start"][1] == -1  # never switched: no low stage


def test_fits_match_truth_within_standard_errors(scans, results):
    truth = scans.truth
    n_steps = scans.analog.shape[1]
    checked = 0
    for c, res in enumerate(results):
        for p in np.nonzero(truth.kind == KIND_NORMAL)[0]:
            sigma = np.hypot(truth.analog_sigma[p], np.sqrt(1 / 12))  # noise + rounding
            assert sigma == SIGMA
            valid = scans.valid[c, :, p]
            region = _linear_region(truth, c, p, n_steps)
            for g in range(3):
                lo, hi = res["fit_bounds"][g, :, p]
                # fit range must avoid transition samples and the plateau; the only exception
                # allowed: a plateau reached too late to be detected (see test_saturation_start)
                if g == 2 and hi > region[2][1]:
                    assert truth.saturation_start[c, p] > n_steps - PARAMS.min_flat - 2
                    continue
                assert region[g][0] <= lo and hi <= region[g][1], (c, p, g)
                s_slope, s_off = _stage_sigma(valid, lo, hi, PARAMS.n_intervals[g], sigma)
                d_slope = res["slope"][g, p] - truth.slope[c, g, p]
                d_off = res["offset"][g, p] - truth.offset[g, p]
                assert abs(d_slope) <= N_SIGMA * s_slope, (c, p, g, d_slope, s_slope)
                assert abs(d_off) <= N_SIGMA * s_off, (c, p, g, d_off, s_off)
                checked += 1
    assert checked > 0.9 * 3 * 3 * (N_SERIES - 8)


def test_fits_equal_independent_polyfit(scans, results):
    """The vectorised closed form equals np.polyfit on the same sub-intervals."""
    x = scaled_x(np.arange(scans.analog.shape[1]))
    for c, res in enumerate(results):
        for p in (0, 8, 9, 123, 399):
            valid = scans.valid[c, :, p]
            y = scans.analog[c, :, p].astype(float)
            for g in range(3):
                lo, hi = res["fit_bounds"][g, :, p]
                fits, rms = [], []
                for s, e in _parts(lo, hi, PARAMS.n_intervals[g]):
                    m = valid[s:e]
                    coef = np.polyfit(x[s:e][m], y[s:e][m], 1)
                    fits.append(coef)
                    rms.append(np.sqrt(np.mean((y[s:e][m] - np.polyval(coef, x[s:e][m])) ** 2)))
                slope, offset = np.mean(fits, axis=0)
                np.testing.assert_allclose(res["slope"][g, p], slope, rtol=1e-9)
                np.testing.assert_allclose(res["offset"][g, p], offset, rtol=1e-9)
                np.testing.assert_allclose(res["residual"][g, p], np.mean(rms), rtol=1e-6)
                d = scans.digital[c, lo:hi, p][valid[lo:hi]]
                assert res["n_points"][g, p] == d.size
                assert res["gain_level"][g, p] == np.median(d)


def test_gain_levels_thresholds_and_residuals(scans, results):
    truth = scans.truth
    normal = truth.kind == KIND_NORMAL
    for res in results:
        n = res["n_points"][:, normal]
        # standard error of a median of n Gaussian samples: 1.2533 sigma / sqrt(n); +0.5 for
        # the integer rounding of the digital values
        tol = N_SIGMA * 1.2533 * 10.0 / np.sqrt(n) + 0.5
        assert np.all(np.abs(res["gain_level"][:, normal] - truth.gain_level[:, normal]) <= tol)
        gl = res["gain_level"]
        np.testing.assert_array_equal(res["threshold"], (gl[:-1] + gl[1:]) / 2)
        # RMS residual of a 2-parameter fit over n points: sigma·sqrt(chi2_k / n), k = n - 2,
        # mean E = sqrt(k/n)·c(k) (c(k) = sqrt(2/k)·Γ((k+1)/2)/Γ(k/2)), variance k/n - E²;
        # the stage value averages K sub-fits of about n_points/n_intervals points each
        n_int = np.array(PARAMS.n_intervals)[:, None]
        n_sub = res["n_points"][:, normal] / n_int
        k = n_sub - 2
        mean = np.sqrt(k / n_sub) * np.sqrt(2 / k) * np.exp(gammaln((k + 1) / 2) - gammaln(k / 2))
        n_keep = np.where(n_int >= 3, n_int - 2, n_int)
        var = (k / n_sub - mean**2) / n_keep
        ratio = res["residual"][:, normal] / SIGMA
        z = (ratio - mean).mean(axis=1) / np.sqrt(var.mean(axis=1) / normal.sum())
        assert np.all(np.abs(z) < N_SIGMA), z
        # medium gain (n >= 90 points): every series within 5 standard deviations
        assert np.all(np.abs(ratio[1] - mean[1]) < N_SIGMA * np.sqrt(var[1]))


def test_block_equals_single_series(scans, results):
    """No cross-talk: a series alone gives the same values as inside the block."""
    c = 1
    for p in (0, 1, 2, 3, 4, 5, 6, 7, 42, 311):
        alone = process_scan(
            scans.analog[c, :, p : p + 1],
            scans.digital[c, :, p : p + 1],
            scans.valid[c, :, p : p + 1],
        )
        _fields_equal(alone, {k: v[..., p : p + 1] for k, v in results[c].items()})


def test_split_block_is_bit_identical(scans, results):
    c = 2
    cuts = [0, 3, 100, 257, N_SERIES]
    pieces = [
        process_scan(scans.analog[c, :, a:b], scans.digital[c, :, a:b], scans.valid[c, :, a:b])
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    joined = {k: np.concatenate([pc[k] for pc in pieces], axis=-1) for k in pieces[0]}
    _fields_equal(joined, results[c])


def test_lost_samples(scans):
    lossy = make_drscs_scans(seed=5, shape=(200,), loss_fraction=0.1)
    truth = lossy.truth
    c = 1
    a, d, v = lossy.analog[c], lossy.digital[c], lossy.valid[c]
    res = process_scan(a, d, v)
    # losses may leave fewer than min_points valid samples in the short high-gain stage
    code = res["error_code"]
    short = res["n_points"][0] < PARAMS.min_points[0]
    np.testing.assert_array_equal(code[~short], truth.expected_error[c][~short])
    assert np.all(code[short & (truth.kind == KIND_NORMAL)] == 6)
    assert short.sum() < 10
    # the values of lost samples do not matter (zeros vs random garbage)
    rng = np.random.default_rng(0)
    garbage_a = np.where(v, a, rng.integers(0, 16384, a.shape)).astype(np.uint16)
    garbage_d = np.where(v, d, rng.integers(0, 16384, d.shape)).astype(np.uint16)
    _fields_equal(process_scan(garbage_a, garbage_d, v), res)
    normal = np.nonzero((truth.kind == KIND_NORMAL) & ~short)[0]
    t = np.arange(a.shape[0])
    for j in range(2):
        det = res["stage_bounds"][j + 1, 0, normal]
        b = truth.switch_step[c, j, normal]
        # the switch is seen at the first valid sample of the new gain (or the one after a
        # transition sample)
        first_valid = np.array([t[(t >= bb) & v[:, p]][0] for bb, p in zip(b, normal, strict=True)])
        after = np.array(
            [t[(t > fv) & v[:, p]][0] for fv, p in zip(first_valid, normal, strict=True)]
        )
        assert np.all((det >= b - E) & (det <= after))
    for p in normal[:60]:
        for g in range(2):
            lo, hi = res["fit_bounds"][g, :, p]
            s_slope, _ = _stage_sigma(v[:, p], lo, hi, PARAMS.n_intervals[g], SIGMA)
            assert abs(res["slope"][g, p] - truth.slope[c, g, p]) <= N_SIGMA * s_slope


def test_lost_switch_samples_and_invalid_zeros():
    """Lost samples at a switch, and zeros of lost samples, do not create stages or jumps."""
    scans = make_drscs_scans(seed=3, shape=(16,), inject_failures=False, transition_fraction=0)
    a, d, v = scans.analog[1].copy(), scans.digital[1].copy(), scans.valid[1].copy()
    ref = process_scan(a, d, v)
    b1 = scans.truth.switch_step[1, 0]
    cols = np.arange(16)
    for shift in (0, 1):
        v[b1 + shift, cols] = False
        a[b1 + shift, cols] = 0
        d[b1 + shift, cols] = 0
    res = process_scan(a, d, v)
    np.testing.assert_array_equal(res["error_code"], 0)
    np.testing.assert_array_equal(res["stage_bounds"][1, 0], b1 + 2)
    np.testing.assert_array_equal(res["n_fluctuations"], ref["n_fluctuations"])
    np.testing.assert_allclose(res["slope"][2], ref["slope"][2], rtol=1e-12)


def test_parameters_are_used(scans):
    a, d, v = scans.analog[1], scans.digital[1], scans.valid[1]
    normal = scans.truth.kind == KIND_NORMAL
    strict = process_scan(a, d, v, DrscsParams(safety_factor=20000.0))
    assert np.all(strict["error_code"][normal] == 9)  # no drop > 20000 ADU
    few = process_scan(a, d, v, DrscsParams(max_diff_changes=2))
    assert np.all(few["error_code"][normal] == 8)  # every scan has >= 2 switch drops
    assert np.all(few["n_fluctuations"][normal] >= 2)
    one = process_scan(a, d, v, DrscsParams(n_intervals=(1, 1, 1)))
    assert np.all(one["error_code"][normal] == 0)
    assert not np.array_equal(one["slope"][2], process_scan(a, d, v)["slope"][2])


def test_scaled_x():
    np.testing.assert_array_equal(scaled_x(np.array([0, 1, 200, 201, 210])), [0, 1, 200, 210, 300])


def test_choose_current_rule():
    # failures overall: current 0 -> 3, current 1 -> 1, current 2 -> 2
    codes = np.array(
        [
            [0, 3, 6, 8, 7, 0],
            [0, 0, 0, 8, 3, 0],
            [0, 0, 2, 8, 0, 0],
        ]
    )
    chosen, failed_all = choose_current(codes, None, None)
    # ok in the best current (1) -> 1; series 4 fails there: current 2 (fewer failures than 0);
    # series 3 fails everywhere: best current overall (1), marked
    np.testing.assert_array_equal(chosen, [1, 1, 1, 1, 2, 1])
    np.testing.assert_array_equal(failed_all, [False, False, False, True, False, False])
    # ties in the failure count: configured order decides, not the position in the list
    tied = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5]])
    np.testing.assert_array_equal(choose_current(tied, None, None)[0], [1, 0, 0])
    np.testing.assert_array_equal(choose_current(tied, None, [2, 1, 0])[0], [2, 2, 1])
    # equal ranks: lower quality value wins, NaN worst
    quality = np.array([[1.0, np.nan, 3.0], [2.0, 1.0, 1.0], [0.5, 9.0, np.nan]])
    np.testing.assert_array_equal(choose_current(tied, quality, [0, 0, 0])[0], [2, 2, 1])


def test_merge_fills_series_failed_in_one_current():
    scans = make_drscs_scans(seed=7, shape=(64,), fail_current=0)
    n_cur = len(scans.truth.currents)
    # make current 0 the best overall: 4 extra failures (all samples lost) in currents 1 and 2
    valid = scans.valid.copy()
    valid[1:, :, 8:12] = False
    res = [process_scan(scans.analog[c], scans.digital[c], valid[c]) for c in range(n_cur)]
    codes = np.stack([r["error_code"] for r in res])
    np.testing.assert_array_equal((codes != 0).sum(axis=1), [7, 10, 10])
    quality = np.stack([np.mean(r["residual"], axis=0) for r in res])
    chosen, failed_all = choose_current(codes, quality, None)
    merged = merge_results(res, chosen)

    p = KIND_FAILS_ONE_CURRENT
    assert codes[0, p] == 3 and codes[1, p] == 0 and codes[2, p] == 0
    assert chosen[p] == 1 and merged["chosen_current"][p] == 1  # tie 10/10 -> order
    assert merged["error_code"][p] == 0
    np.testing.assert_array_equal(merged["slope"][:, p], res[1]["slope"][:, p])
    np.testing.assert_array_equal(chosen[8:12], 0)
    np.testing.assert_array_equal(chosen[12:], 0)
    # failed everywhere: values and error code of the best current (0), marked -1
    everywhere = np.nonzero(failed_all)[0]
    np.testing.assert_array_equal(everywhere, [1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(merged["chosen_current"][everywhere], -1)
    np.testing.assert_array_equal(merged["error_code"][everywhere], codes[0, everywhere])
    # every field comes from the chosen current, series by series
    for key, value in merged.items():
        if key == "chosen_current":
            continue
        stack = np.stack([r[key] for r in res])
        expect = np.stack([stack[chosen[i], ..., i] for i in range(chosen.size)], axis=-1)
        np.testing.assert_array_equal(expect, value, err_msg=key)


def test_flat_run_rule():
    """Saturation needs a trailing run of >= min_flat flat steps; one noisy sample in the
    plateau does not break the run (running median before the flat test)."""
    scans = make_drscs_scans(seed=9, shape=(8,), inject_failures=False, currents=(60.0,))
    n_steps = scans.analog.shape[1]
    cols = scans.truth.saturation_start[0] == n_steps  # no plateau within the scan
    assert cols.sum() >= 4
    a = scans.analog[0][:, cols].astype(np.int64)
    d, v = scans.digital[0][:, cols], scans.valid[0][:, cols]
    assert PARAMS.min_flat == 5  # spec example value
    # n_flat equal samples at the end = n_flat - 1 flat steps
    for n_flat, expect in ((5, n_steps), (6, n_steps - 6), (12, n_steps - 12)):
        flat = a.copy()
        flat[n_steps - n_flat :] = flat[n_steps - n_flat] + 200  # clear kink
        res = process_scan(flat.astype(np.uint16), d, v)
        np.testing.assert_array_equal(res["saturation_start"], expect)
    flat[n_steps - 6] += 40  # one outlier inside the plateau
    res = process_scan(flat.astype(np.uint16), d, v)
    np.testing.assert_array_equal(res["saturation_start"], n_steps - 12)
    plain = process_scan(flat.astype(np.uint16), d, v, DrscsParams(flat_filter_window=1))
    np.testing.assert_array_equal(plain["saturation_start"], n_steps)  # run of 4 after it


@pytest.mark.parametrize("window", [3, 5, 7])
@pytest.mark.parametrize("shape", [(1, 4), (2, 3), (4, 6), (240, 300)])
def test_running_median_equals_scipy(window, shape):
    """The selection-network running median equals scipy's median_filter (edges repeated),
    with many ties (small integers) and with distinct values."""
    from scipy import ndimage

    from calib_mpi.process.drscs import running_median

    rng = np.random.default_rng(window * 100 + shape[0])
    for x in (rng.integers(0, 6, shape).astype(np.float64), rng.normal(size=shape)):
        want = ndimage.median_filter(x, size=(window, 1), mode="nearest")
        assert np.array_equal(running_median(x, window), want)
