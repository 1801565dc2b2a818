"""End-to-end European XFEL drscs (two currents, merge) under the real mpirun.

The synthetic set (:mod:`calib_mpi.synthetic.xfel_drscs`): module 5, currents itestc80 and
itestc100 with four runs each (``runs`` in groups of four), 1 cell, 240 scan steps (train ID
minus the run's first), one train lost in col26 of the first current (step 30) and one in
col48 of the second (step 150). Checks: 1 and 3 ranks (3 ranks, 2 currents: groups of 2 and
1 ranks) give identical files; each current's result equals a serial ``process_scan`` of the
scans the pixels got from their injecting runs in the XFEL frame (injection by chip column,
``kappa ≡ k mod 4``, in the module's orientation); error codes and the merged
``chosen_current`` equal the generator's design.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from calib_mpi.synthetic.xfel_drscs import (
    XfelDrscsSet,
    write_xfel_drscs_config,
    write_xfel_drscs_runs,
)

from .calcat_check import CONDITIONS, check_export
from .conftest import DRSCS_FIELDS, assert_currents_equal_serial, load_datasets, run_jobs

pytestmark = pytest.mark.mpi

P = XfelDrscsSet()
FIELDS = DRSCS_FIELDS
DATASETS = FIELDS + ("chosen_current", "metadata/runs", "metadata/trains_used") + tuple(
    f"currents/{c}/{k}" for c in P.currents for k in FIELDS + ("metadata/step0_train_id",))


@pytest.fixture(scope="module")
def xfel_drscs(tmp_path_factory):
    raw = tmp_path_factory.mktemp("xfel_drscs") / "raw"
    truth = write_xfel_drscs_runs(raw, P)
    with h5py.File(truth, "r") as t:
        tr = {k: t[k][()] for k in t}
    out = run_jobs(tmp_path_factory.mktemp("xfel_drscs_out"), {1: 1024, 3: 7},
                   lambda conf, o, chunk: write_xfel_drscs_config(conf, raw, o, P,
                                                                  chunk_frames=chunk),
                   f"drscs/drscs_AGIPD{P.module:02d}_xfel.h5", timeout=180)
    return tr, {n: load_datasets(path, DATASETS) for n, (path, _) in out.items()}, out[3][0]


def test_identical_for_1_and_3_ranks(xfel_drscs):
    _, got, _ = xfel_drscs
    for k in DATASETS:
        assert np.array_equal(got[1][k], got[3][k], equal_nan=True), k


def test_each_current_equals_serial_process_scan_and_the_design(xfel_drscs):
    truth, got, _ = xfel_drscs
    got = got[3]
    assert_currents_equal_serial(got, truth, P.currents)
    for c, name in enumerate(P.currents):
        assert np.array_equal(got[f"currents/{name}/error_code"][0], truth["expected_error"][c])
        first = [P.first_train_id + 100_000 * c + 10_000 * k for k in range(4)]
        assert got[f"currents/{name}/metadata/step0_train_id"].tolist() == first
    assert np.array_equal(got["chosen_current"][0], truth["expected_chosen"])
    assert set(np.unique(got["chosen_current"])) == {-1, 0, 1}
    assert got["metadata/runs"].tolist() == [list(P.runs[:4]), list(P.runs[4:])]
    assert got["metadata/trains_used"].tolist() == [[240, 239, 240, 240], [240, 240, 240, 239]]


def test_export_reads_back_as_calcat(xfel_drscs, tmp_path):
    """SlopesCS/BadPixelsCS of the merged result, with the conditions of the control files."""
    check_export(xfel_drscs[2], tmp_path, CONDITIONS)
