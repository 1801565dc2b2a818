"""Real-world data faults (one test each): the constants still match the ground truth on the
good data, and every train or frame left out is accounted for, with its reason, in the output.

The faulty trains and frames of the synthetic runs hold garbage (60000 ADU): had any of them
been used, offsets would move by hundreds of ADU, far beyond the float32 tolerance checked."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from calib_mpi.readers import xfel as r
from calib_mpi.synthetic.xfel import DarkRunSet, write_config, write_dark_runs

from .conftest import run_mpi

pytestmark = pytest.mark.mpi

SMALL = dict(n_cells=3, n_trains=12, n_sequences=2, lost_trains={1: [3]}, defects=False)
FAULT_AT = 6  # train position of the injected fault, in module 1 (index 1)


def _run_set(tmp_path, n_ranks=2, conf_extra=None, **params):
    p = DarkRunSet(**{**SMALL, **params})
    raw = tmp_path / "raw"
    write_dark_runs(raw, p)
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", raw, out, p, **(conf_extra or {}))
    res = run_mpi(n_ranks, [conf])
    return p, raw, out, res


def _check_against_truth(p, raw, out, modules=(0, 1)):
    with h5py.File(raw / "truth.h5") as t:
        for m in modules:
            g = t[f"module_{m:02d}"]
            with h5py.File(out / "dark" / f"dark_AGIPD{m:02d}_xfel.h5") as f:
                np.testing.assert_allclose(f["offset"][()], g["sample_offset"][()], atol=1e-3,
                                           rtol=0)
                np.testing.assert_allclose(f["noise"][()], g["sample_noise"][()], atol=1e-4,
                                           rtol=0)
                np.testing.assert_allclose(f["gain_level"][()], g["sample_gain_level"][()],
                                           atol=1e-3, rtol=0)
                assert f["metadata/trains_used"][()].tolist() == g["trains_used"][()].tolist()
                assert np.array_equal(f["metadata/frames_used"][()], g["frames_used"][()])


def _dropped(out, module):
    with h5py.File(out / "dark" / f"dark_AGIPD{module:02d}_xfel.h5") as f:
        return json.loads(f.attrs["dropped"])


@pytest.mark.parametrize("kind,reason", [
    ("zero_id", r.ZERO_ID),
    ("bogus_id", r.ISOLATED),
    ("unsafe", r.UNSAFE),
    ("duplicate_train", r.DUP_TRAIN),
    ("out_of_order", r.NON_MONOTONIC),
    ("bad_cell", r.BAD_CELL),
    ("outlier_cell", r.CELL_OUTLIER),
    ("repeated_cell", r.DUP_CELL),
    ("tid_mismatch", r.TID_MISMATCH),
])
def test_fault_is_left_out_and_counted(tmp_path, kind, reason):
    p, raw, out, res = _run_set(tmp_path, faults=((kind, 1, FAULT_AT),))
    assert res.returncode == 0, res.output
    _check_against_truth(p, raw, out)
    for run in p.runs:
        d1 = _dropped(out, 1)[str(run)]
        assert d1.get(reason) == 1, d1
        assert d1.get(r.NO_FRAMES) == 1  # the lost train 3
        assert set(d1) == {reason, r.NO_FRAMES}
        assert _dropped(out, 0)[str(run)] == {}


def test_several_faults_at_once(tmp_path):
    faults = (("zero_id", 1, 2), ("bogus_id", 0, 9), ("bad_cell", 0, 4),
              ("duplicate_train", 1, 8), ("unsafe", 0, 11))
    p, raw, out, res = _run_set(tmp_path, n_ranks=3, faults=faults)
    assert res.returncode == 0, res.output
    _check_against_truth(p, raw, out)
    assert _dropped(out, 0)["9002"] == {r.ISOLATED: 1, r.BAD_CELL: 1, r.UNSAFE: 1}


def test_old_index_form(tmp_path):
    p, raw, out, res = _run_set(tmp_path, old_index=True)
    assert res.returncode == 0, res.output
    _check_against_truth(p, raw, out)


def test_interleaved_2017_mode(tmp_path):
    p, raw, out, res = _run_set(tmp_path, interleaved=True, conf_extra={"interleaved": "true"},
                                faults=(("bad_cell", 0, 5),))
    assert res.returncode == 0, res.output
    _check_against_truth(p, raw, out)
    with h5py.File(out / "dark" / "dark_AGIPD00_xfel.h5") as f:
        assert f.attrs["n_cells"] == 3


def test_cell_ids_beyond_n_cells_are_counted(tmp_path):
    p, raw, out, res = _run_set(tmp_path, conf_extra={"n_cells": 2})
    assert res.returncode == 0, res.output
    assert "n_cells = 2, but the data have cells up to 2" in res.stderr
    with h5py.File(raw / "truth.h5") as t, \
            h5py.File(out / "dark" / "dark_AGIPD01_xfel.h5") as f:
        assert f["offset"].shape[1] == 2
        np.testing.assert_allclose(f["offset"][()], t["module_01/sample_offset"][:, :2],
                                   atol=1e-3, rtol=0)
        used = t["module_01/trains_used"][()]
    assert _dropped(out, 1)["9001"][r.CELL_RANGE] == used[0]  # one frame (cell 2) per train


def test_missing_module(tmp_path):
    p = DarkRunSet(**SMALL)
    raw = tmp_path / "raw"
    write_dark_runs(raw, p)
    for f in (raw / "r9002").glob("*AGIPD01*"):
        f.unlink()
    out = tmp_path / "out"
    res = run_mpi(2, [write_config(tmp_path / "a.conf", raw, out, p)])
    assert res.returncode != 0
    assert "run 9002, module 1: no raw files" in res.stderr and "missing_modules" in res.stderr
    res = run_mpi(2, [write_config(tmp_path / "b.conf", raw, out, p, missing_modules="skip")])
    assert res.returncode == 0, res.output
    assert "module 1 has no files in run(s) [9002]" in res.stderr
    _check_against_truth(p, raw, out, modules=(0,))
    assert not (out / "dark" / "dark_AGIPD01_xfel.h5").exists()


def test_preprocess_record(tmp_path):
    p = DarkRunSet(**SMALL, faults=(("bogus_id", 1, FAULT_AT),))
    raw = tmp_path / "raw"
    write_dark_runs(raw, p)
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", raw, out, p, steps="preprocess")
    res = run_mpi(2, [conf])
    assert res.returncode == 0, res.output
    assert "common to all modules" in res.stdout
    rec = json.loads((out / "dark" / "preprocess.json").read_text())
    assert not (out / "dark" / "dark_AGIPD00_xfel.h5").exists()
    assert rec["n_cells"] == 3
    run = rec["runs"][0]
    t0 = p.first_train_id
    assert run["cells_in_use"] == "0-2"
    assert run["trains"] == {"count": 12, "first": t0, "last": t0 + 11}
    assert run["common_train_range"] == [t0 + 1, t0 + 11]  # module 1 starts one train late
    m1 = run["modules"]["1"]
    assert m1["sequences"] == 2 and m1["trains_with_data"] == 9
    assert m1["lost_trains"] == {"count": 3, "ids": f"{t0},{t0 + 3},{t0 + FAULT_AT}"}
    assert m1["left_out_train_ids"][r.ISOLATED] == str(t0 + FAULT_AT + 50_000)
