"""End-to-end CFEL lab xray (fluorescence) calibration under the real ``mpirun``.

The synthetic run (:func:`calib_mpi.synthetic.cfel_scans.write_xray_run`): module M304,
non-burst (1 cell, 2 frames per train), 402 trains in three parts (one analog/digital pair split
across parts 0 and 1), trains 5 and 70 lost, 0.4-0.6 photons per frame, one broken (cell, pixel)
of each kind per ASIC. The two jobs differ in rank count and ``chunk_frames`` (7 frames: slabs
cut inside the lab part index, frames reach the owners in other groupings); the histogram
origin, and so every output, must not change. Tolerances as in ``test_mpi_xray`` (derived in
``test_process_xray``): spacing pulls against the truth within 5.5 standard errors plus 0.25
bias allowance, mean pull within 0.05, spread 0.9..1.15.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from calib_mpi.readers.cfel import DATA, SEQUENCE
from calib_mpi.synthetic.cfel_scans import CfelXraySet, write_xray_config, write_xray_run

from .conftest import load_datasets, run_jobs
from .test_process_xray import WINDOW, check_pulls, truncated_m2

pytestmark = pytest.mark.mpi

FLOATS = ("photon_spacing", "spacing_error", "gain_adu_per_kev", "peak_position",
          "position_error", "peak_stddev", "peak_error", "quality")
DATASETS = FLOATS + ("n_entries", "underflow", "overflow", "histogram_origin", "bad_pixels",
                     "two_photon_spacing", "two_photon_error", "eval_status",
                     "metadata/origin_frames", "metadata/frames_used")
#: ranks -> chunk_frames
JOBS = {1: 1024, 2: 7}


@pytest.fixture(scope="module")
def lab_xray(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cfel_xray") / "raw"
    p = CfelXraySet()
    truth = write_xray_run(raw, p)
    return raw, truth, p


@pytest.fixture(scope="module")
def outputs(lab_xray, tmp_path_factory):
    raw, _, p = lab_xray
    return run_jobs(tmp_path_factory.mktemp("cfel_xray_out"), JOBS,
                    lambda conf, out, chunk: write_xray_config(conf, raw, out, p,
                                                               chunk_frames=chunk),
                    "xray/xray_M304_cfel.h5")


def _load(path):
    return load_datasets(path, DATASETS)


def test_identical_for_1_and_2_ranks(outputs):
    a, b = _load(outputs[1][0]), _load(outputs[2][0])
    for k in DATASETS:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_layout_and_metadata(outputs, lab_xray):
    _, _, p = lab_xray
    with h5py.File(outputs[2][0], "r") as f:
        for k in ("photon_spacing", "gain_adu_per_kev", "bad_pixels", "histogram_origin"):
            assert f[k].shape == (1, 1, 128, 512), k
            assert list(f[k].attrs["dims"]) == ["gain", "cell", "row", "col"], k
        assert f["peak_position"].shape == (2, 1, 128, 512)
        assert f["photon_spacing"].dtype == np.float32
        assert f.attrs["facility"] == "cfel" and f.attrs["module_serial"] == "M304"
        assert f["metadata/runs"][()].tolist() == [p.run]  # found from the file names
        assert f["metadata/trains_used"][()].tolist() == [p.n_trains - len(p.lost_trains)]


def _first_trains(raw: Path, p: CfelXraySet, n: int) -> np.ndarray:
    """Analog frames (train, 128, 512) of the first ``n`` trains with data, placed by
    ``sequence_number`` straight from the parts (non-burst: analog = even position)."""
    frames = {}
    for path in sorted((raw / p.temperature / "xray").glob("*.nxs")):
        with h5py.File(path, "r") as f:
            seq = f[SEQUENCE][()].astype(np.int64) - 1
            for j in np.nonzero(seq % 2 == 0)[0]:
                frames.setdefault(int(seq[j] // 2), f[DATA][j])
    return np.stack([frames[t] for t in sorted(frames)[:n]])


def test_origin_rule(outputs, lab_xray):
    """Origin = minimum of the first 64 trains with data minus 64 ADU, per pixel; the lost
    train 5 is skipped, not counted."""
    raw, _, p = lab_xray
    expected = _first_trains(raw, p, 64).astype(np.int64).min(axis=0) - 64
    with h5py.File(outputs[2][0], "r") as f:
        assert np.array_equal(f["histogram_origin"][0, 0], expected)
        assert f["metadata/origin_frames"][()].tolist() == [64]
        assert int(f["metadata/origin_trains"][()]) == 64
        assert f["metadata/frames_used"][()].tolist() == [p.n_trains - len(p.lost_trains)]


def test_spacing_matches_truth(outputs, lab_xray):
    _, truth, _ = lab_xray
    got = _load(outputs[2][0])
    with h5py.File(truth, "r") as t:
        good = (t["expected_bits"][0] == 0) & (got["bad_pixels"][0] == 0)
        noise, offset, spacing = t["noise"][()], t["offset"][()], t["spacing"][()]
        n0, n1 = t["n_photons"][0], t["n_photons"][1]
        sigma1 = np.sqrt(noise**2 + t.attrs["sigma_fano"] ** 2)
    m2 = truncated_m2(WINDOW)
    n0, n1 = np.maximum(n0, 1), np.maximum(n1, 1)
    se = np.sqrt(noise**2 / n0 + sigma1**2 / n1) / np.sqrt(m2)
    err = got["photon_spacing"][0].astype(np.float64) - spacing
    check_pulls(err[good], se[good], mean_tol=0.05)
    check_pulls(err[good], got["spacing_error"][0][good], mean_tol=0.05)
    for q, (mu, sig, n) in enumerate(((offset, noise, n0), (offset + spacing, sigma1, n1))):
        check_pulls((got["peak_position"][q] - mu)[good], (sig / np.sqrt(n * m2))[good],
                    mean_tol=0.05)
    np.testing.assert_allclose(got["gain_adu_per_kev"], got["photon_spacing"] / 8.04, rtol=1e-6)


def test_broken_pixels_flagged(outputs, lab_xray):
    _, truth, p = lab_xray
    got = _load(outputs[1][0])
    with h5py.File(truth, "r") as t:
        expected = t["expected_bits"][()]
    broken = expected != 0
    assert np.count_nonzero(broken) == 4 * 16 * p.n_broken
    assert np.array_equal(got["bad_pixels"][broken], expected[broken])
    assert np.count_nonzero(got["bad_pixels"][~broken]) <= 2e-4 * np.count_nonzero(~broken)
    good = got["bad_pixels"] == 0
    total = got["n_entries"] + got["underflow"] + got["overflow"]
    assert np.all(total == p.n_trains - len(p.lost_trains))
    for k in FLOATS:
        assert np.all(np.isfinite(got[k][:, good[0]])), k
    assert "median photon spacing" in outputs[1][1].stdout
    assert "histogram origin from the first 64 trains" in outputs[1][1].stdout
