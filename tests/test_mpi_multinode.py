"""Multi-node jobs, simulated on one machine (the ``nodes`` fixture: one Open MPI daemon per
"node" started through an ssh stand-in, TCP between all ranks, ``MPI_COMM_TYPE_SHARED`` gives
one communicator per node).

Truth: every multi-node job writes files identical (bit for bit) to the 1-rank job, and the
gather's byte counters equal what the plan must move. Ranks own contiguous (module, ASIC)
ranges and a module's slabs are read by its owners (``plan.assign_reads``), so, with ``F_m``
the frames used of module m and ``B = 8 * 2 * 64 * 64 * 2`` bytes (8 ASIC blocks of both
gain planes, uint16):

- 2 + 2 ranks on 2 modules: each node owns one module, nothing crosses nodes; without node
  sharing the reader sends the 8 ASICs of the other rank of its node, ``(F_0 + F_1) * B``;
- 3 + 1 ranks: rank 3 (node 2) owns ASICs 8-15 of module 1, rank 2 (node 1) ASICs 0-7, so
  every frame of module 1 sends 8 ASICs across nodes, ``F_1 * B``; module 0 stays on node 1
  (``F_0 * B`` between its ranks without node sharing, nothing with it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from calib_mpi.synthetic.xfel import DarkRunSet, write_config, write_dark_runs
from calib_mpi.synthetic.xfel_drscs import (
    XfelDrscsSet,
    write_xfel_drscs_config,
    write_xfel_drscs_runs,
)
from calib_mpi.synthetic.xfel_scans import (
    DrspcRunSet,
    XrayRunSet,
    write_drspc_runs,
    write_scan_config,
    write_xray_runs,
)

from .conftest import DRSCS_FIELDS, assert_currents_equal_serial, load_datasets, run_mpi

pytestmark = pytest.mark.mpi

#: 2 modules x 3 runs x 12 trains x 3 cells (module 1: 9 trains with data)
DARK = DarkRunSet(n_cells=3, n_trains=12, n_sequences=2, defects=False)
DATASETS = ("offset", "noise", "gain_level", "gain_level_std", "threshold", "bad_pixels")
#: bytes of 8 ASIC blocks of one frame
B8 = 8 * 2 * 64 * 64 * 2


@pytest.fixture(scope="module")
def dark(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(raw dir, work dir, datasets of the 1-rank job per module)."""
    base = tmp_path_factory.mktemp("mn_dark")
    raw = base / "raw"
    write_dark_runs(raw, DARK)
    conf = write_config(base / "one.conf", raw, base / "one", DARK)
    r = run_mpi(1, [conf], timeout=60)
    assert r.returncode == 0, r.output
    return raw, base, {m: _load(base / "one", m) for m in DARK.modules}


def _load(out: Path, module: int) -> dict:
    with h5py.File(out / "dark" / f"dark_AGIPD{module:02d}_xfel.h5", "r") as f:
        d = {k: f[k][()] for k in DATASETS}
        d["frames_used"] = f["metadata/frames_used"][()]
    return d


def _run_dark(nodes, dark, layout, name, *args, **conf):
    raw, base, _ = dark
    out = base / name
    report = base / f"{name}.json"
    c = write_config(base / f"{name}.conf", raw, out, DARK, report=report, **conf)
    r = nodes.run(layout, [c, *args], timeout=90)
    assert r.returncode == 0, r.output
    return out, json.loads(report.read_text())


def _assert_same_as_one_rank(dark, out):
    for m in DARK.modules:
        a, b = dark[2][m], _load(out, m)
        for k in a:
            assert np.array_equal(a[k], b[k], equal_nan=True), (m, k)


def _frames(dark, module):
    return int(dark[2][module]["frames_used"].sum())


@pytest.mark.parametrize("sharing", [True, False], ids=["node-sharing", "no-node-sharing"])
def test_dark_2x2(nodes, dark, sharing):
    out, rep = _run_dark(nodes, dark, (2, 2), f"x2x2{sharing}",
                         *([] if sharing else ["--no-node-sharing"]))
    _assert_same_as_one_rank(dark, out)
    assert (rep["n_nodes"], rep["n_ranks"]) == (2, 4)
    assert rep["bytes_sent_other_nodes"] == 0
    f0, f1 = _frames(dark, 0), _frames(dark, 1)
    assert rep["bytes_sent_same_node"] == (0 if sharing else (f0 + f1) * B8)


@pytest.mark.parametrize("sharing", [True, False], ids=["node-sharing", "no-node-sharing"])
def test_dark_3_plus_1(nodes, dark, sharing):
    out, rep = _run_dark(nodes, dark, (3, 1), f"x3p1{sharing}",
                         *([] if sharing else ["--no-node-sharing"]))
    _assert_same_as_one_rank(dark, out)
    assert (rep["n_nodes"], rep["n_ranks"]) == (2, 4)
    f0, f1 = _frames(dark, 0), _frames(dark, 1)
    assert rep["bytes_sent_other_nodes"] == f1 * B8
    assert rep["bytes_sent_same_node"] == (0 if sharing else f0 * B8)


def test_dark_2x1(nodes, dark):
    out, rep = _run_dark(nodes, dark, (2, 1), "x2x1")
    _assert_same_as_one_rank(dark, out)
    assert (rep["n_nodes"], rep["n_ranks"]) == (2, 3)
    assert rep["bytes_sent_other_nodes"] > 0


