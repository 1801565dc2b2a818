"""The pulsed-capacitor (drspc) measurement: eight runs r1..r8, run k injects chip rows k mod 8.

Ties :class:`calib_mpi.process.drspc.DrspcAccumulator` to the pipeline, one accumulator per
owned ASIC, fed by all eight runs:

- **Mask.** Run k (0..7, the k-th configured run) feeds only the pixels whose chip row
  ``rho ≡ k (mod 8)`` (``shared/spec/formats.md`` 3.4), with ``rho`` from
  :func:`calib_mpi.geometry.chip_coordinates` of the ASIC block in the XFEL frame. Chip rows
  run along the XFEL fast-scan axis, so in the ``(slow_scan, fast_scan)`` block the mask is a
  set of whole *columns*; the recipe hands the accumulator the transposed block view
  ``(frame, fast_scan, slow_scan)`` (no copy), where the mask is whole rows and only those rows
  are read, and transposes the results back. Lab frames (``facility = cfel``, run names
  ``r1..r8``) are in the AGIPD frame (:mod:`calib_mpi.facilities`), where the mask is whole
  rows as it is.
- **x of the fit** (the scan step) is ``train ID - first train ID of the run`` (the run's
  smallest train ID over all modules), i.e. the toolbox's ``train_id - first_id + shifting``.
  It equals the gather's train position as long as no train is missing from every module; a
  train lost (or left out) everywhere leaves a hole instead of shifting every later step, and
  the charge of the scan follows the train, not the count of recorded trains. For lab runs the
  train axis is the train position ``0 .. n_trains - 1`` (formats.md 2.3), so x is the
  position: a lost train also leaves a hole there.
- **Windows** ``[t0, t1)`` of the high- and medium-gain fits: ``drspc_windows`` (default 42 122
  402 552, the toolbox's), in the steps above; limits ``drspc_residual_limits``,
  ``drspc_slope_limits`` and ``gain_separation_sigma`` (shared with dark).

The accumulator sums are exact integers, so the result does not depend on the rank count,
chunking or frame order. Output per module (``(k, cell, slow_scan, fast_scan)``): see
:attr:`DrspcRecipe.specs` and the README.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..config import Config
from ..facilities import facility
from ..geometry import XFEL_FRAME, asic_blocks, chip_coordinates
from ..join import DatasetSpec
from ..plan import Plan, Unit
from ..process.dark import module_reference, unit_quantiles
from ..process.drspc import DrspcAccumulator

DIMS = ("gain", "cell", "slow_scan", "fast_scan")
N_ROW_GROUPS = 8


def injection_masks(module: int, block: int,
                    frame_shape: tuple[int, int] = XFEL_FRAME) -> np.ndarray:
    """Pixels injected by each drspc run in one ASIC block of a module frame.

    Returns (8, 64, 64) bool in the block's orientation (XFEL: ``[k, ss, fs]``), True where
    chip row ``rho ≡ k (mod 8)``.
    """
    blk = asic_blocks(frame_shape, module)[block]
    rho, _ = chip_coordinates(frame_shape, module, blk)
    return np.stack([rho % N_ROW_GROUPS == k for k in range(N_ROW_GROUPS)])


def _whole_rows(mask: np.ndarray) -> bool:
    return bool(np.array_equal(mask.all(axis=1), mask.any(axis=1)))


class DrspcRecipe:
    """Pulsed capacitor: slopes, offsets, gain levels, threshold and ratio per (cell, pixel)."""

    name = "drspc"
    specs = [
        DatasetSpec("slope", (2,), np.float32, DIMS),
        DatasetSpec("offset", (2,), np.float32, DIMS),
        DatasetSpec("gain_level", (2,), np.float32, DIMS),
        DatasetSpec("gain_level_std", (2,), np.float32, DIMS),
        DatasetSpec("threshold", (1,), np.float32, ("threshold",) + DIMS[1:]),
        DatasetSpec("ratio", (1,), np.float32, ("ratio",) + DIMS[1:]),
        DatasetSpec("residual_rms", (2,), np.float32, DIMS),
        DatasetSpec("n_points", (2,), np.int32, DIMS),
        DatasetSpec("bad_pixels", (2,), np.uint32, DIMS),
    ]

    def __init__(self, cfg: Config, plan: Plan):
        self.plan = plan
        #: frames are in the input's orientation: the AGIPD frame for lab (CFEL) data
        self.frame = facility(getattr(plan, "facility", "xfel")).frame_shape
        w = tuple(cfg.drspc_windows)
        self.windows = ((w[0], w[1]), (w[2], w[3]))
        s = tuple(cfg.drspc_slope_limits)
        self.slope_limits = ((s[0], s[1]), (s[2], s[3]))
        self.residual_limits = tuple(cfg.drspc_residual_limits)
        self.min_separation = cfg.gain_separation_sigma
        #: run index -> train ID of scan step 0 (the run's first train over all modules)
        self.step0 = {ri: int(ax[0]) if len(ax) else 0 for ri, ax in plan.train_axis.items()}
        self.acc: dict[Unit, DrspcAccumulator] = {}
        self.masks: dict[Unit, np.ndarray] = {}
        self.transposed: dict[Unit, bool] = {}
        self.refs: dict[int, np.ndarray] = {}

    def start(self, units: list[Unit]) -> None:
        for u in units:
            masks = injection_masks(u.module, u.block, self.frame)
            t = not _whole_rows(masks[0]) and _whole_rows(masks[0].T)
            self.transposed[u] = t
            self.masks[u] = np.ascontiguousarray(masks.transpose(0, 2, 1)) if t else masks
            self.acc[u] = DrspcAccumulator(self.plan.n_cells, self.windows, (64, 64),
                                           self.residual_limits, self.slope_limits,
                                           self.min_separation)

    def consume(self, unit: Unit, run_index: int, frames: np.ndarray, r0: int, c0: int,
                cells: np.ndarray, trains: np.ndarray, group: tuple) -> None:
        """Add the frames of one run: only the run's injected rows, x = train step."""
        block = frames[:, :, r0:r0 + 64, c0:c0 + 64]
        if self.transposed[unit]:
            block = block.swapaxes(2, 3)
        steps = self.plan.train_axis[run_index][trains].astype(np.int64) - self.step0[run_index]
        self.acc[unit].update(block[:, 0], block[:, 1], cells, steps,
                              self.masks[unit][run_index % N_ROW_GROUPS])

    def end_run(self, run_index: int) -> None:
        """Nothing to do: the eight runs feed disjoint pixels of the same accumulators."""

    def finalize(self, comm: MPI.Comm) -> dict[Unit, dict[str, np.ndarray]]:
        """Fits of this rank's units, ``(k, cell, ss, fs)`` per ASIC; module medians (report)."""
        res = {}
        for u, a in self.acc.items():
            r = a.finalize()
            if self.transposed[u]:
                r = {k: np.ascontiguousarray(v.swapaxes(-1, -2)) for k, v in r.items()}
            res[u] = r
        quant = {u: np.concatenate([unit_quantiles(r["slope"]), unit_quantiles(r["ratio"])])
                 for u, r in res.items()}
        pooled: dict[Unit, np.ndarray] = {}
        for d in comm.allgather(quant):
            pooled.update(d)
        for m in {u.module for u in pooled}:
            units = sorted((u for u in pooled if u.module == m), key=lambda u: u.block)
            self.refs[m] = module_reference([pooled[u] for u in units])[0]
        return res

    def module_extra(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict[int, dict]:
        """Per module: the fit windows and the train ID of step 0 of each run."""
        step0 = np.array([self.step0[ri] for ri in range(len(self.plan.runs))], np.uint64)
        windows = np.array(self.windows, np.int64)
        return {m: {"metadata/windows": windows, "metadata/step0_train_id": step0}
                for m in self.plan.modules}

    def summary(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict:
        """Collective: module medians of slopes and ratio, bad pixel-cells per gain."""
        local: dict[int, np.ndarray] = {}
        for u, r in results.items():
            bad = (r["bad_pixels"] != 0).reshape(2, -1).sum(axis=1)
            local[u.module] = local.get(u.module, 0) + bad
        out: dict = {}
        for d in comm.allgather(local):
            for m, bad in d.items():
                out.setdefault(m, {"bad": np.zeros(2, np.int64)})["bad"] += bad
        for m, s in out.items():
            ref = self.refs.get(m)
            if ref is not None:
                s["slope"] = np.nanmedian(ref[:2], axis=1)
                s["ratio"] = float(np.nanmedian(ref[2]))
        return out

    def describe(self, module: int, s: dict) -> list[str]:
        """Report lines of one module for the end-of-job summary."""
        slope = s.get("slope", [np.nan, np.nan])
        bad = s.get("bad", [0, 0])
        lines = [f"{name:>6} gain: median slope {slope[g]:8.3f} ADU/step, window "
                 f"{self.windows[g][0]}..{self.windows[g][1]}, bad pixel-cells {int(bad[g])}"
                 for g, name in enumerate(("high", "medium"))]
        lines.append(f"median ratio high/medium {s.get('ratio', np.nan):.2f}")
        return lines
