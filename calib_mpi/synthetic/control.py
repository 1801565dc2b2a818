"""Control (slow) data file of a synthetic European XFEL run, in the DAQ layout.

Written with EXtra-data's mock writer (``extra_data.tests.mockdata``: ``AGIPDMDL`` for the
FPGA composite device ``<domain>/MDL/FPGA_COMP``, ``AGIPD1MPSC`` for the bias power supply
``<domain[:-1]>/PSC/HV``), then the chosen conditions are set in CONTROL and RUN, so that
EXtra-data and EXtra read them back as from a real run: ``r<run>/RAW-R<run>-DA01-S00000.h5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

CONTROL_DOMAIN = "SPB_IRU_AGIPD1M1"


@dataclass(frozen=True)
class RunConditions:
    """Conditions written into a synthetic control file (EXtra's names and units)."""

    sensor_bias_voltage: float = 300.0
    memory_cells: int = 4
    acquisition_rate: float = 4.5
    gain_setting: int = 0
    gain_mode: int = 0
    integration_time: int = 12


def control_path(run_dir: Path, run: int) -> Path:
    """The control file of ``run`` in ``run_dir``."""
    return Path(run_dir) / f"RAW-R{run:04d}-DA01-S00000.h5"


def write_control_file(run_dir: Path | str, run: int, train_ids: np.ndarray,
                       cond: RunConditions, domain: str = CONTROL_DOMAIN) -> Path:
    """Write the control file of ``run`` covering ``train_ids`` (consecutive) with ``cond``."""
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.agipd import AGIPD1MPSC, AGIPDMDL

    path = control_path(Path(run_dir), run)
    comp, psc = f"{domain}/MDL/FPGA_COMP", f"{domain[:-1]}/PSC/HV"
    first, n = int(np.min(train_ids)), int(np.max(train_ids) - np.min(train_ids) + 1)
    write_file(str(path), [AGIPDMDL(comp), AGIPD1MPSC(psc)], n, firsttrain=first,
               chunksize=max(1, n), format_version="1.0")
    values = {
        comp: {"bunchStructure/nPulses": cond.memory_cells,
               "bunchStructure/repetitionRate": cond.acquisition_rate,
               "gain": cond.gain_setting, "gainModeIndex": cond.gain_mode,
               "integrationTime": cond.integration_time},
        psc: {"channels/U0/voltage": cond.sensor_bias_voltage},
    }
    with h5py.File(path, "r+") as f:
        for src, keys in values.items():
            for key, v in keys.items():
                for grp in ("CONTROL", "RUN"):
                    f[f"{grp}/{src}/{key}/value"][()] = v
    return path


def write_run_controls(out: Path | str, train_ids: dict[int, np.ndarray],
                       conditions: dict | None, n_cells: int) -> None:
    """Control files of several runs (``run -> train IDs``) with the same ``conditions``
    (:class:`RunConditions` fields; memory cells default to the smallest setting >= n_cells);
    ``conditions = None`` writes none."""
    from ..conditions import memory_cells_from_cells

    if conditions is None:
        return
    cond = RunConditions(**{"memory_cells": memory_cells_from_cells(n_cells - 1),
                            **conditions})
    for run, ids in train_ids.items():
        run_dir = Path(out) / f"r{run:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        write_control_file(run_dir, run, np.asarray(ids), cond)
