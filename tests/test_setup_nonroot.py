"""The README's set-up without root, followed by a new non-root user.

The test creates a user, gives it a copy of the source tree and runs, as that user, the
README's cluster recipe: ``bash scripts/setup-env.sh`` (no Debian packages: the user cannot
install any) against the MPI and parallel HDF5 that the root set-up installed, found through
``mpicc``/``h5pcc`` on PATH as a cluster's ``module load`` would provide them. The Python side
(venv, packages from PyPI, h5py built with ``HDF5_MPI=ON``) goes into the user's home. Then the
recipe's checks: h5py has MPI, and ``mpirun -n 2 calib-mpi`` computes a dark run set.

Needs root (to create the user) and network access to PyPI; takes about 2-4 minutes (mostly
downloads and the h5py build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP_TIMEOUT = 900
USER = f"calibu{os.getpid() % 100000}"

pytestmark = pytest.mark.slow


def _as_user(home: Path, script: str, timeout: float) -> subprocess.CompletedProcess:
    """``script`` in a login-like bash of USER with a clean environment (no root's pip or
    Python settings, no ``OMPI_ALLOW_RUN_AS_ROOT``)."""
    env = ["HOME=" + str(home), "USER=" + USER, "LOGNAME=" + USER, "LANG=C.UTF-8",
           "PATH=/usr/local/bin:/usr/bin:/bin"]
    cmd = ["runuser", "-u", USER, "--", "env", "-i", *env, "bash", "-c",
           f"set -euo pipefail; cd {home}; {script}"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"as {USER}: {script!r} did not finish within {timeout} s\n"
                    f"stdout: {e.stdout}\nstderr: {e.stderr}")


@pytest.fixture
def user_home():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a non-root user (run under make test as root)")
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("useradd/runuser not available")
    if shutil.which("h5pcc") is None or shutil.which("mpicc") is None:
        pytest.skip("no system MPI/parallel HDF5 (make test installs them as root)")
    base = Path(tempfile.mkdtemp(prefix="calib-nonroot-"))
    base.chmod(0o755)
    home = base / USER
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell",
                    "/bin/bash", USER], check=True, capture_output=True, timeout=60)
    try:
        yield home
    finally:
        subprocess.run(["pkill", "-u", USER], capture_output=True, timeout=30)
        subprocess.run(["userdel", "--force", USER], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_setup_as_non_root_user(user_home, dark_set, tmp_path):
    src = user_home / "calib-mpi"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "demo*",
        "bench-out", "_calib_kernels_*"))
    shutil.copytree(dark_set.raw, user_home / "raw")
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(user_home)], check=True, timeout=60)

    t0 = time.monotonic()
    setup = _as_user(user_home, "cd calib-mpi && bash scripts/setup-env.sh", SETUP_TIMEOUT)
    took = time.monotonic() - t0
    log = f"setup-env.sh as {USER} ({took:.0f} s):\n{setup.stdout}\n{setup.stderr}"
    assert setup.returncode == 0, log
    print(log)
    assert "no Debian packages installed" in setup.stdout, log
    assert "parallel HDF5: /usr/bin/h5pcc" in setup.stdout, log
    assert "built with MPI support" in setup.stdout, log

    venv = src / ".venv"
    check = _as_user(user_home, f"{venv}/bin/python -c 'import h5py, calib_mpi; "
                     "assert h5py.get_config().mpi; print(calib_mpi.__file__)'", 120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(src)), check.stdout

    conf = dark_set.config(tmp_path / "run.conf", user_home / "out")
    text = conf.read_text().replace(str(dark_set.raw), str(user_home / "raw"))
    (user_home / "run.conf").write_text(text)
    run = _as_user(user_home, f"mpirun -n 2 {venv}/bin/calib-mpi run.conf", 300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in (user_home / "out" / "dark").glob("*.h5")) == [
        "dark_AGIPD00_xfel.h5", "dark_AGIPD01_xfel.h5"], run.stdout
