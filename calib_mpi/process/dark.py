"""Dark calibration: offset, noise, gain levels, thresholds and bad pixels per ASIC.

Streaming and exact: per (gain, cell, pixel) the accumulator keeps integer sums of the analog
and digital values and of their squares (uint64, exact for any order of frames), so the result
does not depend on how the frames were chunked or distributed over ranks. Means and standard
deviations are computed once per gain in float64 from those sums.

Axis order of all per-ASIC arrays: ``(gain, cell, row, col)`` with ``(row, col)`` the 64x64 pixel
block in the orientation of the input frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..badpixels import BadPixels, bits
from .kernels import dark_sums, group_by_cell

N_GAINS = 3
#: percentiles each ASIC contributes to the module reference (see :func:`module_reference`)
QUANTILE_LEVELS = np.linspace(0.0, 100.0, 41)


class DarkAccumulator:
    """Streams dark frames of one ASIC and yields per-gain statistics.

    Parameters
    ----------
    n_cells : number of memory cells (cell axis of the results).
    block_shape : pixel shape of one frame block, (64, 64) for an ASIC.
    """

    def __init__(self, n_cells: int, block_shape: tuple[int, int] = (64, 64)):
        self.n_cells = n_cells
        self.block_shape = tuple(block_shape)
        shape = (N_GAINS, n_cells) + self.block_shape
        self.offset = np.full(shape, np.nan, np.float32)
        self.noise = np.full(shape, np.nan, np.float32)
        self.gain_level = np.full(shape, np.nan, np.float32)
        self.gain_level_std = np.full(shape, np.nan, np.float32)
        self.count = np.zeros((N_GAINS, n_cells), np.int64)
        self._gain: int | None = None
        self._sums: list[np.ndarray] = []

    def _start(self, gain: int) -> None:
        shape = (self.n_cells,) + self.block_shape
        self._gain = gain
        self._sums = [np.zeros(shape, np.uint64) for _ in range(4)]

    def add_frames(self, gain: int, frames: np.ndarray, r0: int, c0: int,
                   group: tuple) -> None:
        """Add a block of frames of the run with gain stage ``gain`` forced (hot path).

        frames : (frame, 2, H, W) uint16 analog/digital, C-contiguous; this ASIC's pixels are
            rows ``r0:r0+64``, columns ``c0:c0+64``. group : ``group_by_cell`` of the frames.
        The frames of one gain must all arrive before :meth:`finish_gain` of that gain.
        """
        if self._gain != gain:
            if self._gain is not None:
                self.finish_gain(self._gain)
            self._start(gain)
        dark_sums(frames, r0, c0, group, self._sums)
        order, starts, cells_u = group
        self.count[gain, cells_u] += np.diff(starts)

    def update(self, gain: int, analog: np.ndarray, digital: np.ndarray,
               cells: np.ndarray) -> None:
        """Add frames given as separate analog and digital (frame, row, col) arrays;
        cells (frame,) int, -1 = ignore."""
        frames = np.ascontiguousarray(np.stack([analog, digital], axis=1), dtype=np.uint16)
        self.add_frames(gain, frames, 0, 0, group_by_cell(np.asarray(cells), self.n_cells))

    def finish_gain(self, gain: int) -> None:
        """Turn the sums of ``gain`` into float statistics and free them."""
        if self._gain != gain:
            return
        sa1, sa2, sd1, sd2 = self._sums
        n = self.count[gain].astype(np.float64)[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            for s1, s2, mean_out, std_out in ((sa1, sa2, self.offset, self.noise),
                                              (sd1, sd2, self.gain_level,
                                               self.gain_level_std)):
                mean = s1 / n
                var = np.maximum(s2 / n - mean * mean, 0.0)
                mean_out[gain] = mean
                std_out[gain] = np.sqrt(var)
        self._gain, self._sums = None, []

    def result(self) -> dict[str, np.ndarray]:
        """Statistics of all gains: offset, noise, gain_level, gain_level_std
        (gain, cell, row, col) float32, threshold (2, cell, row, col), count (gain, cell)."""
        if self._gain is not None:
            self.finish_gain(self._gain)
        gl = self.gain_level
        threshold = np.stack([(gl[0] + gl[1]) / 2, (gl[1] + gl[2]) / 2]).astype(np.float32)
        return {"offset": self.offset, "noise": self.noise, "gain_level": gl,
                "gain_level_std": self.gain_level_std, "threshold": threshold,
                "count": self.count}


def unit_quantiles(values: np.ndarray) -> np.ndarray:
    """Percentiles (:data:`QUANTILE_LEVELS`) over the pixels of one ASIC, ignoring NaN.

    values : (gain, cell, row, col); returns (gain, cell, n_levels) float64 (linear
    interpolation, as ``np.nanpercentile``), NaN where no finite value exists.
    """
    g, c = values.shape[:2]
    # sorted in the input's float type (half the work of float64 for float32 statistics;
    # the order is the same), NaN last; interpolated in float64
    flat = np.sort(values.reshape(g, c, -1), axis=2)
    n = np.isfinite(flat).sum(axis=2)
    pos = QUANTILE_LEVELS[None, None, :] / 100.0 * np.maximum(n - 1, 0)[:, :, None]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0)[:, :, None])
    frac = pos - lo
    vlo = np.take_along_axis(flat, lo, axis=2).astype(np.float64)
    vhi = np.take_along_axis(flat, hi, axis=2).astype(np.float64)
    out = vlo + (vhi - vlo) * frac
    out[n == 0] = np.nan
    return out


def module_reference(quantiles: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Robust centre and width per (gain, cell) of a module from its ASICs' percentiles.

    The percentiles of the ASICs are pooled (each ASIC weighs the same); the centre is their
    median and the width half the distance between their 15.87th and 84.13th percentiles, which
    is the standard deviation for normally distributed values but ignores outliers. Using
    per-ASIC percentiles keeps the exchange between ranks small and the result independent of
    the rank count. Returns (gain, cell) arrays.
    """
    pooled = np.concatenate(quantiles, axis=-1)
    ok = np.isfinite(pooled).any(axis=-1)
    centre = np.full(pooled.shape[:-1], np.nan)
    width = np.full(pooled.shape[:-1], np.nan)
    if ok.any():
        p = pooled[ok]
        centre[ok] = np.nanmedian(p, axis=-1)
        lo, hi = np.nanpercentile(p, [15.87, 84.13], axis=-1)
        width[ok] = (hi - lo) / 2
    return centre, width


