"""Synthetic CFEL (DESY lab) drspc (pulsed capacitor) and xray run sets with known ground truth.

Writes the lab layout of :mod:`calib_mpi.synthetic.cfel` (its part writer and part cuts: analog
and digital interleaved, one pair split across two parts) for the eight runs ``r1..r8``:
``<input_dir>/<temperature>/drspc/<module>_<position>_drspc_r<k+1>_<run:05>_part<part:05>.nxs``
(no ``<spec>``, ``shared/spec/formats.md`` 2.1). Frames are in the AGIPD frame ``(row, col) =
(128, 512)``; each ASIC block gets its own parameters from
:func:`~calib_mpi.synthetic.drspc.make_drspc_sweep`.

The scan step of a lab run is the train position ``x = 0 .. n_trains - 1`` (formats.md 2.3).
To keep the files small the model sweep (560 steps, switching at steps 180..340) is compressed
by ``scale``: a lab step is ``scale`` model steps, so slopes are ``scale`` times the model's
(ADU per lab step) and the switching step is ``ceil(switch / scale)``; the signal is
:func:`~calib_mpi.synthetic.xfel_scans.drspc_values` of that lab sweep at ``x``. Run k carries
the sweep on chip rows ``rho ≡ k (mod 8)`` and the zero-charge baseline (high-gain offset and
gain level plus noise) elsewhere. ``lost_trains`` maps a run index to trains lost completely in
that run only (gaps in ``sequence_number``); the later trains keep their scan step.

``truth_cfel_drspc.h5`` in ``input_dir`` holds, indexed ``(k, cell, row, col)`` like the
results: ``slope``, ``offset``, ``gain_level`` (2, ...) generating values (high, medium, per lab
step); ``sample_*`` the exact least-squares fit of the written integers of the run injecting
each pixel over each window (``slope``, ``offset``, ``gain_level``, ``gain_level_std``,
``residual_rms``); ``n_points`` (2, row) points per window of each module row;
``required_bits`` (2, ...) and ``broken`` (n, 3) as in :mod:`~calib_mpi.synthetic.xfel_scans`.

**xray** (:func:`write_xray_run`): one non-burst lab run, ``n_cells = 1`` (a train is 2 frames),
``<module>_<position>_xray_<target>_<run:05>_part<part:05>.nxs`` (spec = target, no run name);
each ASIC block gets :func:`~calib_mpi.synthetic.xray.make_xray_run`, the digital value is a
constant high-gain level and ``lost_trains`` are lost completely (gaps in ``sequence_number``).
``truth_cfel_xray.h5``: ``offset``, ``noise``, ``spacing``, ``rate`` (cell, row, col);
``n_photons`` (3, cell, row, col) over all generated trains (lost ones included);
``expected_bits`` (1, cell, row, col); ``frames_used`` (cell,); attribute ``sigma_fano``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from ..geometry import AGIPD_FRAME, asic_blocks, chip_coordinates
from .cfel import _cuts, _write_part
from .conf import write_config_file, write_truth
from .drspc import broken_truth, make_drspc_sweep
from .xfel_scans import _line_fit, _to_uint16, drspc_values
from .xray import make_xray_run, occupancy_rate

#: fit windows in lab steps (train positions) of the default set: high gain before the
#: earliest switch (ceil(180 / 20) = 9), medium gain from the latest (ceil(340 / 20) = 17) on
CFEL_DRSPC_WINDOWS = ((1, 9), (17, 28))
#: default drspc_slope_limits (ADU per XFEL scan step) -> per lab step: times ``scale``
XFEL_SLOPE_LIMITS = (4.0, 100.0, 0.12, 3.0)


@dataclass
class CfelDrspcSet:
    """Parameters of a synthetic lab drspc run set (one module, eight runs r1..r8)."""

    module: str = "M304"
    position: str = "m2"
    temperature: str = "temperature_m20C"
    run_names: tuple[str, ...] = tuple(f"r{k}" for k in range(1, 9))
    runs: tuple[int, ...] = (31, 32, 33, 34, 35, 36, 37, 38)
    n_cells: int = 2
    n_trains: int = 28
    #: model scan steps per lab step
    scale: int = 20
    windows: tuple[tuple[int, int], ...] = CFEL_DRSPC_WINDOWS
    n_parts: int = 2
    chunk_frames: int = 5
    #: Gaussian noise of analog and digital values (ADU; ``noisy`` pixels: 15x)
    noise: float = 6.0
    #: ``drspc_residual_limits`` of the config (ADU): 2.5 noise, so that the few points of a
    #: lab window still flag the noisy pixels (residual rms ~ 0.85 x 90 ADU)
    residual_limits: tuple[float, float] = (15.0, 15.0)
    #: broken pixels of each kind (dead, no_switch, noisy) per ASIC
    n_broken: int = 1
    #: run index -> trains lost completely in that run
    lost_trains: dict = field(default_factory=lambda: {2: (4,), 5: (20,)})
    seed: int = 2468

    @property
    def slope_limits(self) -> tuple[float, ...]:
        """``drspc_slope_limits`` for lab steps (the XFEL defaults times ``scale``)."""
        return tuple(v * self.scale for v in XFEL_SLOPE_LIMITS)


def write_lab_run(d: Path, stem: str, analog: np.ndarray, digital: np.ndarray,
                  lost_trains: set[int], n_parts: int, chunk_frames: int) -> list[str]:
    """Write one lab run (``analog``, ``digital`` (train, cell, 128, 512) uint16) as parts
    ``<stem>_part<i:05>.nxs`` in ``d``, interleaved, without the frames of ``lost_trains``;
    returns the file names."""
    n_trains, c_n = analog.shape[:2]
    fn = n_trains * 2 * c_n
    seq, frames, pair_start = [], [], []
    for pos in range(fn):
        t, c, dig = pos // (2 * c_n), (pos % (2 * c_n)) // 2, pos % 2
        if t in lost_trains:
            continue
        seq.append(pos + 1)
        frames.append((digital if dig else analog)[t, c].astype(np.int16))
        pair_start.append(not dig)
    data = np.stack(frames)
    seq_a = np.array(seq)
    bounds = [0, *_cuts(seq, pair_start, n_parts), len(seq)]
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n_parts):
        a, b = bounds[i], bounds[i + 1]
        name = f"{stem}_part{i:05d}.nxs"
        _write_part(d / name, data[a:b], seq_a[a:b], np.zeros(b - a, np.int32), fn,
                    fn - len(seq), chunk_frames)
        files.append(name)
    return files


def write_drspc_runs(input_dir: Path | str, p: CfelDrspcSet | None = None) -> Path:
    """Write the eight lab drspc runs and ``truth_cfel_drspc.h5``; returns the truth path."""
    p = p or CfelDrspcSet()
    out = Path(input_dir)
    d = out / p.temperature / "drspc"
    d.mkdir(parents=True, exist_ok=True)
    steps = np.arange(p.n_trains, dtype=np.int64)
    shape = (p.n_cells,) + AGIPD_FRAME
    rng = np.random.default_rng([p.seed, 1])
    analog = np.empty((p.n_trains,) + shape, np.uint16)
    digital = np.empty_like(analog)
    truth = {k: np.empty((2,) + shape) for k in ("slope", "offset", "gain_level")}
    required = np.zeros((2,) + shape, np.uint32)
    broken = []
    rho = np.empty(AGIPD_FRAME, np.int64)
    for b, blk in enumerate(asic_blocks(AGIPD_FRAME, 0)):
        sw = make_drspc_sweep(p.seed * 1000 + b, p.n_cells, n_trains=1, noise=p.noise,
                              n_dead=p.n_broken, n_no_switch=p.n_broken, n_noisy=p.n_broken)
        sw = replace(sw, slope_high=sw.slope_high * p.scale,
                     slope_medium=sw.slope_medium * p.scale,
                     switch_train=-(-sw.switch_train // p.scale))
        a, dg = drspc_values(sw, steps, rng)
        sl = (slice(None), slice(None), blk.rows, blk.cols)
        analog[sl], digital[sl] = a, dg
        truth["slope"][sl] = np.stack([sw.slope_high, sw.slope_medium])
        truth["offset"][sl] = np.stack([sw.offset_high, sw.offset_medium])
        truth["gain_level"][sl] = np.stack([sw.gain_level_high, sw.gain_level_medium])
        rho[blk.rows, blk.cols] = chip_coordinates(AGIPD_FRAME, 0, blk)[0]
        req, brk = broken_truth(sw)
        required[sl] |= req
        broken += [(k, r + blk.rows.start, c + blk.cols.start) for k, r, c in brk]
    base_a = np.broadcast_to(truth["offset"][0], analog.shape)
    base_d = np.broadcast_to(truth["gain_level"][0], analog.shape)
    keys = ("slope", "offset", "residual_rms", "gain_level", "gain_level_std")
    sample = {k: np.full((2,) + shape, np.nan) for k in keys}
    n_points = np.zeros((2,) + AGIPD_FRAME[:1], np.int64)
    row_group = rho[:, 0] % 8  # whole rows in the AGIPD frame
    assert np.all(rho % 8 == row_group[:, None])
    with h5py.File(out / "truth_cfel_drspc.h5", "w") as tf:
        tf.attrs["params"] = json.dumps(asdict(p))
        for k, (name, run) in enumerate(zip(p.run_names, p.runs, strict=True)):
            lost = set(p.lost_trains.get(k, ()))
            inj = row_group == k
            noise = rng.standard_normal((2,) + analog.shape, dtype=np.float32) * p.noise
            run_a = np.where(inj[:, None], analog, _to_uint16(base_a + noise[0]))
            run_d = np.where(inj[:, None], digital, _to_uint16(base_d + noise[1]))
            write_lab_run(d, f"{p.module}_{p.position}_drspc_{name}_{run:05d}", run_a, run_d,
                          lost, p.n_parts, p.chunk_frames)
            used = np.array([t not in lost for t in range(p.n_trains)])
            for w, (t0, t1) in enumerate(p.windows):
                sel = used & (steps >= t0) & (steps < t1)
                x = steps[sel].astype(np.float64)
                y = analog[sel][:, :, inj].astype(np.float64)
                fit = _line_fit(x, y)
                dd = digital[sel][:, :, inj].astype(np.float64)
                fit["gain_level"], fit["gain_level_std"] = dd.mean(axis=0), dd.std(axis=0)
                for key, v in fit.items():
                    sample[key][w][:, inj] = v
                n_points[w][inj] = int(sel.sum())
        for key, v in truth.items():
            tf.create_dataset(key, data=v)
        for key, v in sample.items():
            tf.create_dataset(f"sample_{key}", data=v)
        tf.create_dataset("n_points", data=n_points)
        tf.create_dataset("required_bits", data=required)
        tf.create_dataset("broken", data=np.array(broken, np.int64).reshape(-1, 3))
        tf.create_dataset("row_group", data=row_group)
    return out / "truth_cfel_drspc.h5"


def write_config(path: Path | str, input_dir: Path | str, out_dir: Path | str,
                 p: CfelDrspcSet | None = None, **extra) -> Path:
    """Write a calib-mpi config file (``facility = cfel``, ``measurement = drspc``) for the run
    set (``extra``: more ``key = value`` lines); run numbers are found from the file names."""
    p = p or CfelDrspcSet()
    return write_config_file(path, "CFEL lab drspc run set", {
        "facility": "cfel", "measurement": "drspc", "input_dir": Path(input_dir),
        "temperature": p.temperature, "module_serial": p.module, "position": p.position,
        "run_names": p.run_names, "n_cells": p.n_cells, "drspc_windows": p.windows,
        "drspc_slope_limits": p.slope_limits, "drspc_residual_limits": p.residual_limits,
        "output_dir": Path(out_dir)}, extra)


@dataclass
class CfelXraySet:
    """Parameters of a synthetic lab xray run (one module, one non-burst run)."""

    module: str = "M304"
    position: str = "m2"
    temperature: str = "temperature_m20C"
    target: str = "Cu"
    run: int = 41
    n_cells: int = 1
    n_trains: int = 402
    n_parts: int = 3
    chunk_frames: int = 16
    #: mean photons per frame, uniform range
    rate: tuple[float, float] = (0.4, 0.6)
    #: if given, ASIC b gets occupancy ``occupancies[b % len]`` (``occupancy_rate``) instead
    occupancies: tuple[float, ...] = ()
    #: broken (cell, pixel)s of each kind (dead, no_photons, noisy, deviant) per ASIC
    n_broken: int = 1
    #: trains lost completely (one inside the origin sample)
    lost_trains: tuple[int, ...] = (5, 70)
    #: constant digital (high-gain) level, ADU
    gain_level: int = 4800
    seed: int = 1357


def _rate(p: CfelXraySet, block: int) -> tuple[float, float]:
    """Range of the mean photon number of ASIC ``block`` (``occupancies`` or ``rate``)."""
    if p.occupancies:
        return occupancy_rate(p.occupancies[block % len(p.occupancies)])
    return p.rate


def write_xray_run(input_dir: Path | str, p: CfelXraySet | None = None) -> Path:
    """Write the lab xray run and ``truth_cfel_xray.h5``; returns the truth path."""
    p = p or CfelXraySet()
    out = Path(input_dir)
    d = out / p.temperature / "xray"
    shape = (p.n_cells,) + AGIPD_FRAME
    analog = np.empty((p.n_trains,) + shape, np.uint16)
    truth = {k: np.empty(shape) for k in ("offset", "noise", "spacing", "rate")}
    expected = np.zeros((1,) + shape, np.uint32)
    n_photons = np.zeros((3,) + shape, np.int64)
    lost = set(p.lost_trains)
    keep = np.array([t not in lost for t in range(p.n_trains)])
    sigma_fano = 0.0
    for b, blk in enumerate(asic_blocks(AGIPD_FRAME, 0)):
        xr = make_xray_run(p.seed * 1000 + b, p.n_cells, p.n_trains, rate=_rate(p, b),
                             n_dead=p.n_broken, n_no_photons=p.n_broken, n_noisy=p.n_broken,
                             n_deviant=p.n_broken)
        analog[:, :, blk.rows, blk.cols] = xr.analog
        for k in truth:
            truth[k][:, blk.rows, blk.cols] = getattr(xr, k)
        expected[0][:, blk.rows, blk.cols] = xr.expected_bits
        n_photons[:, :, blk.rows, blk.cols] = xr.n_photons
        sigma_fano = xr.sigma_fano
    digital = np.full_like(analog, p.gain_level)
    write_lab_run(d, f"{p.module}_{p.position}_xray_{p.target}_{p.run:05d}", analog, digital,
                  lost, p.n_parts, p.chunk_frames)
    return write_truth(out / "truth_cfel_xray.h5", p, {
        **truth, "n_photons": n_photons, "expected_bits": expected,
        "frames_used": np.full(p.n_cells, int(keep.sum()))}, {"sigma_fano": sigma_fano})


def write_xray_config(path: Path | str, input_dir: Path | str, out_dir: Path | str,
                      p: CfelXraySet | None = None, **extra) -> Path:
    """Write a calib-mpi config file (``facility = cfel``, ``measurement = xray``) for the run
    (``extra``: more ``key = value`` lines); the run number is found from the file names and
    ``spec`` defaults to ``xray_target``."""
    p = p or CfelXraySet()
    return write_config_file(path, "CFEL lab xray run", {
        "facility": "cfel", "measurement": "xray", "input_dir": Path(input_dir),
        "temperature": p.temperature, "module_serial": p.module, "position": p.position,
        "xray_target": p.target, "n_cells": p.n_cells, "output_dir": Path(out_dir)}, extra)
