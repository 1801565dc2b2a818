"""Current-source (drscs) scan processing: gain-stage detection, per-stage line fits, merge rule.

Numpy (plus ``scipy.ndimage`` for even median windows), vectorised over series: no Python
loop over pixels or cells. Raw uint16 scans go to the compiled kernel ``drscs_scan``, which
gives every output identically one series at a time (~4x less CPU: ~25 against ~90 us per
300-step series on one core here); the numpy version is the reference and the fallback.
Implements the "Rule" of ``shared/spec/measurements.md`` section 3 and the merge rule of
``shared/spec/steps.md`` section 4.

A *series* is the scan of one (cell, pixel): analog ``a[t]`` and digital ``d[t]`` at scan step
``t = 0..T-1`` with a validity flag. Input arrays are ``(step, P)`` with ``P`` series of any
origin (e.g. a flattened ``(cell, 64, 64)`` block); outputs are indexed ``(k, ..., P)``, with
``k`` the gain stage (0 high, 1 medium, 2 low) or the threshold index.

Algorithm of :func:`process_scan` (all steps use full step indices ``t`` and the validity mask;
lost samples are never compacted away, see known-defects.md item 21):

1. *Fluctuations*: ``Δ[t] = a[t] - a[prev(t)]`` between consecutive valid samples; candidates
   ``Δ < diff_threshold`` or ``Δ > safety_factor``; ``>= max_diff_changes`` candidates → error 8.
2. *Digital cleaning*: lost samples are filled with the previous valid digital value (the first
   valid one before any), then samples deviating by ``>= spike_threshold`` from a running median
   (``spike_window`` steps) are replaced by the median.
3. *Switch detection* (digital): level ``L0`` = median of the cleaned digital over the
   ``level_window`` steps from ``skip_first``; switch ``k`` is the first valid step ``b_k`` after
   the previous switch whose cleaned digital exceeds ``L_k + digital_switch_threshold``; the next
   level ``L_{k+1}`` is the median over the ``level_window`` steps after ``b_k``. Up to three
   switches are searched: three → error 2 (too many stages), fewer than two → error 3.
4. *Confirmation* (analog): at each of the two switches the line fitted to the stage before,
   evaluated at ``x(b_k)``, must exceed the line of the stage after by ``safety_factor``, else
   error 9 (where a stage could not be fitted: the mean of the last ``drop_window`` valid
   samples before the excluded transition minus the mean of the first ``drop_window`` after).
   Evaluated after the fits (steps 6-7) but ranked before their errors.
5. *Saturation*: inside the low stage ``[b_1, T)``, the first valid sample ``>=
   saturation_threshold``, or the first sample of the trailing run of flat steps
   (``|Δ| < saturation_threshold_diff``, at least ``min_flat`` steps; Δ of the analog after a
   running median over ``flat_filter_window`` steps, so that one noisy sample does not break
   the run), whichever is earlier; ``T`` when there is none.
6. *Fit ranges*: high ``[skip_first, b_0 - e)``, medium ``[b_0 + e, b_1 - e)``, low
   ``[b_1 + e, sat - e)`` with ``e = transition_exclude``. Fewer than ``min_points[g]`` valid
   samples → error 6.
7. *Sub-interval fits* (spec steps 6-8): ``x(t) = t`` up to ``scaling_point`` and
   ``scaling_point + scaling_factor·(t - scaling_point)`` after; each range is split into
   ``n_intervals[g]`` parts (``floor(len/n) == 0`` → error 7), each part is a closed-form least
   squares line of ``a`` vs ``x`` over its valid samples (< 2 points → error 6, zero
   determinant → error 5); the stage value is the mean of the part fits, without the first
   ``fit_cutoff_left`` and last ``fit_cutoff_right`` ones when there are at least 3 parts.
8. ``gain_level[g]`` = median of the raw digital over the valid samples of the fit range;
   ``threshold[k] = (gain_level[k] + gain_level[k + 1]) / 2``.

Error codes follow the original numbering (``ERROR_CODES``); 9 and 10 are additions. The first
failing step in the order above sets the code. ``-1`` is only an internal initial value and is
never returned. Fitted values are kept wherever a stage could be fitted (NaN elsewhere), also
for series with a nonzero error code; such series carry ``CI_EVAL_ERROR`` in all gains and
their values must not be used as constants.

With integer-valued input (raw ADU) every least-squares sum is an exact integer in float64, so
results per series do not depend on which other series share the block, nor on summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calib_mpi.badpixels import BAD_PIXEL_DTYPE, BadPixels
from calib_mpi.process import _jit

__all__ = [
    "DrscsParams",
    "running_median",
    "ERROR_CODES",
    "N_GAINS",
    "choose_current",
    "merge_results",
    "process_scan",
    "scaled_x",
]

N_GAINS = 3

#: Meaning of ``error_code`` (numbering of ``archive/src_old/process.py``; 9 and 10 are ours).
ERROR_CODES: dict[int, str] = {
    -1: "not processed (internal initial value, never returned)",
    0: "ok",
    1: "unknown exception (original code; not produced here)",
    2: "too many gain stages",
    3: "too few gain stages",
    4: "infinite loop broken (original state machine; not produced here)",
    5: "slope/offset not computable (zero determinant or non-finite result)",
    6: "too few points for a fit (a sub-interval < 2 or a stage < min_points valid samples)",
    7: "interval too short to split into its sub-intervals",
    8: "too many fluctuations (>= max_diff_changes analog jump candidates)",
    9: "digital gain switch not confirmed by an analog drop > safety_factor",
    10: "no valid sample",
}

_DIGITAL_KEY_OFFSET = float(2**20)


@dataclass(frozen=True)
class DrscsParams:
    """Parameters of the drscs processing (ADU for values, scan steps for indices).

    The defaults are those of ``measurements.md`` section 3 (``base.yaml``; the 2017 rule for
    the digital switch detection). The original's ``region_range(_in_percent)`` belong to its
    analog state machine and ``percent`` was never enabled; neither applies here.
    ``residual_threshold``, ``drop_window`` and ``flat_filter_window`` (running median of the
    analog before the flat-step test, 1 = off) are our choices.
    """

    diff_threshold: float = -100.0
    safety_factor: float = 1000.0
    max_diff_changes: int = 150
    saturation_threshold: float = 14000.0
    saturation_threshold_diff: float = 30.0
    min_flat: int = 5
    flat_filter_window: int = 3
    scaling_point: int = 200
    scaling_factor: float = 10.0
    n_intervals: tuple[int, int, int] = (1, 1, 5)
    fit_cutoff_left: int = 1
    fit_cutoff_right: int = 1
    digital_switch_threshold: float = 350.0
    spike_window: int = 5
    spike_threshold: float = 200.0
    level_window: int = 5
    skip_first: int = 1
    transition_exclude: int = 1
    drop_window: int = 2
    min_points: tuple[int, int, int] = (7, 30, 30)
    residual_threshold: float = 100.0


def running_median(x: np.ndarray, window: int) -> np.ndarray:
    """Running median over axis 0 (steps) of ``x`` (step, P), edges repeated: equal to
    ``scipy.ndimage.median_filter(x, size=(window, 1), mode="nearest")``. Windows of 3 and 5
    use min/max selection networks on shifted views (about 5x faster); others, and input
    with NaN, go to scipy."""
    if window not in (3, 5) or x.shape[0] == 0 or np.isnan(x).any():
        from scipy import ndimage  # on use: importing scipy costs ~0.1 s per job

        return ndimage.median_filter(x, size=(window, 1), mode="nearest")
    h = window // 2
    xp = np.concatenate([np.repeat(x[:1], h, axis=0), x, np.repeat(x[-1:], h, axis=0)])
    n = x.shape[0]
    v = [xp[i:i + n] for i in range(window)]

    def med3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))

    if window == 3:
        return med3(*v)
    a, b, c, d, e = v
    return med3(e, np.maximum(np.minimum(a, b), np.minimum(c, d)),
                np.minimum(np.maximum(a, b), np.maximum(c, d)))


def scaled_x(t: np.ndarray, scaling_point: int = 200, scaling_factor: float = 10.0) -> np.ndarray:
    """Scan step → x (integration-time units): ``t`` up to ``scaling_point``, then ×factor."""
    t = np.asarray(t, dtype=np.float64)
    return np.where(t <= scaling_point, t, scaling_point + scaling_factor * (t - scaling_point))


def _at(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``arr[idx[p], p]`` for a (T, P) array and per-series indices (P,) (clipped to range)."""
    i = np.clip(idx, 0, arr.shape[0] - 1)
    return np.take_along_axis(arr, i[None, :], axis=0)[0]


