"""drscs memory bound: the memory cells are processed in several passes over the data.

``drscs_memory`` limits the stored scans per rank (steps x cells x 4096 x 5 bytes per ASIC);
a job that needs more reads the runs once per window of cells. The lab set here has one
current (itestc85) and two memory cells; with 2 ranks (8 ASICs each, 240 steps: 39 MB per
cell) ``drscs_memory = 50`` gives one cell per pass. The result must equal a serial
``process_scan`` of the truth exactly, like the one-pass job, and lost trains are counted
once.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from calib_mpi.currents import cell_passes
from calib_mpi.process.drscs import process_scan
from calib_mpi.synthetic.cfel_drscs import CfelDrscsSet, write_drscs_config, write_drscs_runs

from .conftest import DRSCS_FIELDS, run_mpi


def test_cell_passes():
    mb = 2**20
    assert cell_passes(5, 10 * mb, 25) == [(0, 2), (2, 4), (4, 5)]
    assert cell_passes(5, 10 * mb, 1000) == [(0, 5)]
    assert cell_passes(3, 10 * mb, 1) == [(0, 1), (1, 2), (2, 3)]  # at least one cell
    assert cell_passes(352, 0, 1) == [(0, 352)]


@pytest.mark.mpi
def test_two_passes_equal_serial_processing(tmp_path):
    p = CfelDrscsSet(currents=("itestc85",), current_values=(85.0,), n_cells=2)
    raw = tmp_path / "raw"
    truth = write_drscs_runs(raw, p)
    conf = write_drscs_config(tmp_path / "run.conf", raw, tmp_path / "out", p,
                              drscs_memory=50)
    r = run_mpi(2, [conf], timeout=120)
    assert r.returncode == 0, r.output
    assert "2 cells in 2 passes over the data" in r.output
    with h5py.File(truth, "r") as t:
        a, d, v = t["analog"][0], t["digital"][0], t["valid"][0]
        expected = t["expected_error"][0]
    n = a.shape[0]
    want = process_scan(a.reshape(n, -1), d.reshape(n, -1), v.reshape(n, -1))
    with h5py.File(tmp_path / "out/drscs/drscs_M304_cfel.h5", "r") as f:
        for k in DRSCS_FIELDS:
            g = f[k][()]
            assert np.array_equal(g, want[k].reshape(g.shape).astype(g.dtype),
                                  equal_nan=True), k
        assert np.array_equal(f["error_code"][0], expected)
        assert "currents" not in f  # one current: the merged result is the current's
        lost = [len(p.lost_trains.get(k, ())) for k in range(4)]
        assert f["metadata/trains_used"][()].tolist() == [[p.n_trains - n for n in lost]]
        assert np.all(f["chosen_current"][()][f["error_code"][()] == 0] == 0)
        assert np.all(f["chosen_current"][()][f["error_code"][()] != 0] == -1)
