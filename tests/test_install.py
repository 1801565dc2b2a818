"""A built wheel works outside the source tree: ``calib-mpi --dry-run`` and
``calib-mpi-submit --dry-run`` from a fresh virtual environment.

What this proves: the wheel built from the repository (``pip wheel --no-deps
--no-build-isolation``) holds everything calib-mpi reads at run time (facility defaults, cluster
defaults, job template, found through ``importlib.resources``), its console scripts start, and
its declared requirements are met by an environment like the one ``scripts/setup-env.sh``
makes (pip installs it with ``--no-index`` and dependency checking on).

What it does not prove: that the dependencies install from PyPI. To keep the test at a few
seconds, the fresh venv does not build its own parallel h5py; it sees the shared venv's
packages through a ``.pth`` line naming a directory of links to them, with calib-mpi's own
editable install left out. ``calib_mpi`` is checked to be imported from the fresh venv, and the
commands run from a directory outside the source tree with no ``PYTHONPATH``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from calib_mpi.mpienv import clean_environ

from .conftest import MPI_ENV

REPO = Path(__file__).resolve().parent.parent
SHARED_SITE = Path(sysconfig.get_paths()["purelib"])
TIMEOUT = 120


def _run(cmd: list, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = clean_environ(MPI_ENV)
    for key in list(env):
        if key == "PYTHONPATH" or key.startswith("CALIB_MPI_") or key == "VIRTUAL_ENV":
            del env[key]
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def _shared_packages(dest: Path) -> Path:
    """Links to the shared venv's installed packages, without calib-mpi and without .pth files
    (so the editable install of the source tree is not on the path)."""
    dest.mkdir()
    for item in SHARED_SITE.iterdir():
        name = item.name.lower()
        if name.startswith(("calib_mpi", "calib-mpi", "__editable__")) or name.endswith(".pth"):
            continue
        (dest / item.name).symlink_to(item)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the wheel installed."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "demo*",
        "bench-out", "_calib_kernels_*"))
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", dist, src], cwd=base)
    wheels = list(dist.glob("calib_mpi-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=base).stdout.strip())
    (site / "shared.pth").write_text(f"{_shared_packages(base / 'shared')}\n")
    _run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", dist, "calib-mpi"],
         cwd=base)
    where = _run([py, "-c", "import calib_mpi; print(calib_mpi.__file__)"], cwd=base).stdout
    assert Path(where.strip()).is_relative_to(venv), where
    return venv / "bin"


def test_wheel_holds_the_package_data(installed):
    out = _run([installed / "python", "-c",
                "from calib_mpi.config import facility_dir; from calib_mpi.submit import "
                "default_template; print(facility_dir()); print(default_template())"],
               cwd=installed).stdout.split()
    venv = installed.parent
    assert Path(out[0]).is_relative_to(venv) and Path(out[1]).is_relative_to(venv), out
    names = {p.name for p in Path(out[0]).iterdir()}
    assert {"xfel.conf", "cfel.conf", "cluster.conf"} <= names
    assert Path(out[1]).is_file()


def test_installed_commands_dry_run(installed, dark_set, tmp_path):
    """Both commands read the shipped defaults: the detector name comes from xfel.conf, the
    script from the shipped template."""
    conf = dark_set.config(tmp_path / "run.conf", tmp_path / "out")
    lines = conf.read_text().splitlines()
    conf.write_text("".join(f"{x}\n" for x in lines if not x.startswith("detector")))
    run = _run([installed / "calib-mpi", conf, "--dry-run"], cwd=tmp_path)
    assert "run 9001: 20 trains (IDs 100000..100019)" in run.stdout, run.stdout
    assert not (tmp_path / "out" / "dark").exists()
    job = _run([installed / "calib-mpi-submit", "--dry-run", conf, "--", "--modules", "0"],
               cwd=tmp_path).stdout
    assert job.startswith("#!/bin/bash\n")
    assert f"calib-mpi {conf} --modules 0" in job
    assert f"source {installed.parent}/bin/activate" in job
