"""Synthetic CFEL (DESY lab) drscs (current source) run sets with known ground truth.

One directory per current, four runs ``col15 col26 col37 col48`` each (run k injects chip
columns ``kappa ≡ k (mod 4)``, ``shared/spec/formats.md`` 3.4), in the lab layout
``<input_dir>/<temperature>/drscs/<current>/<module>_<position>_drscs_<current>_<name>_<run:05>
_part<part:05>.nxs``, written with :func:`calib_mpi.synthetic.cfel_scans.write_lab_run`.
Frames are in the AGIPD frame ``(128, 512)``; the scan step is the train position. Each ASIC
block gets its own :func:`~calib_mpi.synthetic.drscs.make_drscs_scans` series ``(cell, 64, 64)``
for all currents (slopes proportional to the current, offsets shared), with its failure kinds at
series 1..7 when ``inject_failures``; run k carries them on its injected pixels and a high-gain
baseline (offset, level, noise) elsewhere. ``lost_trains`` maps a run index to trains lost
completely in that run (in every current).

Merge cases (several currents, ``inject_failures``), per ASIC block b with C currents:
``fc = b mod C`` fails series 4 (``KIND_FAILS_ONE_CURRENT``) and 11; the ASIC's best current
``best = (b - 1) mod C`` fails series 10 only; every other current fails 8, 9 and 12. So
``best`` has the fewest failures (7 with the six common kinds), and series 10 is filled from
``fc`` (8 failures, fewer than the others' 9). ``expected_chosen`` holds the resulting current
index per (cell, pixel) (-1 where every current fails), made from this design, not from the
merge code.

``truth_cfel_drscs.h5``: ``analog``, ``digital`` (current, step, cell, 128, 512) uint16 and
``valid`` (bool) — the scan each pixel really got from its injecting run (the input to compare
with a serial :func:`~calib_mpi.process.drscs.process_scan`); ``slope`` (current, 3, cell, row,
col) generating slopes, ``offset`` and ``gain_level`` (3, cell, row, col), ``expected_error``
(current, cell, row, col), ``expected_chosen`` (cell, row, col) and ``column_group`` (row, col).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..geometry import AGIPD_FRAME, asic_blocks, chip_coordinates
from .cfel_scans import write_lab_run
from .conf import write_config_file, write_truth
from .drscs import KIND_ALL_LOST, make_drscs_scans
from .xfel_scans import _to_uint16

#: error code of the all-zero series (KIND_ALL_LOST written as zeros): no gain switch
ALL_ZERO_ERROR = 3


@dataclass
class CfelDrscsSet:
    """Parameters of a synthetic lab drscs run set (one module, one or more currents)."""

    module: str = "M304"
    position: str = "m2"
    temperature: str = "temperature_m20C"
    currents: tuple[str, ...] = ("itestc70", "itestc85", "itestc100")
    #: current values for the signal model (slopes proportional to them)
    current_values: tuple[float, ...] = (70.0, 85.0, 100.0)
    run_names: tuple[str, ...] = ("col15", "col26", "col37", "col48")
    #: run number of col15 of the first current; the others follow (4 per current)
    first_run: int = 19
    n_cells: int = 1
    n_trains: int = 240
    n_parts: int = 2
    chunk_frames: int = 16
    noise: float = 5.0
    inject_failures: bool = True
    #: run index -> trains lost completely in that run
    lost_trains: dict = field(default_factory=lambda: {1: (30,), 2: (120,)})
    seed: int = 4321

    def runs(self, current: int) -> tuple[int, ...]:
        """Run numbers of current ``current`` (index), in run-name order."""
        n = len(self.run_names)
        return tuple(range(self.first_run + n * current, self.first_run + n * (current + 1)))


def merge_failures(block: int, n_currents: int) -> tuple[int, dict[int, int], np.ndarray]:
    """The merge cases of one ASIC block (module docstring): ``fail_current``, the
    ``extra_failures`` of :func:`make_drscs_scans` and the expected chosen current per series
    index 0..12 (-1: every current fails)."""
    if n_currents == 1:
        return 0, {}, np.array([0, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0])
    fc, best = block % n_currents, (block - 1) % n_currents
    extra = {10: best, 11: fc}
    for c in range(n_currents):
        if c not in (fc, best):
            extra.update({8: c, 9: c, 12: c})
    chosen = np.full(13, best)
    chosen[1:8] = -1
    chosen[4] = best
    chosen[10] = fc
    return fc, extra, chosen


def column_groups() -> np.ndarray:
    """(128, 512) chip column ``kappa mod 4`` of each pixel of the AGIPD frame."""
    out = np.empty(AGIPD_FRAME, np.int64)
    for blk in asic_blocks(AGIPD_FRAME, 0):
        out[blk.rows, blk.cols] = chip_coordinates(AGIPD_FRAME, 0, blk)[1] % 4
    return out


def write_drscs_runs(input_dir: Path | str, p: CfelDrscsSet | None = None) -> Path:
    """Write the four lab drscs runs of every current and their truth; returns the truth
    path."""
    p = p or CfelDrscsSet()
    out = Path(input_dir)
    n_cur = len(p.currents)
    shape = (p.n_cells,) + AGIPD_FRAME
    analog = np.empty((n_cur, p.n_trains) + shape, np.uint16)
    digital = np.empty_like(analog)
    slope = np.empty((n_cur, 3) + shape)
    truth = {k: np.empty((3,) + shape) for k in ("offset", "gain_level")}
    expected = np.empty((n_cur,) + shape, np.int16)
    chosen = np.full(shape, -1, np.int16)
    for b, blk in enumerate(asic_blocks(AGIPD_FRAME, 0)):
        fc, extra, want = merge_failures(b, n_cur) if p.inject_failures else (0, {}, None)
        s = make_drscs_scans(seed=p.seed * 100 + b, n_steps=p.n_trains,
                             shape=(p.n_cells, 64, 64), currents=p.current_values,
                             analog_noise=p.noise, inject_failures=p.inject_failures,
                             fail_current=fc, extra_failures=extra)
        sl = (slice(None), slice(None), slice(None), blk.rows, blk.cols)
        analog[sl] = s.analog.reshape((n_cur, p.n_trains, p.n_cells, 64, 64))
        digital[sl] = s.digital.reshape((n_cur, p.n_trains, p.n_cells, 64, 64))
        t = s.truth
        slope[sl] = t.slope.reshape((n_cur, 3, p.n_cells, 64, 64))
        for k in truth:
            truth[k][sl[1:]] = getattr(t, k).reshape((3, p.n_cells, 64, 64))
        exp = t.expected_error.reshape((n_cur, p.n_cells, 64, 64))
        if p.inject_failures:
            # KIND_ALL_LOST: in a lab file the "lost" samples are recorded zeros, so the series
            # is valid and never switches (error 3, too few gain stages), not error 10
            exp[:, 0, 0, KIND_ALL_LOST] = ALL_ZERO_ERROR
        expected[sl[:1] + sl[2:]] = exp
        ch = np.zeros(exp[0].size, np.int16)  # no failures: all tie, the first is chosen
        if want is not None:
            ch[:] = (b - 1) % n_cur
            ch[:13] = want
        ch = np.where((exp == 0).any(axis=0).ravel(), ch, -1).reshape(exp.shape[1:])
        chosen[:, blk.rows, blk.cols] = ch
    valid = np.ones(analog.shape, bool)
    group = column_groups()
    for c, current in enumerate(p.currents):
        d = out / p.temperature / "drscs" / current
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([p.seed, 1, c])
        base_a = np.broadcast_to(truth["offset"][0], analog.shape[1:])
        base_d = np.broadcast_to(truth["gain_level"][0], analog.shape[1:])
        for k, (name, run) in enumerate(zip(p.run_names, p.runs(c), strict=True)):
            lost = set(p.lost_trains.get(k, ()))
            inj = group == k
            noise = rng.standard_normal((2,) + analog.shape[1:], dtype=np.float32) * p.noise
            run_a = np.where(inj, analog[c], _to_uint16(base_a + noise[0]))
            run_d = np.where(inj, digital[c], _to_uint16(base_d + noise[1]))
            write_lab_run(d, f"{p.module}_{p.position}_drscs_{current}_{name}_{run:05d}",
                          run_a, run_d, lost, p.n_parts, p.chunk_frames)
            for t in lost:
                valid[c, t][:, inj] = False
    analog[~valid] = 0
    digital[~valid] = 0
    return write_truth(out / "truth_cfel_drscs.h5", p, {
        "analog": analog, "digital": digital, "valid": valid, "slope": slope,
        "offset": truth["offset"], "gain_level": truth["gain_level"],
        "expected_error": expected, "expected_chosen": chosen, "column_group": group})


def write_drscs_config(path: Path | str, input_dir: Path | str, out_dir: Path | str,
                       p: CfelDrscsSet | None = None, **extra) -> Path:
    """Write a calib-mpi config (``facility = cfel``, ``measurement = drscs``, every current)."""
    p = p or CfelDrscsSet()
    return write_config_file(path, "CFEL lab drscs run set", {
        "facility": "cfel", "measurement": "drscs", "input_dir": Path(input_dir),
        "temperature": p.temperature, "module_serial": p.module, "position": p.position,
        "current": p.currents, "n_cells": p.n_cells, "output_dir": Path(out_dir)}, extra)


def check_result(result: Path | str, truth: Path | str) -> list[str]:
    """Compare a calib-mpi drscs result of this set with its truth; returns report lines, the
    first one starting with ``OK`` or ``MISMATCH``."""
    with h5py.File(truth, "r") as t, h5py.File(result, "r") as f:
        names = [c.decode() for c in f["metadata/currents"][()]]
        lines, ok = [], True
        for c, name in enumerate(names):
            code = f[f"currents/{name}/error_code"][0] if len(names) > 1 else f["error_code"][0]
            same = code == t["expected_error"][c]
            ok &= bool(same.all())
            lines.append(f"  current {name}: error codes as generated for {same.sum()} of "
                         f"{same.size} (cell, pixel)s; {int((code == 0).sum())} fitted")
        chosen = f["chosen_current"][0]
        same = chosen == t["expected_chosen"][()]
        ok &= bool(same.all())
        counts = ", ".join(f"{n} {int((chosen == c).sum())}" for c, n in enumerate(names))
        lines.append(f"  merged: chosen current as designed for {same.sum()} of {same.size} "
                     f"(cell, pixel)s ({counts}, none {int((chosen < 0).sum())})")
        good = chosen >= 0
        slope = np.take_along_axis(t["slope"][()], np.maximum(chosen, 0)[None, None].astype(
            np.int64), axis=0)[0]
        rel = np.abs(f["slope"][()] / slope - 1)[:, good]
        lines.append("  merged slopes vs generating values, median relative deviation: "
                     + ", ".join(f"{g} {np.median(r):.2%}" for g, r in
                                 zip(("high", "medium", "low"), rel, strict=True)))
    return [("OK: the result matches the ground truth" if ok else
             "MISMATCH: the result differs from the ground truth")] + lines


def main(argv: list[str] | None = None) -> int:
    """``python -m calib_mpi.synthetic.cfel_drscs write DIR CONF OUT`` or ``check RESULT
    TRUTH``."""
    import argparse

    ap = argparse.ArgumentParser(description="synthetic lab drscs run set (3 currents)")
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("write", help="write the runs, their truth and a config file")
    w.add_argument("dir")
    w.add_argument("config")
    w.add_argument("results")
    c = sub.add_parser("check", help="compare a result with the truth")
    c.add_argument("result")
    c.add_argument("truth")
    a = ap.parse_args(argv)
    if a.what == "write":
        p = CfelDrscsSet()
        print(f"truth: {write_drscs_runs(a.dir, p)}")
        write_drscs_config(a.config, a.dir, a.results, p)
        return 0
    lines = check_result(a.result, a.truth)
    print("\n".join(lines))
    return 0 if lines[0].startswith("OK") else 1


if __name__ == "__main__":
    raise SystemExit(main())
