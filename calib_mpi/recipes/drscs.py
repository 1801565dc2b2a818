"""The current-source (drscs) measurement, one current per job: four runs col15..col48.

Run k (0..3, the k-th configured run) injects the pixels whose chip column
``kappa ≡ k (mod 4)`` (``shared/spec/formats.md`` 3.4), with ``kappa`` from
:func:`calib_mpi.geometry.chip_coordinates` of the ASIC block in the input's frame (the AGIPD
frame for lab data, ``facility = cfel``). The mask is applied per pixel, so the orientation of
the block does not matter.

The processing (:func:`calib_mpi.process.drscs.process_scan`) needs the whole scan of each
(cell, pixel), so the recipe stores, per owned ASIC, the analog and digital values of the
injected pixels in ``(step, cell, 64 * 64)`` uint16 arrays filled by scan step, with a validity
mask alongside (a lost train or frame leaves ``valid = False``), and processes them at the end.
The scan step is ``train ID - first train ID of the run`` (XFEL) or the train position (lab
runs), as for drspc; the number of steps ``T`` is the longest run's. Memory per ASIC:
``T * cells * 4096 * 5`` bytes; ``cells = (c0, c1)`` keeps only those memory cells, so that a
job can process the cells in several passes over the data (``drscs_memory``).

Results do not depend on the rank count: every series is processed on its own from the same
integers. Merging several currents (steps.md section 4) is done by
:func:`calib_mpi.merge.merge_across_currents`; this recipe handles one current (``current``).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..config import Config
from ..facilities import facility
from ..geometry import XFEL_FRAME, asic_blocks, chip_coordinates
from ..join import DatasetSpec
from ..plan import Plan, Unit
from ..process.drscs import N_GAINS, DrscsParams, process_scan

DIMS = ("gain", "cell", "slow_scan", "fast_scan")
N_COLUMN_GROUPS = 4
N_PIX = 64 * 64
#: error codes 0..10 of process_scan (calib_mpi.process.drscs.ERROR_CODES)
N_ERROR_CODES = 11


def injection_masks(module: int, block: int,
                    frame_shape: tuple[int, int] = XFEL_FRAME) -> np.ndarray:
    """Pixels injected by each drscs run in one ASIC block: (4, 64, 64) bool, True where chip
    column ``kappa ≡ k (mod 4)``, in the block's orientation."""
    blk = asic_blocks(frame_shape, module)[block]
    _, kappa = chip_coordinates(frame_shape, module, blk)
    return np.stack([kappa % N_COLUMN_GROUPS == k for k in range(N_COLUMN_GROUPS)])


def scan_steps(plan: Plan) -> int:
    """Scan steps of the plan's longest run (train ID or position span)."""
    return max([int(ax[-1]) - int(ax[0]) + 1 for ax in plan.train_axis.values() if len(ax)]
               or [0])


def bytes_per_cell(plan: Plan, n_units: int) -> int:
    """Memory of the stored scans per memory cell for ``n_units`` ASICs (analog, digital:
    uint16, valid: bool)."""
    return scan_steps(plan) * N_PIX * 5 * n_units


def error_counts(results: dict[Unit, dict]) -> dict[int, np.ndarray]:
    """Per module, the count of (cell, pixel)s per error code (0..10) of these results."""
    out: dict[int, np.ndarray] = {}
    for u, r in results.items():
        cnt = np.bincount(r["error_code"].ravel().astype(np.int64),
                          minlength=N_ERROR_CODES)[:N_ERROR_CODES]
        out[u.module] = out.get(u.module, 0) + cnt
    return out


