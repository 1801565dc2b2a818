"""Pulsed-capacitor (drspc) processor: per-window straight-line fits from exact integer sums.

Method (``shared/spec/measurements.md`` sections 2 and 7): for every memory cell and pixel, the
analog value ``a`` is fitted as ``a = slope·t + offset`` over the frames whose train position
``t`` (the scan step, raw train index, no scaling) lies in a window ``[t0, t1)``; window 0 is the
high-gain part of the sweep, window 1 the medium-gain part. The digital value ``d`` gives the gain
level of each window.

The accumulator keeps, per (window, cell, pixel), exact int64 sums of ``a``, ``t·a``, ``a²``,
``d`` and ``d²``, and per (window, cell, pixel mask) the sums ``n``, ``Σt``, ``Σt²``. Integer
addition is associative, so the state (and therefore every result) is bit-identical whatever the
chunking or order of the frames and however the frames are split over ranks (see :meth:`merge`).
"""

from collections.abc import Sequence

import numpy as np

from calib_mpi.badpixels import BAD_PIXEL_DTYPE, BadPixels
from calib_mpi.process import _jit

__all__ = [
    "DEFAULT_MIN_GAIN_SEPARATION",
    "DEFAULT_RESIDUAL_LIMITS",
    "DEFAULT_SLOPE_LIMITS",
    "DEFAULT_WINDOWS",
    "DrspcAccumulator",
    "injected_rows_mask",
]

#: Fit windows ``[t0, t1)`` in train positions: high gain, medium gain (toolbox defaults).
DEFAULT_WINDOWS: tuple[tuple[int, int], ...] = ((42, 122), (402, 552))

#: Largest accepted residual RMS of each window's fit, in ADU. Assuming an analog noise of about
#: 10 ADU in both high and medium gain (ADC dominated; the synthetic model's value), a straight
#: line through a linear response leaves an RMS near 10 ADU; 5× that allows for pixel-to-pixel
#: noise spread and a mild curvature, while a gain switch inside a window (a jump of thousands
#: of ADU) or a strongly non-linear response gives an RMS of hundreds of ADU.
DEFAULT_RESIDUAL_LIMITS: tuple[float, float] = (50.0, 50.0)

#: Accepted slope ranges ``(min, max)`` in ADU per train step: high gain, medium gain. Nominal
#: AGIPD-like values are ~20 ADU/step in high gain and 1/30..1/40 of that in medium gain; the
#: ranges are the nominal values times [1/5, 5]. A slope at or below 0 (dead pixel) or a medium
#: slope as steep as a high-gain one (pixel that never switched) falls outside.
DEFAULT_SLOPE_LIMITS: tuple[tuple[float, float], tuple[float, float]] = ((4.0, 100.0), (0.12, 3.0))

#: Smallest accepted gain-level separation ``(gl1 - gl0) / (σd0 + σd1)`` (the toolbox's
#: "digital spacing safety factor", pycalibration's ``gain_separation_sigma_threshold``). With
#: levels ~1500 ADU apart and σd of tens of ADU (assumed) the separation is > 15; a pixel that
#: never leaves high gain has equal levels (separation ~0), which ``gl1 <= gl0`` alone catches
#: only about half the time.
DEFAULT_MIN_GAIN_SEPARATION = 3.0

_BLOCK_VALUES = 16 * 4096  # pixel values per in-place update: keeps the touched state in cache
_N_PIX_SUMS = 5  # Σa, Σt·a, Σa², Σd, Σd²
_SA, _STA, _SAA, _SD, _SDD = range(_N_PIX_SUMS)


def injected_rows_mask(run_index: int, top_asic: bool) -> np.ndarray:
    """Pixels injected by drspc run ``run_index`` in one ASIC (formats.md 3.4).

    Parameters
    ----------
    run_index : int
        Run number k = 0..7 (``r1..r8``); the run injects chip rows ρ ≡ k (mod 8).
    top_asic : bool
        True for ASICs 9..16 (rotated by 180°), False for ASICs 1..8.

    Returns
    -------
    np.ndarray
        ``(64, 64)`` bool in AGIPD-local ``(row, col)`` order; True on rows ``k + 8i`` (bottom)
        or ``7 - k + 8i`` (top), i = 0..7.
    """
    k = int(run_index)
    if not 0 <= k < 8:
        raise ValueError(f"run_index must be in 0..7, got {run_index}")
    first = 7 - k if top_asic else k
    mask = np.zeros((64, 64), dtype=bool)
    mask[first::8, :] = True
    return mask


