"""drspc and drscs runs given in another order (issue 16): the pixel group each run injects is
found in its data, the runs are put right (same constants as the right order), unclear or
shared groups are refused, ``run_order = trust`` keeps the order given."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from calib_mpi.synthetic.xfel_drscs import (
    XfelDrscsSet,
    write_xfel_drscs_config,
    write_xfel_drscs_runs,
)
from calib_mpi.synthetic.xfel_scans import DrspcRunSet, write_drspc_runs, write_scan_config

from .conftest import run_mpi

pytestmark = pytest.mark.mpi

REORDERED = "inject their pixel groups in the order"


@pytest.fixture(scope="module")
def drspc(tmp_path_factory):
    p = DrspcRunSet(modules=(0,), n_cells=2)
    raw = tmp_path_factory.mktemp("scanorder") / "drspc"
    write_drspc_runs(raw, p)
    return raw, p


def _results(out, name: str) -> dict:
    with h5py.File(out / name, "r") as f:
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _run(tmp_path, conf, runs=(), extra=()):
    args = [conf, *(["--runs", *map(str, runs)] if runs else []), *extra]
    return run_mpi(2, args, timeout=180)


def test_drspc_runs_in_another_order(drspc, tmp_path):
    raw, p = drspc
    res = {}
    for name, runs in (("given", ()), ("reversed", p.runs[::-1])):
        out = tmp_path / name
        r = _run(tmp_path, write_scan_config(tmp_path / f"{name}.conf", raw, out, p), runs)
        assert r.returncode == 0, r.output
        assert (REORDERED in r.stderr) == (name == "reversed"), r.stderr
        res[name] = _results(out / "drspc", "drspc_AGIPD00_xfel.h5")
    assert _same(res["given"], res["reversed"])
    # trusted, the reversed order is processed as given: other constants
    out = tmp_path / "trusted"
    r = _run(tmp_path, write_scan_config(tmp_path / "t.conf", raw, out, p), p.runs[::-1],
             ["--run_order", "trust"])
    assert r.returncode == 0 and REORDERED not in r.stderr, r.output
    trusted = _results(out / "drspc", "drspc_AGIPD00_xfel.h5")
    assert not np.array_equal(trusted["slope"], res["given"]["slope"], equal_nan=True)


def test_drspc_two_runs_injecting_one_group_are_refused(drspc, tmp_path):
    """Run 9102's files replaced by a copy of run 9101 (chip row group 0 twice)."""
    raw, p = drspc
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    shutil.rmtree(copy / "r9102")
    (copy / "r9102").mkdir()
    for f in (copy / "r9101").glob("RAW-*AGIPD*.h5"):
        shutil.copy(f, copy / "r9102" / f.name.replace("R9101", "R9102"))
    out = tmp_path / "out"
    r = _run(tmp_path, write_scan_config(tmp_path / "c.conf", copy, out, p))
    assert r.returncode == 2, r.output
    assert "each must inject a different chip row group (rho mod 8)" in r.stderr
    assert "run 9101: 0, run 9102: 0" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_drscs_runs_of_a_current_in_another_order(tmp_path):
    p = XfelDrscsSet(n_cells=1)
    raw = tmp_path / "raw"
    write_xfel_drscs_runs(raw, p)
    runs = p.runs
    swapped = (runs[1], runs[0], runs[3], runs[2]) + runs[4:]
    res = {}
    for name, given in (("given", ()), ("swapped", swapped)):
        out = tmp_path / name
        r = _run(tmp_path, write_xfel_drscs_config(tmp_path / f"{name}.conf", raw, out, p),
                 given)
        assert r.returncode == 0, r.output
        assert (REORDERED in r.stderr) == (name == "swapped"), r.stderr
        (f,) = (out / "drscs").glob("*.h5")
        res[name] = _results(out / "drscs", f.name)
    assert _same(res["given"], res["swapped"])