class DrscsRecipe:
    """Current source, one current: per-stage slopes, offsets, gain levels, thresholds."""

    name = "drscs"
    specs = [
        DatasetSpec("slope", (N_GAINS,), np.float32, DIMS),
        DatasetSpec("offset", (N_GAINS,), np.float32, DIMS),
        DatasetSpec("residual", (N_GAINS,), np.float32, DIMS),
        DatasetSpec("gain_level", (N_GAINS,), np.float32, DIMS),
        DatasetSpec("threshold", (N_GAINS - 1,), np.float32, ("threshold",) + DIMS[1:]),
        DatasetSpec("n_points", (N_GAINS,), np.int32, DIMS),
        DatasetSpec("saturation_start", (1,), np.int32, ("one",) + DIMS[1:]),
        DatasetSpec("error_code", (1,), np.int16, ("one",) + DIMS[1:]),
        DatasetSpec("bad_pixels", (N_GAINS,), np.uint32, DIMS),
    ]

    def __init__(self, cfg: Config, plan: Plan, params: DrscsParams | None = None,
                 cells: tuple[int, int] | None = None):
        self.plan = plan
        self.frame = facility(getattr(plan, "facility", "xfel")).frame_shape
        self.params = params or cfg.drscs_params()
        self.step0 = {ri: int(ax[0]) if len(ax) else 0 for ri, ax in plan.train_axis.items()}
        self.n_steps = scan_steps(plan)
        #: the memory cells [c0, c1) kept by this pass (see calib_mpi.currents.cell_passes)
        self.cells = cells or (0, plan.n_cells)
        self.analog: dict[Unit, np.ndarray] = {}
        self.digital: dict[Unit, np.ndarray] = {}
        self.valid: dict[Unit, np.ndarray] = {}
        self.pixels: dict[Unit, list[np.ndarray]] = {}

    def start(self, units: list[Unit]) -> None:
        shape = (self.n_steps, self.cells[1] - self.cells[0], N_PIX)
        for u in units:
            masks = injection_masks(u.module, u.block, self.frame)
            self.pixels[u] = [np.flatnonzero(m.ravel()) for m in masks]
            self.analog[u] = np.zeros(shape, np.uint16)
            self.digital[u] = np.zeros(shape, np.uint16)
            self.valid[u] = np.zeros(shape, bool)

    def consume(self, unit: Unit, run_index: int, frames: np.ndarray, r0: int, c0: int,
                cells: np.ndarray, trains: np.ndarray, group: tuple) -> None:
        """Store the run's injected pixels of these frames at (scan step, cell)."""
        block = frames[:, :, r0:r0 + 64, c0:c0 + 64]
        cells = np.asarray(cells, np.int64) - self.cells[0]
        trains = np.asarray(trains)
        keep = (cells >= 0) & (cells < self.cells[1] - self.cells[0])
        if not keep.all():
            block, cells, trains = block[keep], cells[keep], trains[keep]
        n = block.shape[0]
        steps = self.plan.train_axis[run_index][trains].astype(np.int64) - self.step0[run_index]
        pix = self.pixels[unit][run_index % N_COLUMN_GROUPS]
        at = (steps[:, None], cells[:, None], pix[None, :])
        self.analog[unit][at] = block[:, 0].reshape(n, N_PIX)[:, pix]
        self.digital[unit][at] = block[:, 1].reshape(n, N_PIX)[:, pix]
        self.valid[unit][at] = True

    def end_run(self, run_index: int) -> None:
        """Nothing to do: the four runs fill disjoint pixels of the same arrays."""

    def finalize(self, comm: MPI.Comm) -> dict[Unit, dict[str, np.ndarray]]:
        """Process the scans of this rank's units: ``(k, cell, 64, 64)`` per ASIC."""
        res = {}
        c = self.cells[1] - self.cells[0]
        for u in list(self.analog):
            t = self.n_steps
            r = process_scan(self.analog[u].reshape(t, -1), self.digital[u].reshape(t, -1),
                             self.valid[u].reshape(t, -1), self.params)
            del self.analog[u], self.digital[u], self.valid[u]
            out = {}
            for spec in self.specs:
                v = r[spec.name].reshape((-1, c, 64, 64))
                out[spec.name] = np.ascontiguousarray(v, dtype=spec.dtype)
            res[u] = out
        return res

    def module_extra(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict[int, dict]:
        """Per module: the train ID (lab: position) of step 0 of each run, steps per scan."""
        step0 = np.array([self.step0[ri] for ri in range(len(self.plan.runs))], np.uint64)
        return {m: {"metadata/step0_train_id": step0,
                    "metadata/n_steps": np.array(self.n_steps, np.int64)}
                for m in self.plan.modules}

    def summary(self, comm: MPI.Comm, results: dict[Unit, dict]) -> dict:
        """Collective: per module, ``{"errors": count of (cell, pixel)s per error code}``.
        The end-of-job report of drscs jobs is made by :mod:`calib_mpi.currents`."""
        out: dict = {}
        for d in comm.allgather(error_counts(results)):
            for m, cnt in d.items():
                out.setdefault(m, {"errors": np.zeros(N_ERROR_CODES, np.int64)})["errors"] += cnt
        return out