def _count_before(cum: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Number of valid samples in ``[0, idx)`` per series from the inclusive cumsum (T, P)."""
    idx = np.asarray(idx)
    return np.where(idx <= 0, 0, _at(cum, np.minimum(idx, cum.shape[0]) - 1))


def _valid_position(cum: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Step of the ``rank``-th valid sample (1-based) per series; T when there is none."""
    hit = cum >= rank[None, :]
    return np.where(hit.any(axis=0), np.argmax(hit, axis=0), cum.shape[0])


def _exclusion(cum: np.ndarray, bound: np.ndarray, n_excl: int) -> tuple[np.ndarray, np.ndarray]:
    """Range ends around a boundary step that leave out ``n_excl`` valid samples on each side.

    Returns ``(end_before, start_after)``: a stage ending at ``bound`` uses ``[.., end_before)``,
    the next one ``[start_after, ..)``. Counting valid samples (not steps) keeps a transition
    sample out of the fits also when the samples around it were lost.
    """
    n_before = _count_before(cum, bound)
    end_before = np.where(n_before - n_excl >= 0, _valid_position(cum, n_before - n_excl + 1), 0)
    start_after = np.where(
        n_excl > 0, _valid_position(cum, n_before + n_excl) + 1, np.minimum(bound, cum.shape[0])
    )
    n_steps = cum.shape[0]
    end_before = np.where(bound >= n_steps, n_steps, np.minimum(end_before, bound))
    return end_before, np.minimum(np.maximum(start_after, bound), n_steps)


def _edge_mean(
    values: np.ndarray,
    valid: np.ndarray,
    cum: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    k: int,
    last: bool,
) -> np.ndarray:
    """Mean of the first (or last) ``k`` valid samples in ``[lo, hi)`` per series (NaN if none)."""
    t = np.arange(values.shape[0])[:, None]
    inside = valid & (t >= lo) & (t < hi)
    if last:
        inside &= cum > (_count_before(cum, hi) - k)[None, :]
    else:
        inside &= cum <= (_count_before(cum, lo) + k)[None, :]
    n = inside.sum(axis=0)
    s = np.where(inside, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _line_fit(
    mask: np.ndarray, y: np.ndarray, design: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form least squares of ``y`` vs ``x`` over ``mask`` for every series.

    ``design`` is ``(3, T)``: rows ``1, x, x²``. Returns ``slope, offset, rms, n, det`` (P,),
    NaN where fewer than 2 points or ``det = n·Sxx - Sx² == 0``; ``rms = sqrt(res/n)``.
    """
    m = mask.astype(np.float64)
    my = np.where(mask, y, 0.0)
    n, sx, sxx = design @ m
    sy, sxy = design[:2] @ my
    syy = np.einsum("tp,tp->p", my, my)
    det = n * sxx - sx * sx
    num = n * sxy - sx * sy
    ok = (n >= 2) & (det > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(ok, num / det, np.nan)
        offset = np.where(ok, (sy - slope * sx) / n, np.nan)
        res = np.where(ok, ((n * syy - sy * sy) - num * num / det) / n, np.nan)
        rms = np.sqrt(np.maximum(res, 0.0) / n)
    return slope, offset, np.where(ok, rms, np.nan), n, det


def _stage_medians(digital: np.ndarray, stage_of: np.ndarray) -> np.ndarray:
    """Median of ``digital`` (T, P) per stage id ``stage_of`` (T, P) in 0..2 (others: -1).

    One sort per series: keys ``d + stage·2**20`` put each stage's samples in a contiguous
    sorted segment (digital values must lie in ``[0, 2**20)``). Returns (3, P), NaN if empty.
    """
    sid = np.where(stage_of < 0, N_GAINS, stage_of)
    key = np.sort((digital + sid * _DIGITAL_KEY_OFFSET).T, axis=1)
    out = np.full((N_GAINS, digital.shape[1]), np.nan)
    start = np.zeros(digital.shape[1], dtype=np.int64)
    rows = np.arange(digital.shape[1])
    last = key.shape[1] - 1
    for g in range(N_GAINS):
        n = (sid == g).sum(axis=0)
        lo = key[rows, np.minimum(start + (n - 1) // 2, last)]
        hi = key[rows, np.minimum(start + n // 2, last)]
        out[g] = np.where(n > 0, 0.5 * (lo + hi) - g * _DIGITAL_KEY_OFFSET, np.nan)
        start += n
    return out


@dataclass
class _Scan:
    """One block of series (step, P) and the validity bookkeeping every step of
    :func:`process_scan` uses."""

    a: np.ndarray  #: analog, float64
    d: np.ndarray  #: digital, float64
    v: np.ndarray  #: valid samples, bool
    cum: np.ndarray  #: valid samples in [0, t], int32
    prev: np.ndarray  #: last valid step before t, -1: none
    fill_idx: np.ndarray  #: step whose value stands for t (lost samples: the previous valid)
    code: np.ndarray  #: (P,) int16 error code, -1 until a step fails

    @property
    def n_steps(self) -> int:
        return self.a.shape[0]

    @property
    def tc(self) -> np.ndarray:
        return np.arange(self.n_steps)[:, None]

    @property
    def has_delta(self) -> np.ndarray:
        return self.v & (self.prev >= 0)

    def fail(self, where: np.ndarray, value: int) -> None:
        """Set error ``value`` where no earlier step has failed."""
        self.code[where & (self.code == -1)] = value


def _scan(analog: np.ndarray, digital: np.ndarray, valid: np.ndarray) -> _Scan:
    a = np.asarray(analog)
    d = np.asarray(digital)
    v = np.asarray(valid, dtype=bool)
    if a.ndim != 2 or a.shape != d.shape or a.shape != v.shape:
        raise ValueError(
            f"analog, digital, valid must be equal (step, P): {a.shape}, {d.shape}, {v.shape}"
        )
    tc = np.arange(a.shape[0])[:, None]
    last_valid = np.maximum.accumulate(np.where(v, tc, -1), axis=0)
    prev = np.empty_like(last_valid)
    prev[0] = -1
    prev[1:] = last_valid[:-1]
    first_valid = np.argmax(v, axis=0)
    fill_idx = np.where(last_valid >= 0, last_valid, first_valid[None, :])
    return _Scan(a.astype(np.float64), d.astype(np.float64), v,
                 np.cumsum(v, axis=0, dtype=np.int32), prev, fill_idx,
                 np.full(a.shape[1], -1, dtype=np.int16))


def _fluctuations(sc: _Scan, p: DrscsParams) -> np.ndarray:
    """Step 1: analog jump candidates between consecutive valid samples, per series (P,)."""
    has_delta = sc.has_delta
    before = np.take_along_axis(sc.a, np.maximum(sc.prev, 0), axis=0)
    delta = np.where(has_delta, sc.a - before, 0.0)
    jump = has_delta & ((delta < p.diff_threshold) | (delta > p.safety_factor))
    return jump.sum(axis=0).astype(np.int32)


def _switches(sc: _Scan, any_valid: np.ndarray, p: DrscsParams) -> np.ndarray:
    """Steps 2-3: the cleaned digital's switches ``(3, P)`` (-1: not found)."""
    d_fill = np.take_along_axis(sc.d, sc.fill_idx, axis=0)
    med = running_median(d_fill, p.spike_window)
    d_clean = np.where(np.abs(d_fill - med) >= p.spike_threshold, med, d_fill)
    n_series = sc.a.shape[1]
    window = np.arange(p.level_window)[:, None]
    start = np.full(n_series, p.skip_first, dtype=np.int64)
    active = any_valid.copy()
    switch = np.full((N_GAINS, n_series), -1, dtype=np.int64)
    for k in range(N_GAINS):
        idx = np.minimum(start[None, :] + window, sc.n_steps - 1)
        level = np.median(np.take_along_axis(d_clean, idx, axis=0), axis=0)
        cand = sc.v & (sc.tc >= start) & (d_clean > level + p.digital_switch_threshold)
        found = active & cand.any(axis=0)
        pos = np.argmax(cand, axis=0)
        switch[k] = np.where(found, pos, -1)
        active = found
        start = pos + 1
    return switch


def _saturation(sc: _Scan, low_start: np.ndarray, b2: np.ndarray, p: DrscsParams) -> np.ndarray:
    """Step 5: first saturated step inside the low stage ``[low_start, T)`` per series (T:
    none), at most ``b2`` (a third switch)."""
    n_steps, tc, v = sc.n_steps, sc.tc, sc.v
    a_med = np.take_along_axis(sc.a, sc.fill_idx, axis=0)
    if p.flat_filter_window > 1:
        a_med = running_median(a_med, p.flat_filter_window)
    a_step = a_med - np.take_along_axis(a_med, np.maximum(sc.prev, 0), axis=0)
    flat = sc.has_delta & (np.abs(a_step) < p.saturation_threshold_diff)
    brk = (v & ~flat) | (tc < low_start)
    last_break = np.where(brk.any(axis=0), n_steps - 1 - np.argmax(brk[::-1], axis=0), -1)
    run = sc.cum[-1] - _count_before(sc.cum, last_break + 1)
    sat_flat = np.where(run >= p.min_flat, np.maximum(last_break, low_start), n_steps)
    over = v & (tc >= low_start) & (sc.a >= p.saturation_threshold)
    sat_thr = np.where(over.any(axis=0), np.argmax(over, axis=0), n_steps)
    return np.minimum(np.minimum(sat_flat, sat_thr), b2)


def _stage_fits(
    sc: _Scan, fit_lo: np.ndarray, fit_hi: np.ndarray, has: np.ndarray, p: DrscsParams
) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[np.ndarray, int]]]:
    """Step 7: sub-interval line fits of each stage's fit range ``[fit_lo, fit_hi)`` (3, P).

    Returns the per-stage ``slope``, ``offset``, ``residual``, ``n_points`` (3, P), the stage of
    every sample (step, P) (-1: none) and the failures found, (where, code) in step order.
    """
    n_steps, n_series = sc.a.shape
    tc, v, cum = sc.tc, sc.v, sc.cum
    x = scaled_x(np.arange(n_steps), p.scaling_point, p.scaling_factor)
    design = np.stack([np.ones(n_steps), x, x * x])
    out = {k: np.full((N_GAINS, n_series), np.nan) for k in ("slope", "offset", "residual")}
    out["n_points"] = np.zeros((N_GAINS, n_series), dtype=np.int32)
    stage_of = np.full((n_steps, n_series), -1, dtype=np.int8)
    fit_fail: list[tuple[np.ndarray, int]] = []
    for g in range(N_GAINS):
        lo, hi, n_int = fit_lo[g], fit_hi[g], p.n_intervals[g]
        stage_of[v & (tc >= lo) & (tc < hi)] = g
        out["n_points"][g] = _count_before(cum, hi) - _count_before(cum, lo)
        step = (hi - lo) // n_int
        usable = has[g] & (step > 0)
        fit_fail += [(has[g] & (step <= 0), 7),
                     (usable & (out["n_points"][g] < p.min_points[g]), 6)]
        keep = range(n_int)
        if n_int >= 3:
            keep = range(p.fit_cutoff_left, n_int - p.fit_cutoff_right)
        sums = np.zeros((3, n_series))
        too_few = np.zeros(n_series, dtype=bool)
        singular = np.zeros(n_series, dtype=bool)
        for i in range(n_int):
            s = lo + i * step
            stop = hi if i == n_int - 1 else s + step
            mask = v & (tc >= s) & (tc < stop) & usable
            fs, fo, fr, fn, fdet = _line_fit(mask, sc.a, design)
            too_few |= usable & (fn < 2)
            singular |= usable & (fn >= 2) & ~(fdet > 0)
            if i in keep:
                sums += np.stack([fs, fo, fr])
        fit_fail.append((too_few, 6))
        stage = np.where(usable, sums / len(keep), np.nan)
        out["slope"][g], out["offset"][g], out["residual"][g] = stage
        finite = np.isfinite(out["slope"][g] + out["offset"][g])
        fit_fail.append((usable & ~too_few & (singular | ~finite), 5))
    return out, stage_of, fit_fail


def _confirm_drops(
    sc: _Scan, fits: dict[str, np.ndarray], switch: np.ndarray, first: np.ndarray,
    fit_lo: np.ndarray, cut: list[tuple[np.ndarray, np.ndarray]], p: DrscsParams,
) -> None:
    """Step 4: the analog must drop by ``safety_factor`` at both switches, between the fitted
    lines of the stages (mean of ``drop_window`` valid samples next to the excluded ones where
    a fit is missing); error 9 where it does not."""
    n_steps = sc.n_steps
    x = scaled_x(np.arange(n_steps), p.scaling_point, p.scaling_factor)
    slope, offset = fits["slope"], fits["offset"]
    for k in range(2):
        x_b = x[np.minimum(first[k + 1], n_steps - 1)]
        drop = (offset[k] + slope[k] * x_b) - (offset[k + 1] + slope[k + 1] * x_b)
        before = _edge_mean(sc.a, sc.v, sc.cum, fit_lo[k], cut[k][0], p.drop_window, last=True)
        after = _edge_mean(sc.a, sc.v, sc.cum, cut[k][1], cut[k + 1][0], p.drop_window,
                           last=False)
        drop = np.where(np.isfinite(drop), drop, before - after)
        sc.fail((switch[k] >= 0) & ~(drop > p.safety_factor), 9)


def process_scan(
    analog: np.ndarray,
    digital: np.ndarray,
    valid: np.ndarray,
    params: DrscsParams = DrscsParams(),  # noqa: B008 (frozen dataclass, immutable default)
) -> dict[str, np.ndarray]:
    """Detect the gain stages of current-source scans and fit each stage linearly.

    Parameters
    ----------
    analog, digital : (step, P) arrays, ADU (raw integer values expected; any real dtype).
    valid : (step, P) bool, True where the sample was really recorded.
    params : DrscsParams.

    Returns
    -------
    dict of per-series arrays (last axis P):
        ``slope`` (3, P) ADU per x unit, ``offset`` (3, P) ADU (value at x = 0), ``residual``
        (3, P) mean RMS residual of the kept sub-fits (ADU), float64, NaN where not fitted;
        ``gain_level`` (3, P) median digital per stage (ADU); ``threshold`` (2, P) mid-points
        of consecutive gain levels; ``stage_bounds`` (3, 2, P) int32 first and end-exclusive
        step of each detected stage (-1 if the stage was not found); ``fit_bounds`` (3, 2, P)
        int32 step range used for the fits; ``n_points`` (3, P) int32 valid samples in the fit
        range; ``saturation_start`` (P,) int32 first saturated step (T: none, -1: no low
        stage); ``n_fluctuations`` (P,) int32; ``error_code`` (P,) int16 (``ERROR_CODES``);
        ``bad_pixels`` (3, P) uint32: ``CI_EVAL_ERROR`` in all gains where error_code != 0,
        ``CI_LINEAR_DEVIATION`` where residual > ``residual_threshold``, ``VALUE_IS_NAN``
        where slope or offset is NaN.
    """
    p = params
    if len(p.n_intervals) != N_GAINS or len(p.min_points) != N_GAINS:
        raise ValueError("n_intervals and min_points need one entry per gain stage")
    fast = _compiled(analog, digital, valid, p)
    if fast is not None:
        return _process_compiled(fast, analog, digital, valid, p)
    sc = _scan(analog, digital, valid)
    n_steps, n_series = sc.a.shape
    any_valid = sc.cum[-1] > 0
    n_fluct = _fluctuations(sc, p)
    sc.fail(~any_valid, 10)
    sc.fail(n_fluct >= p.max_diff_changes, 8)
    switch = _switches(sc, any_valid, p)
    n_switch = (switch >= 0).sum(axis=0)
    sc.fail(n_switch > 2, 2)
    sc.fail(n_switch < 2, 3)
    b0, b1, b2 = (np.where(switch[k] >= 0, switch[k], n_steps) for k in range(N_GAINS))
    sat = _saturation(sc, np.where(n_switch >= 2, b1, n_steps), b2, p)
    sat = np.where(n_switch >= 2, sat, n_steps)

    # stage extents [first, end): the last stage found ends at T, low gain at saturation
    first = np.stack([np.zeros(n_series, dtype=np.int64), b0, b1])
    end = np.stack([b0, b1, sat])
    has = np.stack([any_valid, n_switch >= 1, n_switch >= 2])
    stage_bounds = np.where(has[:, None, :], np.stack([first, end], axis=1), -1)
    # 6. fit ranges: skip_first at the start, transition_exclude valid samples at every boundary
    cut = [_exclusion(sc.cum, bnd, p.transition_exclude) for bnd in (b0, b1, b2, sat)]
    fit_lo = np.stack([np.full(n_series, p.skip_first), cut[0][1], cut[1][1]])
    fit_hi = np.stack([cut[0][0], cut[1][0], cut[3][0]])
    fit_lo = np.where(has, np.minimum(fit_lo, n_steps), 0)
    fit_hi = np.where(has, np.maximum(fit_hi, fit_lo), 0)

    fits, stage_of, fit_fail = _stage_fits(sc, fit_lo, fit_hi, has, p)
    _confirm_drops(sc, fits, switch, first, fit_lo, cut, p)
    for where, value in fit_fail:
        sc.fail(where, value)
    sc.code[sc.code == -1] = 0

    return _results(fits, _stage_medians(sc.d, stage_of), sc.code, p,
                    stage_bounds=stage_bounds, fit_bounds=np.stack([fit_lo, fit_hi], axis=1),
                    saturation_start=np.where(n_switch >= 2, sat, -1), n_fluctuations=n_fluct)


def _results(fits: dict[str, np.ndarray], gain_level: np.ndarray, code: np.ndarray,
             p: DrscsParams, **steps: np.ndarray) -> dict[str, np.ndarray]:
    """The output of :func:`process_scan` from the stage fits, gain levels (3, P), error codes
    and the step-valued arrays ``steps`` (made int32); thresholds and bad pixels derived."""
    return {
        **fits,
        "gain_level": gain_level,
        "threshold": 0.5 * (gain_level[:-1] + gain_level[1:]),
        **{k: v.astype(np.int32) for k, v in steps.items()},
        "error_code": code,
        "bad_pixels": _bad_pixels(code, fits, p),
    }


def _compiled(analog: np.ndarray, digital: np.ndarray, valid: np.ndarray, p: DrscsParams):
    """The compiled ``drscs_scan`` where it applies: raw uint16 scans of at least one step,
    odd running-median windows (scipy's even windows are not the mean of the two middle
    values) and at least one kept sub-interval; else None (numpy)."""
    a, d = np.asarray(analog), np.asarray(digital)
    if (a.dtype != np.uint16 or d.dtype != np.uint16 or a.ndim != 2 or a.shape != d.shape
            or np.shape(valid) != a.shape or a.shape[0] == 0 or p.spike_window % 2 == 0
            or (p.flat_filter_window > 1 and p.flat_filter_window % 2 == 0)):
        return None
    if any(n >= 3 and n - p.fit_cutoff_left - p.fit_cutoff_right < 1 for n in p.n_intervals):
        return None
    return _jit.kernel("drscs_scan")


def _process_compiled(fast, analog: np.ndarray, digital: np.ndarray, valid: np.ndarray,
                      p: DrscsParams) -> dict[str, np.ndarray]:
    """:func:`process_scan` by the compiled kernel: series by series, the same results."""
    n_steps, n_series = analog.shape
    fp = np.array([p.diff_threshold, p.safety_factor, p.saturation_threshold,
                   p.saturation_threshold_diff, p.digital_switch_threshold,
                   p.spike_threshold], np.float64)
    ip = np.array([p.max_diff_changes, p.min_flat, p.flat_filter_window, p.spike_window,
                   p.level_window, p.skip_first, p.transition_exclude, p.drop_window,
                   p.fit_cutoff_left, p.fit_cutoff_right, *p.n_intervals, *p.min_points],
                  np.int64)
    x = scaled_x(np.arange(n_steps), p.scaling_point, p.scaling_factor)
    fout = np.empty((n_series, 12))
    iout = np.empty((n_series, 18), np.int64)
    fast(np.ascontiguousarray(np.asarray(analog).T), np.ascontiguousarray(np.asarray(digital).T),
         np.ascontiguousarray(np.asarray(valid, dtype=bool).T), x, fp, ip, fout, iout)
    fits = {"slope": fout[:, 0:3].T.copy(), "offset": fout[:, 3:6].T.copy(),
            "residual": fout[:, 6:9].T.copy(),
            "n_points": iout[:, 12:15].T.astype(np.int32)}
    return _results(fits, fout[:, 9:12].T.copy(), iout[:, 17].astype(np.int16), p,
                    stage_bounds=iout[:, 0:6].reshape(n_series, 3, 2).transpose(1, 2, 0),
                    fit_bounds=iout[:, 6:12].reshape(n_series, 3, 2).transpose(1, 2, 0),
                    saturation_start=iout[:, 15], n_fluctuations=iout[:, 16])


def _bad_pixels(code: np.ndarray, fits: dict[str, np.ndarray], p: DrscsParams) -> np.ndarray:
    """(3, P) bad-pixel bits of the results (see :func:`process_scan`)."""
    bad = np.zeros(fits["slope"].shape, dtype=BAD_PIXEL_DTYPE)
    for flag, where in (
        (BadPixels.CI_EVAL_ERROR, np.broadcast_to(code != 0, bad.shape)),
        (BadPixels.CI_LINEAR_DEVIATION, fits["residual"] > p.residual_threshold),
        (BadPixels.VALUE_IS_NAN, np.isnan(fits["slope"]) | np.isnan(fits["offset"])),
    ):
        bad[where] |= BAD_PIXEL_DTYPE(flag)
    return bad


def choose_current(
    error_codes: np.ndarray,
    quality: np.ndarray | None = None,
    order: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose, per series, the current whose results are kept (steps.md section 4, rule).

    Rule: per series, among the currents where it succeeded (``error_code == 0``), take the one
    with the fewest failures overall (count of ``error_code != 0`` over all series given);
    ties by configured ``order`` (rank, lower first); remaining ties (only possible when
    ``order`` gives equal ranks) by lower ``quality`` (NaN worst), then by index. A series that
    failed in every current gets the best current overall (fewest failures, then order, then
    quality), i.e. the original's ``c*``, and is reported in the second return value.
    Call it with all series of one ASIC (the scope of "overall" in the original).

    Parameters
    ----------
    error_codes : (n_currents, P) int, from :func:`process_scan` per current.
    quality : (n_currents, P) float, lower is better (e.g. mean residual), optional.
    order : (n_currents,) ranks of the configured order; default the index order.

    Returns
    -------
    chosen : (P,) int64 index of the chosen current.
    failed_all : (P,) bool, True where no current succeeded.
    """
    ec = np.asarray(error_codes)
    if ec.ndim != 2:
        raise ValueError("error_codes must be (n_currents, P)")
    n_cur, n_series = ec.shape
    ok = ec == 0
    n_fail = (~ok).sum(axis=1)
    rank = np.arange(n_cur) if order is None else np.asarray(order)
    if rank.shape != (n_cur,):
        raise ValueError("order needs one rank per current")
    q = np.zeros(ec.shape) if quality is None else np.asarray(quality, dtype=np.float64)
    q = np.where(np.isnan(q), np.inf, q)
    shape = ec.shape
    keys = (
        np.broadcast_to(np.arange(n_cur)[:, None], shape),
        q,
        np.broadcast_to(rank[:, None], shape),
        np.broadcast_to(n_fail[:, None], shape),
        (~ok).astype(np.int8),
    )
    chosen = np.lexsort(keys, axis=0)[0].astype(np.int64)
    return chosen, ~ok.any(axis=0)


def merge_results(results: Sequence[dict[str, np.ndarray]], chosen: np.ndarray) -> dict:
    """Pick every per-series field (last axis P) from the chosen current.

    Parameters
    ----------
    results : one :func:`process_scan` dict per current (same keys and shapes).
    chosen : (P,) index into ``results``, from :func:`choose_current`.

    Returns
    -------
    dict with the same keys, plus ``chosen_current`` (P,) int16: the index of the current used
    where the merged ``error_code`` is 0, -1 where the series failed in the current kept.
    """
    chosen = np.asarray(chosen, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for key in results[0]:
        stack = np.stack([np.asarray(r[key]) for r in results])
        idx = chosen.reshape((1,) * (stack.ndim - 1) + chosen.shape)
        out[key] = np.take_along_axis(stack, idx, axis=0)[0]
    out["chosen_current"] = np.where(out["error_code"] == 0, chosen, -1).astype(np.int16)
    return out
