"""xray kernels: the histogram fill, the peak search and the refinement of both peaks
(with the errors of the subtracted neighbour tails), one histogram at a time."""

import math

import numpy as np
from numba import njit


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


# ---- refinement (``process.xray_refine.refine``, per row) -----
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
