"""drscs kernel: ``process.drscs.process_scan`` one series at a time."""

import numpy as np
from numba import njit


@njit(nogil=True)
def _median_sorted(buf, n):
    """Median of ``buf[:n]`` after an insertion sort in place (np.median for n >= 1)."""
    for i in range(1, n):
        x = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > x:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = x
    if n % 2:
        return buf[n // 2]
    return (buf[n // 2 - 1] + buf[n // 2]) / 2.0


@njit(nogil=True)
def _median(w):
    """np.median of ``w`` (sorted in place)."""
    w.sort()
    n = w.shape[0]
    if n % 2:
        return w[n // 2]
    return (w[n // 2 - 1] + w[n // 2]) / 2.0


@njit(nogil=True)
def _running_median(x, window, out, buf):
    """Running median of ``x`` over ``window`` (odd) steps, edges repeated, into ``out``."""
    n = x.shape[0]
    h = window // 2
    for t in range(n):
        for w in range(window):
            buf[w] = x[min(max(t + w - h, 0), n - 1)]
        out[t] = _median_sorted(buf, window)


@njit(nogil=True, inline="always")
def _count_before(cum, idx):
    if idx <= 0:
        return 0
    return cum[min(idx, cum.shape[0]) - 1]


@njit(nogil=True, inline="always")
def _valid_position(cum, rank):
    for t in range(cum.shape[0]):
        if cum[t] >= rank:
            return t
    return cum.shape[0]


@njit(nogil=True)
def _exclusion(cum, bound, n_excl):
    n_steps = cum.shape[0]
    n_before = _count_before(cum, bound)
    end_before = _valid_position(cum, n_before - n_excl + 1) if n_before - n_excl >= 0 else 0
    if n_excl > 0:
        start_after = _valid_position(cum, n_before + n_excl) + 1
    else:
        start_after = min(bound, n_steps)
    end_before = n_steps if bound >= n_steps else min(end_before, bound)
    return end_before, min(max(start_after, bound), n_steps)


@njit(nogil=True)
def _edge_mean(a, v, cum, lo, hi, k, last):
    lim = _count_before(cum, hi) - k if last else _count_before(cum, lo) + k
    s = 0.0
    n = 0
    for t in range(max(lo, 0), min(hi, a.shape[0])):
        if v[t] and ((cum[t] > lim) if last else (cum[t] <= lim)):
            s += a[t]
            n += 1
    return s / n if n > 0 else np.nan


@njit(nogil=True)
def _line_fit(a, v, x, lo, hi):
    """Least squares of a vs x over the valid samples of [lo, hi): slope, offset, rms, n,
    det (NaN where n < 2 or det <= 0)."""
    n = sx = sxx = sy = sxy = syy = 0.0
    for t in range(max(lo, 0), min(hi, a.shape[0])):
        if v[t]:
            n += 1.0
            sx += x[t]
            sxx += x[t] * x[t]
            sy += a[t]
            sxy += x[t] * a[t]
            syy += a[t] * a[t]
    det = n * sxx - sx * sx
    num = n * sxy - sx * sy
    if not (n >= 2 and det > 0):
        return np.nan, np.nan, np.nan, n, det
    slope = num / det
    offset = (sy - slope * sx) / n
    res = ((n * syy - sy * sy) - num * num / det) / n
    return slope, offset, np.sqrt(max(res, 0.0) / n), n, det


def drscs_scan(analog, digital, valid, x, fp, ip, fout, iout):
    """``process.drscs.process_scan`` one series at a time, the same results (integer sums,
    the same formulas). analog, digital: (P, T) uint16; valid (P, T) bool; x (T,) scaled
    steps; fp: diff_threshold, safety_factor, saturation_threshold, saturation_threshold_diff,
    digital_switch_threshold, spike_threshold; ip: max_diff_changes, min_flat,
    flat_filter_window, spike_window (both odd), level_window, skip_first,
    transition_exclude, drop_window, fit_cutoff_left, fit_cutoff_right, n_intervals (3),
    min_points (3). fout (P, 12): slope, offset, residual, gain_level (3 each); iout (P, 18):
    stage_bounds (3 x first, end), fit_bounds (3 x lo, hi), n_points (3), saturation_start,
    n_fluctuations, error_code."""
    n_series, n_steps = analog.shape
    diff_thr, safety, sat_thr, sat_diff = fp[0], fp[1], fp[2], fp[3]
    switch_thr, spike_thr = fp[4], fp[5]
    cum = np.empty(n_steps, np.int64)
    prev = np.empty(n_steps, np.int64)
    fill = np.empty(n_steps, np.int64)
    a = np.empty(n_steps)
    tmp = np.empty(n_steps)
    clean = np.empty(n_steps)
    buf = np.empty(max(ip[3], ip[2], ip[4], 1))
    stage_of = np.empty(n_steps, np.int64)
    vals = np.empty(n_steps)
    for p in range(n_series):
        v = valid[p]
        _scan_basics(v, cum, prev, fill)
        for t in range(n_steps):
            a[t] = analog[p, t]
        code = _drscs_series(a, digital[p], v, x, cum, prev, fill, tmp, clean, buf, stage_of,
                             diff_thr, safety, sat_thr, sat_diff, switch_thr, spike_thr, ip,
                             fout[p], iout[p])
        iout[p, 17] = code
        for g in range(3):
            n = 0
            for t in range(n_steps):
                if stage_of[t] == g:
                    vals[n] = digital[p, t]
                    n += 1
            fout[p, 9 + g] = _median(vals[:n]) if n else np.nan


@njit(nogil=True)
def _scan_basics(v, cum, prev, fill):
    n_steps = v.shape[0]
    first_valid = 0
    for t in range(n_steps):
        if v[t]:
            first_valid = t
            break
    last = -1
    c = 0
    for t in range(n_steps):
        prev[t] = last
        if v[t]:
            last = t
            c += 1
        cum[t] = c
        fill[t] = last if last >= 0 else first_valid


@njit(nogil=True)
def _set_code(code, value):
    return value if code == -1 else code


@njit(nogil=True)
def _drscs_series(a, d, v, x, cum, prev, fill, tmp, clean, buf, stage_of, diff_thr, safety,
                  sat_thr, sat_diff, switch_thr, spike_thr, ip, fo, io):
    n_steps = a.shape[0]
    big = n_steps
    any_valid = cum[n_steps - 1] > 0
    code = -1
    # 1. fluctuations
    n_fluct = 0
    for t in range(n_steps):
        if v[t] and prev[t] >= 0:
            delta = a[t] - a[prev[t]]
            if delta < diff_thr or delta > safety:
                n_fluct += 1
    io[16] = n_fluct
    if not any_valid:
        code = _set_code(code, 10)
    if n_fluct >= ip[0]:
        code = _set_code(code, 8)
    # 2. digital: fill lost samples, remove spikes
    for t in range(n_steps):
        tmp[t] = d[fill[t]]
    _running_median(tmp, ip[3], clean, buf)
    for t in range(n_steps):
        if not (abs(tmp[t] - clean[t]) >= spike_thr):
            clean[t] = tmp[t]
    switch = _switches(clean, v, buf, ip[5], ip[4], switch_thr, any_valid)
    n_switch = 0
    for k in range(3):
        if switch[k] >= 0:
            n_switch += 1
    if n_switch > 2:
        code = _set_code(code, 2)
    if n_switch < 2:
        code = _set_code(code, 3)
    b = np.empty(3, np.int64)
    for k in range(3):
        b[k] = switch[k] if switch[k] >= 0 else big
    # 5. saturation inside the low stage
    low_start = b[1] if n_switch >= 2 else big
    sat = _saturation(a, v, cum, prev, fill, tmp, clean, buf, low_start, sat_thr, sat_diff, ip)
    sat = min(sat, b[2]) if n_switch >= 2 else big
    io[15] = sat if n_switch >= 2 else -1
    # stage extents and fit ranges
    first = (0, b[0], b[1])
    end = (b[0], b[1], sat)
    has = (any_valid, n_switch >= 1, n_switch >= 2)
    e = ip[6]
    cut_end = np.empty(4, np.int64)
    cut_start = np.empty(4, np.int64)
    for i, bnd in enumerate((b[0], b[1], b[2], sat)):
        cut_end[i], cut_start[i] = _exclusion(cum, bnd, e)
    lo_all = (ip[5], cut_start[0], cut_start[1])
    hi_all = (cut_end[0], cut_end[1], cut_end[3])
    fit_lo = np.empty(3, np.int64)
    fit_hi = np.empty(3, np.int64)
    for g in range(3):
        io[2 * g] = first[g] if has[g] else -1
        io[2 * g + 1] = end[g] if has[g] else -1
        fit_lo[g] = min(lo_all[g], big) if has[g] else 0
        fit_hi[g] = max(hi_all[g], fit_lo[g]) if has[g] else 0
        io[6 + 2 * g] = fit_lo[g]
        io[7 + 2 * g] = fit_hi[g]
    fails = _stage_fits(a, v, x, cum, fit_lo, fit_hi, has, ip, stage_of, fo, io)
    # 4. analog confirmation at both switches
    for k in range(2):
        x_b = x[min(first[k + 1], n_steps - 1)]
        drop = (fo[3 + k] + fo[k] * x_b) - (fo[3 + k + 1] + fo[k + 1] * x_b)
        if not np.isfinite(drop):
            before = _edge_mean(a, v, cum, fit_lo[k], cut_end[k], ip[7], True)
            after = _edge_mean(a, v, cum, cut_start[k], cut_end[k + 1], ip[7], False)
            drop = before - after
        if switch[k] >= 0 and not (drop > safety):
            code = _set_code(code, 9)
    for i in range(fails.shape[0]):
        if fails[i] > 0:
            code = _set_code(code, fails[i])
    return 0 if code == -1 else code


@njit(nogil=True)
def _switches(clean, v, buf, start, level_window, switch_thr, any_valid):
    """Step 3: the first valid step above the current stage's level + threshold, three
    times (-1: not found)."""
    n_steps = clean.shape[0]
    switch = np.full(3, -1, np.int64)
    active = any_valid
    for k in range(3):
        for w in range(level_window):
            buf[w] = clean[min(start + w, n_steps - 1)]
        level = _median_sorted(buf, level_window)
        pos = -1
        for t in range(max(start, 0), n_steps):
            if v[t] and clean[t] > level + switch_thr:
                pos = t
                break
        found = active and pos >= 0
        switch[k] = pos if found else -1
        active = found
        start = (pos if pos >= 0 else 0) + 1
    return switch


@njit(nogil=True)
def _saturation(a, v, cum, prev, fill, tmp, med, buf, low_start, sat_thr, sat_diff, ip):
    n_steps = a.shape[0]
    for t in range(n_steps):
        tmp[t] = a[fill[t]]
    if ip[2] > 1:
        _running_median(tmp, ip[2], med, buf)
    else:
        med[:] = tmp
    last_break = -1
    for t in range(n_steps):
        step = med[t] - med[max(prev[t], 0)]
        flat = v[t] and prev[t] >= 0 and abs(step) < sat_diff
        if (v[t] and not flat) or t < low_start:
            last_break = t
    run = cum[n_steps - 1] - _count_before(cum, last_break + 1)
    sat_flat = max(last_break, low_start) if run >= ip[1] else n_steps
    sat_over = n_steps
    for t in range(max(low_start, 0), n_steps):
        if v[t] and a[t] >= sat_thr:
            sat_over = t
            break
    return min(sat_flat, sat_over)


@njit(nogil=True)
def _stage_fits(a, v, x, cum, fit_lo, fit_hi, has, ip, stage_of, fo, io):
    """Sub-interval fits of the three stages into ``fo`` / ``io``; returns the failure codes
    found, in step order (0: none)."""
    n_steps = a.shape[0]
    fails = np.zeros(12, np.int64)
    stage_of[:] = -1
    for g in range(3):
        lo, hi, n_int = fit_lo[g], fit_hi[g], ip[10 + g]
        for t in range(max(lo, 0), min(hi, n_steps)):
            if v[t]:
                stage_of[t] = g
        n_points = _count_before(cum, hi) - _count_before(cum, lo)
        io[12 + g] = n_points
        step = (hi - lo) // n_int
        usable = has[g] and step > 0
        if has[g] and step <= 0:
            fails[4 * g] = 7
        if usable and n_points < ip[13 + g]:
            fails[4 * g + 1] = 6
        k0, k1 = 0, n_int
        if n_int >= 3:
            k0, k1 = ip[8], n_int - ip[9]
        s_sum = o_sum = r_sum = 0.0
        too_few = False
        singular = False
        for i in range(n_int):
            s = lo + i * step
            stop = hi if i == n_int - 1 else s + step
            if usable:
                fs, fo_, fr, fn, fdet = _line_fit(a, v, x, s, stop)
            else:
                fs, fo_, fr, fn, fdet = np.nan, np.nan, np.nan, 0.0, 0.0
            too_few = too_few or (usable and fn < 2)
            singular = singular or (usable and fn >= 2 and not (fdet > 0))
            if k0 <= i < k1:
                s_sum += fs
                o_sum += fo_
                r_sum += fr
        if too_few:
            fails[4 * g + 2] = 6
        n_keep = k1 - k0
        fo[g] = s_sum / n_keep if usable else np.nan
        fo[3 + g] = o_sum / n_keep if usable else np.nan
        fo[6 + g] = r_sum / n_keep if usable else np.nan
        if usable and not too_few and (singular or not np.isfinite(fo[g] + fo[3 + g])):
            fails[4 * g + 3] = 5
    return fails
