"""End-to-end CFEL lab dark calibration under the real ``mpirun``: the same preprocess ->
gather -> process -> join path as XFEL, on synthetic lab runs (parts, interleaved analog and
digital, pairs split across parts, lost/duplicate/out-of-range/packet-loss/negative frames)."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
from scipy import stats

from calib_mpi.readers.cfel import DATA, NEGATIVE, NO_PARTNER
from calib_mpi.synthetic.cfel import CfelDarkSet, write_config, write_dark_runs

from .conftest import detach, run_mpi

pytestmark = pytest.mark.mpi

DATASETS = ("offset", "noise", "gain_level", "gain_level_std", "threshold", "bad_pixels",
            "metadata/frames_used", "metadata/trains_used", "metadata/runs")
NAMES = ("hg", "mg", "lg")
STEM = "M304_m2_dark_tint150ns"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Default synthetic lab set: module M304, 4 cells, 6/7/6 trains, 3 parts per run (one
    pair split across parts), every fault of :mod:`calib_mpi.synthetic.cfel`."""
    raw = tmp_path_factory.mktemp("cfel") / "raw"
    p = CfelDarkSet()
    truth = write_dark_runs(raw, p)
    return raw, truth, p


def _result(out):
    return out / "dark" / "dark_M304_cfel.h5"


@pytest.fixture(scope="module")
def runs_by_ranks(lab, tmp_path_factory):
    """The same job with 1, 2 and 4 ranks (small slabs: several read rounds per rank, slabs
    of one part on different ranks); returns {n: output_dir}."""
    raw, _, p = lab
    base = tmp_path_factory.mktemp("cfel_ranks")
    outs = {}
    for n in (1, 2, 4):
        out = base / f"out{n}"
        conf = write_config(base / f"run{n}.conf", raw, out, p, chunk_frames=8)
        r = run_mpi(n, [conf], timeout=60)
        assert r.returncode == 0, r.output
        outs[n] = out
    return outs


def _load(out):
    with h5py.File(_result(out), "r") as f:
        return {k: f[k][()] for k in DATASETS}, dict(f.attrs)


@pytest.mark.parametrize("n", [2, 4])
def test_identical_for_any_rank_count(runs_by_ranks, n):
    (a, aa), (b, ba) = _load(runs_by_ranks[1]), _load(runs_by_ranks[n])
    for k in DATASETS:
        assert np.array_equal(a[k], b[k], equal_nan=True), (n, k)
    assert aa["dropped"] == ba["dropped"]
    assert ba["n_ranks"] == n


def test_posix_driver_and_other_slabs_identical(lab, runs_by_ranks, tmp_path):
    """Serial HDF5, no prefetch thread and odd slab sizes give the same constants."""
    raw, _, p = lab
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", raw, out, p)
    r = run_mpi(1, [conf, "--io_driver", "posix", "--no_prefetch", "--chunk_frames", "3"],
                timeout=60)
    assert r.returncode == 0, r.output
    (a, _), (b, _) = _load(runs_by_ranks[1]), _load(out)
    for k in DATASETS:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_layout_name_and_attributes(runs_by_ranks, lab):
    """Output in the CFEL frame orientation (gain, cell, row, col), named by the serial."""
    _, _, p = lab
    c = p.n_cells
    assert sorted(x.name for x in (runs_by_ranks[2] / "dark").iterdir()) == [
        "dark_M304_cfel.h5", "preprocess.json"]
    with h5py.File(_result(runs_by_ranks[2]), "r") as f:
        for k in ("offset", "noise", "gain_level", "gain_level_std"):
            assert f[k].shape == (3, c, 128, 512) and f[k].dtype == np.float32
            assert list(f[k].attrs["dims"]) == ["gain", "cell", "row", "col"]
        assert f["threshold"].shape == (2, c, 128, 512)
        assert list(f["threshold"].attrs["dims"]) == ["threshold", "cell", "row", "col"]
        assert f["bad_pixels"].shape == (3, c, 128, 512) and f["bad_pixels"].dtype == np.uint32
        assert f.attrs["facility"] == "cfel" and f.attrs["module_serial"] == "M304"
        assert f.attrs["position"] == "m2" and f.attrs["temperature"] == p.temperature
        assert list(f.attrs["run_names"]) == list(NAMES)
        assert f.attrs["runs"].tolist() == list(p.runs)  # found from the file names
        assert f["metadata/runs"][()].tolist() == list(p.runs)
        inputs = json.loads(f.attrs["input_files"])
        assert len(inputs) == 3 * p.n_parts and all(i["size"] > 0 for i in inputs)


