"""Export calib-mpi results to pycalibration's / CalCat's constant file layout.

``calib-mpi export RESULT.h5 [RESULT2.h5 ...] --out DIR [--pdu NAME ...] [--overwrite]``

One HDF5 file per module and constant, ``<out>/<Constant>_AGIPD<MM>_<PDU>.h5``, holding:

- the array as dataset ``/<PDU>/<Constant>/0/data``.
  The ``<data_set_name>/data`` part and the ``dims`` attribute on that dataset are
  **[confirmed]** (EXtra ``SingleConstant.dataset_obj`` reads ``f[data_set_name]["data"]`` and
  ``.attrs["dims"]``); ``data_set_name = /<PDU>/<Constant>/0`` is **[unconfirmed]**.
- the PDU name: the module's physical detector unit (serial) in CalCat. calib-mpi doesn't know
  the serial, so the default is the quadrant name ``Q{m//4+1}M{m%4+1}`` **[confirmed name
  scheme, but not what CalCat uses as PDU]**; give the real one with ``--pdu``.
- axes ``(fast_scan, slow_scan, cell, gain)`` = ``native.transpose(3, 2, 1, 0)`` of our
  ``(gain, cell, slow_scan, fast_scan)`` datasets: shape ``(128, 512, cells, k)``. The shape
  of ``Offset`` is **[confirmed]** (EXtra test: 352 cells -> (128, 512, 352, 3)); the axis
  names, and the layout of ``Noise``, ``BadPixelsDark``, ``ThresholdsDark`` are
  **[unconfirmed]**.
- dtypes: float32 for floats (pycalibration may use float64 **[unconfirmed]**), uint32 for
  bad pixels (uint32 masks **[confirmed]** for corrected data, assumed for constants).
- root attributes: the operating conditions we know under their CalCat names
  (``Memory cells``, ``Pixels X`` = 512, ``Pixels Y`` = 128; names **[confirmed]**) and
  provenance (source file, both calib-mpi versions, runs, module names). ``Memory cells`` is
  the length of the cell axis (result attribute ``n_cells``); a value that is not an AGIPD
  setting (constants-format.md 2) is written as is, with a warning.

``--pdu`` takes one name per result file, in order; put it after the result files.

Which native datasets make which constant is the table :data:`EXPORTS` (measurement ->
:class:`ConstantSpec` entries); constants of other measurements (``SlopesPC``, ``BadPixelsPC``,
``SlopesCS``, ``SlopesFF``, ...) are added there once their native results exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .geometry import XFEL_FRAME, quadrant_name
from .guard import tmp_name

__all__ = ["ConstantSpec", "EXPORTS", "PYC_DIMS", "export_module", "main"]

#: axis names of an exported per-pixel constant [unconfirmed names, confirmed Offset shape]
PYC_DIMS = ("fast_scan", "slow_scan", "cell", "gain")
#: memory-cell settings of AGIPD (constants-format.md 2)
MEMORY_CELL_SETTINGS = (4, 32, 64, 76, 128, 176, 202, 250, 352)


def to_pyc(native: np.ndarray) -> np.ndarray:
    """``(k, cell, slow_scan, fast_scan)`` -> ``(fast_scan, slow_scan, cell, k)`` (C-contiguous)."""
    return np.ascontiguousarray(np.asarray(native).transpose(3, 2, 1, 0))


@dataclass(frozen=True)
class ConstantSpec:
    """How one CalCat constant is made from native result datasets.

    Attributes
    ----------
    name : CalCat calibration name, e.g. ``Offset``.
    sources : native datasets read from the result file.
    transform : ``{source: array} -> exported array`` (native arrays in their file dtype).
    dtype : dtype of the exported array.
    dims : axis names written as the ``dims`` attribute.
    status : what of this entry's layout is confirmed (constants-format.md 4).
    """

    name: str
    sources: tuple[str, ...]
    transform: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    dtype: type
    dims: tuple[str, ...] = PYC_DIMS
    status: str = "[unconfirmed]"


def _single(source: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda d: to_pyc(d[source])


def _thresholds_dark(d: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[t01, t12, gl_high, gl_medium, gl_low]`` on the last axis: (fs, ss, cell, 5)."""
    return to_pyc(np.concatenate([d["threshold"], d["gain_level"]], axis=0))


#: measurement -> constants exported from its result file
EXPORTS: dict[str, tuple[ConstantSpec, ...]] = {
    "dark": (
        ConstantSpec("Offset", ("offset",), _single("offset"), np.float32,
                     status="[confirmed shape (128, 512, cells, 3)]"),
        ConstantSpec("Noise", ("noise",), _single("noise"), np.float32),
        ConstantSpec("ThresholdsDark", ("threshold", "gain_level"), _thresholds_dark,
                     np.float32),
        ConstantSpec("BadPixelsDark", ("bad_pixels",), _single("bad_pixels"), np.uint32),
    ),
}


class ExportError(Exception):
    """A result file that cannot be exported; the message names the file and the problem."""


def _attr(f: h5py.File, key: str, default=None):
    v = f.attrs.get(key, default)
    if isinstance(v, bytes):
        v = v.decode()
    return v


