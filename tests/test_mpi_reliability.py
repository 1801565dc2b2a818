"""Faults of the job itself (issue 17): concurrent jobs, write errors, nothing to do, bad
output locations, signals. Each job ends with a truthful exit code and one message, no rank
hangs (``run_mpi`` has a timeout), and the disk holds what the README's "What happens when
things go wrong" table says: no temporary file, no lock, old results untouched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from calib_mpi import guard
from calib_mpi.mpienv import clean_environ
from calib_mpi.readers import xfel
from calib_mpi.synthetic.xfel import DarkRunSet, write_config, write_dark_runs

from .conftest import MPI_ENV, VENV_BIN, run_mpi

pytestmark = pytest.mark.mpi

RESULT = "dark/dark_AGIPD00_xfel.h5"


def _leftovers(out: Path) -> list[Path]:
    """Temporary files and locks under ``out``."""
    if not out.exists():
        return []
    return sorted(p for p in out.rglob("*") if p.suffix in (".tmp", ".lock"))


def _our_lines(stderr: str) -> list[str]:
    """Lines calib-mpi wrote (without mpirun's report of the exit code)."""
    return [ln for ln in stderr.splitlines() if ln.startswith(("calib-mpi", "[calib-mpi"))]


def _config(rs, tmp_path: Path, out: Path, name: str = "run.conf", **extra) -> Path:
    return rs.config(tmp_path / name, out, **extra)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_lock_held_by_a_running_job_refuses_the_second(dark_set, tmp_path, n):
    """A lock of a live process (this test) refuses the job before anything is read; the
    lock and the result directory stay as they were."""
    out = tmp_path / "out"
    (out / "dark").mkdir(parents=True)
    lock = out / (RESULT + ".lock")
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "job": "x",
              "proc_start": guard._proc_start(os.getpid()), "started": "2026-01-01T00:00:00Z"}
    lock.write_text(json.dumps(holder))
    r = run_mpi(n, [_config(dark_set, tmp_path, out)], timeout=90)
    assert r.returncode == 2, r.output
    assert "being written by another job" in r.stderr and f"pid {os.getpid()}" in r.stderr
    assert str(lock) in r.stderr and "Traceback" not in r.stderr
    assert json.loads(lock.read_text()) == holder
    assert not (out / RESULT).exists()


