"""End-to-end dark calibration under the real ``mpirun``: values against ground truth,
identical output for 1-4 ranks, lost trains, metadata."""

from __future__ import annotations

import json
import os
import re

import h5py
import numpy as np
import pytest

from calib_mpi.badpixels import BadPixels
from calib_mpi.synthetic.xfel import DEFECTS

from .conftest import run_mpi

pytestmark = pytest.mark.mpi

DATASETS = ("offset", "noise", "gain_level", "gain_level_std", "threshold", "bad_pixels")


@pytest.fixture(scope="module")
def runs_by_ranks(dark_set, tmp_path_factory):
    """Run the same job with 1, 2, 3 and 4 ranks; returns {n: output_dir}."""
    base = tmp_path_factory.mktemp("ranks")
    outs = {}
    for n in (1, 2, 3, 4):
        out = base / f"out{n}"
        conf = dark_set.config(base / f"run{n}.conf", out)
        r = run_mpi(n, [conf])
        assert r.returncode == 0, r.output
        outs[n] = out
    return outs


def _load(out, module):
    with h5py.File(out / "dark" / f"dark_AGIPD{module:02d}_xfel.h5", "r") as f:
        return {k: f[k][()] for k in DATASETS}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_identical_for_any_rank_count(runs_by_ranks, n):
    for m in (0, 1):
        a, b = _load(runs_by_ranks[1], m), _load(runs_by_ranks[n], m)
        for k in DATASETS:
            assert np.array_equal(a[k], b[k], equal_nan=True), (n, m, k)


def test_shapes_dtypes_and_layout(runs_by_ranks, dark_set):
    c = dark_set.params.n_cells
    with h5py.File(runs_by_ranks[1] / "dark" / "dark_AGIPD00_xfel.h5", "r") as f:
        for k in ("offset", "noise", "gain_level"):
            assert f[k].shape == (3, c, 512, 128) and f[k].dtype == np.float32
        assert f["threshold"].shape == (2, c, 512, 128) and f["threshold"].dtype == np.float32
        assert f["bad_pixels"].shape == (3, c, 512, 128) and f["bad_pixels"].dtype == np.uint32
        assert list(f["offset"].attrs["dims"]) == ["gain", "cell", "slow_scan", "fast_scan"]


@pytest.mark.parametrize("module", [0, 1])
def test_values_match_samples_exactly(runs_by_ranks, dark_set, module):
    """Against statistics computed independently while the frames were written: only float32
    rounding may differ (|x| <= 8000 ADU -> 2**-11 ADU)."""
    got = _load(runs_by_ranks[3], module)
    with h5py.File(dark_set.truth, "r") as t:
        g = t[f"module_{module:02d}"]
        np.testing.assert_allclose(got["offset"], g["sample_offset"][()], rtol=0, atol=1e-3)
        np.testing.assert_allclose(got["gain_level"], g["sample_gain_level"][()], rtol=0,
                                   atol=1e-3)
        np.testing.assert_allclose(got["noise"], g["sample_noise"][()], rtol=0, atol=1e-4)
        gl = g["sample_gain_level"][()]
        np.testing.assert_allclose(got["threshold"], (gl[:2] + gl[1:]) / 2, rtol=0, atol=1e-3)


@pytest.mark.parametrize("module", [0, 1])
def test_values_match_generating_parameters(runs_by_ranks, dark_set, module):
    """Offset within 6 standard errors sigma/sqrt(n) of the true mean (sigma includes the
    1/12 ADU^2 of integer rounding), noise within 6 standard errors of a standard deviation
    sigma/sqrt(2n); 6 sigma over ~200k values per gain keeps false failures < 1e-3."""
    got = _load(runs_by_ranks[2], module)
    with h5py.File(dark_set.truth, "r") as t:
        g = t[f"module_{module:02d}"]
        good = g["bad_pixels"][()] == 0
        n = g["frames_used"][()][:, :, None, None]
        sigma = np.sqrt(g["noise"][()] ** 2 + 1 / 12)
        z_off = np.abs(got["offset"] - g["offset"][()]) / (sigma / np.sqrt(n))
        assert z_off[good].max() < 6
        bias = np.sqrt((n - 1) / n)  # population std of n samples
        z_noise = np.abs(got["noise"] - sigma * bias) / (sigma / np.sqrt(2 * n))
        assert z_noise[good].max() < 6
        z_gl = np.abs(got["gain_level"] - g["gain_level"][()]) / (
            np.sqrt(g["gain_level_noise"][()] ** 2 + 1 / 12) / np.sqrt(n))
        assert z_gl[good].max() < 6