def _same_files(a: Path, b: Path) -> None:
    """Every dataset of HDF5 file ``b`` equals that of ``a``, bit for bit."""
    names = []
    with h5py.File(a, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    got, want = load_datasets(b, names), load_datasets(a, names)
    for k in names:
        assert np.array_equal(got[k], want[k], equal_nan=want[k].dtype.kind == "f"), k


@pytest.mark.parametrize("kind", ["drspc", "xray"])
def test_scans_3_plus_1(nodes, tmp_path, kind):
    """drspc (modules 0 and 9: module 9 split between the nodes) and xray (one module, its
    ASICs 12-15 on node 2) across nodes give the 1-rank files."""
    if kind == "drspc":
        p = DrspcRunSet(n_cells=1)
        write_drspc_runs(tmp_path / "raw", p)
        names = ("drspc/drspc_AGIPD00_xfel.h5", "drspc/drspc_AGIPD09_xfel.h5")
    else:
        p = XrayRunSet(n_trains=160, lost_trains={0: (5,)})
        write_xray_runs(tmp_path / "raw", p)
        names = ("xray/xray_AGIPD03_xfel.h5",)
    outs = {}
    for n, layout in ((1, None), (4, (3, 1))):
        conf = write_scan_config(tmp_path / f"{n}.conf", tmp_path / "raw", tmp_path / f"o{n}",
                                 p, chunk_frames=1024 if n == 1 else 16)
        r = run_mpi(1, [conf], timeout=90) if layout is None else nodes.run(layout, [conf])
        assert r.returncode == 0, r.output
        outs[n] = tmp_path / f"o{n}"
    for name in names:
        _same_files(outs[1] / name, outs[4] / name)


def test_drscs_currents_on_groups_spanning_both_nodes(nodes, tmp_path):
    """2 + 2 ranks, 2 currents: the rank groups are ranks {0, 2} and {1, 3} (``rank %
    groups``), each on both nodes; every current equals a serial ``process_scan`` of the
    truth's scans and the merge equals the design."""
    p = XfelDrscsSet()
    truth = write_xfel_drscs_runs(tmp_path / "raw", p)
    conf = write_xfel_drscs_config(tmp_path / "run.conf", tmp_path / "raw", tmp_path / "out",
                                   p, chunk_frames=7, report=tmp_path / "report.json")
    r = nodes.run((2, 2), [conf], timeout=150)
    assert r.returncode == 0, r.output
    names = ["chosen_current"] + [f"currents/{c}/{k}" for c in p.currents for k in DRSCS_FIELDS]
    got = load_datasets(tmp_path / "out" / f"drscs/drscs_AGIPD{p.module:02d}_xfel.h5", names)
    with h5py.File(truth, "r") as t:
        tr = {k: t[k][()] for k in t}
    assert_currents_equal_serial(got, tr, p.currents)
    assert np.array_equal(got["chosen_current"][0], tr["expected_chosen"])
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["n_nodes"] == 2 and rep["bytes_sent_other_nodes"] > 0


def _job_processes(marker: str) -> list[int]:
    """Pids of processes whose command line mentions ``marker``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _assert_all_gone(marker: str, wait: float = 20) -> None:
    """Every rank of the job has ended (within ``wait`` s of mpirun)."""
    t_end = time.monotonic() + wait
    while _job_processes(marker) and time.monotonic() < t_end:
        time.sleep(0.2)
    left = _job_processes(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"ranks still running after the job ended: {left}"


def _no_results(out: Path) -> None:
    """No module file, final or temporary (``*.tmp``), was left by the failed job (output
    locks may be: a later job takes them over)."""
    d = out / "dark"
    final = [f"dark_AGIPD{m:02d}_xfel.h5" for m in DARK.modules]
    left = sorted(p.name for p in d.iterdir() if p.name in final
                  or p.name.endswith(".tmp")) if d.is_dir() else []
    assert not left, left


def test_rank_on_second_node_dies_mid_gather(nodes, dark, tmp_path):
    raw = dark[0]
    out = tmp_path / "out"
    conf = write_config(tmp_path / "die.conf", raw, out, DARK, chunk_frames=6)
    r = nodes.run((2, 2), [conf], timeout=90,
                  env={"CALIB_MPI_TEST_FAIL_READ": "rank=3,round=1,mode=exit"})
    assert r.returncode != 0, r.output
    assert "plan: 3 run(s)" in r.output, r.output  # the job started: not a launch failure
    _assert_all_gone(str(conf))
    _no_results(out)


def test_second_node_daemon_killed_mid_gather(nodes, dark, tmp_path):
    raw = dark[0]
    out = tmp_path / "out"
    conf = write_config(tmp_path / "daemon.conf", raw, out, DARK, chunk_frames=6)
    stalled = tmp_path / "stalled"
    cmd, env = nodes.command((2, 2), [conf])
    env["CALIB_MPI_TEST_FAIL_READ"] = f"rank=3,round=1,mode=stall,file={stalled}"
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
    try:
        t_end = time.monotonic() + 60
        while not stalled.exists() and p.poll() is None and time.monotonic() < t_end:
            time.sleep(0.1)
        assert stalled.exists(), "rank 3 never reached round 1 of the gather"
        os.kill(nodes.daemon_pid(1), signal.SIGKILL)
        try:
            stdout, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("mpirun did not end within 60 s of losing the second node's daemon")
        assert p.returncode != 0, stdout + stderr
        _assert_all_gone(str(conf))
        _no_results(out)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
