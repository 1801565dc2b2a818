"""Synthetic CFEL (DESY lab) drscs (current source) run sets with known ground truth.

One current per directory, four runs ``col15 col26 col37 col48`` (run k injects chip columns
``kappa ≡ k (mod 4)``, ``shared/spec/formats.md`` 3.4) in the lab layout
``<input_dir>/<temperature>/drscs/<current>/<module>_<position>_drscs_<current>_<name>_<run:05>
_part<part:05>.nxs``, written with :func:`calib_mpi.synthetic.cfel_scans.write_lab_run`.
Frames are in the AGIPD frame ``(128, 512)``; the scan step is the train position. Each ASIC
block gets its own :func:`~calib_mpi.synthetic.drscs.make_drscs_scans` series
``(cell, 64, 64)`` (with its failure kinds at series 1..7 when ``inject_failures``); run k
carries them on its injected pixels and a high-gain baseline (offset, level, noise) elsewhere.
``lost_trains`` maps a run index to trains lost completely in that run.

``truth_cfel_drscs_<current>.h5``: ``analog``, ``digital`` (step, cell, 128, 512) uint16 and
``valid`` (bool) — the scan each pixel really got from its injecting run (the input to compare
with a serial :func:`~calib_mpi.process.drscs.process_scan`); ``slope`` (3, cell, row, col)
generating slopes, ``offset`` (3, ...), ``gain_level`` (3, ...), ``expected_error`` (cell,
row, col) and ``column_group`` (row, col).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..geometry import AGIPD_FRAME, asic_blocks, chip_coordinates
from .cfel_scans import write_lab_run
from .drscs import make_drscs_scans
from .xfel_scans import _to_uint16

#: error code of the all-zero series (KIND_ALL_LOST written as zeros): no gain switch
ALL_ZERO_ERROR = 3


@dataclass
class CfelDrscsSet:
    """Parameters of a synthetic lab drscs run set (one module, one current, four runs)."""

    module: str = "M304"
    position: str = "m2"
    temperature: str = "temperature_m20C"
    current: str = "itestc80"
    #: current value for the signal model (slopes proportional to it)
    current_value: float = 80.0
    run_names: tuple[str, ...] = ("col15", "col26", "col37", "col48")
    runs: tuple[int, ...] = (19, 20, 21, 22)
    n_cells: int = 1
    n_trains: int = 240
    n_parts: int = 2
    chunk_frames: int = 16
    noise: float = 5.0
    inject_failures: bool = True
    #: run index -> trains lost completely in that run
    lost_trains: dict = field(default_factory=lambda: {1: (3,), 2: (120,)})
    seed: int = 4321


def column_groups() -> np.ndarray:
    """(128, 512) chip column ``kappa mod 4`` of each pixel of the AGIPD frame."""
    out = np.empty(AGIPD_FRAME, np.int64)
    for blk in asic_blocks(AGIPD_FRAME, 0):
        out[blk.rows, blk.cols] = chip_coordinates(AGIPD_FRAME, 0, blk)[1] % 4
    return out


def write_drscs_runs(input_dir: Path | str, p: CfelDrscsSet | None = None) -> Path:
    """Write the four lab drscs runs of one current and their truth; returns the truth path."""
    p = p or CfelDrscsSet()
    out = Path(input_dir)
    d = out / p.temperature / "drscs" / p.current
    shape = (p.n_cells,) + AGIPD_FRAME
    analog = np.empty((p.n_trains,) + shape, np.uint16)
    digital = np.empty_like(analog)
    truth = {k: np.empty((3,) + shape) for k in ("slope", "offset", "gain_level")}
    expected = np.empty(shape, np.int16)
    for b, blk in enumerate(asic_blocks(AGIPD_FRAME, 0)):
        s = make_drscs_scans(seed=p.seed * 100 + b, n_steps=p.n_trains,
                             shape=(p.n_cells, 64, 64), currents=(p.current_value,),
                             analog_noise=p.noise, inject_failures=p.inject_failures,
                             fail_current=0)
        sl = (slice(None), slice(None), blk.rows, blk.cols)
        analog[sl] = s.analog[0].reshape((p.n_trains, p.n_cells, 64, 64))
        digital[sl] = s.digital[0].reshape((p.n_trains, p.n_cells, 64, 64))
        t = s.truth
        for k, v in (("slope", t.slope[0]), ("offset", t.offset), ("gain_level", t.gain_level)):
            truth[k][sl] = v.reshape((3, p.n_cells, 64, 64))
        expected[:, blk.rows, blk.cols] = t.expected_error[0].reshape((p.n_cells, 64, 64))
    valid = np.ones(analog.shape, bool)
    if p.inject_failures:
        # KIND_ALL_LOST: in a lab file the "lost" samples of series 7 are recorded zeros, so the
        # series is valid and never switches (error 3, too few gain stages), not error 10
        for blk in asic_blocks(AGIPD_FRAME, 0):
            expected[0, blk.rows.start, blk.cols.start + 7] = ALL_ZERO_ERROR
    group = column_groups()
    rng = np.random.default_rng([p.seed, 1])
    base_a = np.broadcast_to(truth["offset"][0], analog.shape)
    base_d = np.broadcast_to(truth["gain_level"][0], analog.shape)
    d.mkdir(parents=True, exist_ok=True)
    for k, (name, run) in enumerate(zip(p.run_names, p.runs, strict=True)):
        lost = set(p.lost_trains.get(k, ()))
        inj = group == k
        noise = rng.standard_normal((2,) + analog.shape, dtype=np.float32) * p.noise
        run_a = np.where(inj, analog, _to_uint16(base_a + noise[0]))
        run_d = np.where(inj, digital, _to_uint16(base_d + noise[1]))
        write_lab_run(d, f"{p.module}_{p.position}_drscs_{p.current}_{name}_{run:05d}",
                      run_a, run_d, lost, p.n_parts, p.chunk_frames)
        for t in lost:
            valid[t][:, inj] = False
    analog[~valid] = 0
    digital[~valid] = 0
    path = out / f"truth_cfel_drscs_{p.current}.h5"
    with h5py.File(path, "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(p), default=str)
        tf.create_dataset("analog", data=analog)
        tf.create_dataset("digital", data=digital)
        tf.create_dataset("valid", data=valid)
        for k, v in truth.items():
            tf.create_dataset(k, data=v)
        tf.create_dataset("expected_error", data=expected)
        tf.create_dataset("column_group", data=group)
    return path


def write_drscs_config(path: Path | str, input_dir: Path | str, out_dir: Path | str,
                       p: CfelDrscsSet | None = None, **extra) -> Path:
    """Write a calib-mpi config (``facility = cfel``, ``measurement = drscs``, one current)."""
    p = p or CfelDrscsSet()
    lines = [
        "# calib-mpi config for a synthetic CFEL lab drscs run set (one current)",
        "facility = cfel",
        "measurement = drscs",
        f"input_dir = {Path(input_dir).resolve()}",
        f"temperature = {p.temperature}",
        f"module_serial = {p.module}",
        f"position = {p.position}",
        f"current = {p.current}",
        f"n_cells = {p.n_cells}",
        f"output_dir = {Path(out_dir).resolve()}",
    ] + [f"{k} = {v}" for k, v in extra.items()]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