def test_a_wrong_offset_would_fail(dark_set, runs_by_ranks):
    """The tolerance above is tight enough to see an offset error of one ADU."""
    got = _load(runs_by_ranks[1], 0)
    with h5py.File(dark_set.truth, "r") as t:
        g = t["module_00"]
        n = g["frames_used"][()][:, :, None, None]
        sigma = np.sqrt(g["noise"][()] ** 2 + 1 / 12)
        z = np.abs(got["offset"] + 1.0 - g["offset"][()]) / (sigma / np.sqrt(n))
        assert z.max() > 6


@pytest.mark.parametrize("module", [0, 1])
def test_injected_bad_pixels_flagged(runs_by_ranks, dark_set, module):
    bad = _load(runs_by_ranks[4], module)["bad_pixels"]
    with h5py.File(dark_set.truth, "r") as t:
        true_bad = t[f"module_{module:02d}/bad_pixels"][()]
    assert np.all((bad & true_bad) == true_bad), "an injected defect lost its flag"
    ss, fs, _ = DEFECTS["dead"]
    assert np.all(bad[:, :, ss, fs] & BadPixels.DATA_STD_IS_ZERO)
    ss, fs, _ = DEFECTS["noisy"]
    assert np.all(bad[0, :, ss, fs] & BadPixels.NOISE_OUT_OF_THRESHOLD)
    assert not np.any(bad[1:, :, ss, fs] & BadPixels.NOISE_OUT_OF_THRESHOLD)
    ss, fs, _ = DEFECTS["hot"]
    assert np.all(bad[1, :, ss, fs] & BadPixels.OFFSET_OUT_OF_THRESHOLD)
    assert not np.any(bad[[0, 2], :, ss, fs] & BadPixels.OFFSET_OUT_OF_THRESHOLD)
    ss, fs, _ = DEFECTS["gain_swap"]
    assert np.all(bad[:2, :, ss, fs] & BadPixels.GAIN_THRESHOLDING_ERROR)
    # with 17-20 frames per cell the noise estimate has heavy tails: allow 1e-5 false flags
    false = (bad != 0) & (true_bad == 0)
    assert false.mean() < 1e-5


def test_lost_trains_and_metadata(runs_by_ranks, dark_set):
    out = runs_by_ranks[2]
    with h5py.File(dark_set.truth, "r") as t:
        for m in (0, 1):
            with h5py.File(out / "dark" / f"dark_AGIPD{m:02d}_xfel.h5", "r") as f:
                truth = t[f"module_{m:02d}"]
                assert f["metadata/trains_used"][()].tolist() == \
                    truth["trains_used"][()].tolist()
                assert np.array_equal(f["metadata/frames_used"][()], truth["frames_used"][()])
                assert f.attrs["n_ranks"] == 2
                cfg = json.loads(f.attrs["config"])
                assert cfg["modules"] == [0, 1]
                inputs = json.loads(f.attrs["input_files"])
                assert len(inputs) == 3 * dark_set.params.n_sequences
                assert all(i["size"] > 0 for i in inputs)
    # module 1 starts one train late and loses two: 17 of 20 trains
    assert dark_set.params.n_trains - 3 == 17
    with h5py.File(out / "dark" / "dark_AGIPD01_xfel.h5", "r") as f:
        assert f["metadata/trains_used"][()].tolist() == [17, 17, 17]
        dropped = json.loads(f.attrs["dropped"])
        assert dropped["9001"] == {"no frames in this module (trains)": 2}


def test_progress_report_pictures_and_export_after_run(dark_set, tmp_path):
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    report = tmp_path / "report.json"
    r = run_mpi(2, [conf, "--plot", "--export", "--report", report, "--plot_units", "mm",
                    "--pdu_names", "PDU_A", "PDU_B"])
    assert r.returncode == 0, r.output
    # progress: one line per run with trains/s and GB/s (log lines: not a terminal)
    for run in dark_set.params.runs:
        assert f"run {run}: {17 + 20} trains" in r.stderr
    assert "trains/s" in r.stderr and "GB/s" in r.stderr
    rep = json.loads(report.read_text())
    assert rep["n_ranks"] == 2 and len(rep["peak_rss_bytes_per_rank"]) == 2
    assert rep["bytes_read"] > 0 and rep["seconds_total"] > 0
    pngs = list((out / "dark" / "plots").glob("*.png"))
    assert len(pngs) >= 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "dark" / "plots" / "detector_offset_c0.png").is_file()  # EXtra-geom, mm axes
    assert (out / "dark" / "plots" / "AGIPD00_Q1M1_badpixels_bits.txt").is_file()
    exported = sorted((out / "dark" / "pycalibration").glob("Offset_AGIPD00_PDU_A.h5"))
    assert len(exported) == 1
    with h5py.File(exported[0]) as e, h5py.File(out / "dark" / "dark_AGIPD00_xfel.h5") as f:
        name = next(iter(e))
        data = e[f"{name}/Offset/0/data"][()]
        assert np.array_equal(data, f["offset"][()].transpose(3, 2, 1, 0))


