"""HDF5 driver choice: clear messages when h5py lacks MPI support."""

import pytest

from calib_mpi import parallel
from calib_mpi.errors import ConfigError


class FakeComm:
    def __init__(self, size):
        self.size = size


def test_auto_uses_mpio_when_available(monkeypatch):
    monkeypatch.setattr(parallel, "h5py_has_mpi", lambda: True)
    assert parallel.resolve_driver("auto", FakeComm(4)) == "mpio"
    assert parallel.resolve_driver("posix", FakeComm(4)) == "posix"


def test_without_mpi_h5py_one_rank_falls_back_to_serial(monkeypatch):
    monkeypatch.setattr(parallel, "h5py_has_mpi", lambda: False)
    assert parallel.resolve_driver("auto", FakeComm(1)) == "posix"


def test_without_mpi_h5py_several_ranks_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(parallel, "h5py_has_mpi", lambda: False)
    with pytest.raises(ConfigError, match="h5py has no MPI support.*one rank"):
        parallel.resolve_driver("auto", FakeComm(3))
    with pytest.raises(ConfigError, match=r"get_config\(\).mpi is False"):
        parallel.resolve_driver("mpio", FakeComm(1))


def test_this_environment_has_parallel_h5py():
    """The set-up script builds h5py against parallel HDF5; a serial wheel is a known trap."""
    assert parallel.h5py_has_mpi()
