"""Export calib-mpi results as CalCat-ready constant files (pycalibration's layout).

``calib-mpi export RESULT.h5 [RESULT2.h5 ...] --out DIR --pdu NAME [NAME ...] [--overwrite]``

One HDF5 file per module and constant, ``<out>/<Constant>_AGIPD<MM>_<PDU>.h5``:

- the array as dataset ``/<PDU>/<Constant>/0/data`` with a ``dims`` attribute. The
  ``<data_set_name>/data`` access and ``dims`` are **[confirmed]** (EXtra ``SingleConstant``
  reads ``f[data_set_name]["data"]`` and ``.attrs["dims"]``); ``data_set_name =
  /<PDU>/<Constant>/0`` is **[unconfirmed]** (CalCat stores it per version);
- the PDU: the module's physical detector unit as CalCat names it (e.g.
  ``AGIPD_SIV1_AGIPDV11_M305``); calib-mpi does not know it, so it must be given (``--pdu``,
  or ``pdu_names`` of the job) — the export refuses rather than invent one;
- root attributes: the constant's condition set under CalCat's parameter names (as EXtra's
  ``AGIPDConditions.calibration_types``; ``Gain mode`` 0 and ``Integration time`` 12 left out
  as EXtra does), ``condition_set`` (the same as JSON), ``calibration``, ``pdu``,
  ``karabo_da``, ``module``, ``creation_time`` (UTC, ISO 8601), ``runs``,
  ``calib_mpi_version`` (of the export and, ``source_calib_mpi_version``, of the result),
  ``source_file``, ``layout_status`` (what of the layout is confirmed);
- arrays ``native.transpose(3, 2, 1, 0)`` of our ``(k, cell, slow_scan, fast_scan)`` datasets:
  ``(fast_scan, slow_scan, cell, k)``; the Offset shape ``(128, 512, cells, 3)`` is
  **[confirmed]** (EXtra's test data), the other layouts are **our choice** (see
  :data:`EXPORTS` and the README).

Which native datasets make which constant is the table :data:`EXPORTS`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .conditions import CALIBRATION_TYPES
from .geometry import XFEL_FRAME, quadrant_name
from .guard import tmp_name

__all__ = ["ConstantSpec", "EXPORTS", "PYC_DIMS", "ExportError", "export_module",
           "export_results", "main"]

#: axis names of an exported per-gain constant
PYC_DIMS = ("fast_scan", "slow_scan", "cell", "gain")
#: axis names of an exported constant whose last axis lists parameters
PARAM_DIMS = ("fast_scan", "slow_scan", "cell", "parameter")
#: conditions EXtra gives a default when absent (``AGIPDConditions`` fields with defaults)
DEFAULTED = {"Integration time", "Source energy", "Pixels X", "Pixels Y"}


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
    status : what of this entry's layout is confirmed.
    adaptive_only : left out for fixed-gain darks (no gain thresholds).
    """

    name: str
    sources: tuple[str, ...]
    transform: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    dtype: type
    dims: tuple[str, ...] = PYC_DIMS
    status: str = "[our choice]"
    adaptive_only: bool = False


