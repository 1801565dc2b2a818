"""Operating conditions from control files, dark run order and fixed-gain darks, under the
real ``mpirun`` (and the conditions rules against EXtra's own reader)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from calib_mpi import conditions as C
from calib_mpi import runorder
from calib_mpi.badpixels import BadPixels
from calib_mpi.config import parse_config
from calib_mpi.errors import ConfigError, DataError
from calib_mpi.synthetic.control import CONTROL_DOMAIN, control_path
from calib_mpi.synthetic.xfel import DEFECTS, DarkRunSet, write_config, write_dark_runs

from .conftest import run_mpi

COND = {"sensor_bias_voltage": 250.0, "integration_time": 15, "acquisition_rate": 2.2,
        "gain_setting": 1}
SMALL = dict(modules=(0,), n_trains=8, n_sequences=1, lost_trains={}, conditions=COND)


def _result(out, module=0):
    return out / "dark" / f"dark_AGIPD{module:02d}_xfel.h5"


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    p = DarkRunSet(**SMALL)
    return write_dark_runs(tmp_path_factory.mktemp("adaptive") / "raw", p), p


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    p = DarkRunSet(**SMALL, gain_modes=(1, 2, 3))
    return write_dark_runs(tmp_path_factory.mktemp("fixed") / "raw", p), p


def test_conditions_as_extra_reads_them(adaptive):
    """Our rules give what EXtra's ``AGIPDConditions.from_data`` gives on the same files."""
    extra_data = pytest.importorskip("extra_data")
    from extra.calibration import AGIPDConditions

    raw, p = adaptive
    run_dir = raw / "r9002"
    ours = C.read_run_conditions(run_dir, CONTROL_DOMAIN)
    data = extra_data.RunDirectory(str(run_dir))
    xtdf = [f"{p.detector}/DET/0CH0:xtdf"]
    theirs = AGIPDConditions.from_data(data, None, fpga_comp=f"{CONTROL_DOMAIN}/MDL/FPGA_COMP",
                                       mpod=f"{CONTROL_DOMAIN[:-1]}/PSC/HV", fpga_control=[],
                                       xtdf=xtdf)
    for key in ("sensor_bias_voltage", "memory_cells", "acquisition_rate", "gain_setting",
                "gain_mode", "integration_time"):
        assert ours[key] == getattr(theirs, key), key
    assert ours == {**COND, "memory_cells": 4, "gain_mode": 0}
    assert C.xtdf_fallback(raw / "r9002" / "RAW-R9002-AGIPD00-S00000.h5", xtdf[0]) == {
        "memory_cells": AGIPDConditions.memory_cells_from_xtdf(data[xtdf[0]]),
        "acquisition_rate": AGIPDConditions.acquisition_rate_from_xtdf(data[xtdf[0]])}
    for cal, params in AGIPDConditions.calibration_types.items():
        assert C.CALIBRATION_TYPES[cal] == params
        assert C.calcat_dict(ours | {"pixels_x": 512, "pixels_y": 128, "source_energy": 9.2},
                             cal) == \
            AGIPDConditions(**{k: ours[k] for k in C.REQUIRED},
                            integration_time=ours["integration_time"]).make_dict(params)


def test_adaptive_reversed_runs_stored_conditions(adaptive, tmp_path):
    """Runs given low, medium, high: put in gain order (log line), constants equal to the
    samples, conditions in the result file and the preprocess record exactly as written."""
    raw, p = adaptive
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", raw, out, p, runs="9003 9002 9001")
    r = run_mpi(2, [conf])
    assert r.returncode == 0, r.output
    assert "in gain order [9001, 9002, 9003] (from their digital levels)" in r.output
    with h5py.File(_result(out), "r") as f, h5py.File(raw / "truth.h5", "r") as t:
        g = t["module_00"]
        np.testing.assert_allclose(f["offset"][()], g["sample_offset"][()], rtol=0, atol=1e-3)
        np.testing.assert_allclose(f["noise"][()], g["sample_noise"][()], rtol=0, atol=1e-4)
        assert list(f.attrs["runs"]) == [9001, 9002, 9003]
        assert list(f.attrs["runs_given"]) == [9003, 9002, 9001]
        want = {"Sensor Bias Voltage": 250, "Memory cells": 4, "Acquisition rate": 2.2,
                "Gain setting": 1, "Gain mode": 0, "Integration time": 15, "Pixels X": 512,
                "Pixels Y": 128}
        assert json.loads(f.attrs["conditions"]) == want
        for k, v in want.items():
            assert f.attrs[k] == v, k
    rec = json.loads((out / "dark" / "preprocess.json").read_text())
    assert rec["conditions"]["sensor_bias_voltage"] == 250
    assert rec["conditions"]["gain_modes"] == [0, 0, 0]


