"""Operating conditions of AGIPD runs, read from the run's control (slow) data.

The rules are EXtra's (``extra.calibration.AGIPDConditions.from_data``, European-XFEL/EXtra
``src/extra/calibration/conditions.py``), re-implemented on EXtra-data so that a job does not
need a CalCat connection:

- ``<control_domain>/MDL/FPGA_COMP``: ``bunchStructure.nPulses`` (memory cells, largest value),
  ``bunchStructure.repetitionRate`` (MHz, rounded to 0.1; missing in older data), ``gain``
  (gain setting; older data: from ``setupr`` and ``patternTypeIndex``), ``gainModeIndex``
  (0 adaptive, 1/2/3 fixed high/medium/low), ``integrationTime`` (missing: 12);
- sensor bias voltage: ``<control_domain minus its last character>/PSC/HV``
  ``channels.U<n>.voltage`` (AGIPD1M; the first channel with a voltage > 0), else the median
  of ``highVoltage.target`` (< 1000 V) of ``<control_domain>/FPGA/M_<n>`` (newer systems);
- fallbacks from the detector data when the FPGA device is missing: memory cells = the
  smallest AGIPD setting above the largest ``cellId``, rate = floor(45 / min diff(pulseId))/10.

Control data are read with EXtra-data from the control files of the run folder
(``RAW-R<run>-DA<nn>-S<seq>.h5``). Config keys (``bias_voltage``, ``memory_cells``,
``acquisition_rate``, ``gain_setting``, ``gain_mode``, ``integration_time``) give or override
a value for every run of the job. Conditions are named in the code by EXtra's attribute names
and in files by CalCat's parameter names (:data:`CALCAT_NAMES`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

#: EXtra attribute name -> CalCat parameter name
CALCAT_NAMES = {
    "sensor_bias_voltage": "Sensor Bias Voltage",
    "pixels_x": "Pixels X",
    "pixels_y": "Pixels Y",
    "memory_cells": "Memory cells",
    "acquisition_rate": "Acquisition rate",
    "gain_setting": "Gain setting",
    "gain_mode": "Gain mode",
    "integration_time": "Integration time",
    "source_energy": "Source energy",
}
#: config key -> condition name (the config key of the bias voltage is shorter)
OVERRIDE_KEYS = {"bias_voltage": "sensor_bias_voltage", "memory_cells": "memory_cells",
                 "acquisition_rate": "acquisition_rate", "gain_setting": "gain_setting",
                 "gain_mode": "gain_mode", "integration_time": "integration_time"}
_BASE = ["Sensor Bias Voltage", "Pixels X", "Pixels Y", "Memory cells", "Acquisition rate",
         "Gain setting"]
_DARK = _BASE + ["Gain mode", "Integration time"]
_GAIN = _BASE + ["Integration time"]
_ILLUMINATED = _BASE + ["Integration time", "Source energy"]
#: as EXtra's ``AGIPDConditions.calibration_types``: constant -> its condition parameters
CALIBRATION_TYPES = {
    "Offset": _DARK, "Noise": _DARK, "ThresholdsDark": _DARK, "BadPixelsDark": _DARK,
    "SlopesPC": _GAIN, "BadPixelsPC": _GAIN,
    "SlopesFF": _ILLUMINATED, "BadPixelsFF": _ILLUMINATED,
    "SlopesCS": _BASE, "BadPixelsCS": _BASE,
}
#: conditions a CalCat condition set cannot do without (EXtra: required dataclass fields)
REQUIRED = ("sensor_bias_voltage", "memory_cells", "acquisition_rate", "gain_setting",
            "gain_mode")
MEMORY_CELL_OPTIONS = np.array([4, 32, 64, 76, 128, 176, 202, 250, 352])
GAIN_MODE_NAMES = {0: "adaptive", 1: "fixed high", 2: "fixed medium", 3: "fixed low"}


def control_files_glob() -> str:
    """File-name glob of the control (non-detector) files of a run folder."""
    return "RAW-*-DA*-S*.h5"


def _open_control(run_dir: Path):
    """EXtra-data view of the control files of ``run_dir``, or None when it has none."""
    import extra_data

    if not any(run_dir.glob(control_files_glob())):
        return None
    return extra_data.RunDirectory(str(run_dir), include=control_files_glob())


def _single(sd, key: str, **tol):
    return sd[key].as_single_value(**tol)


def gain_setting_from_comp(sd) -> int:
    """Gain setting (CDS mode) of the FPGA composite device (EXtra's rule)."""
    if "gain" in sd:
        return int(_single(sd, "gain", atol=0))
    setupr = _single(sd, "setupr")
    pattern = _single(sd, "patternTypeIndex")
    if (setupr == 0 and pattern < 4) or (setupr == 32 and pattern == 4):
        return 0
    if (setupr == 8 and pattern < 4) or (setupr == 40 and pattern == 4):
        return 1
    raise DataError(f"{sd.source}: unexpected setupr = {setupr}, patternTypeIndex = {pattern} "
                    "to determine the gain setting; give gain_setting in the config")


def from_comp(sd) -> dict:
    """Memory cells, rate, gain setting, gain mode, integration time of ``.../MDL/FPGA_COMP``."""
    out = {"memory_cells": int(sd["bunchStructure.nPulses"].as_single_value(reduce_by="max"))}
    if "bunchStructure.repetitionRate" in sd:
        out["acquisition_rate"] = round(float(_single(sd, "bunchStructure.repetitionRate")), 1)
    out["gain_setting"] = gain_setting_from_comp(sd)
    out["gain_mode"] = int(_single(sd, "gainModeIndex", atol=0))
    out["integration_time"] = (int(_single(sd, "integrationTime"))
                               if "integrationTime" in sd else 12)
    return out


def bias_from_mpod(sd) -> int:
    """Bias voltage (V) from the power supply ``.../PSC/HV``: first channel powered on, else 0."""
    for key in sorted(sd.select_keys("channels.U*.voltage").keys(False)):
        if (val := sd[key].as_single_value(atol=1, rtol=1)) > 0:
            return int(val)
    return 0


def bias_from_fpga(sds: Iterable) -> int:
    """Bias voltage (V) from per-module FPGA devices' ``highVoltage.target`` (values < 1000)."""
    for sd in sds:
        values = sd["highVoltage.target"].ndarray()
        values = values[values < 1000.0]
        if len(values) and (val := int(np.median(values))) > 0:
            return val
    return 0


def memory_cells_from_cells(max_cell_id: int) -> int:
    """Smallest AGIPD memory-cell setting above the largest ``cellId``."""
    return int(MEMORY_CELL_OPTIONS[MEMORY_CELL_OPTIONS > max_cell_id].min())


def rate_from_pulse_ids(pulse_ids: np.ndarray) -> float:
    """Acquisition rate (MHz) from the pulse IDs of one train or more (EXtra's rule)."""
    d = np.diff(np.asarray(pulse_ids, np.int64).ravel())
    d = d[d > 0]
    return round(float(np.floor(45 / d.min()) / 10), 1) if len(d) else 0.0


def read_run_conditions(run_dir: Path, control_domain: str, n_modules: int = 16) -> dict:
    """Conditions found in the control files of one run (EXtra's names); keys that cannot be
    found are absent. ``n_modules``: FPGA control devices ``M_0 ..`` to look at."""
    data = _open_control(run_dir)
    if data is None:
        return {}
    out: dict = {}
    comp = f"{control_domain}/MDL/FPGA_COMP"
    mpod = f"{control_domain[:-1]}/PSC/HV"
    fpga = [f"{control_domain}/FPGA/M_{i}" for i in range(n_modules)]
    if comp in data.all_sources:
        out.update(from_comp(data[comp]))
    if mpod in data.all_sources:
        out["sensor_bias_voltage"] = bias_from_mpod(data[mpod])
    elif (have := [data[s] for s in fpga if s in data.all_sources]):
        out["sensor_bias_voltage"] = bias_from_fpga(have)
    return out


def xtdf_fallback(path: Path, source: str) -> dict:
    """Memory cells and rate from one detector file (``image.cellId``/``image.pulseId``)."""
    import extra_data

    sd = extra_data.H5File(str(path))[source]
    cells = sd["image.cellId"].drop_empty_trains().ndarray()
    first = sd["image.pulseId"].drop_empty_trains()
    out = {}
    if cells.size:
        out["memory_cells"] = memory_cells_from_cells(int(cells.max()))
    if first.shape[0]:
        tid = first.train_id_coordinates()
        pulses = first.ndarray().ravel()
        out["acquisition_rate"] = rate_from_pulse_ids(pulses[tid == tid[0]])
    return out


def control_sources_hint(run_dir: Path) -> str:
    """The FPGA composite devices present in the control files (for error messages)."""
    data = _open_control(run_dir)
    if data is None:
        return f"no control files {control_files_glob()} in {run_dir}"
    found = sorted(s for s in data.all_sources if s.endswith("/MDL/FPGA_COMP"))
    return f"FPGA composite devices in {run_dir}: {', '.join(found) or 'none'}"


def calcat_dict(cond: dict, calibration: str | None = None) -> dict:
    """Conditions under CalCat names (``calibration``: only its parameters, with EXtra's
    database quirks: ``Gain mode`` 0 and ``Integration time`` 12 are left out)."""
    out = {CALCAT_NAMES[k]: v for k, v in cond.items() if k in CALCAT_NAMES and v is not None}
    if calibration is None:
        return out
    out = {k: float(out[k]) for k in CALIBRATION_TYPES[calibration] if k in out}
    if int(out.get("Gain mode", -1)) == 0:
        del out["Gain mode"]
    if int(out.get("Integration time", -1)) == 12:
        del out["Integration time"]
    return out


def combine_runs(per_run: dict[int, dict], overrides: dict) -> tuple[dict, dict[int, int]]:
    """Job conditions from the runs' conditions: overrides win, every other key must agree
    between the runs where it is known (gain mode excepted); returns (conditions, run -> gain
    mode)."""
    runs = list(per_run)
    merged = {k: v for k, v in overrides.items() if v is not None}
    for key in sorted({k for c in per_run.values() for k in c} - set(merged)):
        if key == "gain_mode":
            continue
        vals = {r: per_run[r][key] for r in runs if per_run[r].get(key) is not None}
        ref = next(iter(vals))
        for r, v in vals.items():
            if v != vals[ref]:
                raise DataError(
                    f"run {r}: {key} = {v} differs from run {ref} ({key} = "
                    f"{vals[ref]}); the runs of one job must share their operating conditions "
                    f"(give {_config_key(key)} in the config if the control data are wrong)")
        merged[key] = vals[ref]
    modes = {r: int(overrides["gain_mode"]) if overrides.get("gain_mode") is not None
             else per_run[r].get("gain_mode") for r in runs}
    known = {m for m in modes.values() if m is not None}
    if known:
        merged["gain_mode"] = 0 if known == {0} else 1
    merged.setdefault("pixels_x", 512)
    merged.setdefault("pixels_y", 128)
    return merged, modes


def _config_key(name: str) -> str:
    return next((k for k, v in OVERRIDE_KEYS.items() if v == name), name)


def missing_required(cond: dict) -> list[str]:
    """Required conditions (EXtra) that are not known."""
    return [k for k in REQUIRED if cond.get(k) is None]