def _single(source: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    return lambda d: to_pyc(d[source])


def _stack(*parts: tuple[str, int]) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Parameters on the last axis: ``(source, index on its first axis)`` each."""
    return lambda d: to_pyc(np.stack([d[s][i] for s, i in parts]))


def _ratio(a: tuple[str, int], b: tuple[str, int]) -> Callable:
    def f(d):
        with np.errstate(invalid="ignore", divide="ignore"):
            return d[a[0]][a[1]].astype(np.float64) / d[b[0]][b[1]]
    return f


def _slopes_cs(d: Mapping[str, np.ndarray]) -> np.ndarray:
    """[m_hg, b_hg, m_mg, b_mg, m_lg, b_lg, m_hg/m_mg, m_mg/m_lg] on the last axis."""
    s, o = d["slope"], d["offset"]
    planes = [s[0], o[0], s[1], o[1], s[2], o[2], _ratio(("slope", 0), ("slope", 1))(d),
              _ratio(("slope", 1), ("slope", 2))(d)]
    return to_pyc(np.stack(planes))


#: SlopesPC parameters on the last axis (pycalibration reads 0, 1, 3, 4 as high-gain slope and
#: intercept and medium-gain slope and intercept [recalled, unconfirmed]; the rest our choice)
SLOPES_PC = (("slope", 0), ("offset", 0), ("residual_rms", 0), ("slope", 1), ("offset", 1),
             ("residual_rms", 1), ("gain_level", 0), ("gain_level", 1), ("threshold", 0),
             ("ratio", 0))

#: measurement -> constants exported from its result file
EXPORTS: dict[str, tuple[ConstantSpec, ...]] = {
    "dark": (
        ConstantSpec("Offset", ("offset",), _single("offset"), np.float32,
                     status="[confirmed shape (128, 512, cells, 3)]"),
        ConstantSpec("Noise", ("noise",), _single("noise"), np.float32),
        ConstantSpec("ThresholdsDark", ("threshold", "gain_level"),
                     lambda d: to_pyc(np.concatenate([d["threshold"], d["gain_level"]])),
                     np.float32, status="[our choice: t01, t12, gl_high, gl_medium, gl_low]",
                     adaptive_only=True),
        ConstantSpec("BadPixelsDark", ("bad_pixels",), _single("bad_pixels"), np.uint32),
    ),
    "drspc": (
        ConstantSpec("SlopesPC", tuple(sorted({s for s, _ in SLOPES_PC})), _stack(*SLOPES_PC),
                     np.float32, PARAM_DIMS,
                     "[our choice; 0, 1, 3, 4 = m_hg, b_hg, m_mg, b_mg as pycalibration reads "
                     "them, unconfirmed]"),
        ConstantSpec("BadPixelsPC", ("bad_pixels",), _single("bad_pixels"), np.uint32),
    ),
    "xray": (
        ConstantSpec("SlopesFF", ("photon_spacing",), _single("photon_spacing"), np.float32,
                     PARAM_DIMS, "[our choice: photon spacing in ADU per photon]"),
        ConstantSpec("BadPixelsFF", ("bad_pixels",), _single("bad_pixels"), np.uint32),
    ),
    "drscs": (
        ConstantSpec("SlopesCS", ("slope", "offset"), _slopes_cs, np.float32, PARAM_DIMS,
                     "[our choice; 6, 7 = m_hg/m_mg, m_mg/m_lg as pycalibration reads them, "
                     "unconfirmed]"),
        ConstantSpec("BadPixelsCS", ("bad_pixels",), _single("bad_pixels"), np.uint32),
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


def condition_set(path: Path, cond: dict, calibration: str) -> dict:
    """The CalCat condition set of ``calibration`` from a result's ``conditions`` (CalCat
    names); refuses when a condition without a default is unknown."""
    params = CALIBRATION_TYPES[calibration]
    missing = [p for p in params if p not in cond and p not in DEFAULTED]
    if missing:
        raise ExportError(f"{path}: condition(s) {', '.join(missing)} of {calibration} unknown "
                          "(not in the run's control data); give them in the job's config "
                          "(bias_voltage, memory_cells, acquisition_rate, gain_setting, "
                          "gain_mode) and rerun")
    out = {p: float(cond[p]) for p in params if p in cond}
    if int(out.get("Gain mode", -1)) == 0:
        del out["Gain mode"]
    if int(out.get("Integration time", -1)) == 12:
        del out["Integration time"]
    return out


def _common(f: h5py.File, path: Path, meas: str, module: int, pdu: str) -> dict:
    common = {
        "measurement": meas, "module": module, "karabo_da": f"AGIPD{module:02d}",
        "quadrant": quadrant_name(module), "pdu": pdu, "source_file": str(path.resolve()),
        "source_calib_mpi_version": str(_attr(f, "calib_mpi_version", "unknown")),
        "calib_mpi_version": __version__,
        "creation_time": dt.datetime.now(dt.UTC).isoformat(),
    }
    for key in ("runs", "trains_used", "gain_modes", "control_domain"):
        if key in f.attrs:
            common[key] = f.attrs[key]
    return common


def export_module(result_path: str | os.PathLike, out_dir: str | os.PathLike,
                  pdu: str | None, overwrite: bool = False) -> list[Path]:
    """Write every constant of one module result file; returns the written files.

    ``pdu``: the module's physical detector unit name (required). Existing files are refused
    unless ``overwrite``. Files are written under a temporary name of this job
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
        if not pdu:
            raise ExportError(f"{path}: no physical detector unit (PDU) name for module "
                              f"{module}; give pdu_names (job) or --pdu (export), e.g. "
                              "AGIPD_SIV1_AGIPDV11_M305, as CalCat names it")
        n_cells = int(f.attrs["n_cells"])
        cond = json.loads(_attr(f, "conditions", "{}"))
        fixed = bool(cond.get("Gain mode", 0))
        if "Memory cells" in cond and int(cond["Memory cells"]) != n_cells:
            warnings.warn(f"{path}: the cell axis has {n_cells} cells, the condition Memory "
                          f"cells is {int(cond['Memory cells'])} (written as is)", stacklevel=2)
        common = _common(f, path, meas, module, pdu)
        jobs = []
        for spec in EXPORTS[meas]:
            if spec.adaptive_only and fixed:
                continue
            target = out / f"{spec.name}_AGIPD{module:02d}_{_safe(pdu)}.h5"
            if target.exists() and not overwrite:
                raise ExportError(f"{target} exists (use --overwrite to replace it)")
            cset = condition_set(path, cond, spec.name)
            jobs.append((spec, target, cset,
                         spec.transform(_read_sources(f, path, spec, n_cells))))
    out.mkdir(parents=True, exist_ok=True)
    return [_write(spec, target, pdu, cset, data, common) for spec, target, cset, data in jobs]


