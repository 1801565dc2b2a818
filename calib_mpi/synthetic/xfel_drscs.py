"""Synthetic European XFEL drscs (current source) run sets with known truth.

Four runs per current (col15, col26, col37, col48: run k injects chip columns
``kappa ≡ k (mod 4)``) in the raw layout of :mod:`calib_mpi.synthetic.xfel`, XFEL frame
``(slow_scan, fast_scan) = (512, 128)``. Scan step ``s`` of run k of current c is train ID
``first_train_id + 100_000 c + 10_000 k + s``. Each ASIC block gets the
:func:`~calib_mpi.synthetic.drscs.make_drscs_scans` series of every current with the merge
cases of :func:`calib_mpi.synthetic.cfel_drscs.merge_failures` (block index in the module's
XFEL block order; ``KIND_ALL_LOST`` is written as zeros, error 3). ``lost`` lists (current,
run index, step) trains lost in the module (INDEX count 0): a hole in that run's scan.

``truth.h5``: ``analog``, ``digital`` (current, step, cell, ss, fs) uint16 and ``valid`` —
the scan each pixel got from its injecting run (input for a serial
:func:`~calib_mpi.process.drscs.process_scan`); ``expected_error`` (current, cell, ss, fs) and
``expected_chosen`` (cell, ss, fs), as in the lab set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import XFEL_FRAME, asic_blocks, chip_coordinates
from .cfel_drscs import ALL_ZERO_ERROR, merge_failures
from .conf import write_config_file, write_truth
from .control import write_run_controls
from .drscs import KIND_ALL_LOST, make_drscs_scans
from .xfel import DETECTOR, DarkRunSet, _Train, _write_sequence
from .xfel_scans import _to_uint16


@dataclass
class XfelDrscsSet:
    """Parameters of a synthetic XFEL drscs run set (one module, four runs per current)."""

    currents: tuple[str, ...] = ("itestc80", "itestc100")
    current_values: tuple[float, ...] = (80.0, 100.0)
    first_run: int = 9301
    module: int = 5
    n_cells: int = 1
    n_trains: int = 240
    n_sequences: int = 2
    first_train_id: int = 500_000
    detector: str = DETECTOR
    noise: float = 5.0
    #: (current, run index, step) trains lost in the module
    lost: tuple[tuple[int, int, int], ...] = ((0, 1, 30), (1, 3, 150))
    seed: int = 777
    chunk_frames: int = 16
    #: control files with these conditions (synthetic.control.RunConditions fields); None: none
    conditions: dict | None = field(default_factory=dict)

    @property
    def runs(self) -> tuple[int, ...]:
        """All run numbers, four per current in the configured order."""
        return tuple(range(self.first_run, self.first_run + 4 * len(self.currents)))


def write_xfel_drscs_runs(out_dir: Path | str, p: XfelDrscsSet | None = None) -> Path:
    """Write the runs and ``truth.h5`` under ``out_dir``; returns the truth path."""
    p = p or XfelDrscsSet()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_cur, shape = len(p.currents), (p.n_cells,) + XFEL_FRAME
    analog = np.empty((n_cur, p.n_trains) + shape, np.uint16)
    digital = np.empty_like(analog)
    offset = np.empty(shape)
    level = np.empty(shape)
    expected = np.empty((n_cur,) + shape, np.int16)
    chosen = np.empty(shape, np.int16)
    group = np.empty(XFEL_FRAME, np.int64)
    for b, blk in enumerate(asic_blocks(XFEL_FRAME, p.module)):
        fc, extra, want = merge_failures(b, n_cur)
        s = make_drscs_scans(seed=p.seed * 100 + b, n_steps=p.n_trains,
                             shape=(p.n_cells, 64, 64), currents=p.current_values,
                             analog_noise=p.noise, fail_current=fc, extra_failures=extra)
        sl = (slice(None), slice(None), slice(None), blk.rows, blk.cols)
        analog[sl] = s.analog.reshape((n_cur, p.n_trains, p.n_cells, 64, 64))
        digital[sl] = s.digital.reshape((n_cur, p.n_trains, p.n_cells, 64, 64))
        offset[:, blk.rows, blk.cols] = s.truth.offset[0].reshape((p.n_cells, 64, 64))
        level[:, blk.rows, blk.cols] = s.truth.gain_level[0].reshape((p.n_cells, 64, 64))
        exp = s.truth.expected_error.reshape((n_cur, p.n_cells, 64, 64)).copy()
        # KIND_ALL_LOST is written as zero frames values (a file cannot lose single pixels):
        # valid zeros that never switch, error 3 (too few gain stages)
        exp[:, 0, 0, KIND_ALL_LOST] = ALL_ZERO_ERROR
        expected[:, :, blk.rows, blk.cols] = exp
        ch = np.full(exp[0].size, (b - 1) % n_cur if n_cur > 1 else 0, np.int16)
        ch[:13] = want
        chosen[:, blk.rows, blk.cols] = ch.reshape(exp.shape[1:])
        group[blk.rows, blk.cols] = chip_coordinates(XFEL_FRAME, p.module, blk)[1] % 4
    valid = np.ones(analog.shape, bool)
    layout = DarkRunSet(detector=p.detector, chunk_frames=p.chunk_frames, padding_frames=0)
    rng = np.random.default_rng([p.seed, 2])
    bounds = np.linspace(0, p.n_trains, p.n_sequences + 1).astype(int)
    write_run_controls(out, {p.first_run + 4 * c + k: p.first_train_id + 100_000 * c
                             + 10_000 * k + np.arange(p.n_trains)
                             for c in range(n_cur) for k in range(4)}, p.conditions, p.n_cells)
    for c in range(n_cur):
        for k in range(4):
            run = p.first_run + 4 * c + k
            inj = group == k
            lost = {s for (cc, kk, s) in p.lost if (cc, kk) == (c, k)}
            run_dir = out / f"r{run:04d}"
            run_dir.mkdir(exist_ok=True)
            for q in range(p.n_sequences):
                trains = []
                for t in range(bounds[q], bounds[q + 1]):
                    tr = _Train(p.first_train_id + 100_000 * c + 10_000 * k + t)
                    trains.append(tr)
                    if t in lost:
                        valid[c, t][:, inj] = False
                        continue
                    noise = rng.standard_normal((2,) + shape, dtype=np.float32) * p.noise
                    a = np.where(inj, analog[c, t], _to_uint16(offset + noise[0]))
                    d = np.where(inj, digital[c, t], _to_uint16(level + noise[1]))
                    for cell in range(p.n_cells):
                        tr.add(np.stack([a[cell], d[cell]]), cell)
                name = f"RAW-R{run:04d}-AGIPD{p.module:02d}-S{q:05d}.h5"
                _write_sequence(run_dir / name, layout, p.module, trains)
    analog[~valid] = 0
    digital[~valid] = 0
    return write_truth(out / "truth.h5", p, {
        "analog": analog, "digital": digital, "valid": valid, "expected_error": expected,
        "expected_chosen": chosen, "column_group": group})


def write_xfel_drscs_config(path: Path | str, raw_dir: Path | str, out_dir: Path | str,
                            p: XfelDrscsSet | None = None, **extra) -> Path:
    """Write a calib-mpi config (``facility = xfel``, ``measurement = drscs``)."""
    p = p or XfelDrscsSet()
    return write_config_file(path, "XFEL drscs run set", {
        "facility": "xfel", "measurement": "drscs", "input_dir": Path(raw_dir),
        "runs": p.runs, "current": p.currents, "modules": p.module, "detector": p.detector,
        "output_dir": Path(out_dir)}, extra)
