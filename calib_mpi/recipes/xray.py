"""The fluorescence (xray) measurement: one run, photon spacing from per-(cell, pixel) histograms.

Ties :class:`calib_mpi.process.xray.XrayAccumulator` to the pipeline, one accumulator per owned
ASIC. The accumulator counts unit (1 ADU) bins from a per-(cell, pixel) **origin**, which must be
known before the first frame is histogrammed, while frames reach a rank in an order that depends
on the rank count and ``chunk_frames``. The rule, deterministic and with bounded memory:

1. **Origin sample.** For each module, the origin trains are its first ``xray_origin_trains``
   (default 64) trains with data, known from the plan (used trains of the module with a good
   frame, in train-ID order) before any frame is read. The origin of a (cell, pixel) is the
   minimum of its analog values in those trains minus ``xray_origin_margin`` (64 ADU),
   :func:`calib_mpi.process.xray.estimate_origin` (order-independent; the minimum lies in the
   noise peak's low tail at any photon occupancy). The sample is a fixed
   set of frames, so the origin does not depend on the rank count, chunking or arrival order.
2. **Buffer until the sample is complete.** Until every origin train has arrived (the gather
   delivers whole trains: slabs never split one), an ASIC's frames are kept as (frame, 64, 64)
   uint16 copies, including frames of later trains that happen to arrive early. Once the last
   origin train is in, the origin is computed, the accumulator is created, all buffered frames
   are histogrammed and the buffer is freed; later frames are histogrammed directly. Slabs are
   read roughly in file order (each module's slabs in order, spread over the ranks owning the
   module), so the buffer holds about the origin trains plus the frames read in the same rounds:
   at most ~(origin trains x cells + ranks per module x ``chunk_frames``) frames of 8 KiB per
   ASIC (64 trains x 352 cells: ~185 MB, small next to the 2.75 GiB histogram of 352 cells).
   CFEL lab runs (``facility = cfel``) use the same rule with the train positions of the part
   index (trains with a usable analog/digital pair); as a lab slab may split a train (pairs
   are never split), the sample is complete once all pairs of the origin trains have arrived.
   If an origin train never delivers a frame (all its frames left out while reading), the origin
   is computed at the end of the run from the same sample; the result is unchanged, only the
   buffer is larger.

Histogram counts are exact integers, so the result is bit-identical for any rank count. Bad
pixels: ``FF_NO_ENTRIES``, ``FF_GAIN_EVAL_ERROR`` (no reliable pair of peaks, values NaN, the
reason in ``eval_status``, counted per reason in the job summary) and
``FF_GAIN_DEVIATION`` (spacing beyond ``xray_deviation_sigma`` robust sigmas of the ASIC's median
per cell). The photon energy comes from ``xray_target`` (K-alpha) or ``photon_energy``.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..config import Config
from ..errors import ConfigError
from ..join import DatasetSpec
from ..plan import Plan, Unit
from ..process.dark import module_reference, unit_quantiles
from ..process.xray import Status, XrayAccumulator, estimate_origin

DIMS = ("gain", "cell", "slow_scan", "fast_scan")
PEAK_DIMS = ("peak", "cell", "slow_scan", "fast_scan")


def origin_trains(plan: Plan, run_index: int, module: int, n: int) -> np.ndarray:
    """Train positions (on the run's train axis) of the first ``n`` trains with data of
    ``module``, sorted (int64). CFEL: trains with a usable (analog, digital) pair in the part
    index (the train axis is the train position ``0 .. n_trains - 1``)."""
    files = plan.files[(run_index, module)]
    if not files:
        return np.zeros(0, np.int64)
    if getattr(plan, "facility", "xfel") == "cfel":
        return np.unique(np.concatenate([p.cells_trains()[1] for p in files]))[:n]
    ids = np.concatenate([fi.train_ids for fi in files])
    has_frames = np.concatenate([fi.train_max_cell for fi in files]) >= 0
    pos = np.searchsorted(plan.train_axis[run_index], ids[has_frames]).astype(np.int64)
    return np.unique(pos)[:n]


def origin_frames(plan: Plan, run_index: int, module: int, trains: np.ndarray) -> int:
    """CFEL: number of (train, cell) pairs of ``module`` in the origin ``trains`` (a train's
    pairs can come in several slabs, so the sample is complete only when all have arrived)."""
    t = np.concatenate([p.cells_trains()[1] for p in plan.files[(run_index, module)]] or
                       [np.zeros(0, np.int64)])
    return int(np.isin(t, trains).sum())


class _Pending:
    """Frames of one ASIC kept until its origin sample is complete.

    ``n_frames`` None (XFEL, whole trains per slab): complete once every expected train has
    delivered a frame; else (CFEL) once ``n_frames`` frames of the expected trains arrived."""

    def __init__(self, expected: np.ndarray, n_frames: int | None = None):
        self.expected = expected
        self.n_frames = n_frames
        self.got = 0
        self.seen = np.zeros(len(expected), bool)
        self.analog: list[np.ndarray] = []
        self.cells: list[np.ndarray] = []
        self.trains: list[np.ndarray] = []

    def add(self, analog: np.ndarray, cells: np.ndarray, trains: np.ndarray) -> None:
        self.analog.append(np.array(analog, np.uint16))
        self.cells.append(np.array(cells, np.int64))
        self.trains.append(np.array(trains, np.int64))
        if self.n_frames is not None:
            self.got += int(np.isin(trains, self.expected).sum())
        self.seen |= np.isin(self.expected, trains)

    @property
    def complete(self) -> bool:
        if self.n_frames is not None:
            return self.got >= self.n_frames
        return bool(self.seen.all())

    def frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.analog:
            return np.zeros((0, 64, 64), np.uint16), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.analog), np.concatenate(self.cells), np.concatenate(self.trains)


#: 2-photon check: |(mu2 - mu1) - (mu1 - mu0)| beyond this many standard errors = inconsistent
TWO_PHOTON_N_SIGMA = 5.0


def _empty_summary() -> dict:
    return {"bad": 0, "status": np.zeros(len(Status), np.int64),
            "two_photon": np.zeros(2, np.int64), "buffered": 0}


def two_photon_check(r: dict[str, np.ndarray]) -> tuple[int, int]:
    """Pixel-cells of one result with a 2-photon spacing, and those where it differs from
    ``photon_spacing`` by more than ``TWO_PHOTON_N_SIGMA`` standard errors of the difference
    ``mu2 - 2 mu1 + mu0`` (errors of the three positions, independent windows)."""
    with np.errstate(invalid="ignore"):
        diff = r["two_photon_spacing"][0].astype(np.float64) - r["photon_spacing"][0]
        e = r["position_error"].astype(np.float64)
        e2 = r["two_photon_error"][0].astype(np.float64) ** 2 - e[1] ** 2
        err = np.sqrt(e[0] ** 2 + 4.0 * e[1] ** 2 + e2)
        found = np.isfinite(diff)
        inconsistent = found & ~(np.abs(diff) <= TWO_PHOTON_N_SIGMA * err)
    return int(found.sum()), int(inconsistent.sum())


class XrayRecipe:
    """Fluorescence: photon spacing, peak positions and widths per (cell, pixel), high gain."""

    name = "xray"
    specs = [
        DatasetSpec("photon_spacing", (1,), np.float32, DIMS),
        DatasetSpec("spacing_error", (1,), np.float32, DIMS),
        DatasetSpec("gain_adu_per_kev", (1,), np.float32, DIMS),
        DatasetSpec("peak_position", (2,), np.float32, PEAK_DIMS),
        DatasetSpec("position_error", (2,), np.float32, PEAK_DIMS),
        DatasetSpec("peak_stddev", (2,), np.float32, PEAK_DIMS),
        DatasetSpec("peak_error", (2,), np.float32, PEAK_DIMS),
        DatasetSpec("quality", (1,), np.float32, DIMS),
        DatasetSpec("two_photon_spacing", (1,), np.float32, DIMS),
        DatasetSpec("two_photon_error", (1,), np.float32, DIMS),
        DatasetSpec("eval_status", (1,), np.uint8, DIMS),
        DatasetSpec("n_entries", (1,), np.int32, DIMS),
        DatasetSpec("underflow", (1,), np.int32, DIMS),
        DatasetSpec("overflow", (1,), np.int32, DIMS),
        DatasetSpec("histogram_origin", (1,), np.int32, DIMS),
        DatasetSpec("bad_pixels", (1,), np.uint32, DIMS),
    ]

    def __init__(self, cfg: Config, plan: Plan):
        facility = getattr(plan, "facility", "xfel")
        if facility not in ("xfel", "cfel"):
            raise ConfigError(f"measurement xray: facility {facility!r} is not supported")
        self.plan = plan
        self.n_bins = cfg.xray_bins
        self.energy = cfg.photon_energy
        self.margin = cfg.xray_origin_margin
        self.deviation = cfg.xray_deviation_sigma
        self.expected = {m: origin_trains(plan, 0, m, cfg.xray_origin_trains)
                         for m in plan.modules}
        #: CFEL: frames (pairs) in each module's origin trains; None for XFEL (whole trains)
        self.expected_frames = {m: (origin_frames(plan, 0, m, self.expected[m])
                                    if facility == "cfel" else None) for m in plan.modules}
        self.acc: dict[Unit, XrayAccumulator] = {}
        self.pending: dict[Unit, _Pending] = {}
        #: unit -> (frames used for the origin per cell, largest number of frames buffered)
        self.origin_stats: dict[Unit, tuple[np.ndarray, int]] = {}
        self.refs: dict[int, np.ndarray] = {}

    def start(self, units: list[Unit]) -> None:
        self.pending = {u: _Pending(self.expected[u.module], self.expected_frames[u.module])
                        for u in units}
        for u in units:
            if not len(self.expected[u.module]):
                self._make_accumulator(u)

    def _make_accumulator(self, unit: Unit) -> None:
        """Origin from the buffered origin trains, then histogram everything buffered."""
        p = self.pending.pop(unit)
        analog, cells, trains = p.frames()
        sample = np.isin(trains, p.expected)
        origin = estimate_origin(analog[sample], cells[sample], self.plan.n_cells,
                                 margin=self.margin)
        n_sample = np.bincount(cells[sample], minlength=self.plan.n_cells)
        self.origin_stats[unit] = (n_sample, len(cells))
        acc = XrayAccumulator(self.plan.n_cells, origin, self.n_bins, self.energy,
                              deviation_n_sigma=self.deviation)
        if len(cells):
            acc.update(analog, cells)
        self.acc[unit] = acc

    def consume(self, unit: Unit, run_index: int, frames: np.ndarray, r0: int, c0: int,
                cells: np.ndarray, trains: np.ndarray, group: tuple) -> None:
        """Histogram the analog values of the ASIC (buffered until its origin is known)."""
        analog = frames[:, 0, r0:r0 + 64, c0:c0 + 64]
        acc = self.acc.get(unit)
        if acc is not None:
            acc.update(analog, cells)
            return
        p = self.pending[unit]
        p.add(analog, cells, trains)
        if p.complete:
            self._make_accumulator(unit)

    def end_run(self, run_index: int) -> None:
        """Units whose origin sample never completed get their origin from what arrived."""
        for u in list(self.pending):
            self._make_accumulator(u)

    def finalize(self, comm: MPI.Comm) -> dict[Unit, dict[str, np.ndarray]]:
        """Peak evaluation of this rank's units, ``(k, cell, ss, fs)`` per ASIC."""
        res = {}
        for u, a in self.acc.items():
            r = a.finalize()
            r["histogram_origin"] = a.origin[None].astype(np.int32)
            r["frames_used"] = a.frames_per_cell.copy()
            res[u] = r
        quant = {u: unit_quantiles(r["photon_spacing"]) for u, r in res.items()}
        pooled: dict[Unit, np.ndarray] = {}
        for d in comm.allgather(quant):
            pooled.update(d)
        for m in {u.module for u in pooled}:
            units = sorted((u for u in pooled if u.module == m), key=lambda u: u.block)
            self.refs[m] = module_reference([pooled[u] for u in units])[0]
        return res

    def module_extra(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict[int, dict]:
        """Per module: frames histogrammed and frames in the origin sample, per cell."""
        mine = {u.module: (r["frames_used"], self.origin_stats[u][0])
                for u, r in results.items() if u.block == 0}
        got: dict = {}
        for d in comm.allgather(mine):
            got.update(d)
        return {m: {"metadata/frames_used": got[m][0],
                    "metadata/origin_frames": got[m][1],
                    "metadata/origin_trains": np.array(len(self.expected[m]))}
                for m in self.plan.modules}

    def summary(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict:
        """Collective: module median photon spacing, bad pixel-cells, pixel-cells per
        ``eval_status``, 2-photon checks (found, inconsistent), largest frame buffer."""
        local: dict[int, dict] = {}
        for u, r in results.items():
            s = local.setdefault(u.module, _empty_summary())
            s["bad"] += int(np.count_nonzero(r["bad_pixels"]))
            s["status"] += np.bincount(r["eval_status"].ravel(), minlength=len(Status))
            found, inconsistent = two_photon_check(r)
            s["two_photon"] += np.array([found, inconsistent])
            s["buffered"] = max(s["buffered"], self.origin_stats[u][1])
        out: dict = {}
        for d in comm.allgather(local):
            for m, s in d.items():
                t = out.setdefault(m, _empty_summary())
                for k in ("bad", "status", "two_photon"):
                    t[k] = t[k] + s[k]
                t["buffered"] = max(t["buffered"], s["buffered"])
        for m, s in out.items():
            if m in self.refs:
                s["spacing"] = float(np.nanmedian(self.refs[m][0]))
        return out

    def describe(self, module: int, s: dict) -> list[str]:
        """Report lines of one module for the end-of-job summary."""
        spacing = s.get("spacing", np.nan)
        status = s.get("status", np.zeros(len(Status), np.int64))
        reasons = ", ".join(f"{Status(k).name.lower()} {int(n)}"
                            for k, n in enumerate(status) if k and n)
        found, inconsistent = s.get("two_photon", (0, 0))
        return [f"median photon spacing {spacing:7.2f} ADU ({spacing / self.energy:6.3f} ADU/keV "
                f"at {self.energy:g} keV), bad pixel-cells {s.get('bad', 0)}",
                f"pixel-cells with a result {int(status[0])} of {int(status.sum())}"
                + (f"; none: {reasons}" if reasons else ""),
                f"2-photon peak found in {int(found)} pixel-cells, its spacing inconsistent "
                f"(> {TWO_PHOTON_N_SIGMA:g} standard errors) in {int(inconsistent)}",
                f"histogram origin from the first {len(self.expected[module])} trains; at most "
                f"{s.get('buffered', 0)} frames per ASIC buffered until it was known"]