def export_results(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   pdu_names: Mapping[int, str], overwrite: bool = False) -> list[Path]:
    """Export several module result files; ``pdu_names``: module -> PDU name."""
    written = []
    for p in paths:
        with h5py.File(p, "r") as f:
            module = int(f.attrs["module"])
        written += export_module(p, out_dir, pdu_names.get(module), overwrite)
    return written


def _write(spec: ConstantSpec, target: Path, pdu: str, cset: dict, data: np.ndarray,
           common: dict) -> Path:
    dsname = f"/{pdu}/{spec.name}/0"
    tmp = tmp_name(target)
    try:
        with h5py.File(tmp, "w") as g:
            ds = g.create_dataset(f"{dsname}/data", data=data.astype(spec.dtype, copy=False))
            ds.attrs["dims"] = list(spec.dims)
            g.attrs.update(common)
            g.attrs.update(cset)
            g.attrs["condition_set"] = json.dumps(cset)
            g.attrs["calibration"] = spec.name
            g.attrs["data_set_name"] = dsname
            g.attrs["layout_status"] = spec.status
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``calib-mpi export``: exit code 0, or 2 with one message on a bad input/output."""
    p = argparse.ArgumentParser(
        prog="calib-mpi export",
        description="Write calib-mpi results as CalCat-ready constant files "
                    "/<PDU>/<Constant>/0/data, axes (fast_scan, slow_scan, cell, k).")
    p.add_argument("results", nargs="+", type=Path, help="per-module result files")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--pdu", nargs="+", metavar="NAME", required=True,
                   help="physical detector unit name (CalCat PDU) of each result file, in order")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = p.parse_args(argv)
    if len(args.pdu) != len(args.results):
        p.error(f"--pdu: {len(args.pdu)} name(s) for {len(args.results)} result file(s)")
    try:
        for res, pdu in zip(args.results, args.pdu, strict=True):
            for w in export_module(res, args.out, pdu=pdu, overwrite=args.overwrite):
                print(f"wrote {w}")
    except ExportError as e:
        print(f"calib-mpi export: error: {e}", file=sys.stderr)
        return 2
    return 0
