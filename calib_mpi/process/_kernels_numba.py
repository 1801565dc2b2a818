"""Numba source of the compiled kernels (imported only to compile them: by
:mod:`calib_mpi.process.aot` ahead of time, or by :mod:`calib_mpi.process._jit` just in time when
no prebuilt module matches this file).

An exported kernel is a plain Python function listed in :data:`EXPORTS` with its one signature
(the AOT module is compiled for exactly these types; the JIT path compiles the same function
for the types it is called with). Helpers it calls are ``@njit`` functions here. Adding a
kernel: write it here, add it to :data:`EXPORTS`, call it through
``_jit.kernel(name)`` with a numpy fallback; ``python -m calib_mpi.process.aot`` (run by
``scripts/setup-env.sh``) then builds it in. Any change to this file changes its hash, so a
prebuilt module of an older version is ignored (the JIT path is used) until rebuilt.
"""

import math

import numpy as np
from numba import njit

# Frames of one cell are added in sets of 8, 4, 2 and 1: per pixel row, the set's rows
# are summed in registers and the accumulator row is read and written once per set
# rather than once per frame (the accumulators, (cell, 64, 64) x 4 x 8 bytes, are far
# larger than the caches). Measured here on one core: 1.5-1.9x the speed of summing
# frame by frame into a block-sized buffer.