def test_fixed_gain_darks(fixed, tmp_path):
    """Gain modes 2, 3, 1 given: reordered from the gain modes; offsets/noise equal to the
    samples, no thresholds (NaN), no gain-level bad-pixel bits, the defects flagged as the
    truth says (the gain-swap pixel is not bad in fixed gain)."""
    raw, p = fixed
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", raw, out, p, runs="9002 9003 9001")
    r = run_mpi(2, [conf])
    assert r.returncode == 0, r.output
    assert "(from their gain modes)" in r.output
    with h5py.File(_result(out), "r") as f, h5py.File(raw / "truth.h5", "r") as t:
        g = t["module_00"]
        np.testing.assert_allclose(f["offset"][()], g["sample_offset"][()], rtol=0, atol=1e-3)
        np.testing.assert_allclose(f["noise"][()], g["sample_noise"][()], rtol=0, atol=1e-4)
        np.testing.assert_allclose(f["gain_level"][()], g["sample_gain_level"][()], rtol=0,
                                   atol=1e-3)
        assert np.isnan(f["threshold"][()]).all()
        bad = f["bad_pixels"][()]
        assert not (bad & BadPixels.GAIN_THRESHOLDING_ERROR).any()
        truth = g["bad_pixels"][()]
        for ss, fs, _ in DEFECTS.values():
            np.testing.assert_array_equal(bad[:, :, ss, fs], truth[:, :, ss, fs])
        assert not truth[:, :, DEFECTS["gain_swap"][0], DEFECTS["gain_swap"][1]].any()
        assert json.loads(f.attrs["gain_modes"]) == [1, 2, 3]
        assert f.attrs["Gain mode"] == 1


def test_conditions_differ_between_runs(adaptive, tmp_path):
    """A bias voltage that differs in one run: refused before any result, naming run and key."""
    raw, p = adaptive
    broken = tmp_path / "raw"
    import shutil

    shutil.copytree(raw, broken)
    with h5py.File(control_path(broken / "r9002", 9002), "r+") as f:
        for grp in ("CONTROL", "RUN"):
            f[f"{grp}/SPB_IRU_AGIPD1M/PSC/HV/channels/U0/voltage/value"][()] = 200.0
    out = tmp_path / "out"
    r = run_mpi(2, [write_config(tmp_path / "run.conf", broken, out, p)])
    assert r.returncode != 0
    assert "run 9002: sensor_bias_voltage = 200 differs from run 9001" in r.stderr
    assert "Traceback" not in r.output
    assert not _result(out).exists()


def _cfg(tmp_path, runs="1 2 3", **kw):
    conf = tmp_path / "c.conf"
    conf.write_text(f"input_dir = {tmp_path}\noutput_dir = {tmp_path}\nruns = {runs}\n"
                    "modules = 0\n" + "".join(f"{k} = {v}\n" for k, v in kw.items()))
    return parse_config([str(conf)])


def test_repeated_run_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"run\(s\) \[7\] given more than once"):
        _cfg(tmp_path, runs="7 8 7")


def test_gain_mode_rules(tmp_path):
    cfg = _cfg(tmp_path)
    assert runorder.fixed_order(cfg, {1: 3, 2: 1, 3: 2}) == (2, 3, 1)
    assert runorder.fixed_order(cfg, {1: 0, 2: 0, 3: None}) is None
    with pytest.raises(DataError, match="mix adaptive and fixed"):
        runorder.fixed_order(cfg, {1: 0, 2: 2, 3: 3})
    with pytest.raises(DataError, match="one each of fixed high"):
        runorder.fixed_order(cfg, {1: 1, 2: 1, 3: 3})
    with pytest.raises(DataError, match="run_order = trust only keeps"):
        runorder.dark_order(_cfg(tmp_path, run_order="trust"), {1: 2, 2: 1, 3: 3})


def test_ambiguous_digital_levels_refused(tmp_path, monkeypatch):
    """Adaptive gain: levels that do not order 90% of the pixels are refused."""
    rng = np.random.default_rng(3)
    levels = {1: rng.normal(5000, 50, 1000), 2: rng.normal(5000, 50, 1000),
              3: rng.normal(7000, 50, 1000)}
    monkeypatch.setattr(runorder, "_digital_medians", lambda cfg, run: levels[run])
    with pytest.raises(DataError, match="cannot tell the gain order"):
        runorder.adaptive_order(_cfg(tmp_path))
    levels[2] = levels[2] + 1000
    assert runorder.adaptive_order(_cfg(tmp_path)) == (1, 2, 3)
    levels[1], levels[3] = levels[3], levels[1]
    assert runorder.adaptive_order(_cfg(tmp_path)) == (3, 2, 1)
