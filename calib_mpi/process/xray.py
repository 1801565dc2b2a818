"""X-ray fluorescence (xray) processor: photon spacing from per-(cell, pixel) ADU histograms.

Rule of ``shared/spec/measurements.md`` section 4 (and known defect 20): for every memory cell
and pixel of one ASIC the analog values are histogrammed in unit (1 ADU) bins starting at a
per-(cell, pixel) ``origin``. The histograms are exact integer counts, so adding frames in any
chunking or order, or merging accumulators of different ranks, gives bit-identical results.

``finalize`` works on all (cell, pixel) histograms at once as a ``(rows, n_bins)`` array (in
blocks of rows to bound temporary memory). Peak finding (``find_peaks``) uses box sums of
``smooth`` bins (cumulative sums): the noise (0-photon) peak is the **lowest significant
maximum** (rising above its neighbourhood by ``peak_n_sigma`` Poisson sigmas), the 1-photon
peak the next significant maximum more than ``min_spacing`` above it, so the rule holds from low
occupancy up to a mean photon number of ~2, where the 1- and 2-photon peaks are higher than the
noise peak. Where no 1-photon maximum is significant, it is looked for as a shoulder on the
noise peak's flank (``xray_shoulder.find_shoulder``). A 2-photon peak, where found, is
refined as a consistency check of the spacing (``two_photon_spacing``), never taken for the
1-photon peak. Both peaks are then refined on the
**unsmoothed** histogram by an iterated, truncation-corrected windowed-moment Gaussian estimate,
with the tails of the neighbouring peaks subtracted (``xray_refine.refine``; the errors include
the uncertainty of those tails). Failures give NaN, a
bad-pixel bit and the reason in ``eval_status`` (:class:`Status`), never 0. Cost per (cell, pixel)
histogram of 512 bins on one core: ~12 us with the compiled kernels ``xray_peaks`` and
``xray_refine`` (peak search ~1 us, refinement ~6 us, the rest numpy), ~40 us without them;
linear in the number of histograms (352 cells x 4096 pixels: ~17 s per ASIC).

Memory of the accumulator per ASIC: ``n_cells x 4096 x n_bins x itemsize`` bytes, i.e. with the
default ``n_bins = 512`` 8 MiB per cell for ``uint32`` counts (16 cells: 128 MiB, 352 cells:
2.75 GiB) and half of that for ``uint16`` counts (352 cells: 1.38 GiB). ``uint16`` is only
allowed while no cell has received more than 65535 frames (checked in ``update``, which raises
``OverflowError`` before changing any state); the default is ``uint32``.
"""

from __future__ import annotations

import warnings
from enum import IntEnum

import numpy as np

from calib_mpi.badpixels import BAD_PIXEL_DTYPE, BadPixels
from calib_mpi.process import _jit
from calib_mpi.process.kernels import group_by_cell
from calib_mpi.process.xray_peaks import box_sums, cumulative_counts, find_peaks
from calib_mpi.process.xray_refine import refine
from calib_mpi.process.xray_shoulder import find_shoulder

__all__ = ["Status", "XrayAccumulator", "estimate_origin", "find_peaks", "flag_deviation"]

N_PIXELS = 64 * 64
CU_K_ALPHA_KEV = 8.04
MO_K_ALPHA_KEV = 17.44

# Rows (cell, pixel histograms) processed at once in ``finalize`` (bounds temporary memory).
_FINALIZE_ROWS = 2048
# Largest bincount output (elements) of one cell block in ``update``.
_BINCOUNT_BUDGET = 1 << 22
# Per-row results of ``_evaluate`` (bin units relative to the origin).
_RESULT_KEYS = (
    "mu0", "mu1", "mu2", "emu0", "emu1", "emu2", "espacing", "s0", "s1", "es0", "es1", "quality"
)