class DrspcAccumulator:
    """Streaming per-(cell, pixel) line fits of a pulsed-capacitor sweep over two train windows.

    Parameters
    ----------
    n_cells : int
        Number of memory cells; ``cells`` passed to :meth:`update` must be in ``[-1, n_cells)``.
    windows : sequence of two (t0, t1)
        Train windows ``[t0, t1)`` of the high-gain (0) and medium-gain (1) fits.
    block_shape : (int, int)
        Pixel shape of one frame (one ASIC: ``(64, 64)``).
    residual_limits : (float, float)
        Largest accepted residual RMS per window, ADU (above → ``CI_LINEAR_DEVIATION``).
    slope_limits : ((float, float), (float, float))
        Accepted ``(min, max)`` slope per window, ADU/train step (outside →
        ``CI_GAIN_OF_OF_THRESHOLD``).
    min_gain_separation : float
        Smallest accepted ``(gl1 - gl0) / (σd0 + σd1)``; below it, or ``gl1 <= gl0`` →
        ``GAIN_THRESHOLDING_ERROR`` on both windows.

    Notes
    -----
    State memory is ``2 windows × n_cells × 5 × n_pixels`` int64 (≈ 115 MB for 352 cells of
    64×64), a 5 MB scratch buffer, plus 6 int64 per cell for every distinct pixel mask seen.
    No overflow: Σa² reaches 2⁶³ only after ~2·10⁹ frames of 65535 ADU per (cell, pixel);
    ``finalize`` converts the sums to float64, exactly while they stay below 2⁵³.
    """

    def __init__(
        self,
        n_cells: int,
        windows: Sequence[tuple[int, int]] = DEFAULT_WINDOWS,
        block_shape: tuple[int, int] = (64, 64),
        residual_limits: Sequence[float] = DEFAULT_RESIDUAL_LIMITS,
        slope_limits: Sequence[tuple[float, float]] = DEFAULT_SLOPE_LIMITS,
        min_gain_separation: float = DEFAULT_MIN_GAIN_SEPARATION,
    ) -> None:
        if n_cells < 1:
            raise ValueError(f"n_cells must be >= 1, got {n_cells}")
        windows = tuple((int(t0), int(t1)) for t0, t1 in windows)
        if len(windows) != 2 or any(t1 <= t0 for t0, t1 in windows):
            raise ValueError(f"need two windows (t0, t1) with t0 < t1, got {windows}")
        if len(residual_limits) != 2 or len(slope_limits) != 2:
            raise ValueError("residual_limits and slope_limits need one entry per window")
        self.n_cells = int(n_cells)
        self.windows = windows
        self.block_shape = (int(block_shape[0]), int(block_shape[1]))
        self.residual_limits = tuple(float(v) for v in residual_limits)
        self.slope_limits = tuple((float(lo), float(hi)) for lo, hi in slope_limits)
        self.min_gain_separation = float(min_gain_separation)
        self._n_pix = self.block_shape[0] * self.block_shape[1]
        # per-pixel sums, (window, cell, quantity, pixel)
        self._sums = np.zeros((2, self.n_cells, _N_PIX_SUMS, self._n_pix), dtype=np.int64)
        # per-mask sums n, Σt, Σt²: key = packed mask bytes (None = all pixels),
        # value = (window, 3, cell) int64
        self._xsums: dict[bytes | None, np.ndarray] = {}
        self._scratch = np.empty((2, _N_PIX_SUMS * max(_BLOCK_VALUES, self._n_pix)), np.int64)

    def update(
        self,
        analog: np.ndarray,
        digital: np.ndarray,
        cells: np.ndarray,
        trains: np.ndarray,
        pixel_mask: np.ndarray | None = None,
    ) -> None:
        """Add a chunk of frames.

        Parameters
        ----------
        analog, digital : np.ndarray
            ``(frame, 64, 64)`` integer ADU values (uint16 or int16).
        cells : np.ndarray
            ``(frame,)`` int memory cell of each frame; -1 marks an invalid frame (ignored).
        trains : np.ndarray
            ``(frame,)`` int train position = scan step, the x of the fit.
        pixel_mask : np.ndarray, optional
            ``(64, 64)`` bool; only these pixels take data from this call.
        """
        analog, digital, cells, trains = self._checked(analog, digital, cells, trains)
        key: bytes | None = None
        rows: np.ndarray | None = None  # row mask: update these whole rows only
        if pixel_mask is not None:
            pixel_mask = np.asarray(pixel_mask, dtype=bool)
            if pixel_mask.shape != self.block_shape:
                raise ValueError(f"pixel_mask must be {self.block_shape}, got {pixel_mask.shape}")
            if not pixel_mask.any():
                return
            if not pixel_mask.all():
                key = np.packbits(pixel_mask).tobytes()
                row_any = pixel_mask.any(axis=1)
                if np.array_equal(pixel_mask.all(axis=1), row_any):
                    rows = np.flatnonzero(row_any)
                else:  # irregular mask: add zeros outside it (exact, sums unchanged)
                    analog = np.where(pixel_mask, analog, 0)
                    digital = np.where(pixel_mask, digital, 0)

        cells = cells.astype(np.int64)
        trains = trains.astype(np.int64)
        sels = []
        for g, (t0, t1) in enumerate(self.windows):
            sel = np.flatnonzero((cells >= 0) & (trains >= t0) & (trains < t1))
            sels.append(sel)
            if sel.size == 0:
                continue
            c, t = cells[sel], trains[sel]
            xs = self._xsums.setdefault(key, np.zeros((2, 3, self.n_cells), dtype=np.int64))
            np.add.at(xs[g, 0], c, 1)
            np.add.at(xs[g, 1], c, t)
            np.add.at(xs[g, 2], c, t * t)
        if not any(sel.size for sel in sels):
            return
        fast = _jit.kernel("drspc_sums")
        if fast is not None and analog.dtype == digital.dtype == np.uint16:
            all_rows = np.arange(self.block_shape[0], dtype=np.int64)
            fast(analog, digital, cells, trains, np.array(self.windows, np.int64),
                 all_rows if rows is None else rows.astype(np.int64), self._sums)
            return
        for g, sel in enumerate(sels):
            if sel.size:
                self._add_window_numpy(g, sel, analog, digital, cells, trains, rows)

    def _checked(
        self, analog: np.ndarray, digital: np.ndarray, cells: np.ndarray, trains: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The arguments of :meth:`update` as arrays, their shapes, types and cells checked
        (ValueError / TypeError naming the argument)."""
        analog = np.asarray(analog)
        digital = np.asarray(digital)
        cells = np.asarray(cells)
        trains = np.asarray(trains)
        n_frames = analog.shape[0] if analog.ndim else 0
        if analog.shape != (n_frames, *self.block_shape) or digital.shape != analog.shape:
            raise ValueError(
                f"analog/digital must be (frame, {self.block_shape[0]}, {self.block_shape[1]}),"
                f" got {analog.shape} and {digital.shape}"
            )
        for name, arr in (("analog", analog), ("digital", digital), ("cells", cells),
                          ("trains", trains)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"{name} must be an integer array, got {arr.dtype}")
        if cells.shape != (n_frames,) or trains.shape != (n_frames,):
            raise ValueError(f"cells and trains must be ({n_frames},)")
        if n_frames and (cells.min() < -1 or cells.max() >= self.n_cells):
            raise ValueError(f"cells must be in [-1, {self.n_cells})")
        return analog, digital, cells, trains

    def _add_window_numpy(
        self, g: int, sel: np.ndarray, analog: np.ndarray, digital: np.ndarray,
        cells: np.ndarray, trains: np.ndarray, rows: np.ndarray | None,
    ) -> None:
        """numpy version of the ``drspc_sums`` kernel for window ``g``: add frames ``sel``
        (rows ``rows``, all when None) to ``self._sums[g]`` in groups of distinct cells."""
        n_rows, n_cols = self.block_shape
        n_values = self._n_pix if rows is None else rows.size * n_cols
        block = max(1, _BLOCK_VALUES // n_values)
        c = cells[sel]
        t = trains[sel]
        for layer in _distinct_cell_layers(c):
            for start in range(0, layer.size, block):
                blk = layer[start:start + block]
                frames = sel[blk]
                if rows is None:
                    self._add_block(self._sums[g], c[blk], t[blk],
                                    analog[frames].reshape(blk.size, -1),
                                    digital[frames].reshape(blk.size, -1))
                    continue
                state = self._sums[g].reshape(self.n_cells, _N_PIX_SUMS, n_rows, n_cols)
                a_rows = analog[frames[:, None], rows]
                d_rows = digital[frames[:, None], rows]
                for i, row in enumerate(rows):
                    self._add_block(state[:, :, row], c[blk], t[blk], a_rows[:, i],
                                    d_rows[:, i])

    def _add_block(
        self, state: np.ndarray, c: np.ndarray, t: np.ndarray, a: np.ndarray, d: np.ndarray
    ) -> None:
        """Add frames of pairwise distinct cells ``c`` to ``state`` ``(cell, quantity, value)``.

        ``a``, ``d``: ``(frame, value)``. Gathers the touched state rows into a reused scratch
        buffer (no large temporaries: repeated multi-MB allocations cost more than the sums).
        """
        size = c.size * _N_PIX_SUMS * a.shape[1]
        part = self._scratch[0, :size].reshape(c.size, _N_PIX_SUMS, a.shape[1])
        touched = self._scratch[1, :size].reshape(part.shape)
        part[:, _SA] = a
        part[:, _SD] = d
        np.multiply(t[:, None], part[:, _SA], out=part[:, _STA])
        np.multiply(part[:, _SA], part[:, _SA], out=part[:, _SAA])
        np.multiply(part[:, _SD], part[:, _SD], out=part[:, _SDD])
        np.take(state, c, axis=0, out=touched, mode="clip")
        touched += part
        state[c] = touched

    def merge(self, other: "DrspcAccumulator") -> None:
        """Add the state of ``other`` (same configuration) to this accumulator, exactly."""
        if (other.n_cells, other.windows, other.block_shape) != (
            self.n_cells, self.windows, self.block_shape
        ):
            raise ValueError("cannot merge accumulators of different configuration")
        self._sums += other._sums
        for key, xs in other._xsums.items():
            self._xsums.setdefault(key, np.zeros_like(xs))
            self._xsums[key] += xs

    def _x_sums_per_pixel(self, g: int) -> np.ndarray:
        """n, Σt, Σt² of window ``g`` as ``(3, cell, pixel)`` int64, expanded from the per-mask
        sums."""
        out = np.zeros((3, self.n_cells, self._n_pix), dtype=np.int64)
        for key, xs in self._xsums.items():
            if key is None:
                out += xs[g, ..., None]
            else:
                mask = np.unpackbits(np.frombuffer(key, dtype=np.uint8))[: self._n_pix]
                out[..., mask.astype(bool)] += xs[g, ..., None]
        return out

    def _fit_window(self, g: int) -> dict[str, np.ndarray]:
        """Closed-form fit of window ``g``: float64 ``(cell, pixel)`` arrays and ``fit_ok``."""
        n, sx, sxx = self._x_sums_per_pixel(g).astype(np.float64)
        sy, sxy, syy, sd, sdd = self._sums[g].astype(np.float64).transpose(1, 0, 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            dxx = n * sxx - sx * sx
            dxy = n * sxy - sx * sy
            fit_ok = (n >= 2) & (dxx > 0)
            slope = np.where(fit_ok, dxy / dxx, np.nan)
            offset = np.where(fit_ok, (sy - slope * sx) / n, np.nan)
            ssr = np.maximum(n * syy - sy * sy - dxy * dxy / dxx, 0.0) / n  # Σ residual²
            residual = np.where(fit_ok, np.sqrt(ssr / n), np.nan)
            has_points = n >= 1
            gain_level = np.where(has_points, sd / n, np.nan)
            gain_std = np.where(has_points, np.sqrt(np.maximum(n * sdd - sd * sd, 0.0)) / n, np.nan)
        return {
            "slope": slope,
            "offset": offset,
            "gain_level": gain_level,
            "gain_level_std": gain_std,
            "residual_rms": residual,
            "n_points": n,
            "fit_ok": fit_ok,
        }

    def finalize(self) -> dict[str, np.ndarray]:
        """Fit results, each indexed ``(k, cell, row, col)``.

        Returns
        -------
        dict of np.ndarray
            ``slope`` (2,...) ADU/train step, ``offset`` (2,...) ADU (value at t = 0),
            ``gain_level``, ``gain_level_std`` (2,...) mean and population std of the digital
            value in the window, ADU, ``threshold`` (1,...) = (gl0 + gl1)/2, ADU, ``ratio``
            (1,...) = slope_high/slope_medium, ``residual_rms`` (2,...) sqrt(mean squared
            residual), ADU — all float32; ``n_points`` (2,...) int32; ``bad_pixels`` (2,...)
            uint32 :class:`~calib_mpi.badpixels.BadPixels` bits. k = 0 high, 1 medium gain.
        """
        shape = (self.n_cells, *self.block_shape)
        dtypes = {"n_points": np.int32}
        res = {
            name: np.empty((2, *shape), dtype=dtypes.get(name, np.float32))
            for name in ("slope", "offset", "gain_level", "gain_level_std", "residual_rms",
                         "n_points")
        }
        bad = np.zeros((2, *shape), dtype=BAD_PIXEL_DTYPE)
        for g in range(2):
            fit = self._fit_window(g)
            for name, arr in res.items():
                arr[g] = fit[name].reshape(shape)
            bad[g][~fit["fit_ok"].reshape(shape)] |= _bit(BadPixels.CI_EVAL_ERROR)
            too_large = fit["residual_rms"] > self.residual_limits[g]
            bad[g][too_large.reshape(shape)] |= _bit(BadPixels.CI_LINEAR_DEVIATION)
            lo, hi = self.slope_limits[g]
            outside = (fit["slope"] < lo) | (fit["slope"] > hi)
            bad[g][outside.reshape(shape)] |= _bit(BadPixels.CI_GAIN_OF_OF_THRESHOLD)
            del fit

        gl, gl_std, slope = res["gain_level"], res["gain_level_std"], res["slope"]
        with np.errstate(divide="ignore", invalid="ignore"):
            res["threshold"] = (gl[:1] + gl[1:]) / np.float32(2)
            res["ratio"] = slope[:1] / slope[1:]
        spacing = gl[1] - gl[0]
        min_spacing = self.min_gain_separation * (gl_std[0] + gl_std[1])
        bad[:, (spacing <= 0) | (spacing < min_spacing)] |= _bit(
            BadPixels.GAIN_THRESHOLDING_ERROR
        )
        finite = np.isfinite(res["threshold"][0]) & np.isfinite(res["ratio"][0])
        for name in ("slope", "offset", "residual_rms", "gain_level"):
            finite = finite & np.isfinite(res[name])
        bad[~finite] |= _bit(BadPixels.VALUE_IS_NAN)
        res["bad_pixels"] = bad
        return res


def _bit(flag: BadPixels) -> np.uint32:
    return BAD_PIXEL_DTYPE(flag)


def _distinct_cell_layers(c: np.ndarray) -> list[np.ndarray]:
    """Split frame indices into groups whose cells are pairwise distinct (in-place adds are safe).

    The j-th group holds the j-th occurrence of every cell, in cell order.
    """
    order = np.argsort(c, kind="stable")
    cs = c[order]
    new_group = np.r_[True, cs[1:] != cs[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(cs.size), 0))
    occurrence = np.arange(cs.size) - group_start
    if occurrence.max() == 0:
        return [order]
    return [order[occurrence == j] for j in range(occurrence.max() + 1)]