@pytest.mark.parametrize("n,sharing,prefetch", [(3, True, True), (4, True, False),
                                                (3, False, True)])
def test_node_sharing_gives_identical_results(runs_by_ranks, dark_set, tmp_path, n, sharing,
                                              prefetch):
    """Ranks of one node consume the ASIC blocks other ranks read in place, from their read
    buffers in an MPI shared-memory window (also without the prefetch thread); with
    --no-node-sharing every block is sent by Alltoallv. The constants are the same as from
    one rank either way."""
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    args = [conf, "-v", "--chunk_frames", "40"]
    args += [] if sharing else ["--no-node-sharing"]
    args += [] if prefetch else ["--no_prefetch"]
    r = run_mpi(n, args)
    assert r.returncode == 0, r.output
    moved = re.findall(r"ASIC blocks from other ranks: (\d+) in place, (\d+) received",
                       r.output)
    assert moved, r.output
    in_place = sum(int(a) for a, _ in moved)
    received = sum(int(b) for _, b in moved)
    if sharing:
        assert in_place > 0
    else:
        assert in_place == 0 and received > 0
    for m in (0, 1):
        a, b = _load(runs_by_ranks[1], m), _load(out, m)
        for k in DATASETS:
            assert np.array_equal(a[k], b[k], equal_nan=True), (m, k)


def test_no_room_for_shared_memory_falls_back_to_sending(runs_by_ranks, dark_set, tmp_path):
    """When /dev/shm cannot hold a node's read buffers (a write to the window would crash
    with SIGBUS), the job warns once, sends the blocks instead and gives the same constants."""
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    r = run_mpi(3, [conf, "-v", "--chunk_frames", "40"], env={"CALIB_MPI_TEST_SHM_FREE": "1000"})
    assert r.returncode == 0, r.output
    assert r.output.count("not sharing read buffers between the ranks of a node") == 1, r.output
    assert "/dev/shm has 0 MB free" in r.output
    moved = re.findall(r"ASIC blocks from other ranks: (\d+) in place, (\d+) received",
                       r.output)
    assert moved and sum(int(a) for a, _ in moved) == 0
    assert sum(int(b) for _, b in moved) > 0
    for m in (0, 1):
        a, b = _load(runs_by_ranks[1], m), _load(out, m)
        for k in DATASETS:
            assert np.array_equal(a[k], b[k], equal_nan=True), (m, k)


def test_serial_hdf5_driver_gives_identical_results(runs_by_ranks, dark_set, tmp_path):
    """One rank with plain (posix) HDF5 I/O, and without the prefetch thread, writes the same
    constants as the mpio runs."""
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    r = run_mpi(1, [conf, "--io_driver", "posix", "--no_prefetch", "--chunk_frames", "7"])
    assert r.returncode == 0, r.output
    for m in (0, 1):
        a, b = _load(runs_by_ranks[1], m), _load(out, m)
        for k in DATASETS:
            assert np.array_equal(a[k], b[k], equal_nan=True), (m, k)


@pytest.mark.parametrize("n,bind", [(1, "none"), (2, "none"), (1, "core"), (2, "core")])
def test_ranks_take_their_share_of_the_cores(dark_set, tmp_path, n, bind):
    """With threads = 0 a rank uses its share of the cores it may run on: unbound ranks
    (mpirun --bind-to none) divide the node's cores (at least 1 each), a rank bound to one
    core uses 1 thread."""
    cores = len(os.sched_getaffinity(0))
    if bind == "core" and n > cores:
        pytest.skip(f"{n} ranks bound to cores need {n} cores")
    conf = dark_set.config(tmp_path / "run.conf", tmp_path / "out")
    r = run_mpi(n, [conf, "--dry-run"], mpirun_args=("--bind-to", bind))
    assert r.returncode == 0, r.output
    want = max(1, cores // n) if bind == "none" else 1
    assert f"{n} rank(s), {want} thread(s) on rank 0" in r.output


@pytest.mark.parametrize("n,threads", [(1, 3), (2, 2)])
def test_threads_give_identical_results(runs_by_ranks, dark_set, tmp_path, n, threads):
    """Ranks consuming their ASICs with several threads (``threads``) write the same
    constants; the threads run even on one core (mpirun binds ranks to cores), so the test
    exercises the parallel path whatever the machine."""
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    r = run_mpi(n, [conf, "--threads", str(threads), "--chunk_frames", "40", "-v"])
    assert r.returncode == 0, r.output
    assert f"{threads} consume thread(s)" in r.output
    for m in (0, 1):
        a, b = _load(runs_by_ranks[1], m), _load(out, m)
        for k in DATASETS:
            assert np.array_equal(a[k], b[k], equal_nan=True), (m, k)