@njit(nogil=True, inline="always")
def _add8(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    f1 = frames[order[k + 1], ch, r, c0:c0 + cols]
    f2 = frames[order[k + 2], ch, r, c0:c0 + cols]
    f3 = frames[order[k + 3], ch, r, c0:c0 + cols]
    f4 = frames[order[k + 4], ch, r, c0:c0 + cols]
    f5 = frames[order[k + 5], ch, r, c0:c0 + cols]
    f6 = frames[order[k + 6], ch, r, c0:c0 + cols]
    f7 = frames[order[k + 7], ch, r, c0:c0 + cols]
    for x in range(cols):
        a, b = np.uint64(f0[x]), np.uint64(f1[x])
        c, d = np.uint64(f2[x]), np.uint64(f3[x])
        e, f = np.uint64(f4[x]), np.uint64(f5[x])
        g, h = np.uint64(f6[x]), np.uint64(f7[x])
        s1[x] += ((a + b) + (c + d)) + ((e + f) + (g + h))
        s2[x] += ((a * a + b * b) + (c * c + d * d)) + ((e * e + f * f) + (g * g + h * h))

@njit(nogil=True, inline="always")
def _add4(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    f1 = frames[order[k + 1], ch, r, c0:c0 + cols]
    f2 = frames[order[k + 2], ch, r, c0:c0 + cols]
    f3 = frames[order[k + 3], ch, r, c0:c0 + cols]
    for x in range(cols):
        a, b = np.uint64(f0[x]), np.uint64(f1[x])
        c, d = np.uint64(f2[x]), np.uint64(f3[x])
        s1[x] += (a + b) + (c + d)
        s2[x] += (a * a + b * b) + (c * c + d * d)

@njit(nogil=True, inline="always")
def _add2(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    f1 = frames[order[k + 1], ch, r, c0:c0 + cols]
    for x in range(cols):
        a, b = np.uint64(f0[x]), np.uint64(f1[x])
        s1[x] += a + b
        s2[x] += a * a + b * b

@njit(nogil=True, inline="always")
def _add1(frames, ch, r, c0, cols, order, k, s1, s2):
    f0 = frames[order[k], ch, r, c0:c0 + cols]
    for x in range(cols):
        a = np.uint64(f0[x])
        s1[x] += a
        s2[x] += a * a

def dark_sums(frames, r0, c0, order, starts, cells_u, sa1, sa2, sd1, sd2):
    """Exact sums and sums of squares of frames (frame, 2, H, W), block rows r0:r0+64 and
    columns c0:c0+64, grouped by cell (see ``kernels.dark_sums``), into (cell, 64, 64)."""
    rows, cols = sa1.shape[1], sa1.shape[2]
    for g in range(cells_u.shape[0]):
        c = cells_u[g]
        k, k1 = starts[g], starts[g + 1]
        while k + 8 <= k1:
            for y in range(rows):
                _add8(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add8(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])
            k += 8
        if k + 4 <= k1:
            for y in range(rows):
                _add4(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add4(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])
            k += 4
        if k + 2 <= k1:
            for y in range(rows):
                _add2(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add2(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])
            k += 2
        if k < k1:
            for y in range(rows):
                _add1(frames, 0, r0 + y, c0, cols, order, k, sa1[c, y], sa2[c, y])
                _add1(frames, 1, r0 + y, c0, cols, order, k, sd1[c, y], sd2[c, y])


def xray_hist(analog, order, starts, cells_u, origin, counts, underflow, overflow):
    """Unit-bin histograms of analog values (frame, 64, 64) (any strides), frames grouped by
    cell (``order``, ``starts``, ``cells_u`` as for ``dark_sums``): value ``v`` of pixel p of
    a frame of cell c goes to ``counts[c * 4096 + p, v - origin[c, p]]``, below bin 0 to
    ``underflow``, beyond the last bin to ``overflow`` (see ``XrayAccumulator.update``).
    Pixel row by pixel row, all frames of the cell: the row's 64 histograms (64 x n_bins
    counts) stay in the cache while they are filled."""
    n_bins = counts.shape[1]
    rows, cols = analog.shape[1], analog.shape[2]
    for g in range(cells_u.shape[0]):
        c = cells_u[g]
        for y in range(rows):
            base = (c * rows + y) * cols
            org = origin[c, y]
            for k in range(starts[g], starts[g + 1]):
                a = analog[order[k], y]
                for x in range(cols):
                    v = np.int64(a[x]) - np.int64(org[x])
                    if v < 0:
                        underflow[base + x] += 1
                    elif v >= n_bins:
                        overflow[base + x] += 1
                    else:
                        counts[base + x, v] += 1


def drspc_sums(analog, digital, cells, steps, windows, rows, sums):
    """Exact drspc fit sums (see ``process.drspc``): for every frame f of a valid cell c
    (``cells[f] >= 0``) whose step t lies in window g (``windows[g, 0] <= t < windows[g, 1]``),
    add a, t*a, a*a, d, d*d of the pixels of ``rows`` to ``sums[g, c, 0..4, row * W + col]``.

    analog, digital: (frame, H, W) uint16, any strides; cells, steps: (frame,) int64;
    windows: (window, 2) int64; rows: rows of the frame to add; sums: (window, cell, 5, H * W)
    int64, updated in place.
    """
    n_cols = analog.shape[2]
    for f in range(analog.shape[0]):
        c = cells[f]
        if c < 0:
            continue
        t = steps[f]
        for g in range(windows.shape[0]):
            if t < windows[g, 0] or t >= windows[g, 1]:
                continue
            st = sums[g, c]
            for r in rows:
                p0 = r * n_cols
                for x in range(n_cols):
                    a = np.int64(analog[f, r, x])
                    d = np.int64(digital[f, r, x])
                    st[0, p0 + x] += a
                    st[1, p0 + x] += t * a
                    st[2, p0 + x] += a * a
                    st[3, p0 + x] += d
                    st[4, p0 + x] += d * d


def xray_peaks(hs, half, min_spacing, n_sigma, min_counts, out):
    """Noise, 1- and 2-photon peak bins of box-summed histograms ``hs`` (rows, n_bins) int64,
    exactly as ``process.xray.find_peaks`` (its docstring has the rule): a maximum's level is
    the higher of the lowest box sums met walking down (until one >= it) and up (until one >
    it), or to the end; it is significant when ``h - level >= n_sigma * sqrt(h + level)``.
    ``out`` (rows, 3) int64 is filled, -1 where there is no peak. One row at a time."""
    n_bins = hs.shape[1]
    for r in range(hs.shape[0]):
        h = hs[r]
        out[r, 0] = -1
        out[r, 1] = -1
        out[r, 2] = -1
        q = 0
        above = -np.inf
        for j in range(n_bins):
            v = h[j]
            if v < min_counts or j <= above:
                continue
            is_max = True
            for d in range(1, half + 1):
                if (j - d >= 0 and h[j - d] >= v) or (j + d < n_bins and h[j + d] > v):
                    is_max = False
                    break
            if not is_max:
                continue
            low_down = v
            k = j - 1
            while k >= 0 and h[k] < v:
                low_down = min(low_down, h[k])
                k -= 1
            low_up = v
            k = j + 1
            while k < n_bins and h[k] <= v:
                low_up = min(low_up, h[k])
                k += 1
            level = max(low_down, low_up)
            if v - level >= n_sigma * np.sqrt(np.float64(v + level)):
                out[r, q] = j
                above = j + min_spacing
                q += 1
                if q == 3:
                    break


# ---- xray refinement (``process.xray_refine.refine``, per row) -----
# NaN propagates as in numpy's element-wise functions: ``_nmax``/``_nmin`` (np.maximum /
# np.minimum), ``_div`` (float division by zero gives inf or NaN, never an exception),
# ``_nn`` (np.nan_to_num).

_SQRT2 = np.sqrt(2.0)
_SQRT_2PI = np.sqrt(2.0 * np.pi)
_FMAX = np.finfo(np.float64).max


@njit(nogil=True, inline="always")
def _nmax(a, b):
    if a != a or b != b:
        return np.nan
    return a if a >= b else b


@njit(nogil=True, inline="always")
def _nmin(a, b):
    if a != a or b != b:
        return np.nan
    return a if a <= b else b


@njit(nogil=True, inline="always")
def _div(a, b):
    if b == 0.0:
        if a != a or a == 0.0:
            return np.nan
        return np.inf if (a > 0.0) == (np.copysign(1.0, b) > 0.0) else -np.inf
    return a / b


@njit(nogil=True, inline="always")
def _nn(x):
    if x != x:
        return 0.0
    if x == np.inf:
        return _FMAX
    if x == -np.inf:
        return -_FMAX
    return x


@njit(nogil=True)
def _ndtr(x):
    return 0.5 * math.erfc(-x / _SQRT2)


@njit(nogil=True)
def _moments(a):
    """``phi(a)``, M0, M2, M4 of a standard normal restricted to ``|x| < a``."""
    phi = np.exp(-0.5 * a * a) / _SQRT_2PI
    m0 = 2.0 * _ndtr(a) - 1.0
    m2 = m0 - 2.0 * a * phi
    m4 = 3.0 * m2 - 2.0 * a**3 * phi
    return phi, m0, m2, m4


@njit(nogil=True)
def _cumulative(h, c0, c1, c2, t):
    """Count, sum x, sum x^2 of the unit-bin-spread histogram below ``t``."""
    if not np.isfinite(t):
        return np.nan, np.nan, np.nan
    n_bins = h.shape[0]
    u = t + 0.5
    jj = min(max(np.floor(u), 0.0), n_bins - 1.0)
    f = min(max(u - jj, 0.0), 1.0)
    j = int(jj)
    e = jj - 0.5
    hj = h[j]
    return (c0[j] + hj * f, c1[j] + hj * (f * e + 0.5 * f * f),
            c2[j] + hj * (((e + f) ** 3 - e**3) / 3.0))


@njit(nogil=True)
def _window(h, c0, c1, c2, mu, half):
    a0, a1, a2 = _cumulative(h, c0, c1, c2, mu - half)
    b0, b1, b2 = _cumulative(h, c0, c1, c2, mu + half)
    return b0 - a0, b1 - a1, b2 - a2


@njit(nogil=True)
def _gauss_sums(lo, hi, n, mu_g, s_g):
    """Count, sum x and sum x^2 of ``n`` entries ~ N(mu_g, s_g^2) inside ``[lo, hi]``."""
    alpha = _div(lo - mu_g, s_g)
    beta = _div(hi - mu_g, s_g)
    pa = np.exp(-0.5 * alpha * alpha) / _SQRT_2PI
    pb = np.exp(-0.5 * beta * beta) / _SQRT_2PI
    d = _ndtr(beta) - _ndtr(alpha)
    e = pa - pb
    f = _nn(alpha * pa) - _nn(beta * pb)
    z2 = (mu_g * mu_g + s_g * s_g) * d + 2.0 * mu_g * s_g * e + s_g * s_g * f
    return n * d, n * (mu_g * d + s_g * e), n * z2


@njit(nogil=True)
def _peak_step(h, c0, c1, c2, mu, s, half, others):
    """One windowed-moment step of a peak: (mean, s, entries), ``others`` (n, mu, s) rows of
    the neighbouring Gaussians whose sums are taken out of the window."""
    w0, w1, w2 = _window(h, c0, c1, c2, mu, half)
    for i in range(others.shape[0]):
        z0, z1, z2 = _gauss_sums(mu - half, mu + half, others[i, 0], others[i, 1], others[i, 2])
        w0, w1, w2 = w0 - z0, w1 - z1, w2 - z2
    mean = _div(w1, w0)
    var = _div(w2, w0) - mean * mean
    _phi, m0, m2, _m4 = _moments(_div(half, s))
    return mean, np.sqrt(_div(_nmax(var, 0.0) * m0, m2)), _div(w0, m0)


@njit(nogil=True)
def _neighbour_mean(h, c0, c1, c2, centre, half, n_o, mu_o, s_o):
    w0, w1, _w2 = _window(h, c0, c1, c2, centre, half)
    z0, z1, _z2 = _gauss_sums(centre - half, centre + half, n_o, mu_o, s_o)
    return _div(w1 - z1, w0 - z0)


@njit(nogil=True)
def _two_photon(h, c0, c1, c2, mu2, mu, s, n_peak, k, n_iter, others):
    n_bins = h.shape[0]
    s2 = np.sqrt(_nmax(2.0 * s[1] ** 2 - s[0] ** 2, s[1] ** 2))
    s3 = np.sqrt(_nmax(3.0 * s[1] ** 2 - 2.0 * s[0] ** 2, s[1] ** 2))
    n3 = _div(n_peak[1] ** 3, 6.0 * n_peak[0] ** 2)
    n2 = 0.0
    for _ in range(n_iter):
        spacing2 = mu2 - mu[1]
        half = _nmin(k * s2, 0.5 * spacing2)
        others[0, 0], others[0, 1], others[0, 2] = n_peak[1], mu[1], s[1]
        others[1, 0], others[1, 1], others[1, 2] = n3, mu2 + spacing2, s3
        mu2, s2, n2 = _peak_step(h, c0, c1, c2, mu2, s2, half, others)
    half = _nmin(k * s2, 0.5 * (mu2 - mu[1]))
    emu2 = _div(s2, np.sqrt(n2 * _moments(_div(half, s2))[2]))
    good = (mu2 - half >= -0.5) and (mu2 + half <= n_bins - 0.5) and n2 > 0 and s2 > 0
    if good and np.isfinite(emu2):
        return mu2, emu2
    return np.nan, np.nan


def xray_refine(counts, p0, p1, p2, k, n_iter, out):
    """``process.xray_refine.refine`` (with its neighbour-tail errors) one row at a time: counts
    (rows, n_bins) float64; p0, p1, p2 (rows,) start bins (p2 < 0: no 2-photon peak); out
    (rows, 13) float64 columns mu0, mu1, s0, s1, emu0, emu1, es0, es1, espacing, mu2, emu2,
    ok, inside (the last two 1.0 / 0.0). Equal to the numpy version to rounding (its ndtr is
    scipy's, here erfc's)."""
    n_rows, n_bins = counts.shape
    c0 = np.zeros(n_bins + 1)
    c1 = np.zeros(n_bins + 1)
    c2 = np.zeros(n_bins + 1)
    mu = np.empty(2)
    s = np.empty(2)
    n_peak = np.empty(2)
    new = np.empty((2, 3))
    others0 = np.empty((1, 3))
    others1 = np.empty((2, 3))
    for r in range(n_rows):
        h = counts[r]
        for i in range(n_bins):
            c0[i + 1] = c0[i] + h[i]
            c1[i + 1] = c1[i] + h[i] * i
            c2[i + 1] = c2[i] + h[i] * (i * i + 1.0 / 12.0)
        mu[0], mu[1] = p0[r], p1[r]
        s[0] = s[1] = (p1[r] - p0[r]) / (2.0 * k)
        n_peak[0] = n_peak[1] = 0.0
        for _ in range(n_iter):
            spacing = mu[1] - mu[0]
            n2 = n_peak[1] ** 2 / (2.0 * n_peak[0]) if n_peak[0] > 0 else 0.0
            s2 = np.sqrt(_nmax(2.0 * s[1] ** 2 - s[0] ** 2, s[1] ** 2))
            others0[0, 0], others0[0, 1], others0[0, 2] = n_peak[1], mu[1], s[1]
            others1[0, 0], others1[0, 1], others1[0, 2] = n_peak[0], mu[0], s[0]
            others1[1, 0], others1[1, 1], others1[1, 2] = n2, mu[1] + spacing, s2
            for q in range(2):
                half = _nmin(k * s[q], 0.5 * spacing)
                oth = others0 if q == 0 else others1
                new[q, 0], new[q, 1], new[q, 2] = _peak_step(h, c0, c1, c2, mu[q], s[q], half,
                                                             oth)
            for q in range(2):
                mu[q], s[q], n_peak[q] = new[q, 0], new[q, 1], new[q, 2]
        _refine_errors(h, c0, c1, c2, mu, s, n_peak, k, out[r], new)
        if p2[r] >= 0:
            out[r, 9], out[r, 10] = _two_photon(h, c0, c1, c2, p2[r], mu, s, n_peak, k, n_iter,
                                                others1)
        else:
            out[r, 9] = out[r, 10] = np.nan


@njit(nogil=True)
def _refine_errors(h, c0, c1, c2, mu, s, n_peak, k, o, shift):
    """Positions, widths, their errors, ok and inside of one row into ``o`` (see
    ``xray_refine``); ``shift`` (2, 3) is work space."""
    n_bins = h.shape[0]
    spacing = mu[1] - mu[0]
    ok = True
    inside = True
    for q in range(2):
        half = _nmin(k * s[q], 0.5 * spacing)
        a = _div(half, s[q])
        phi, m0, m2, m4 = _moments(a)
        c = _div(m2, m0)
        e_psi2 = m4 - 2.0 * c * m2 + c * c * m0
        g1 = 2.0 * a * (a * a - c) * phi - 2.0 * c * m0
        sigma2 = s[q] ** 2 - 1.0 / 6.0
        sigma = np.sqrt(_nmax(sigma2, 0.0))
        se_s = s[q] * np.sqrt(_div(e_psi2, n_peak[q] * g1 * g1))
        o[q] = mu[q]
        o[2 + q] = sigma
        o[4 + q] = _div(s[q], np.sqrt(n_peak[q] * m2))
        o[6 + q] = _div(se_s * s[q], sigma)
        outside = (mu[q] - half < -0.5) or (mu[q] + half > n_bins - 0.5)
        inside = inside and not outside
        ok = ok and np.isfinite(mu[q]) and sigma2 > 0 and n_peak[q] > 0 and not outside
    o[11] = 1.0 if ok else 0.0
    o[12] = 1.0 if inside else 0.0
    # errors of the subtracted neighbour tails (``_add_neighbour_errors``)
    for q in range(2):
        p = 1 - q
        half = _nmin(k * s[q], 0.5 * spacing)
        base = _neighbour_mean(h, c0, c1, c2, mu[q], half, n_peak[p], mu[p], s[p])
        eps = 0.01 * s[q]
        lam = _div(_neighbour_mean(h, c0, c1, c2, mu[q] + eps, half, n_peak[p], mu[p], s[p])
                   - base, eps)
        lam = _nmin(_nmax(lam, 0.0), 0.9)
        moved_n = _neighbour_mean(h, c0, c1, c2, mu[q], half,
                                  n_peak[p] + np.sqrt(_nmax(n_peak[p], 0.0)), mu[p], s[p])
        moved_mu = _neighbour_mean(h, c0, c1, c2, mu[q], half, n_peak[p], mu[p] + o[4 + p], s[p])
        moved_s = _neighbour_mean(h, c0, c1, c2, mu[q], half, n_peak[p], mu[p], s[p] + o[6 + p])
        shift[q, 0] = _div(moved_n - base, 1.0 - lam)
        shift[q, 1] = _div(moved_mu - base, 1.0 - lam)
        shift[q, 2] = _div(moved_s - base, 1.0 - lam)
    extra0 = _nn(shift[0, 0]) ** 2 + _nn(shift[0, 2]) ** 2
    extra1 = _nn(shift[1, 0]) ** 2 + _nn(shift[1, 2]) ** 2
    o[8] = np.sqrt((o[5] - _nn(shift[0, 1])) ** 2 + (_nn(shift[1, 1]) - o[4]) ** 2
                   + extra0 + extra1)
    o[4] = np.sqrt(o[4] ** 2 + _nn(shift[0, 1]) ** 2 + extra0)
    o[5] = np.sqrt(o[5] ** 2 + _nn(shift[1, 1]) ** 2 + extra1)


# ---- drscs: ``process.drscs.process_scan`` one series at a time -----------------------------

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


_U64_3D = "uint64[:, :, ::1]"
# analog of any strides (an ASIC's block of the slab, a view), counts uint32 or uint16
_XRAY_SIG = ("void(uint16[:, :, :], int64[::1], int64[::1], int64[::1], int32[:, :, ::1], "
             "{}[:, ::1], int64[::1], int64[::1])")

#: kernel name -> (function, signature of the ahead-of-time build)
EXPORTS = {
    "dark_sums": (dark_sums, "void(uint16[:, :, :, ::1], int64, int64, int64[::1], int64[::1], "
                             f"int64[::1], {_U64_3D}, {_U64_3D}, {_U64_3D}, {_U64_3D})"),
    "xray_hist": (xray_hist, _XRAY_SIG.format("uint32")),
    "xray_hist_u16": (xray_hist, _XRAY_SIG.format("uint16")),
    "drspc_sums": (drspc_sums, "void(uint16[:, :, :], uint16[:, :, :], int64[::1], int64[::1], "
                               "int64[:, ::1], int64[::1], int64[:, :, :, ::1])"),
    "drscs_scan": (drscs_scan, "void(uint16[:, ::1], uint16[:, ::1], boolean[:, ::1], "
                               "float64[::1], float64[::1], int64[::1], float64[:, ::1], "
                               "int64[:, ::1])"),
    "xray_refine": (xray_refine, "void(float64[:, ::1], float64[::1], float64[::1], "
                                 "float64[::1], float64, int64, float64[:, ::1])"),
    "xray_peaks": (xray_peaks, "void(int64[:, ::1], int64, float64, float64, float64, "
                               "int64[:, ::1])"),
}
