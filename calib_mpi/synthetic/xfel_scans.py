"""Synthetic European XFEL drspc (pulsed capacitor) and xray (fluorescence) run sets with truth.

Both use the raw layout of :mod:`calib_mpi.synthetic.xfel` (its sequence-file writer) and the
signal models of :mod:`calib_mpi.synthetic.drspc` and :mod:`calib_mpi.synthetic.xray`; every
ASIC of every module gets its own parameters, placed at its block of the XFEL frame
``(slow_scan, fast_scan) = (512, 128)``. Truth arrays in ``truth.h5`` are per module
(``module_MM/...``), indexed ``(k, cell, slow_scan, fast_scan)`` like the results.

**drspc** (8 runs r1..r8): a scan step ``s`` is recorded as train ID ``first_train_id + 10000 k
+ s`` of run k; only the steps in ``steps`` are written (the others are trains lost in every
module), so the default set covers the toolbox windows [42, 122) and [402, 552) with 24 trains.
Each ASIC's parameters (slopes, offsets, gain levels, switching step, broken pixels) are those
of :func:`~calib_mpi.synthetic.drspc.make_drspc_sweep`; its model is evaluated at the recorded
steps only (the same formulas, see :func:`drspc_values`). Run k carries the sweep on chip rows
``rho ≡ k (mod 8)`` and the zero-charge baseline (high-gain offset and gain level plus noise)
elsewhere. ``lost_steps`` lose single trains in one module (count 0 in its INDEX).
Truth: ``slope``, ``offset``, ``gain_level`` (2, ...) generating values (high, medium);
``sample_*`` the exact least-squares fit of the written integers over each window (``slope``,
``offset``, ``gain_level``, ``gain_level_std``, ``residual_rms``, ``n_points``); ``x_sxx``
(2,) = sum of (x - mean x)^2 of each window; ``required_bits`` (2, ...) the bits the broken
pixels must get; ``broken`` (n, 3) (kind 0 dead / 1 no_switch / 2 noisy, ss, fs).

**xray** (1 run): per ASIC :func:`~calib_mpi.synthetic.xray.make_xray_run`; the digital value is
a constant high-gain level. ``lost_trains`` lose trains in one module. Truth: ``offset``,
``noise``, ``spacing``, ``rate`` (cell, ss, fs); ``n_photons`` (3, cell, ss, fs), frames with
0, 1 and >= 2 photons among all generated trains (a lost train's frames included);
``expected_bits`` (1, cell, ss, fs); ``frames_used`` (cell,); attribute ``sigma_fano``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..geometry import XFEL_FRAME, asic_blocks, chip_coordinates
from .conf import write_config_file
from .control import write_run_controls
from .drspc import DrspcSweep, broken_truth, make_drspc_sweep
from .xfel import DETECTOR, DarkRunSet, _Train, _write_sequence
from .xray import make_xray_run, occupancy_rate

#: recorded scan steps of the default drspc set: step 0, 10 steps in [42, 122), one in the
#: transition region, 12 steps in [402, 552)
DRSPC_STEPS = (0, 42, 51, 60, 68, 77, 86, 95, 103, 112, 121, 260,
               402, 416, 429, 443, 456, 470, 483, 497, 510, 524, 537, 551)
DRSPC_WINDOWS = ((42, 122), (402, 552))
BROKEN_KINDS = ("dead", "no_switch", "noisy")


@dataclass
class DrspcRunSet:
    """Parameters of a synthetic drspc run set (8 runs)."""

    runs: tuple[int, ...] = (9101, 9102, 9103, 9104, 9105, 9106, 9107, 9108)
    modules: tuple[int, ...] = (0, 9)
    n_cells: int = 2
    steps: tuple[int, ...] = DRSPC_STEPS
    #: fit windows the truth's ``sample_*`` fits use (the pipeline's ``drspc_windows``)
    windows: tuple[tuple[int, int], ...] = DRSPC_WINDOWS
    n_sequences: int = 2
    first_train_id: int = 200_000
    detector: str = DETECTOR
    seed: int = 4321
    #: HDF5 chunk of image/data in frames (small: whole chunks are allocated)
    chunk_frames: int = 4
    padding_frames: int = 2
    #: Gaussian noise of analog and digital values (ADU)
    noise: float = 10.0
    #: broken pixels of each kind (dead, no_switch, noisy) per ASIC
    n_broken: int = 1
    #: module index -> scan steps lost in that module only (all runs)
    lost_steps: dict = field(default_factory=lambda: {1: (60, 443)})
    #: control files with these conditions (synthetic.control.RunConditions fields); None: none
    conditions: dict | None = field(default_factory=dict)


@dataclass
class XrayRunSet:
    """Parameters of a synthetic xray run set (1 run)."""

    runs: tuple[int, ...] = (9201,)
    modules: tuple[int, ...] = (3,)
    n_cells: int = 2
    n_trains: int = 400
    n_sequences: int = 3
    first_train_id: int = 300_000
    detector: str = DETECTOR
    seed: int = 98
    chunk_frames: int = 16
    padding_frames: int = 2
    #: mean photons per frame, uniform range
    rate: tuple[float, float] = (0.4, 0.6)
    #: if given, ASIC b gets occupancy ``occupancies[b % len]`` (``occupancy_rate``) instead
    occupancies: tuple[float, ...] = ()
    #: per-pixel noise, ADU, uniform range (``make_xray_run``'s default 5-8)
    noise: tuple[float, float] = (5.0, 8.0)
    #: broken (cell, pixel)s of each kind (dead, no_photons, noisy, deviant) per ASIC
    n_broken: int = 1
    #: module index -> train positions lost in that module
    lost_trains: dict = field(default_factory=lambda: {0: (5, 70)})
    #: constant digital (high-gain) level, ADU
    gain_level: int = 4800
    #: control files with these conditions (synthetic.control.RunConditions fields); None: none
    conditions: dict | None = field(default_factory=dict)


def _layout(p: DrspcRunSet | XrayRunSet) -> DarkRunSet:
    """File-layout parameters in the form the sequence writer of ``synthetic.xfel`` takes."""
    return DarkRunSet(detector=p.detector, chunk_frames=p.chunk_frames,
                      padding_frames=p.padding_frames)


def _sequence_bounds(n: int, n_sequences: int, mi: int) -> np.ndarray:
    """Sequence boundaries over ``n`` trains; shifted by the module index (as in ``xfel``)."""
    bounds = np.linspace(0, n, n_sequences + 1).astype(int)
    bounds[1:-1] = np.clip(bounds[1:-1] + mi, 1, n - 1)
    return bounds


def _to_uint16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16)


def drspc_values(sweep: DrspcSweep, steps: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The model of :func:`~calib_mpi.synthetic.drspc.make_drspc_sweep` at scan ``steps``.

    Returns analog, digital (step, cell, 64, 64) uint16: high gain below the switching step
    (always for ``no_switch`` pixels), medium from it on, noise ``sweep.noise`` (15x for
    ``noisy`` pixels), ``dead`` pixels constant 4000 / 5000 ADU.
    """
    t = np.asarray(steps, np.float64)[:, None, None, None]
    high = np.broadcast_to(t < sweep.switch_train, (len(steps),) + sweep.switch_train.shape)
    high = high.copy()
    high[:, :, sweep.no_switch[:, 0], sweep.no_switch[:, 1]] = True
    sigma = np.full(sweep.switch_train.shape[1:], sweep.noise)
    sigma[sweep.noisy[:, 0], sweep.noisy[:, 1]] = 15.0 * sweep.noise
    analog = np.where(high, sweep.offset_high + sweep.slope_high * t,
                      sweep.offset_medium + sweep.slope_medium * t)
    analog += rng.standard_normal(analog.shape) * sigma
    digital = np.where(high, sweep.gain_level_high, sweep.gain_level_medium)
    digital = digital + rng.normal(0.0, sweep.noise, analog.shape)
    analog[:, :, sweep.dead[:, 0], sweep.dead[:, 1]] = 4000.0
    digital[:, :, sweep.dead[:, 0], sweep.dead[:, 1]] = 5000.0
    return _to_uint16(analog), _to_uint16(digital)


