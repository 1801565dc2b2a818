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
