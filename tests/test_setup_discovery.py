"""How ``scripts/setup-env.sh`` finds MPI and parallel HDF5 (``--show``), with fake compiler
wrappers on a PATH that holds nothing else: the order HDF5_DIR > h5pcc > pkg-config, and
clear errors for a serial HDF5 or a missing MPI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "setup-env.sh"
TOOLS = ("bash", "grep", "dirname", "readlink", "ls", "env", "cat")


def _hdf5(prefix: Path, parallel: bool = True) -> Path:
    """A fake HDF5 install: include/H5pubconf.h and lib/libhdf5.so."""
    (prefix / "include").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "lib" / "libhdf5.so").touch()
    flag = "#define H5_HAVE_PARALLEL 1\n" if parallel else "/* #undef H5_HAVE_PARALLEL */\n"
    (prefix / "include" / "H5pubconf.h").write_text(flag)
    return prefix


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def site(tmp_path):
    """bin/ with the basic tools only (no system mpicc, h5pcc, pkg-config)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for t in TOOLS:
        (bin_dir / t).symlink_to(shutil.which(t))
    return tmp_path


def _mpi(site: Path) -> None:
    _tool(site / "bin", "mpicc", "echo gcc")
    _tool(site / "bin", "mpirun", "true")


def _h5pcc(site: Path, prefix: Path, parallel: bool = True) -> None:
    yes = "yes" if parallel else "no"
    _tool(site / "bin", "h5pcc",
          f'case $1 in -showconfig) echo "   Parallel HDF5: {yes}";; '
          f'-show) echo "mpicc -I{prefix}/include -L{prefix}/lib -lhdf5";; esac')


def show(site: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(site / "bin" / "bash"), str(SCRIPT), "--show"],
                          env={"PATH": str(site / "bin"), **env}, capture_output=True,
                          text=True, timeout=30)


def test_h5pcc_on_path(site):
    _mpi(site)
    prefix = _hdf5(site / "hdf5")
    _h5pcc(site, prefix)
    r = show(site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"MPICC={site}/bin/mpicc", f"HDF5_INCLUDEDIR={prefix}/include",
        f"HDF5_LIBDIR={prefix}/lib", f"HDF5 from: {site}/bin/h5pcc"]


def test_hdf5_dir_wins_over_h5pcc(site):
    _mpi(site)
    _h5pcc(site, _hdf5(site / "other"))
    prefix = _hdf5(site / "hdf5")
    r = show(site, HDF5_DIR=str(prefix), MPICC=str(site / "bin" / "mpicc"))
    assert r.returncode == 0, r.stderr
    assert f"HDF5_DIR={prefix}" in r.stdout.splitlines()


def test_serial_hdf5_is_refused(site):
    _mpi(site)
    prefix = _hdf5(site / "hdf5", parallel=False)
    r = show(site, HDF5_DIR=str(prefix))
    assert r.returncode == 1
    assert "H5_HAVE_PARALLEL" in r.stderr and str(prefix) in r.stderr
    _h5pcc(site, prefix, parallel=False)
    r = show(site)
    assert r.returncode == 1
    assert "does not say 'Parallel HDF5: yes'" in r.stderr


def test_nothing_found_says_what_to_do(site):
    r = show(site)
    assert r.returncode == 1
    assert "'mpicc' is not on PATH" in r.stderr and "module load" in r.stderr
    _mpi(site)
    r = show(site)
    assert r.returncode == 1
    assert "no parallel HDF5 found" in r.stderr and "HDF5_DIR" in r.stderr