def _line_fit(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Least-squares line through ``y`` (point, ...) at ``x`` (point,), float64, centred."""
    xm = x.mean()
    dx = (x - xm).reshape((-1,) + (1,) * (y.ndim - 1))
    ym = y.mean(axis=0)
    slope = (dx * (y - ym)).sum(axis=0) / (dx * dx).sum()
    offset = ym - slope * xm
    resid = (y - ym) - slope * dx
    return {"slope": slope, "offset": offset,
            "residual_rms": np.sqrt((resid * resid).mean(axis=0))}


def write_drspc_runs(out_dir: Path | str, p: DrspcRunSet | None = None) -> Path:
    """Write the eight drspc runs and ``truth.h5`` under ``out_dir``; returns ``out_dir``."""
    p = p or DrspcRunSet()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = _layout(p)
    steps = np.array(p.steps, np.int64)
    write_run_controls(out, {run: p.first_train_id + 10_000 * k + steps
                             for k, run in enumerate(p.runs)}, p.conditions, p.n_cells)
    shape = (p.n_cells,) + XFEL_FRAME
    with h5py.File(out / "truth.h5", "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(p))
        for mi, module in enumerate(p.modules):
            rng = np.random.default_rng([p.seed, mi, 1])
            analog = np.empty((len(steps),) + shape, np.uint16)
            digital = np.empty_like(analog)
            truth = {k: np.empty((2,) + shape) for k in ("slope", "offset", "gain_level")}
            switch = np.empty(shape, np.int64)
            required = np.zeros((2,) + shape, np.uint32)
            broken = []
            rho = np.empty(XFEL_FRAME, np.int64)
            for b, blk in enumerate(asic_blocks(XFEL_FRAME, module)):
                sw = make_drspc_sweep(p.seed * 1000 + 16 * mi + b, p.n_cells, n_trains=1,
                                      noise=p.noise, n_dead=p.n_broken,
                                      n_no_switch=p.n_broken, n_noisy=p.n_broken)
                a, d = drspc_values(sw, steps, rng)
                sl = (slice(None), slice(None), blk.rows, blk.cols)
                analog[sl], digital[sl] = a, d
                truth["slope"][sl] = np.stack([sw.slope_high, sw.slope_medium])
                truth["offset"][sl] = np.stack([sw.offset_high, sw.offset_medium])
                truth["gain_level"][sl] = np.stack([sw.gain_level_high, sw.gain_level_medium])
                switch[:, blk.rows, blk.cols] = sw.switch_train
                rho[blk.rows, blk.cols] = chip_coordinates(XFEL_FRAME, module, blk)[0]
                req, brk = broken_truth(sw)
                required[sl] |= req
                broken += [(k, r + blk.rows.start, c + blk.cols.start) for k, r, c in brk]
            # zero-charge baseline of the pixels a run does not inject, per run and step
            base_a = np.broadcast_to(truth["offset"][0], analog.shape)
            base_d = np.broadcast_to(truth["gain_level"][0], analog.shape)
            lost = set(p.lost_steps.get(mi, ()))
            used = np.array([s not in lost for s in p.steps])
            _drspc_sample_truth(tf.create_group(f"module_{module:02d}"), p, steps[used],
                                analog[used], digital[used], truth, switch, required,
                                np.array(broken, np.int64).reshape(-1, 3))
            bounds = _sequence_bounds(len(steps), p.n_sequences, mi)
            for k, run in enumerate(p.runs):
                inj = (rho % 8) == k
                noise = rng.standard_normal((2,) + analog.shape, dtype=np.float32) * p.noise
                run_a = np.where(inj, analog, _to_uint16(base_a + noise[0]))
                run_d = np.where(inj, digital, _to_uint16(base_d + noise[1]))
                run_dir = out / f"r{run:04d}"
                run_dir.mkdir(exist_ok=True)
                for s in range(p.n_sequences):
                    trains = []
                    for i in range(bounds[s], bounds[s + 1]):
                        tr = _Train(p.first_train_id + 10_000 * k + int(steps[i]))
                        trains.append(tr)
                        if int(steps[i]) in lost:
                            continue
                        for c in range(p.n_cells):
                            tr.add(np.stack([run_a[i, c], run_d[i, c]]), c)
                    name = f"RAW-R{run:04d}-AGIPD{module:02d}-S{s:05d}.h5"
                    _write_sequence(run_dir / name, layout, module, trains)
    return out


def _drspc_sample_truth(grp: h5py.Group, p: DrspcRunSet, steps: np.ndarray, analog: np.ndarray,
                        digital: np.ndarray, truth: dict, switch: np.ndarray,
                        required: np.ndarray, broken: np.ndarray) -> None:
    """Write generating values and the exact fits of the written values of one module."""
    for k, v in truth.items():
        grp.create_dataset(k, data=v)
    grp.create_dataset("switch_train", data=switch)
    grp.create_dataset("required_bits", data=required)
    grp.create_dataset("broken", data=broken)
    sample = {k: np.full((2,) + analog.shape[1:], np.nan)
              for k in ("slope", "offset", "residual_rms", "gain_level", "gain_level_std")}
    n_points, sxx = [], []
    for w, (t0, t1) in enumerate(p.windows):
        sel = (steps >= t0) & (steps < t1)
        x = steps[sel].astype(np.float64)
        n_points.append(int(sel.sum()))
        sxx.append(float(((x - x.mean()) ** 2).sum()))
        fit = _line_fit(x, analog[sel].astype(np.float64))
        for k, v in fit.items():
            sample[k][w] = v
        d = digital[sel].astype(np.float64)
        sample["gain_level"][w] = d.mean(axis=0)
        sample["gain_level_std"][w] = d.std(axis=0)
    for k, v in sample.items():
        grp.create_dataset(f"sample_{k}", data=v)
    grp.create_dataset("n_points", data=np.array(n_points))
    grp.create_dataset("x_sxx", data=np.array(sxx))


def _rate(p: XrayRunSet, block: int) -> tuple[float, float]:
    """Range of the mean photon number of ASIC ``block`` (``occupancies`` or ``rate``)."""
    if p.occupancies:
        return occupancy_rate(p.occupancies[block % len(p.occupancies)])
    return p.rate


def write_xray_runs(out_dir: Path | str, p: XrayRunSet | None = None) -> Path:
    """Write the xray run and ``truth.h5`` under ``out_dir``; returns ``out_dir``."""
    p = p or XrayRunSet()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = _layout(p)
    shape = (p.n_cells,) + XFEL_FRAME
    run = p.runs[0]
    run_dir = out / f"r{run:04d}"
    run_dir.mkdir(exist_ok=True)
    write_run_controls(out, {run: p.first_train_id + np.arange(p.n_trains)}, p.conditions,
                       p.n_cells)
    with h5py.File(out / "truth.h5", "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(p))
        for mi, module in enumerate(p.modules):
            lost = set(p.lost_trains.get(mi, ()))
            keep = np.array([t not in lost for t in range(p.n_trains)])
            analog = np.empty((p.n_trains,) + shape, np.uint16)
            truth = {k: np.empty(shape) for k in ("offset", "noise", "spacing", "rate")}
            expected = np.zeros((1,) + shape, np.uint32)
            n_photons = np.zeros((3,) + shape, np.int64)
            for b, blk in enumerate(asic_blocks(XFEL_FRAME, module)):
                xr = make_xray_run(p.seed * 1000 + 16 * mi + b, p.n_cells, p.n_trains,
                                   rate=_rate(p, b), noise=tuple(p.noise), n_dead=p.n_broken,
                                   n_no_photons=p.n_broken, n_noisy=p.n_broken,
                                   n_deviant=p.n_broken)
                analog[:, :, blk.rows, blk.cols] = xr.analog
                for k in truth:
                    truth[k][:, blk.rows, blk.cols] = getattr(xr, k)
                expected[0][:, blk.rows, blk.cols] = xr.expected_bits
                n_photons[:, :, blk.rows, blk.cols] = xr.n_photons
                sigma_fano = xr.sigma_fano
            grp = tf.create_group(f"module_{module:02d}")
            for k, v in truth.items():
                grp.create_dataset(k, data=v)
            grp.create_dataset("n_photons", data=n_photons)
            grp.create_dataset("expected_bits", data=expected)
            grp.create_dataset("frames_used", data=np.full(p.n_cells, int(keep.sum())))
            grp.attrs["sigma_fano"] = sigma_fano
            digital = np.full(XFEL_FRAME, p.gain_level, np.uint16)
            bounds = _sequence_bounds(p.n_trains, p.n_sequences, mi)
            for s in range(p.n_sequences):
                trains = []
                for t in range(bounds[s], bounds[s + 1]):
                    tr = _Train(p.first_train_id + t)
                    trains.append(tr)
                    if t in lost:
                        continue
                    for c in range(p.n_cells):
                        tr.add(np.stack([analog[t, c], digital]), c)
                name = f"RAW-R{run:04d}-AGIPD{module:02d}-S{s:05d}.h5"
                _write_sequence(run_dir / name, layout, module, trains)
    return out


def write_scan_config(path: Path | str, raw_dir: Path | str, out_dir: Path | str,
                      p: DrspcRunSet | XrayRunSet, **extra) -> Path:
    """Write a calib-mpi config file for a drspc or xray run set (``extra``: more keys)."""
    drspc = isinstance(p, DrspcRunSet)
    measurement = "drspc" if drspc else "xray"
    return write_config_file(path, f"{measurement} run set", {
        "facility": "xfel", "measurement": measurement, "input_dir": Path(raw_dir),
        "runs": p.runs, "modules": p.modules, "detector": p.detector,
        "output_dir": Path(out_dir), "drspc_windows": p.windows if drspc else None}, extra)