class Status(IntEnum):
    """``eval_status`` of a (cell, pixel): 0 = result, else the reason there is none."""

    OK = 0
    #: no sample at all (``FF_NO_ENTRIES``)
    NO_ENTRIES = 1
    #: no significant maximum (also: every sample outside the histogram)
    NO_NOISE_PEAK = 2
    #: no significant maximum more than ``min_spacing`` above the noise peak
    NO_ONE_PHOTON_PEAK = 3
    #: a refinement window leaves the histogram
    AT_EDGE = 4
    #: refinement failed (no positive width, or spacing <= ``min_spacing`` once refined)
    REFINE_FAILED = 5
    #: more than ``BELOW_NOISE_SHARE`` of the entries lie ``BELOW_NOISE_SIGMAS`` noise widths
    #: below the noise peak: a lower, unresolved peak (the peak found is not the noise peak)
    ENTRIES_BELOW = 6


#: ``Status.ENTRIES_BELOW``: share of the entries and distance (noise peak sigmas)
BELOW_NOISE_SHARE = 0.01
BELOW_NOISE_SIGMAS = 4.0


def _as_frames(analog: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes; return analog as ``(frame, 4096)`` and cells as int64 ``(frame,)``."""
    analog, cells = _checked(analog, cells)
    return analog.reshape(analog.shape[0], N_PIXELS), cells


def _checked(analog: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and types; analog ``(frame, 64, 64)`` as given (no copy of a strided
    view), cells as int64 ``(frame,)``."""
    analog = np.asarray(analog)
    cells = np.asarray(cells)
    if analog.ndim != 3 or analog.shape[1:] != (64, 64):
        raise ValueError(f"analog must be (frame, 64, 64), got {analog.shape}")
    if cells.shape != (analog.shape[0],):
        raise ValueError(f"cells must be ({analog.shape[0]},), got {cells.shape}")
    if not (np.issubdtype(analog.dtype, np.integer) and analog.dtype.itemsize <= 2):
        raise TypeError(f"analog must be uint16 or int16, got {analog.dtype}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise TypeError(f"cells must be integers, got {cells.dtype}")
    return analog, cells.astype(np.int64)


def estimate_origin(
    analog: np.ndarray,
    cells: np.ndarray,
    n_cells: int,
    margin: int = 64,
    quantile: float = 0.0,
) -> np.ndarray:
    """Histogram origin per (cell, pixel) from a sample of frames.

    The origin is ``q - margin`` with ``q`` the ``quantile`` of the sampled values of each
    (cell, pixel) (the sorted value of rank ``floor(quantile * (n - 1))``, an integer). The
    default is the sample **minimum**: it lies in the low tail of the noise peak whenever the
    sample holds a 0-photon frame, whatever the photon occupancy (a sample of 64 frames misses
    every 0-photon frame with probability ``(1 - exp(-mean))^64``: 1e-4 at a mean photon
    number of 2), whereas any fixed quantile leaves the noise peak once the 0-photon share
    drops below it (the lower quartile at a mean of ~1.4). Cells without frames get the
    ASIC-wide median of the per-(cell, pixel) quantiles, minus the margin. Without any valid
    frame the origin is ``-margin``. The result does not depend on the frame order.

    Parameters
    ----------
    analog : (frame, 64, 64) uint16 or int16, ADU.
    cells : (frame,) int, memory cell of each frame, -1 (or out of range) = invalid, ignored.
    n_cells : number of memory cells.
    margin : ADU kept below the quantile.
    quantile : in [0, 1], 0 = minimum, 0.5 = (lower) median.

    Returns
    -------
    (n_cells, 64, 64) int32, ADU of histogram bin 0.
    """
    a, c = _as_frames(analog, cells)
    keep = (c >= 0) & (c < n_cells)
    a, c = a[keep], c[keep]
    origin = np.zeros((n_cells, N_PIXELS), np.int64)
    if c.size:
        # One sort per pixel of (cell, value) keys: each cell's values are then contiguous and
        # sorted, at the same rows for every pixel (every frame has all pixels).
        shift = np.int64(1 << 17)
        keys = c[:, None] * (2 * shift) + (a.astype(np.int64) + shift)
        keys.sort(axis=0)
        present, count = np.unique(c, return_counts=True)
        start = np.concatenate(([0], np.cumsum(count)[:-1]))
        rank = np.floor(quantile * (count - 1)).astype(np.int64)
        value = keys[start + rank] - present[:, None] * (2 * shift) - shift
        origin[:] = np.floor(np.median(value))
        origin[present] = value
    origin -= margin
    return origin.reshape(n_cells, 64, 64).astype(np.int32)


def flag_deviation(
    spacing: np.ndarray, n_sigma: float, axis: tuple[int, ...] = (-2, -1)
) -> np.ndarray:
    """``FF_GAIN_DEVIATION`` where the spacing is outside ``median +- n_sigma * robust sigma``.

    Median and robust sigma (1.4826 x median absolute deviation) are taken over ``axis`` (the
    pixel axes of an ASIC or of a whole module) for each remaining index (gain, cell), ignoring
    NaN; NaN values are never flagged (they carry their own bits).

    Parameters
    ----------
    spacing : (..., rows, cols) float, ADU per photon.
    n_sigma : half-width of the accepted band in robust sigmas.
    axis : pixel axes over which the statistics are taken.

    Returns
    -------
    uint32 array of ``spacing.shape``, ``FF_GAIN_DEVIATION`` or 0.
    """
    s = np.asarray(spacing, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, no flag
        med = np.nanmedian(s, axis=axis, keepdims=True)
        sigma = 1.4826 * np.nanmedian(np.abs(s - med), axis=axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        out = np.abs(s - med) > n_sigma * sigma
    return np.where(out, BAD_PIXEL_DTYPE(BadPixels.FF_GAIN_DEVIATION), 0).astype(BAD_PIXEL_DTYPE)


class XrayAccumulator:
    """Per-(cell, pixel) unit-bin ADU histograms of one ASIC and their photon-peak evaluation.

    Parameters
    ----------
    n_cells : number of memory cells.
    origin : (n_cells, 64, 64) int, ADU of bin 0 (see ``estimate_origin``).
    n_bins : histogram bins of 1 ADU, values ``origin .. origin + n_bins - 1``.
    photon_energy_kev : fluorescence line energy (Cu K-alpha 8.04, Mo K-alpha 17.44 keV).
    count_dtype : ``np.uint32`` (default) or ``np.uint16`` (half the memory, at most 65535
        frames per cell).
    smooth : odd width (bins) of the box sum used for peak finding only.
    min_spacing : ADU; the 1-photon peak must be more than this above the noise peak (both on
        the smoothed and on the refined positions), the 2-photon peak above the 1-photon peak.
    window_sigmas : half-width of the refinement window in peak sigmas (capped at half the
        peak spacing).
    n_iter : refinement iterations.
    min_peak_counts : minimum smoothed (box-sum) height of a peak.
    peak_n_sigma : a maximum is a peak when it rises above the level of its neighbourhood by
        this many Poisson sigmas of the box sums, ``sqrt(peak + level)`` (see ``find_peaks``).
    deviation_n_sigma : band of ``flag_deviation`` applied per cell over the ASIC in
        ``finalize``; None to skip (e.g. when the pipeline applies it module-wide).
    method : histogramming path of ``update``, all exact and identical in result: "sort"
        (sorts flat indices, ~100 ns per sample, best for few frames per cell and call),
        "bincount" (one ``np.bincount`` per block of cells, ~30 ns per sample plus ~n_bins
        per (cell, pixel) and call) or "auto" (the compiled kernel ``xray_hist`` for uint16
        frames, ~2-3 ns per sample; without it bincount from n_bins / 16 frames per cell,
        else sort).
    """

    def __init__(
        self,
        n_cells: int,
        origin: np.ndarray,
        n_bins: int = 512,
        photon_energy_kev: float = CU_K_ALPHA_KEV,
        *,
        count_dtype: type[np.unsignedinteger] = np.uint32,
        smooth: int = 11,
        min_spacing: float = 10.0,
        window_sigmas: float = 2.5,
        n_iter: int = 10,
        min_peak_counts: float = 30.0,
        peak_n_sigma: float = 3.5,
        deviation_n_sigma: float | None = 5.0,
        method: str = "auto",
    ) -> None:
        origin = np.asarray(origin)
        if origin.shape != (n_cells, 64, 64):
            raise ValueError(f"origin must be ({n_cells}, 64, 64), got {origin.shape}")
        if np.dtype(count_dtype) not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError("count_dtype must be np.uint16 or np.uint32")
        if smooth < 1 or smooth % 2 == 0:
            raise ValueError("smooth must be a positive odd number of bins")
        if n_bins < 2 or n_cells * N_PIXELS * n_bins >= 2**63:
            raise ValueError("bad n_bins")
        self.n_cells = int(n_cells)
        self.n_bins = int(n_bins)
        self.origin = origin.astype(np.int32)
        self.photon_energy_kev = float(photon_energy_kev)
        self.smooth = int(smooth)
        self.min_spacing = float(min_spacing)
        self.window_sigmas = float(window_sigmas)
        self.n_iter = int(n_iter)
        self.min_peak_counts = float(min_peak_counts)
        self.peak_n_sigma = float(peak_n_sigma)
        self.deviation_n_sigma = deviation_n_sigma
        if method not in ("auto", "sort", "bincount"):
            raise ValueError("method must be 'auto', 'sort' or 'bincount'")
        self.method = method
        #: (n_cells * 4096, n_bins) counts, row = cell * 4096 + pixel.
        self.counts = np.zeros((self.n_cells * N_PIXELS, self.n_bins), count_dtype)
        #: (n_cells * 4096,) int64 values below / above the histogram range.
        self.underflow = np.zeros(self.n_cells * N_PIXELS, np.int64)
        self.overflow = np.zeros(self.n_cells * N_PIXELS, np.int64)
        #: (n_cells,) int64 valid frames added per cell.
        self.frames_per_cell = np.zeros(self.n_cells, np.int64)

    def update(self, analog: np.ndarray, cells: np.ndarray) -> None:
        """Add frames to the histograms.

        Parameters
        ----------
        analog : (frame, 64, 64) uint16 or int16, ADU.
        cells : (frame,) int memory cell; -1 = invalid frame, ignored.
        """
        analog, c = _checked(analog, cells)
        if np.any(c >= self.n_cells):
            raise ValueError(f"memory cell >= n_cells ({self.n_cells})")
        fast = self._compiled(analog)
        if fast is not None:
            self._update_compiled(fast, analog, c)
            return
        a = analog.reshape(analog.shape[0], N_PIXELS)  # a copy for a strided block
        keep = c >= 0
        if not keep.any():
            return
        if not keep.all():
            a, c = a[keep], c[keep]
        order = np.argsort(c, kind="stable")
        cs = c[order]
        present, start, n_frames = np.unique(cs, return_index=True, return_counts=True)
        self._check_limit(present, n_frames)
        rel = a[order].astype(np.int32)
        rel -= self.origin.reshape(self.n_cells, N_PIXELS)[cs]
        rows = present[:, None] * N_PIXELS + np.arange(N_PIXELS)
        below = rel < 0
        above = rel >= self.n_bins
        self.underflow[rows] += np.add.reduceat(below, start, axis=0, dtype=np.int64)
        self.overflow[rows] += np.add.reduceat(above, start, axis=0, dtype=np.int64)
        inside = ~(below | above)
        method = self.method
        if method == "auto":
            # bincount costs ~n_bins per (cell, pixel) plus little per sample; the sort path
            # ~100 ns per sample: bincount wins from about n_bins / 16 frames per cell.
            method = "bincount" if cs.size >= present.size * self.n_bins // 16 else "sort"
        if method == "bincount":
            self._add_bincount(rel, inside, present, start, n_frames)
        else:
            self._add_sorted(rel, inside, cs)
        self.frames_per_cell[present] += n_frames

    def _check_limit(self, present: np.ndarray, n_frames: np.ndarray) -> None:
        """Refuse frames that could overflow the counts of a cell."""
        limit = np.iinfo(self.counts.dtype).max
        if np.any(self.frames_per_cell[present] + n_frames > limit):
            raise OverflowError(
                f"more than {limit} frames for one memory cell: {self.counts.dtype} histogram "
                "counts could overflow; use count_dtype=np.uint32"
            )

    def _compiled(self, analog: np.ndarray):
        """The compiled histogram kernel for ``analog``, or None (numpy paths): used with
        ``method = "auto"`` for uint16 frames."""
        if self.method != "auto" or analog.dtype != np.uint16:
            return None
        name = "xray_hist" if self.counts.dtype == np.uint32 else "xray_hist_u16"
        return _jit.kernel(name)

    def _update_compiled(self, fast, analog: np.ndarray, c: np.ndarray) -> None:
        """``update`` by the compiled kernel: analog (frame, 64, 64) uint16 (any strides),
        c (frame,) int64 cells; the same counts as the numpy paths, one pass per pixel row."""
        order, starts, present = group_by_cell(c, self.n_cells)
        if present.size == 0:
            return
        n_frames = np.diff(starts)
        self._check_limit(present, n_frames)
        fast(analog, order, starts, present, self.origin, self.counts, self.underflow,
             self.overflow)
        self.frames_per_cell[present] += n_frames

    def _add_sorted(self, rel: np.ndarray, inside: np.ndarray, cs: np.ndarray) -> None:
        """Histogram by sorting flat (row, bin) indices; cost ~ samples log samples."""
        n_bins = self.n_bins
        idx_dtype = np.uint32 if self.counts.size < 2**32 else np.uint64
        base = cs.astype(idx_dtype)[:, None] * N_PIXELS + np.arange(N_PIXELS, dtype=idx_dtype)
        idx = (base * n_bins)[inside] + rel[inside].astype(idx_dtype)
        if idx.size == 0:
            return
        idx.sort()
        first = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
        run = np.diff(np.append(first, idx.size))
        flat = self.counts.reshape(-1)
        flat[idx[first]] += run.astype(self.counts.dtype)

    def _add_bincount(
        self,
        rel: np.ndarray,
        inside: np.ndarray,
        present: np.ndarray,
        start: np.ndarray,
        n_frames: np.ndarray,
    ) -> None:
        """Histogram with one bincount per block of present cells (frames sorted by cell)."""
        n_bins = self.n_bins
        per_cell = N_PIXELS * n_bins
        block = max(1, _BINCOUNT_BUDGET // per_cell)
        pix = np.arange(N_PIXELS, dtype=np.int64) * n_bins
        counts = self.counts.reshape(self.n_cells, per_cell)
        stop = start + n_frames
        for b0 in range(0, present.size, block):
            b1 = min(b0 + block, present.size)
            f0, f1 = start[b0], stop[b1 - 1]
            local = np.repeat(np.arange(b1 - b0, dtype=np.int64), n_frames[b0:b1]) * per_cell
            idx = (local[:, None] + pix) + rel[f0:f1]
            hist = np.bincount(idx[inside[f0:f1]], minlength=(b1 - b0) * per_cell)
            counts[present[b0:b1]] += hist.reshape(b1 - b0, per_cell).astype(counts.dtype)

    def merge(self, other: XrayAccumulator) -> None:
        """Add the histograms of another accumulator with the same cells, origin and bins."""
        if (
            other.n_cells != self.n_cells
            or other.n_bins != self.n_bins
            or not np.array_equal(other.origin, self.origin)
        ):
            raise ValueError("accumulators differ in cells, bins or origin")
        total = self.frames_per_cell + other.frames_per_cell
        if np.any(total > np.iinfo(self.counts.dtype).max):
            raise OverflowError("merged frame count exceeds the count dtype")
        self.counts += other.counts.astype(self.counts.dtype)
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.frames_per_cell = total

    def finalize(self) -> dict[str, np.ndarray]:
        """Evaluate all histograms.

        Returns
        -------
        dict of arrays indexed ``(k, cell, 64, 64)``:

        - ``photon_spacing`` (1,) float32, ADU per photon, ``mu1 - mu0``;
        - ``spacing_error`` (1,) float32, ADU, standard error of ``photon_spacing`` (both peaks'
          errors and the uncertainty of the neighbouring peak's tail subtracted from each
          window, see ``xray_refine.refine``);
        - ``peak_position`` (2,) float32, ADU (absolute) of the 0- and 1-photon peaks;
        - ``position_error`` (2,) float32, ADU, standard errors of ``peak_position``;
        - ``peak_stddev`` (2,) float32, ADU, Gaussian sigma of the peaks (>= 0), corrected for
          the unit binning;
        - ``peak_error`` (2,) float32, ADU, standard errors of ``peak_stddev``;
        - ``quality`` (1,) float32, ``(h1 - valley) / h1`` on the smoothed histogram, h1 =
          1-photon peak height, valley = minimum between the peaks: 1 = fully separated peaks,
          0 = no valley;
        - ``gain_adu_per_kev`` (1,) float32, ``photon_spacing / photon_energy_kev``;
        - ``n_entries``, ``underflow``, ``overflow`` (1,) int32, samples inside / below /
          above the histogram range;
        - ``two_photon_spacing`` (1,) float32, ADU, ``mu2 - mu1`` where a significant 2-photon
          peak was found (else NaN): a consistency check of ``photon_spacing``;
        - ``two_photon_error`` (1,) float32, ADU, ``sqrt(err(mu1)^2 + err(mu2)^2)``;
        - ``eval_status`` (1,) uint8, :class:`Status` (0 = result, else why there is none);
        - ``bad_pixels`` (1,) uint32: ``FF_NO_ENTRIES`` (no samples at all),
          ``FF_GAIN_EVAL_ERROR`` (no reliable pair of peaks, ``eval_status`` says why; all
          float outputs NaN), ``FF_GAIN_DEVIATION`` (see ``flag_deviation``; values kept).
        """
        n_rows = self.counts.shape[0]
        res = {k: np.full(n_rows, np.nan) for k in _RESULT_KEYS}
        n_in = np.zeros(n_rows, np.int64)
        status = np.zeros(n_rows, np.uint8)
        for r0 in range(0, n_rows, _FINALIZE_ROWS):
            r1 = min(r0 + _FINALIZE_ROWS, n_rows)
            part, n_in[r0:r1], status[r0:r1] = self._evaluate(self.counts[r0:r1])
            for k in _RESULT_KEYS:
                res[k][r0:r1] = part[k]
        origin = self.origin.reshape(-1).astype(np.float64)
        mu0 = res["mu0"] + origin
        mu1 = res["mu1"] + origin
        spacing = mu1 - mu0
        total = n_in + self.underflow + self.overflow
        status[total == 0] = Status.NO_ENTRIES
        status[(total > 0) & (n_in == 0)] = Status.NO_NOISE_PEAK
        bad = np.zeros(n_rows, BAD_PIXEL_DTYPE)
        bad[total == 0] |= BAD_PIXEL_DTYPE(BadPixels.FF_NO_ENTRIES)
        bad[(total > 0) & ~np.isfinite(spacing)] |= BAD_PIXEL_DTYPE(BadPixels.FF_GAIN_EVAL_ERROR)

        shape = (1, self.n_cells, 64, 64)

        def pack(*arrays: np.ndarray, dtype: type = np.float32) -> np.ndarray:
            return np.stack(arrays).reshape((len(arrays),) + shape[1:]).astype(dtype)

        out = {
            "photon_spacing": pack(spacing),
            "spacing_error": pack(res["espacing"]),
            "peak_position": pack(mu0, mu1),
            "position_error": pack(res["emu0"], res["emu1"]),
            "peak_stddev": pack(res["s0"], res["s1"]),
            "peak_error": pack(res["es0"], res["es1"]),
            "quality": pack(res["quality"]),
            "gain_adu_per_kev": pack(spacing / self.photon_energy_kev),
            "two_photon_spacing": pack(res["mu2"] - res["mu1"]),
            "two_photon_error": pack(np.hypot(res["emu1"], res["emu2"])),
            "n_entries": pack(n_in, dtype=np.int32),
            "underflow": pack(self.underflow, dtype=np.int32),
            "overflow": pack(self.overflow, dtype=np.int32),
            "eval_status": pack(status, dtype=np.uint8),
            "bad_pixels": pack(bad, dtype=BAD_PIXEL_DTYPE),
        }
        if self.deviation_n_sigma is not None:
            out["bad_pixels"] |= flag_deviation(out["photon_spacing"], self.deviation_n_sigma)
        return out

    def _evaluate(
        self, counts: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Peak search and refinement for a block of histograms ``(rows, n_bins)``.

        Returns the results (positions in bin units relative to the origin, bin i holds value
        ``origin + i``; failed rows NaN), the entries per row and the :class:`Status` per row.
        """
        n_rows, n_bins = counts.shape
        rows = np.arange(n_rows)
        cum = cumulative_counts(counts)
        n_in = cum[:, -1].copy()

        # Peak finding on box sums of `smooth` bins (zero padded, exact integers).
        j = np.arange(n_bins)
        half = self.smooth // 2
        hs = box_sums(cum, half)
        peaks = find_peaks(hs, half, self.min_spacing, self.peak_n_sigma, self.min_peak_counts)
        flank = np.flatnonzero((peaks[:, 0] >= 0) & (peaks[:, 1] < 0))
        if flank.size:
            peaks[flank, 1] = find_shoulder(cum[flank], peaks[flank, 0], self.min_spacing,
                                            min_counts=self.min_peak_counts)
        p0, p1 = peaks[:, 0], peaks[:, 1]
        found = p1 >= 0
        p0c, p1c = np.maximum(p0, 0), np.maximum(p1, 0)
        between = (j >= p0c[:, None]) & (j <= p1c[:, None])
        valley = np.where(between, hs, np.iinfo(np.int64).max).min(axis=1)
        h1 = hs[rows, p1c]
        del hs, between
        with np.errstate(invalid="ignore", divide="ignore"):
            quality = (h1 - valley) / h1
        status = np.where(p0 < 0, Status.NO_NOISE_PEAK, Status.NO_ONE_PHOTON_PEAK)
        status[found] = Status.OK
        status[n_in == 0] = Status.NO_ENTRIES
        ok = found & (n_in > 0)

        # Refinement on the unsmoothed histogram, only for rows with a candidate pair.
        sel = np.flatnonzero(ok)
        res = {k: np.full(n_rows, np.nan) for k in _RESULT_KEYS}
        res["quality"] = np.where(ok, quality, np.nan)
        if sel.size:
            fit = refine(counts[sel], p0[sel].astype(np.float64), p1[sel].astype(np.float64),
                          self.window_sigmas, self.n_iter, peaks[sel, 2].astype(np.float64))
            good = fit["ok"] & (fit["mu1"] - fit["mu0"] > self.min_spacing)
            good &= np.isfinite(fit["es0"]) & np.isfinite(fit["es1"])
            # Each refined peak must stay nearer to its own search position than to the other
            # peak's (overlapping peaks can otherwise drift into one another).
            reach = 0.5 * (p1[sel] - p0[sel])
            good &= (np.abs(fit["mu0"] - p0[sel]) < reach) & (np.abs(fit["mu1"] - p1[sel]) < reach)
            # A Gaussian noise peak leaves ~3e-5 of its entries 4 sigma below it; many more
            # mean the real noise peak lies lower, unresolved (not significant on its own).
            with np.errstate(invalid="ignore"):
                edge = np.floor(fit["mu0"] - BELOW_NOISE_SIGMAS * fit["s0"] + 0.5)
            k_edge = np.clip(np.nan_to_num(edge), 0, n_bins).astype(np.intp)
            below = cum[sel, k_edge] > BELOW_NOISE_SHARE * n_in[sel]
            below &= good
            good &= ~below
            status[sel[~good]] = Status.REFINE_FAILED
            status[sel[below]] = Status.ENTRIES_BELOW
            status[sel[~fit["inside"]]] = Status.AT_EDGE
            sel_good = sel[good]
            for k in _RESULT_KEYS:
                if k != "quality":
                    res[k][sel_good] = fit[k][good]
            res["quality"][sel[~good]] = np.nan
        return res, n_in, status
