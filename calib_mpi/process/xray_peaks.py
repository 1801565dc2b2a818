"""Peak search on box-summed xray histograms: the noise, 1- and 2-photon peak bins.

The rule (lowest significant maxima, significance by topographic prominence in Poisson sigmas)
is in :func:`find_peaks`; the compiled kernel ``xray_peaks`` and the numpy version here give the
same bins. Where the 1-photon peak is no maximum at all, see :mod:`.xray_shoulder`.
"""

from __future__ import annotations

import numpy as np

from calib_mpi.process import _jit

__all__ = ["box_sums", "cumulative_counts", "find_peaks"]


def cumulative_counts(counts: np.ndarray) -> np.ndarray:
    """(rows, n_bins + 1) int64 entries below each bin edge of histograms (rows, n_bins):
    ``cum[:, i]`` = entries in bins ``< i``, ``cum[:, -1]`` = all."""
    cum = np.zeros((counts.shape[0], counts.shape[1] + 1), np.int64)
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    return cum


def box_sums(cum: np.ndarray, half: int) -> np.ndarray:
    """(rows, n_bins) int64 sums of the ``2 half + 1`` bins centred on each bin (the histogram
    zero padded), exact, from cumulative counts ``cum`` (rows, n_bins + 1)."""
    n_rows, n_bins = cum.shape[0], cum.shape[1] - 1
    pad = np.empty((n_rows, n_bins + 2 * half + 1), np.int64)
    pad[:, :half] = 0
    pad[:, half : half + n_bins + 1] = cum
    pad[:, half + n_bins + 1 :] = cum[:, -1:]
    return pad[:, 2 * half + 1 :] - pad[:, :n_bins]


def find_peaks(
    hs: np.ndarray, half: int, min_spacing: float, n_sigma: float, min_counts: float
) -> np.ndarray:
    """Noise, 1- and 2-photon peak bins of box-summed histograms (lowest significant maxima).

    A bin ``j`` is a **maximum** when ``hs[j] >= min_counts``, ``hs[j]`` is larger than the
    ``half`` bins below it and not smaller than the ``half`` bins above it. Its **level** is the
    higher of the two lowest box sums met when walking down- and upwards from ``j`` until a
    larger box sum (downwards: larger or equal) or the histogram end is reached (its
    topographic prominence is ``hs[j] - level``; of equal maxima the lowest keeps it). The
    maximum is **significant** when ``hs[j] - level >= n_sigma * sqrt(hs[j] + level)``
    (Poisson sigma of the two box sums), so
    the rule does not depend on a fixed count or on which peak is the highest. The noise peak
    is the lowest significant maximum; the 1-photon peak the next one more than
    ``min_spacing`` bins above it, the 2-photon peak the next one more than ``min_spacing``
    above that. Only whole-array operations (loops over walking distance, not over rows).

    Parameters
    ----------
    hs : (rows, n_bins) int64 box sums of the histograms.
    half : half-width (bins) of the local-maximum test.
    min_spacing : bins; least distance between consecutive peaks.
    n_sigma : significance in Poisson sigmas.
    min_counts : least box sum of a maximum.

    Returns
    -------
    (rows, 3) int64 bins of the noise, 1- and 2-photon peaks, -1 where there is none.
    The compiled kernel ``xray_peaks`` gives the same bins (exact integer logic, one row at a
    time, ~10x less CPU); without it, whole-array numpy.
    """
    fast = _jit.kernel("xray_peaks")
    if fast is not None:
        out = np.empty((hs.shape[0], 3), np.int64)
        fast(np.ascontiguousarray(hs, dtype=np.int64), int(half), float(min_spacing),
             float(n_sigma), float(min_counts), out)
        return out
    return _find_peaks_numpy(hs, half, min_spacing, n_sigma, min_counts)


def _find_peaks_numpy(
    hs: np.ndarray, half: int, min_spacing: float, n_sigma: float, min_counts: float
) -> np.ndarray:
    """``find_peaks`` in whole-array numpy operations (loops over walking distance)."""
    n_rows, n_bins = hs.shape
    if hs.size and hs.max() < 2**31:  # exact in int32, half the memory traffic
        hs = hs.astype(np.int32)
    left_max = np.full(hs.shape, -1, hs.dtype)
    right_max = np.full(hs.shape, -1, hs.dtype)
    for d in range(1, half + 1):
        np.maximum(left_max[:, d:], hs[:, :-d], out=left_max[:, d:])
        np.maximum(right_max[:, :-d], hs[:, d:], out=right_max[:, :-d])
    cand = (hs >= min_counts) & (hs > left_max) & (hs >= right_max)
    del left_max, right_max
    r, j = np.nonzero(cand)
    height = hs[r, j]
    levels = []
    for step in (-1, 1):
        # Lowest box sum before a larger one (downwards: larger or equal, so that of equal
        # maxima only the lowest keeps its prominence), walking from j in direction `step`;
        # where no such box sum follows, the running minimum to the histogram end.
        seq = hs if step > 0 else hs[:, ::-1]
        tail_min = np.minimum.accumulate(seq[:, ::-1], axis=1)[:, ::-1]
        tail_max = np.full(hs.shape, -1, hs.dtype)
        tail_max[:, :-1] = np.maximum.accumulate(seq[:, :0:-1], axis=1)[:, ::-1]
        jj = j if step > 0 else n_bins - 1 - j
        level = tail_min[r, jj].copy()
        stops = tail_max[r, jj] > height if step > 0 else tail_max[r, jj] >= height
        walk = np.flatnonzero(stops)
        del tail_min, tail_max
        low = height[walk].copy()
        pos = j[walk].copy()
        while walk.size:
            pos += step
            v = hs[r[walk], pos]
            stop = v > height[walk] if step > 0 else v >= height[walk]
            level[walk[stop]] = low[stop]
            np.minimum(low, v, out=low)
            keep = ~stop
            walk, low, pos = walk[keep], low[keep], pos[keep]
        levels.append(level)
    level = np.maximum(levels[0], levels[1])
    height, level = height.astype(np.float64), level.astype(np.float64)
    significant = height - level >= n_sigma * np.sqrt(height + level)
    sig = np.zeros(hs.shape, bool)
    sig[r[significant], j[significant]] = True
    out = np.full((n_rows, 3), -1, np.int64)
    bins = np.arange(n_bins)
    above = np.full(n_rows, -np.inf)
    for q in range(3):
        mask = sig & (bins > above[:, None])
        has = mask.any(axis=1)
        out[has, q] = np.argmax(mask[has], axis=1)
        above = np.where(has, out[:, q] + min_spacing, np.inf)
    return out
