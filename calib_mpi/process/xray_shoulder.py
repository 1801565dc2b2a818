"""The 1-photon peak where it is only a shoulder on the noise peak's upper flank.

At a low photon occupancy (mean photon number ~0.1) the 1-photon peak holds about a tenth of
the noise peak's entries; 4-5 widths above it, on the noise peak's falling tail, it is often not
a maximum of the box-summed histogram at all, or rises too little above the valley to be
significant, although several hundred entries make it unmistakable once the noise peak is taken
away. ``find_shoulder`` does exactly that for the histograms where ``find_peaks`` found a noise
peak and no 1-photon peak:

1. the noise peak's Gaussian mean and width from windowed moments (``mu +- 2 s``, whole bins,
   truncation corrected, three iterations from the noise peak bin; the width's first guess from
   the share of entries one width below the peak, which only the noise peak populates);
2. the residual: box sums of ``2 round(s) + 1`` bins (about the best signal-to-noise width for a
   Gaussian of width ``s``) minus the Gaussian noise peak's expected share of them;
3. the 1-photon peak is the highest residual in the first stretch, at least ``max(min_spacing,
   SHOULDER_MIN_SIGMAS s)`` above the noise peak, where the residual exceeds ``n_sigma`` Poisson
   sigmas of the box sum (and ``min_counts``).

The threshold is higher than ``find_peaks``' (5 against 3.5 sigmas by default): the residual is
searched over the whole histogram above the noise peak, and it relies on the noise peak's tail
being Gaussian. The position is only a start: ``_refine`` then measures both peaks as for any
other pair, with the same checks. Only whole-array operations.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = [
    "SHOULDER_MIN_SIGMAS", "SHOULDER_N_SIGMA", "SHOULDER_RISE_SIGMAS", "find_shoulder",
    "noise_gaussian",
]

#: Poisson sigmas a residual box sum must reach
SHOULDER_N_SIGMA = 5.0
#: least distance of a shoulder from the noise peak, in noise widths
SHOULDER_MIN_SIGMAS = 3.0
#: least rise (Poisson sigmas) of the residual from the start of its stretch to the shoulder
SHOULDER_RISE_SIGMAS = 2.0
# Standard normal: share below -1, and M0, M2 / M0 of |x| < 2 (window of the noise moments).
_BELOW_ONE_SIGMA = ndtr(-1.0)
_M0_2 = 2.0 * ndtr(2.0) - 1.0
_C_2 = (_M0_2 - 4.0 * np.exp(-2.0) / np.sqrt(2.0 * np.pi)) / _M0_2


def noise_gaussian(cum: np.ndarray, p0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (bins), width (bins) and entries of the noise peak of each histogram.

    ``cum``: (rows, n_bins + 1) cumulative counts (``cum[:, i]`` = entries below bin i);
    ``p0``: (rows,) noise peak bins. Widths below half a bin are raised to half a bin.
    """
    n_rows, n_edges = cum.shape
    rows = np.arange(n_rows)
    i = np.arange(n_edges - 1, dtype=np.float64)
    h = np.diff(cum, axis=1).astype(np.float64)
    c1 = np.concatenate([np.zeros((n_rows, 1)), np.cumsum(h * i, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((n_rows, 1)), np.cumsum(h * i * i, axis=1)], axis=1)
    below = cum[rows, p0] + 0.5 * (cum[rows, p0 + 1] - cum[rows, p0])
    t = np.argmax(cum >= (_BELOW_ONE_SIGMA * below)[:, None], axis=1)
    mu = p0.astype(np.float64)
    s = np.maximum(mu - t + 0.5, 0.5)
    n = below * 2.0
    for _ in range(3):
        lo = np.clip(np.round(mu - 2.0 * s), 0, n_edges - 1).astype(np.intp)
        hi = np.clip(np.round(mu + 2.0 * s) + 1, 0, n_edges - 1).astype(np.intp)
        w0 = (cum[rows, hi] - cum[rows, lo]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (c1[rows, hi] - c1[rows, lo]) / w0
            var = (c2[rows, hi] - c2[rows, lo]) / w0 - mean * mean
        good = w0 > 0
        mu = np.where(good, mean, mu)
        s = np.where(good, np.maximum(np.sqrt(np.maximum(var, 0.0) / _C_2), 0.5), s)
        n = np.where(good, w0 / _M0_2, n)
    return mu, s, n


def find_shoulder(
    cum: np.ndarray, p0: np.ndarray, min_spacing: float, n_sigma: float = SHOULDER_N_SIGMA,
    min_counts: float = 30.0,
) -> np.ndarray:
    """1-photon peak bin on the noise peak's flank of each histogram, -1 where none.

    ``cum``: (rows, n_bins + 1) int64 cumulative counts; ``p0``: (rows,) noise peak bins (>= 0);
    ``min_spacing``: least distance (bins) from the noise peak. Histograms with fewer than
    ``max(min_counts, n_sigma^2)`` entries where a shoulder's box could lie (pure noise, say)
    cannot have one and are not searched.
    """
    n_rows, n_edges = cum.shape
    mu, s, n = noise_gaussian(cum, p0)
    w = np.maximum(np.round(s), 1.0)
    start = mu + np.maximum(min_spacing, SHOULDER_MIN_SIGMAS * s)
    # a candidate j > start has a box from j - w up: its count bounds the residual
    lowest = np.clip(np.nan_to_num(np.floor(start) + 1 - w), 0, n_edges - 1).astype(np.intp)
    reach = cum[:, -1] - cum[np.arange(n_rows), lowest]
    keep = np.flatnonzero(reach >= max(min_counts, n_sigma * n_sigma))
    out = np.full(n_rows, -1, np.int64)
    if keep.size:
        out[keep] = _search(cum[keep], mu[keep], s[keep], n[keep], w[keep], start[keep],
                            n_sigma, min_counts)
    return out


def _search(
    cum: np.ndarray, mu: np.ndarray, s: np.ndarray, n: np.ndarray, w: np.ndarray,
    start: np.ndarray, n_sigma: float, min_counts: float,
) -> np.ndarray:
    """Steps 2 and 3 of the module docstring for histograms with noise peak ``mu`` (bins),
    width ``s``, entries ``n``, box half-width ``w`` and search start ``start``."""
    n_rows, n_edges = cum.shape
    n_bins = n_edges - 1
    rows = np.arange(n_rows)[:, None]
    j = np.arange(n_bins, dtype=np.float64)[None, :]
    lo = np.clip(j - w[:, None], 0, n_bins)
    hi = np.clip(j + w[:, None] + 1, 0, n_bins)
    box = (cum[rows, hi.astype(np.intp)] - cum[rows, lo.astype(np.intp)]).astype(np.float64)
    expected = n[:, None] * (ndtr((hi - 0.5 - mu[:, None]) / s[:, None])
                             - ndtr((lo - 0.5 - mu[:, None]) / s[:, None]))
    residual = box - expected
    above = (j > start[:, None]) & (residual >= min_counts)
    above &= residual >= n_sigma * np.sqrt(np.maximum(box, 1.0))
    has = above.any(axis=1)
    first = np.argmax(above, axis=1)
    # the highest residual of the first significant stretch (up to 4 widths past its start)
    stretch = (j >= first[:, None]) & (j <= (first + 4.0 * w)[:, None]) & above
    peak = np.argmax(np.where(stretch, residual, -np.inf), axis=1)
    # a peak, not a tail: the residual rises from the stretch's start (merged peaks, whose
    # Gaussian fit leaves their upper tail as residual, fall from it)
    r = np.arange(n_rows)
    rise = residual[r, peak] - residual[r, first]
    has &= rise >= SHOULDER_RISE_SIGMAS * np.sqrt(box[r, peak] + box[r, first])
    return np.where(has, peak, -1).astype(np.int64)