@dataclass(frozen=True)
class DarkLimits:
    """Bad-pixel limits (pycalibration's parameter names in brackets).

    offset_sigma [thresholds_offset_sigma], noise_sigma [thresholds_noise_sigma]: allowed
    distance from the module centre in robust sigmas; offset_hard, noise_hard
    [thresholds_*_hard]: absolute (low, high) limits in ADU; gain_separation_sigma
    [gain_separation_sigma_threshold]: minimum separation of adjacent gain levels in units of
    the sum of their digital standard deviations. check_gain_levels: flag badly separated gain
    levels (adaptive gain only; fixed-gain darks have no gain switching to check).
    """

    offset_sigma: float = 5.0
    noise_sigma: float = 5.0
    offset_hard: tuple[float, float] = (0.0, 16383.0)
    noise_hard: tuple[float, float] = (0.1, 500.0)
    gain_separation_sigma: float = 3.0
    check_gain_levels: bool = True


def flag_bad_pixels(res: dict[str, np.ndarray], ref_offset: tuple[np.ndarray, np.ndarray],
                    ref_noise: tuple[np.ndarray, np.ndarray], limits: DarkLimits) -> np.ndarray:
    """Bad-pixel bits (gain, cell, row, col) uint32 of one ASIC's dark result.

    ``ref_offset``/``ref_noise`` are the module's (centre, width) per (gain, cell) from
    :func:`module_reference`.
    """
    offset, noise = res["offset"], res["noise"]
    gl, gsd = res["gain_level"], res["gain_level_std"]
    bad = np.zeros(offset.shape, np.uint32)
    no_data = (res["count"] == 0)[:, :, None, None]
    bad[np.broadcast_to(no_data, bad.shape)] |= bits(BadPixels.NO_DARK_DATA,
                                                     BadPixels.OFFSET_NOISE_EVAL_ERROR)
    nonfinite = ~(np.isfinite(offset) & np.isfinite(noise)) & ~no_data
    bad[nonfinite] |= bits(BadPixels.OFFSET_NOISE_EVAL_ERROR, BadPixels.VALUE_IS_NAN)
    bad[noise == 0] |= bits(BadPixels.DATA_STD_IS_ZERO)
    with np.errstate(invalid="ignore", divide="ignore"):
        for values, (centre, width), nsig, (lo, hi), flag in (
            (offset, ref_offset, limits.offset_sigma, limits.offset_hard,
             BadPixels.OFFSET_OUT_OF_THRESHOLD),
            (noise, ref_noise, limits.noise_sigma, limits.noise_hard,
             BadPixels.NOISE_OUT_OF_THRESHOLD),
        ):
            dev = np.abs(values - centre[:, :, None, None])
            out = (dev > nsig * width[:, :, None, None]) | (values < lo) | (values > hi)
            bad[out & np.isfinite(values)] |= bits(flag)
        for g in range(N_GAINS - 1 if limits.check_gain_levels else 0):
            diff = gl[g + 1].astype(np.float64) - gl[g]
            sep = diff / (gsd[g].astype(np.float64) + gsd[g + 1])
            broken = (diff <= 0) | (sep < limits.gain_separation_sigma)
            broken &= np.isfinite(diff)
            bad[g][broken] |= bits(BadPixels.GAIN_THRESHOLDING_ERROR)
            bad[g + 1][broken] |= bits(BadPixels.GAIN_THRESHOLDING_ERROR)
    return bad
