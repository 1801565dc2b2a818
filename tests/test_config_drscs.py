"""Configuration of lab drscs jobs (facility = cfel, measurement = drscs, one current)."""

import pytest

from calib_mpi.config import parse_config
from calib_mpi.errors import ConfigError

BASE = ("facility = cfel\nmeasurement = drscs\ninput_dir = /lab\n"
        "temperature = temperature_m20C\nmodule_serial = M304\nposition = m2\noutput_dir = /out\n")


def _parse(tmp_path, text):
    p = tmp_path / "run.conf"
    p.write_text(text)
    return parse_config([str(p)])


def test_drscs_current_is_the_spec_and_run_names_default(tmp_path):
    cfg = _parse(tmp_path, BASE + "current = itestc150\n")
    assert cfg.current == "itestc150" and cfg.spec == "itestc150"
    assert cfg.run_names == ("col15", "col26", "col37", "col48")


@pytest.mark.parametrize("text,match", [
    (BASE, "current: drscs lab runs sit in a current sub-directory"),
    (BASE + "current = itestc150\nrun_names = col15 col26\n",
     r"run_names: drscs needs exactly four run name\(s\)"),
])
def test_drscs_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _parse(tmp_path, text)


def test_several_currents_and_per_current_configs(tmp_path):
    cfg = _parse(tmp_path, BASE + "current = itestc20 itestc80 itestc150\nruns = 1-12\n")
    assert cfg.currents == ("itestc20", "itestc80", "itestc150")
    assert cfg.current is None and cfg.spec is None
    one = cfg.for_current(1)
    assert (one.current, one.spec, one.runs) == ("itestc80", "itestc80", (5, 6, 7, 8))
    assert cfg.for_current(2).runs == (9, 10, 11, 12)
    none = _parse(tmp_path, BASE + "current = itestc20 itestc80\n").for_current(0)
    assert none.runs == () and none.spec == "itestc20"  # run numbers from the file names


XFEL = ("measurement = drscs\ninput_dir = /raw\nmodules = 3\noutput_dir = /out\n")


def test_xfel_currents_are_groups_of_four_runs(tmp_path):
    cfg = _parse(tmp_path, XFEL + "runs = 10-17\n")
    assert cfg.currents == ("current1", "current2")
    assert cfg.for_current(1).runs == (14, 15, 16, 17)
    cfg = _parse(tmp_path, XFEL + "runs = 10-13\ncurrent = itestc80\n")
    assert cfg.currents == ("itestc80",) and cfg.current == "itestc80"


def test_drscs_processing_settings(tmp_path):
    cfg = _parse(tmp_path, BASE + "current = itestc80\ndrscs = safety_factor=700 "
                 "min_points=7/20/20\n")
    p = cfg.drscs_params()
    assert p.safety_factor == 700.0 and p.min_points == (7, 20, 20)
    assert p.max_diff_changes == 150  # the rest keep their defaults
    assert _parse(tmp_path, BASE + "current = c1\n").drscs_memory == 4000.0


@pytest.mark.parametrize("text,match", [
    (BASE + "current = itestc20 itestc80\nspec = itestc20\n",
     "spec: 'itestc20' — with several currents"),
    (BASE + "current = itestc20 itestc20\n", "expected distinct directory names"),
    (BASE + "current = itestc20 itestc80\nruns = 1-4\n",
     r"one run number per run name \(col15 col26 col37 col48\) per current"),
    (BASE + "current = itestc80\ndrscs = safety=700\n", "drscs: 'safety=700' — expected name"),
    (BASE + "current = itestc80\ndrscs = min_points=7/20\n",
     "min_points needs 3 number"),
    (BASE + "current = itestc80\ndrscs_memory = 0\n", "drscs_memory must be positive"),
    (XFEL + "runs = 10-15\n", "drscs needs four runs .* per current, got 6"),
    (XFEL + "runs = 10-17\ncurrent = a\n", r"current: \['a'\] — expected 2 distinct name"),
    (XFEL.replace("drscs", "dark") + "runs = 1 2 3\ncurrent = a\n",
     "only drscs has currents"),
])
def test_several_currents_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _parse(tmp_path, text)