def test_values_match_samples_exactly(runs_by_ranks, lab):
    """Against statistics of exactly the frames that must be used, computed while writing:
    only float32 rounding may differ (|x| <= 8000 ADU -> 2**-11 ADU)."""
    _, truth, _ = lab
    got, _ = _load(runs_by_ranks[4])
    with h5py.File(truth, "r") as t:
        np.testing.assert_allclose(got["offset"], t["sample_offset"][()], rtol=0, atol=1e-3)
        np.testing.assert_allclose(got["gain_level"], t["sample_gain_level"][()], rtol=0,
                                   atol=1e-3)
        np.testing.assert_allclose(got["noise"], t["sample_noise"][()], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["gain_level_std"], t["sample_gain_level_std"][()],
                                   rtol=0, atol=1e-4)
        gl = t["sample_gain_level"][()]
        np.testing.assert_allclose(got["threshold"], (gl[:2] + gl[1:]) / 2, rtol=0, atol=1e-3)
        assert np.array_equal(got["metadata/frames_used"], t["frames_used"][()])


def _check_std(std, sigma, n, p=1e-9):
    """Population std of n normal values: n s^2 / sigma^2 ~ chi2(n - 1).

    Per value only the upper tail is checked (probability p): integer rounding makes s = 0
    far more likely than the chi-square law says, so the lower tail is checked on the average
    instead: per (gain, cell) the mean of the unbiased variance over the 65536 pixels,
    divided by sigma^2, is 1 within 6 standard errors sqrt(2 / ((n - 1) * pixels)).
    """
    k = np.maximum(n - 1, 1)
    q = n * std.astype(np.float64) ** 2 / sigma ** 2
    assert (q <= stats.chi2.isf(p, k)).all()
    ratio = (q / k).reshape(q.shape[0], q.shape[1], -1)
    pixels = ratio.shape[-1]
    se = np.sqrt(2 / (k[:, :, 0, 0] * pixels))
    assert (np.abs(ratio.mean(axis=-1) - 1) < 6 * se).all()


def _check_mean(mean, true, sigma, n):
    """Per value within 6 standard errors sigma/sqrt(n) of the generating value, and per
    (gain, cell) the average of those z-scores over the 65536 pixels within 6 / sqrt(65536)
    of 0 (sees a bias of a few hundredths of a standard error)."""
    z = (mean - true) / (sigma / np.sqrt(n))
    assert np.abs(z).max() < 6
    zm = z.reshape(z.shape[0], z.shape[1], -1)
    assert (np.abs(zm.mean(axis=-1)) < 6 / np.sqrt(zm.shape[-1])).all()


def test_values_match_generating_parameters(runs_by_ranks, lab):
    """Against the generating parameters (sigma includes the 1/12 ADU^2 of integer rounding):
    means by their standard errors, standard deviations by the chi-square law of
    n s^2 / sigma^2 (with 2..6 frames per cell a normal approximation of the error of a
    standard deviation is wrong). False failures over ~800k values: < 1e-2."""
    _, truth, _ = lab
    got, _ = _load(runs_by_ranks[2])
    with h5py.File(truth, "r") as t:
        n = t["frames_used"][()][:, :, None, None].astype(np.float64)
        sigma = np.sqrt(t["noise"][()] ** 2 + 1 / 12)
        sigma_d = np.sqrt(t["gain_level_noise"][()] ** 2 + 1 / 12)
        _check_mean(got["offset"], t["offset"][()], sigma, n)
        _check_std(got["noise"], sigma, n)
        _check_mean(got["gain_level"], t["gain_level"][()], sigma_d, n)
        _check_std(got["gain_level_std"], sigma_d, n)
        # the tolerances see real errors: an offset 0.1 ADU off, a noise 5 % too large
        with pytest.raises(AssertionError):
            _check_mean(got["offset"] + 0.1, t["offset"][()], sigma, n)
        with pytest.raises(AssertionError):
            _check_std(got["noise"] * 1.05, sigma, n)


