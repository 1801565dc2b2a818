"""Export a result file and read every constant back the way EXtra's CalCat loader does
(``extra.calibration.SingleConstant``: ``<data_set_name>/data`` + ``dims``), comparing with the
result file and with the condition set EXtra's ``AGIPDConditions`` makes from the same
conditions."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from calib_mpi import export

#: constants of each measurement (adaptive-gain darks)
CONSTANTS = {"dark": ("Offset", "Noise", "ThresholdsDark", "BadPixelsDark"),
             "drspc": ("SlopesPC", "BadPixelsPC"), "xray": ("SlopesFF", "BadPixelsFF"),
             "drscs": ("SlopesCS", "BadPixelsCS")}


def expected_planes(name: str, r: dict) -> dict[int, np.ndarray]:
    """Planes (last axis index -> native (cell, ss, fs) array) each constant must hold."""
    if name.startswith("BadPixels"):
        return dict(enumerate(r["bad_pixels"]))
    table = {
        "Offset": dict(enumerate(r.get("offset", []))),
        "Noise": dict(enumerate(r.get("noise", []))),
        "ThresholdsDark": {0: r.get("threshold", [None])[0], 1: r.get("threshold", [0, 0])[1],
                           **{2 + g: r["gain_level"][g] for g in range(3)}}
        if name == "ThresholdsDark" else {},
        "SlopesPC": {0: r["slope"][0], 1: r["offset"][0], 3: r["slope"][1],
                     4: r["offset"][1], 9: r["ratio"][0]} if name == "SlopesPC" else {},
        "SlopesFF": {0: r["photon_spacing"][0]} if name == "SlopesFF" else {},
        "SlopesCS": {0: r["slope"][0], 1: r["offset"][0], 2: r["slope"][1],
                     4: r["slope"][2], 6: r["slope"][0] / r["slope"][1],
                     7: r["slope"][1] / r["slope"][2]} if name == "SlopesCS" else {},
    }
    return table[name]


def check_export(result: Path, out_dir: Path, conditions: dict) -> None:
    """``conditions``: EXtra ``AGIPDConditions`` keyword arguments the run was written with."""
    extra_cal = pytest.importorskip("extra.calibration")
    with h5py.File(result, "r") as f:
        meas = f.attrs["measurement"]
        module = int(f.attrs["module"])
        r = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        n_cells = int(f.attrs["n_cells"])
    pdu = f"AGIPD_SIV1_TEST_M{300 + module}"
    written = export.export_results([result], out_dir, {module: pdu})
    assert sorted(p.name for p in written) == sorted(
        f"{c}_AGIPD{module:02d}_{pdu}.h5" for c in CONSTANTS[meas])
    cond = extra_cal.AGIPDConditions(**conditions)
    for name in CONSTANTS[meas]:
        path = out_dir / f"{name}_AGIPD{module:02d}_{pdu}.h5"
        const = extra_cal.SingleConstant(path=path, dataset=f"/{pdu}/{name}/0", ccv_id=None,
                                         pdu_name=pdu)
        data = const.ndarray(caldb_root=Path("/"))
        dims = const.dimension_names(caldb_root=Path("/"))
        assert data.shape[:3] == (128, 512, n_cells), name
        assert dims[:3] == ("fast_scan", "slow_scan", "cell"), name
        assert data.dtype == (np.uint32 if name.startswith("BadPixels") else np.float32)
        for k, native in expected_planes(name, r).items():
            np.testing.assert_array_equal(data[..., k], np.asarray(native, np.float32 if
                                          data.dtype == np.float32 else np.uint32)
                                          .transpose(2, 1, 0), err_msg=f"{name}[{k}]")
        want = cond.make_dict(extra_cal.AGIPDConditions.calibration_types[name])
        with h5py.File(path, "r") as g:
            assert json.loads(g.attrs["condition_set"]) == want, name
            for key, v in want.items():
                assert g.attrs[key] == v, (name, key)
            assert g.attrs["pdu"] == pdu and g.attrs["calibration"] == name
            assert "creation_time" in g.attrs and "calib_mpi_version" in g.attrs
            assert len(g.attrs["runs"]) >= 1


#: EXtra ``AGIPDConditions`` arguments of the synthetic writers' default control files
#: (synthetic.control.RunConditions, memory cells the smallest setting >= the cells written)
CONDITIONS = {"sensor_bias_voltage": 300, "memory_cells": 4, "acquisition_rate": 4.5,
              "gain_setting": 0, "gain_mode": 0, "integration_time": 12}
