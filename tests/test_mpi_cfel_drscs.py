"""End-to-end CFEL lab drscs (current source, one current) calibration under the real mpirun.

The synthetic set (:mod:`calib_mpi.synthetic.cfel_drscs`): module M304, current itestc80, four
runs col15..col48 (run k injects chip columns kappa ≡ k mod 4) in two parts each, 1 cell, 240
trains (scan steps = train positions), one train lost in col26 (step 3, high gain) and one in
col37 (step 120). Checks:

- identical output for 1 and 2 ranks;
- exactly equal to a serial ``process_scan`` of the scans each pixel got from its injecting
  run (the truth file's ``analog``, ``digital``, ``valid``), which also checks the injection
  pattern and x = train position with lost trains as holes;
- error codes equal the failure kinds of the generator, and for the successful series the
  fitted slopes, offsets and gain levels are near the generating values (relative: high and
  medium gain 1 %, low gain 15 % for slopes / 3 % for offsets, its sub-interval fits being
  disturbed by transition samples and saturation; gain levels 1 %).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from calib_mpi.process.drscs import process_scan
from calib_mpi.synthetic.cfel_drscs import CfelDrscsSet, write_drscs_config, write_drscs_runs

from .conftest import load_datasets, run_jobs

pytestmark = pytest.mark.mpi

DATASETS = ("slope", "offset", "residual", "gain_level", "threshold", "n_points",
            "saturation_start", "error_code", "bad_pixels", "metadata/trains_used")
JOBS = {1: 1024, 2: 37}


@pytest.fixture(scope="module")
def lab_drscs(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cfel_drscs") / "raw"
    p = CfelDrscsSet()
    truth = write_drscs_runs(raw, p)
    return raw, truth, p


@pytest.fixture(scope="module")
def outputs(lab_drscs, tmp_path_factory):
    raw, _, p = lab_drscs
    return run_jobs(tmp_path_factory.mktemp("cfel_drscs_out"), JOBS,
                    lambda conf, out, chunk: write_drscs_config(conf, raw, out, p,
                                                                chunk_frames=chunk),
                    "drscs/drscs_M304_cfel.h5", timeout=120)


def _load(path):
    return load_datasets(path, DATASETS)


def test_identical_for_1_and_2_ranks(outputs):
    a, b = _load(outputs[1][0]), _load(outputs[2][0])
    for k in DATASETS:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_layout_and_metadata(outputs, lab_drscs):
    _, _, p = lab_drscs
    with h5py.File(outputs[2][0], "r") as f:
        assert f["slope"].shape == (3, p.n_cells, 128, 512)
        assert f["threshold"].shape == (2, p.n_cells, 128, 512)
        assert f["error_code"].shape == (1, p.n_cells, 128, 512)
        assert list(f["slope"].attrs["dims"]) == ["gain", "cell", "row", "col"]
        assert f.attrs["facility"] == "cfel" and f.attrs["module_serial"] == "M304"
        assert list(f.attrs["run_names"]) == list(p.run_names)
        assert f["metadata/runs"][()].tolist() == list(p.runs)  # found from the file names
        assert int(f["metadata/n_steps"][()]) == p.n_trains
        lost = [len(p.lost_trains.get(k, ())) for k in range(4)]
        assert f["metadata/trains_used"][()].tolist() == [p.n_trains - n for n in lost]


def test_equals_serial_process_scan(outputs, lab_drscs):
    _, truth, _ = lab_drscs
    got = _load(outputs[2][0])
    with h5py.File(truth, "r") as t:
        a, d, v = t["analog"][()], t["digital"][()], t["valid"][()]
        group = t["column_group"][()]
    n = a.shape[0]
    want = process_scan(a.reshape(n, -1), d.reshape(n, -1), v.reshape(n, -1))
    for k in DATASETS[:-1]:
        w = want[k].reshape(got[k].shape).astype(got[k].dtype)
        assert np.array_equal(got[k], w, equal_nan=True), k
    # formats.md 3.4: col15 (k = 0) -> top-ASIC columns 3, 7, ...; bottom 0, 4, ...
    assert np.flatnonzero(group[0, :64] == 0).tolist() == list(range(3, 64, 4))
    assert np.flatnonzero(group[64, :64] == 0).tolist() == list(range(0, 64, 4))


def test_against_generating_values(outputs, lab_drscs):
    _, truth, _ = lab_drscs
    got = _load(outputs[1][0])
    with h5py.File(truth, "r") as t:
        expected = t["expected_error"][()]
        gen = {k: t[k][()] for k in ("slope", "offset", "gain_level")}
    code = got["error_code"][0]
    assert np.array_equal(code, expected)
    ok = code == 0
    assert ok.mean() > 0.99
    limits = {"slope": (0.01, 0.01, 0.15), "offset": (0.01, 0.01, 0.03),
              "gain_level": (0.01, 0.01, 0.01)}
    for k, lim in limits.items():
        rel = np.abs(got[k] / gen[k] - 1)[:, ok]
        assert np.all(rel.max(axis=1) < lim), (k, rel.max(axis=1))
        assert np.all(np.median(rel, axis=1) < 0.01), (k, np.median(rel, axis=1))