def test_stale_lock_is_taken_over(tmp_path):
    """A lock of a process of this host that no longer runs is taken over with a warning."""
    result = tmp_path / "d" / "r.h5"
    result.parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(f"{result}.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "job": "old", "started": "then"}))
    locks = guard.OutputLocks()
    notes = locks.acquire([result])
    assert len(notes) == 1 and f"pid {dead.pid}" in notes[0] and "no longer runs" in notes[0]
    assert json.loads(Path(f"{result}.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(guard.OutputError, match="being written by another job"):
        guard.OutputLocks().acquire([result])  # a live holder (this process) refuses
    locks.release()
    assert not Path(f"{result}.lock").exists()


def test_two_concurrent_jobs_never_swap_results(dark_set, tmp_path):
    """Two jobs with different settings on one output directory, started together: one
    writes its own constants, the other is refused (lock held, or results exist already)."""
    out = tmp_path / "out"
    env = clean_environ(MPI_ENV)
    procs = {}
    for sigma in ("4", "6"):
        conf = _config(dark_set, tmp_path, out, name=f"s{sigma}.conf", offset_sigma=sigma)
        procs[sigma] = subprocess.Popen(
            ["mpirun", "-n", "2", str(VENV_BIN / "calib-mpi"), str(conf)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    res = {}
    for sigma, p in procs.items():
        try:
            res[sigma] = (p.wait(timeout=120), p.stderr.read())
        except subprocess.TimeoutExpired:
            for q in procs.values():
                os.killpg(q.pid, signal.SIGKILL)
            pytest.fail("concurrent jobs hung")
    codes = sorted(c for c, _ in res.values())
    assert codes == [0, 2], res
    winner = next(s for s, (c, _) in res.items() if c == 0)
    loser_err = next(e for c, e in res.values() if c == 2)
    assert ("being written by another job" in loser_err
            or "results exist already" in loser_err), loser_err
    with h5py.File(out / RESULT) as f:
        assert json.loads(f.attrs["config"])["offset_sigma"] == float(winner)
    assert _leftovers(out) == []


@pytest.mark.parametrize("n,fail_rank", [(1, 0), (2, 1), (4, 2)])
def test_write_error_ends_every_rank_with_exit_2(dark_set, tmp_path, n, fail_rank):
    """An error in the collective write (injected ENOSPC on one rank) ends the job on every
    rank with exit 2 and one message; no temporary file, no lock, no result."""
    out = tmp_path / "out"
    r = run_mpi(n, [_config(dark_set, tmp_path, out)], timeout=90,
                env={"CALIB_MPI_TEST_FAIL_WRITE": f"rank={fail_rank}"})
    assert r.returncode == 2, r.output
    assert f"failed on rank {fail_rank}: No space left on device" in r.stderr
    assert "job aborted" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # nor the output directory the job made


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs (root only): too small for a module result (~2.7 MB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the injected write error covers the rest)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    _umount(mnt)


def _umount(mnt: Path) -> None:
    """Unmount, waiting for ranks of an aborted job that are still exiting."""
    for _ in range(50):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_full_file_system_is_refused_before_writing(dark_set, tmp_path, small_fs, n):
    """Results that do not fit: refused before reading (exit 2, how much is missing)."""
    r = run_mpi(n, [_config(dark_set, tmp_path, small_fs)], timeout=90)
    assert r.returncode == 2, r.output
    assert f"not enough room in {small_fs / 'dark'} for 2 result file(s)" in r.stderr
    assert "MB missing" in r.stderr and "Traceback" not in r.stderr
    assert list(small_fs.iterdir()) == []
    # the reservation made before each file (another job may have taken the room since)
    with pytest.raises(guard.OutputError, match=r"needs about 5.0 MB, .* MB missing"):
        guard.check_room(small_fs / "r.h5.tmp", 5_000_000)
    assert list(small_fs.iterdir()) == []
    guard.check_room(small_fs / "r.h5.tmp", 500_000)
    assert (small_fs / "r.h5.tmp").stat().st_blocks * 512 >= 500_000


@pytest.mark.parametrize("n", [1, 2, 4])
def test_real_enospc_mid_write_does_not_hang(dark_set, tmp_path, small_fs, n):
    """Without the room check, HDF5 meets ENOSPC inside the collective write: the job still
    ends with exit 2 on every rank (it used to hang with 2 ranks, segfault with 1)."""
    r = run_mpi(n, [_config(dark_set, tmp_path, small_fs)], timeout=90,
                env={"CALIB_MPI_TEST_NO_ROOM_CHECK": "1"})
    assert r.returncode == 2, r.output
    assert "job aborted" in r.stderr
    assert _leftovers(small_fs) == [] and not list(small_fs.rglob("*.h5"))


@pytest.mark.parametrize("n", [1, 2, 4])
def test_every_module_skipped_is_an_error(dark_set, tmp_path, n):
    rs = dark_set.copy(tmp_path / "raw")
    for f in (rs.raw / "r9002").iterdir():
        f.unlink()
    out = tmp_path / "out"
    r = run_mpi(n, [_config(rs, tmp_path, out, missing_modules="skip")], timeout=90)
    assert r.returncode == 2, r.output
    assert "nothing to compute" in r.stderr and "missing from run(s) [9002]" in r.stderr
    assert not out.exists()


def test_corrupt_cell_id_is_left_out_as_an_outlier(tmp_path):
    """One frame with cellId 100 in a 3-cell run: the cell axis stays 3, the frame is left
    out, counted and named (plan, record, warning). Values: test_mpi_faults."""
    p = DarkRunSet(n_cells=3, n_trains=12, n_sequences=2, defects=False,
                   faults=(("outlier_cell", 1, 6),))
    write_dark_runs(tmp_path / "raw", p)
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", tmp_path / "raw", out, p, steps="preprocess")
    r = run_mpi(1, [conf], timeout=60)
    assert r.returncode == 0, r.output
    assert "cell ID(s) 100 (1 frame(s)) seen in very few trains" in r.stderr
    rec = json.loads((out / "dark" / "preprocess.json").read_text())
    assert rec["n_cells"] == 3
    for run in rec["runs"]:
        assert run["outlier_cells"] == {"100": 1} and run["cells_in_use"] == "0-2"
        assert run["modules"]["1"]["left_out"][xfel.CELL_OUTLIER] == 1


def _index(trains: list[list[int]]) -> xfel.FileIndex:
    """A FileIndex of one file whose train ``i`` has frames of the cells ``trains[i]``."""
    ids = np.arange(len(trains), dtype=np.uint64) + 1000
    count = np.array([len(t) for t in trains], np.int64)
    first = np.cumsum(count) - count
    cell_id = np.concatenate([np.array(t, np.int64) for t in trains])
    bad = np.zeros(0, np.int64)
    tmax, present = xfel._cell_summary(ids, first, count, bad, cell_id, False)
    n, rare = xfel._cell_trains(ids, first, count, bad, cell_id, False)
    return xfel.FileIndex(path="f", source="s", n_frames=len(cell_id), chunk_frames=1,
                          train_ids=ids, first=first, count=count, bad_frames=bad,
                          train_max_cell=tmax, cells_present=present, cell_trains=n,
                          rare_cells=rare)


def test_outlier_cells_only_where_the_cell_set_is_fixed():
    cells = [0, 1, 2, 3]
    # 200 trains: up to 2 trains (1 %) make a cell an outlier
    fi = _index([cells] * 100 + [cells + [100]] + [cells] * 98 + [[100]])
    assert xfel.drop_outlier_cells([fi]) == {100: 2}
    assert fi.max_cell == 3 and fi.train_max_cell[-1] == -1 and fi.train_max_cell[100] == 3
    assert fi.bad_frames.tolist() == [404, 797] and fi.dropped == {xfel.CELL_OUTLIER: 2}
    # in 12 trains only a cell of a single train is
    assert xfel.drop_outlier_cells([_index([cells] * 10 + [cells + [100]] * 2)]) == {}
    # few trains: every cell is rare, none is an outlier
    assert xfel.drop_outlier_cells([_index([cells] * 3)]) == {}
    # a cell in half the trains (setting changed during the run) is real
    assert xfel.drop_outlier_cells([_index([cells] * 6 + [cells[:3]] * 6)]) == {}


@pytest.mark.parametrize("n", [1, 2, 4])
def test_unusable_output_location_is_refused_before_reading(dark_set, tmp_path, n):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_mpi(n, [_config(dark_set, tmp_path, blocker / "out")], timeout=60)
    assert r.returncode == 2, r.output
    assert f"{blocker} is not a directory" in r.stderr
    assert "Traceback" not in r.stderr and len(_our_lines(r.stderr)) == 1
    if os.geteuid() == 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                       check=True)
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
    try:
        r = run_mpi(n, [_config(dark_set, tmp_path, ro / "out")], timeout=60)
    finally:
        if os.geteuid() == 0:
            _umount(ro)
    assert r.returncode == 2, r.output
    assert f"{ro}" in r.stderr and ("read-only" in r.stderr or "not writable" in r.stderr)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("n", [2, 4])
def test_posix_driver_with_several_ranks_is_refused_before_reading(dark_set, tmp_path, n):
    out = tmp_path / "out"
    r = run_mpi(n, [_config(dark_set, tmp_path, out, io_driver="posix")], timeout=60)
    assert r.returncode == 2, r.output
    assert "io_driver = posix" in r.stderr and f"{n} ranks" in r.stderr
    assert len(_our_lines(r.stderr)) == 1 and not out.exists()


def _ranks_of(mpirun: subprocess.Popen) -> list[int]:
    """Process ids of the children of a ``mpirun`` this test started."""
    pids = []
    for task in Path(f"/proc/{mpirun.pid}/task").iterdir():
        pids += [int(x) for x in (task / "children").read_text().split()]
    return pids


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_removes_temporary_files(dark_set, tmp_path, sig, code, n):
    """SIGTERM/SIGINT to the ranks while the result is being written: "interrupted", exit
    128 + signal, no temporary file, no lock, no result."""
    out = tmp_path / "out"
    env = clean_environ({**MPI_ENV, "CALIB_MPI_TEST_PAUSE_WRITE": "60"})
    p = subprocess.Popen(["mpirun", "-n", str(n), str(VENV_BIN / "calib-mpi"),
                          str(_config(dark_set, tmp_path, out))], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "dark").is_dir() or not list((out / "dark").glob("*.tmp")):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.2)
        for pid in _ranks_of(p):
            os.kill(pid, sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == code, err
    assert f"interrupted ({sig.name})" in err
    assert not out.exists()  # no temporary file, lock, result or directory made by the job


@pytest.mark.parametrize("n", [1, 2, 4])
def test_aborted_overwrite_keeps_old_results_and_record(dark_set, tmp_path, n):
    out = tmp_path / "out"
    r = run_mpi(n, [_config(dark_set, tmp_path, out)], timeout=90)
    assert r.returncode == 0, r.output
    record = (out / "dark" / "preprocess.json").read_bytes()
    old = (out / RESULT).read_bytes()
    r = run_mpi(n, [_config(dark_set, tmp_path, out, name="b.conf"), "--offset_sigma", "4",
                    "--overwrite"], timeout=90, env={"CALIB_MPI_TEST_FAIL_WRITE": "rank=0"})
    assert r.returncode == 2, r.output
    assert f"{out / RESULT} is unchanged" in r.stderr
    assert (out / RESULT).read_bytes() == old
    assert (out / "dark" / "preprocess.json").read_bytes() == record
    assert _leftovers(out) == []