def test_left_out_frames_in_metadata(runs_by_ranks, lab):
    """Every lost or invalid frame is counted with its reason in ``dropped`` (scan-time
    counts from the plan plus the negative-value frames found while reading, on any rank)."""
    _, truth, p = lab
    with h5py.File(truth, "r") as t:
        expected = {str(t[f"run_{nm}"].attrs["run"]):
                    json.loads(t[f"run_{nm}"].attrs["expected_counts"]) for nm in NAMES}
        trains = [int(t[f"run_{nm}/used"][()].any(axis=1).sum()) for nm in NAMES]
    for n, out in runs_by_ranks.items():
        with h5py.File(_result(out), "r") as f:
            dropped = json.loads(f.attrs["dropped"])
            assert dropped == expected, n
            assert all(d[NEGATIVE] == 1 and d[NO_PARTNER] == 4 for d in dropped.values())
            assert f["metadata/trains_used"][()].tolist() == trains
            assert f.attrs["trains_used"].tolist() == trains
    rec = json.loads((runs_by_ranks[1] / "dark" / "preprocess.json").read_text())
    assert [r["run_name"] for r in rec["runs"]] == list(NAMES)
    for r, nt in zip(rec["runs"], p.n_trains, strict=True):
        m = r["modules"]["0"]
        assert r["trains"]["count"] == nt and m["lost_trains"]["count"] == 1  # train 2
        assert m["sequences"] == p.n_parts and m["module_serial"] == "M304"


def test_explicit_runs_and_frame_numbers_warning(lab, tmp_path):
    """Run numbers from the config; n_cells not dividing frame_numbers is a warning (the last
    train is incomplete, n_trains rounded up), not an error."""
    raw, _, p = lab
    conf = write_config(tmp_path / "run.conf", raw, tmp_path / "out", p, runs="12 13 14",
                        n_cells=5)
    r = run_mpi(1, [conf, "--dry-run"], timeout=60)
    assert r.returncode == 0, r.output
    assert ("run 'hg' (12): frame_numbers = 48 is not a multiple of 2 x n_cells = 10; the last "
            "train is incomplete (n_trains rounded up to 5)") in r.stderr
    assert "run 12: 5 trains (positions 0..4)" in r.stdout
    assert not (tmp_path / "out" / "dark" / "dark_M304_cfel.h5").exists()


def _copy(raw, dest):
    shutil.copytree(raw, dest, copy_function=os.link)
    return dest


def _fails(conf, out, n=2, *extra):
    r = run_mpi(n, [conf, *extra], timeout=60)
    assert r.returncode == 2, r.output
    assert not (out / "dark" / "dark_M304_cfel.h5").exists()
    assert not list((out / "dark").glob("*.tmp")) if (out / "dark").exists() else True
    return r.stderr


def test_missing_part_is_an_error(lab, tmp_path):
    raw, _, p = lab
    raw2 = _copy(raw, tmp_path / "raw")
    d = raw2 / p.temperature / "dark"
    (d / f"{STEM}_lg_00014_part00001.nxs").unlink()
    out = tmp_path / "out"
    err = _fails(write_config(tmp_path / "run.conf", raw2, out, p), out)
    assert "calib-mpi: error: run 'lg' (14): parts in " in err
    assert str(d) in err
    assert f"{STEM}_lg_00014_part<part:05>.nxs" in err and "found parts [0, 2]" in err


def test_missing_run_is_an_error(lab, tmp_path):
    raw, _, p = lab
    raw2 = _copy(raw, tmp_path / "raw")
    for f in (raw2 / p.temperature / "dark").glob(f"{STEM}_mg_*"):
        f.unlink()
    out = tmp_path / "out"
    err = _fails(write_config(tmp_path / "run.conf", raw2, out, p), out, 1)
    assert f"run 'mg': no file {STEM}_mg_<run:05>_part00000.nxs" in err
    # an explicit run number that does not exist
    err = _fails(write_config(tmp_path / "run2.conf", raw, out, p, runs="12 13 99"), out, 1)
    assert f"run 'lg' (99): no file {STEM}_lg_00099_part<part:05>.nxs" in err


def test_wrong_frame_shape_is_an_error(lab, tmp_path):
    raw, _, p = lab
    raw2 = _copy(raw, tmp_path / "raw")
    bad = raw2 / p.temperature / "dark" / f"{STEM}_mg_00013_part00001.nxs"
    detach(bad)
    with h5py.File(bad, "r+") as f:
        n = f[DATA].shape[0]
        del f[DATA]
        f.create_dataset(DATA, data=np.zeros((n, 512, 128), np.int16))  # XFEL orientation
    out = tmp_path / "out"
    err = _fails(write_config(tmp_path / "run.conf", raw2, out, p), out, 2)
    assert f"file {bad}: {DATA} has shape ({n}, 512, 128), expected (frames, 128, 512)" in err
