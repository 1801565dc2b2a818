"""Configuration: file, command line and environment, facility defaults, clear errors."""

import pytest

from calib_mpi.config import parse_config, parse_int_list
from calib_mpi.errors import ConfigError


def _conf(tmp_path, text):
    p = tmp_path / "run.conf"
    p.write_text(text)
    return str(p)


BASE = "input_dir = /data\nruns = 819 820 821\nmodules = 0-2\noutput_dir = /out\n"


def test_file_values_and_facility_defaults(tmp_path):
    cfg = parse_config([_conf(tmp_path, BASE)])
    assert cfg.runs == (819, 820, 821)
    assert cfg.modules == (0, 1, 2)
    assert cfg.detector == "SPB_DET_AGIPD1M-1"  # from facility_specifics/xfel.conf
    assert cfg.steps == ("preprocess", "gather", "process", "join")
    assert not cfg.overwrite


def test_command_line_overrides_file(tmp_path):
    cfg = parse_config([_conf(tmp_path, BASE), "--modules", "3", "--overwrite"])
    assert cfg.modules == (3,)
    assert cfg.overwrite


def test_environment_overrides_file_not_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_MPI_DETECTOR", "MID_DET_AGIPD1M-1")
    assert parse_config([_conf(tmp_path, BASE)]).detector == "MID_DET_AGIPD1M-1"
    cfg = parse_config([_conf(tmp_path, BASE), "--detector", "X"])
    assert cfg.detector == "X"


@pytest.mark.parametrize("text,expected", [
    ("0-15", list(range(16))), ("0 3", [0, 3]), ("0,3,5-6", [0, 3, 5, 6]), ("[1, 2]", [1, 2]),
])
def test_int_lists(text, expected):
    assert parse_int_list([text], "modules") == expected


@pytest.mark.parametrize("text,message", [
    ("input_dir = /d\nruns = 1 2 3\noutput_dir = /o\n", "missing required setting(s): modules"),
    ("input_dir = /d\nruns = 1 2\nmodules = 0\noutput_dir = /o\n", "exactly three run(s)"),
    ("input_dir = /d\nruns = 1 2 3\nmodules = 16\noutput_dir = /o\n", "modules are 0..15"),
    ("input_dir = /d\nruns = 1 2 3\nmodules = x\noutput_dir = /o\n", "cannot read 'x'"),
    (BASE + "steps = gather bake\n", "unknown step(s) ['bake']"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        parse_config([_conf(tmp_path, text)])


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in ("--facility", "--measurement", "--input_dir", "--runs", "--modules",
                "--detector", "--output_dir", "--steps", "--overwrite", "--chunk_frames",
                "--io_driver", "--offset_sigma", "--noise_hard", "CALIB_MPI_"):
        assert key in text


def test_parsing_a_config_does_not_start_mpi(tmp_path):
    """calib-mpi-submit parses the config; had that initialised MPI, sbatch would pass the
    MPI environment of the submitting process on to the job, whose mpirun then fails."""
    import subprocess
    import sys

    conf = _conf(tmp_path, BASE)
    code = ("import sys; from calib_mpi.config import parse_config; "
            f"parse_config([{conf!r}]); sys.exit('mpi4py' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