def _measurement(f: h5py.File, path: Path) -> str:
    meas = _attr(f, "measurement")
    if meas is None:  # older files: the measurement whose datasets are all present
        meas = next((m for m, specs in EXPORTS.items()
                     if all(s in f for spec in specs for s in spec.sources)), None)
    if meas not in EXPORTS:
        raise ExportError(f"{path}: measurement {meas!r} has no export "
                          f"(known: {', '.join(EXPORTS)})")
    return str(meas)


def _read_sources(f: h5py.File, path: Path, spec: ConstantSpec, n_cells: int
                  ) -> dict[str, np.ndarray]:
    out = {}
    for s in spec.sources:
        if s not in f:
            raise ExportError(f"{path}: dataset {s!r} (needed for {spec.name}) is missing")
        a = f[s][()]
        if a.ndim != 4 or a.shape[1:] != (n_cells, *XFEL_FRAME):
            raise ExportError(f"{path}: dataset {s!r} has shape {a.shape}, expected "
                              f"(k, {n_cells}, {XFEL_FRAME[0]}, {XFEL_FRAME[1]})")
        out[s] = a
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def export_module(result_path: str | os.PathLike, out_dir: str | os.PathLike,
                  pdu: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write every constant of one module result file; returns the written files.

    ``pdu`` defaults to the module's quadrant name. Existing files are refused unless
    ``overwrite``. Files are written under a temporary name of this job
    (``<name>.<host>-<pid>.tmp``) and renamed when complete.
    """
    path = Path(result_path)
    out = Path(out_dir)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ExportError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        meas = _measurement(f, path)
        if "module" not in f.attrs:
            raise ExportError(f"{path}: root attribute 'module' is missing")
        module = int(f.attrs["module"])
        n_cells = int(f.attrs["n_cells"]) if "n_cells" in f.attrs else int(f["offset"].shape[1])
        qm = quadrant_name(module)
        da = f"AGIPD{module:02d}"
        pdu = pdu or qm
        if n_cells not in MEMORY_CELL_SETTINGS:
            warnings.warn(f"{path}: {n_cells} cells is not an AGIPD memory-cell setting "
                          f"{MEMORY_CELL_SETTINGS}; 'Memory cells' = {n_cells} is written as is "
                          "(rerun with n_cells = <setting> to pad the cell axis)", stacklevel=2)
        common = {
            "Memory cells": n_cells,
            "Pixels X": XFEL_FRAME[0],
            "Pixels Y": XFEL_FRAME[1],
            "measurement": meas,
            "module": module,
            "karabo_da": da,
            "quadrant": qm,
            "pdu": pdu,
            "source_file": str(path.resolve()),
            "source_calib_mpi_version": str(_attr(f, "calib_mpi_version", "unknown")),
            "calib_mpi_version": __version__,
            "exported": dt.datetime.now(dt.UTC).isoformat(),
        }
        for key in ("runs", "trains_used", "config"):
            if key in f.attrs:
                common[f"source_{key}"] = f.attrs[key]
        jobs = []
        for spec in EXPORTS[meas]:
            target = out / f"{spec.name}_{da}_{_safe(pdu)}.h5"
            if target.exists() and not overwrite:
                raise ExportError(f"{target} exists (use --overwrite to replace it)")
            jobs.append((spec, target, spec.transform(_read_sources(f, path, spec, n_cells))))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec, target, data in jobs:
        dsname = f"/{pdu}/{spec.name}/0"
        tmp = tmp_name(target)
        try:
            with h5py.File(tmp, "w") as g:
                ds = g.create_dataset(f"{dsname}/data",
                                      data=data.astype(spec.dtype, copy=False))
                ds.attrs["dims"] = list(spec.dims)
                g.attrs.update(common)
                g.attrs["calibration"] = spec.name
                g.attrs["data_set_name"] = dsname
                g.attrs["layout_status"] = spec.status
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``calib-mpi export``: exit code 0, or 2 with one message on a bad input/output."""
    p = argparse.ArgumentParser(
        prog="calib-mpi export",
        description="Write calib-mpi results as pycalibration/CalCat constant files: "
                    "/<PDU>/<Constant>/0/data, axes (fast_scan, slow_scan, cell, gain).")
    p.add_argument("results", nargs="+", type=Path, help="per-module result files")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--pdu", nargs="+", metavar="NAME",
                   help="physical detector unit name(s), one per result file "
                        "(default: quadrant name Q<q>M<m>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = p.parse_args(argv)
    if args.pdu is not None and len(args.pdu) != len(args.results):
        p.error(f"--pdu: {len(args.pdu)} name(s) for {len(args.results)} result file(s)")
    pdus = args.pdu or [None] * len(args.results)
    try:
        for res, pdu in zip(args.results, pdus, strict=True):
            for w in export_module(res, args.out, pdu=pdu, overwrite=args.overwrite):
                print(f"wrote {w}")
    except ExportError as e:
        print(f"calib-mpi export: error: {e}", file=sys.stderr)
        return 2
    return 0
