"""Bad input: a clear message naming what is wrong, non-zero exit on every rank without
hanging (run_mpi has a timeout), and no output file under its final name."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from .conftest import detach, run_mpi

pytestmark = pytest.mark.mpi


def _no_results(out):
    found = list(out.rglob("*.h5")) if out.exists() else []
    assert found == [], f"partial output left: {found}"


@pytest.fixture
def broken(dark_set, tmp_path):
    """A private copy of the run set, safe to damage."""
    return dark_set.copy(tmp_path / "raw")


def _run(rs, tmp_path, n=2, args=(), **extra):
    out = tmp_path / "out"
    conf = rs.config(tmp_path / "run.conf", out, **extra)
    return run_mpi(n, [conf, *args], timeout=90), out


def test_missing_run_directory(broken, tmp_path):
    (broken.raw / "r9002").rename(broken.raw / "elsewhere")
    r, out = _run(broken, tmp_path)
    assert r.returncode != 0
    assert "run 9002" in r.stderr and "does not exist" in r.stderr
    assert str(broken.raw / "r9002") in r.stderr
    _no_results(out)


def test_missing_module_files(dark_set, tmp_path):
    r, out = _run(dark_set, tmp_path, args=["--modules", "0", "5"])
    assert r.returncode != 0
    assert "module 5" in r.stderr and "RAW-R9001-AGIPD05-S00000.h5" in r.stderr
    _no_results(out)


def test_truncated_file(broken, tmp_path):
    bad = broken.raw / "r9003" / "RAW-R9003-AGIPD01-S00001.h5"
    detach(bad)
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    r, out = _run(broken, tmp_path, n=3)
    assert r.returncode != 0
    assert str(bad) in r.stderr and "truncated or corrupt" in r.stderr
    _no_results(out)


def test_corrupt_header(broken, tmp_path):
    bad = broken.raw / "r9001" / "RAW-R9001-AGIPD00-S00002.h5"
    detach(bad)
    with open(bad, "r+b") as f:
        f.write(b"\0" * 4096)
    r, out = _run(broken, tmp_path)
    assert r.returncode != 0
    assert str(bad) in r.stderr
    _no_results(out)


def test_wrong_number_of_dark_runs(dark_set, tmp_path):
    r, out = _run(dark_set, tmp_path, args=["--runs", "9001", "9002"])
    assert r.returncode != 0
    assert "dark needs exactly three run(s)" in r.stderr
    _no_results(out)


def test_image_data_of_wrong_shape(broken, tmp_path):
    bad = broken.raw / "r9002" / "RAW-R9002-AGIPD01-S00000.h5"
    detach(bad)
    src = "INSTRUMENT/SPB_DET_AGIPD1M-1/DET/1CH0:xtdf/image/data"
    with h5py.File(bad, "r+") as f:
        n = f[src].shape[0]
        del f[src]
        f.create_dataset(src, shape=(n, 2, 512, 64), dtype=np.uint16)
    r, out = _run(broken, tmp_path, n=4)
    assert r.returncode != 0
    assert str(bad) in r.stderr and "expected (frames, 2, 512, 128)" in r.stderr
    _no_results(out)


def test_wrong_detector_source(dark_set, tmp_path):
    r, out = _run(dark_set, tmp_path, args=["--detector", "MID_DET_AGIPD1M-1"])
    assert r.returncode != 0
    assert "MID_DET_AGIPD1M-1/DET/0CH0:xtdf" in r.stderr and "SPB_DET_AGIPD1M-1" in r.stderr
    _no_results(out)


def test_existing_output_is_never_silently_replaced(dark_set, tmp_path):
    r, out = _run(dark_set, tmp_path, n=1)
    assert r.returncode == 0, r.output
    target = out / "dark" / "dark_AGIPD00_xfel.h5"
    before = target.stat().st_mtime_ns
    # same configuration and inputs: the complete result is kept, the module skipped
    r, _ = _run(dark_set, tmp_path, n=2)
    assert r.returncode == 0, r.output
    assert "skipping it (resume)" in r.stderr and "nothing to do" in r.stderr
    assert target.stat().st_mtime_ns == before
    # different settings: refused, naming the file, the setting and the way out
    r, _ = _run(dark_set, tmp_path, n=2, args=["--offset_sigma", "4"])
    assert r.returncode != 0
    assert "results exist already" in r.stderr and str(target) in r.stderr
    assert "offset_sigma" in r.stderr and "overwrite" in r.stderr
    assert target.stat().st_mtime_ns == before
    r, _ = _run(dark_set, tmp_path, n=2, args=["--offset_sigma", "4", "--overwrite"])
    assert r.returncode == 0, r.output
    assert target.stat().st_mtime_ns != before
    assert not list(out.rglob("*.tmp"))


def test_rerun_after_a_crash_resumes(dark_set, tmp_path):
    """Module 0 complete, module 1 interrupted (only its .tmp exists): the rerun keeps module
    0, recomputes module 1 and says so."""
    r, out = _run(dark_set, tmp_path, n=2)
    assert r.returncode == 0, r.output
    done = out / "dark" / "dark_AGIPD00_xfel.h5"
    crashed = out / "dark" / "dark_AGIPD01_xfel.h5"
    reference = crashed.read_bytes()
    crashed.rename(crashed.with_name(crashed.name + ".tmp"))
    before = done.stat().st_mtime_ns
    r, _ = _run(dark_set, tmp_path, n=3)
    assert r.returncode == 0, r.output
    assert "module 0" in r.stderr and "skipping it (resume)" in r.stderr
    assert "left from an interrupted run" in r.stderr
    assert done.stat().st_mtime_ns == before
    assert crashed.exists() and not crashed.with_name(crashed.name + ".tmp").exists()
    with h5py.File(crashed) as f, h5py.File(__import__("io").BytesIO(reference)) as g:
        for k in ("offset", "noise", "bad_pixels"):
            assert np.array_equal(f[k][()], g[k][()], equal_nan=True)


def test_read_failure_on_one_rank_mid_gather(dark_set, tmp_path):
    """A rank whose read fails in the middle of gather ends the job on every rank."""
    out2 = tmp_path / "out2"
    conf = dark_set.config(tmp_path / "run2.conf", out2)
    r = run_mpi(3, [conf], timeout=90,
                env={"CALIB_MPI_TEST_FAIL_READ": "rank=1,round=1"})
    assert r.returncode != 0
    assert "injected read failure" in r.stderr and "[rank 1]" in r.stderr
    assert not out2.exists()  # the locks and the output directory made for them are gone
    _no_results(out2)


def test_rank_dying_mid_gather_ends_the_job(dark_set, tmp_path):
    """A rank that dies without a word (crash, OOM kill) must not leave the others hanging."""
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    r = run_mpi(3, [conf], timeout=90,
                env={"CALIB_MPI_TEST_FAIL_READ": "rank=2,round=1,mode=exit"})
    assert r.returncode != 0
    _no_results(out)
