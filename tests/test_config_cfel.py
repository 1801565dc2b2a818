"""Configuration of CFEL lab jobs (facility = cfel): keys, defaults, clear errors."""

from pathlib import Path

import pytest

from calib_mpi.config import parse_config
from calib_mpi.errors import ConfigError
from calib_mpi.preprocess import output_path

BASE = ("facility = cfel\ninput_dir = /lab\ntemperature = temperature_m20C\n"
        "module_serial = M304\nposition = m2\nspec = tint150ns\noutput_dir = /out\n")


def _parse(tmp_path, text, *args):
    p = tmp_path / "run.conf"
    p.write_text(text)
    return parse_config([str(p), *args])


def test_lab_keys_and_defaults(tmp_path):
    cfg = _parse(tmp_path, BASE)
    assert cfg.facility == "cfel" and cfg.measurement == "dark"
    assert (cfg.temperature, cfg.module_serial, cfg.position, cfg.spec) == (
        "temperature_m20C", "M304", "m2", "tint150ns")
    assert cfg.run_names == ("hg", "mg", "lg")  # dark default, in gain order
    assert cfg.runs == ()  # found from the file names
    assert cfg.modules == (0,)
    assert cfg.n_cells == 352  # facility_specifics/cfel.conf
    assert cfg.current is None and cfg.subdir is None
    assert output_path(cfg, 0) == Path("/out/dark/dark_M304_cfel.h5")


def test_lab_keys_optional_values(tmp_path):
    cfg = _parse(tmp_path, BASE + "subdir = burst\nruns = 12 13 14\nn_cells = 4\nmodules = 3\n"
                 "run_names = high,medium,low\n")
    assert cfg.subdir == "burst" and cfg.runs == (12, 13, 14) and cfg.n_cells == 4
    assert cfg.modules == (3,) and cfg.run_names == ("high", "medium", "low")
    assert output_path(cfg, 3) == Path("/out/dark/dark_M304_cfel.h5")


def test_lab_xray_keys(tmp_path):
    """Lab xray names have the target as spec and no run name: ..._xray_Cu_<run:05>..."""
    base = BASE.replace("spec = tint150ns\n", "")
    cfg = _parse(tmp_path, base + "measurement = xray\nn_cells = 1\n")
    assert cfg.measurement == "xray" and cfg.spec == "Cu" and cfg.run_names == ("",)
    assert output_path(cfg, 0) == Path("/out/xray/xray_M304_cfel.h5")
    cfg = _parse(tmp_path, base + "measurement = xray\nxray_target = Mo\nruns = 7\n")
    assert cfg.spec == "Mo" and cfg.runs == (7,) and cfg.photon_energy == 17.44
    cfg = _parse(tmp_path, BASE + "measurement = xray\nrun_names = fl\n")
    assert cfg.spec == "tint150ns" and cfg.run_names == ("fl",)


def test_xfel_unchanged(tmp_path):
    cfg = _parse(tmp_path, "input_dir = /d\nruns = 1 2 3\nmodules = 0\noutput_dir = /o\n")
    assert cfg.facility == "xfel" and cfg.run_names is None and cfg.module_serial is None
    assert output_path(cfg, 3) == Path("/o/dark/dark_AGIPD03_xfel.h5")
    with pytest.raises(ConfigError, match="missing required setting.*runs"):
        _parse(tmp_path, "input_dir = /d\nmodules = 0\noutput_dir = /o\n")


@pytest.mark.parametrize("text,match", [
    ("facility = cfel\ninput_dir = /lab\noutput_dir = /out\n",
     r"missing required setting\(s\): module_serial, temperature, position"),
    (BASE + "run_names = hg mg\n",
     r"run_names: dark needs exactly three run name\(s\) \(high, medium, low gain\), got 2"),
    (BASE + "run_names = hg hg lg\n", "run_names: .* expected distinct"),
    (BASE + "runs = 12 13\n", r"runs: \[12, 13\] — facility cfel needs one run number per "
     "run name"),
    (BASE + "modules = 0 1\n", "modules: .* one module per job"),
    (BASE + "n_cells = 0\n", "n_cells: 0 — facility cfel needs the memory cells per train"),
    (BASE + "n_cells = 353\n", "n_cells: 353"),
    (BASE + "current = itestc150\n", "current: 'itestc150' — only drscs"),
    (BASE + "temperature = a/b\n", "temperature: 'a/b' — expected one directory"),
    (BASE + "plot = true\n", "plot: .* European XFEL modules only"),
    (BASE + "measurement = xray\nrun_names = a b\n",
     r"run_names: xray needs exactly one run name\(s\) \(fluorescence run\), got 2"),
])
def test_lab_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _parse(tmp_path, text)
