"""End-to-end CFEL lab drscs (current source, three currents, merge) under the real mpirun.

The synthetic set (:mod:`calib_mpi.synthetic.cfel_drscs`): module M304, currents itestc70,
itestc85, itestc100, four runs col15..col48 each (run k injects chip columns kappa ≡ k mod 4)
in two parts, 1 cell, 240 trains (scan steps = train positions), one train lost in col26 (step
30) and one in col37 (step 120), in every current (a lost high-gain sample would leave the
highest current too few high-gain points: error 6, correctly, but not in the design). Per
ASIC the currents fail in different places (``merge_failures``), so that each current is the
best one on some ASICs and a failed series of the best current is filled from another. Checks:

- identical output for 1, 2, 3 and 4 ranks (3 currents: 4 ranks = groups of 2, 1 and 1
  ranks; 2 ranks = one rank with two currents), and the merge spans several ranks when the
  currents sit on different ranks (the collective path);
- each current's result (``currents/<name>/``) equals a serial ``process_scan`` of the scans
  each pixel got from its injecting run, exactly;
- error codes equal the failure kinds of the generator; the merged ``chosen_current`` equals
  the generator's designed choice and the merged fields are the chosen current's values;
- for the successful series the fitted slopes, offsets and gain levels are near the generating
  values (relative: high and medium gain 1 %, low gain 15 % for slopes / 3 % for offsets, its
  sub-interval fits being disturbed by transition samples and saturation; gain levels 1 %).
"""

from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest

from calib_mpi.geometry import AGIPD_FRAME, asic_blocks
from calib_mpi.synthetic.cfel_drscs import (
    CfelDrscsSet,
    check_result,
    write_drscs_config,
    write_drscs_runs,
)

from .conftest import DRSCS_FIELDS, assert_currents_equal_serial, load_datasets, run_jobs, run_mpi

pytestmark = pytest.mark.mpi

FIELDS = DRSCS_FIELDS
P = CfelDrscsSet()
DATASETS = FIELDS + ("chosen_current", "metadata/trains_used", "metadata/runs") + tuple(
    f"currents/{c}/{k}" for c in P.currents for k in FIELDS + ("metadata/n_steps",))
JOBS = {1: 1024, 2: 37, 3: 16, 4: 64}


@pytest.fixture(scope="module")
def lab_drscs(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cfel_drscs") / "raw"
    truth = write_drscs_runs(raw, P)
    return raw, truth


@pytest.fixture(scope="module")
def outputs(lab_drscs, tmp_path_factory):
    raw, _ = lab_drscs
    return run_jobs(tmp_path_factory.mktemp("cfel_drscs_out"), JOBS,
                    lambda conf, out, chunk: write_drscs_config(conf, raw, out, P,
                                                                chunk_frames=chunk),
                    "drscs/drscs_M304_cfel.h5", timeout=240)


@pytest.fixture(scope="module")
def truth(lab_drscs):
    with h5py.File(lab_drscs[1], "r") as t:
        return {k: t[k][()] for k in t}


def _load(path):
    return load_datasets(path, DATASETS)


def test_identical_for_1_2_3_and_4_ranks(outputs):
    ref = _load(outputs[1][0])
    for n in (2, 3, 4):
        got = _load(outputs[n][0])
        for k in DATASETS:
            assert np.array_equal(ref[k], got[k], equal_nan=True), (n, k)


@pytest.mark.parametrize("n,span", [(1, 1), (2, 2), (3, 3), (4, 3)])
def test_merge_spans_the_ranks_holding_the_currents(outputs, n, span):
    """With n ranks the currents sit on min(n, 3) rank groups: each ASIC's merge is a
    collective over that many ranks (reported by the job)."""
    out = outputs[n][1].stdout
    assert re.search(rf"merge over up to {span} rank\(s\) per ASIC", out), out


def test_layout_and_metadata(outputs):
    with h5py.File(outputs[2][0], "r") as f:
        assert f["slope"].shape == (3, P.n_cells, 128, 512)
        assert f["threshold"].shape == (2, P.n_cells, 128, 512)
        assert f["error_code"].shape == f["chosen_current"].shape == (1, P.n_cells, 128, 512)
        assert f["chosen_current"].dtype == np.int16
        assert list(f["slope"].attrs["dims"]) == ["gain", "cell", "row", "col"]
        assert f.attrs["facility"] == "cfel" and f.attrs["module_serial"] == "M304"
        assert list(f.attrs["run_names"]) == list(P.run_names)
        assert list(f.attrs["currents"]) == list(P.currents)
        assert "fewest failed" in f.attrs["merge_rule"]
        assert [c.decode() for c in f["metadata/currents"][()]] == list(P.currents)
        # run numbers found from the file names, four per current
        assert f["metadata/runs"][()].tolist() == [list(P.runs(c)) for c in range(3)]
        lost = [len(P.lost_trains.get(k, ())) for k in range(4)]
        assert f["metadata/trains_used"][()].tolist() == [[P.n_trains - n for n in lost]] * 3
        for c in P.currents:
            assert int(f[f"currents/{c}/metadata/n_steps"][()]) == P.n_trains
            assert f[f"currents/{c}/slope"].shape == (3, P.n_cells, 128, 512)


def test_each_current_equals_serial_process_scan(outputs, truth):
    assert_currents_equal_serial(_load(outputs[3][0]), truth, P.currents)
    # formats.md 3.4: col15 (k = 0) -> top-ASIC columns 3, 7, ...; bottom 0, 4, ...
    group = truth["column_group"]
    assert np.flatnonzero(group[0, :64] == 0).tolist() == list(range(3, 64, 4))
    assert np.flatnonzero(group[64, :64] == 0).tolist() == list(range(0, 64, 4))


def test_error_codes_and_merge_against_the_design(outputs, truth):
    got = _load(outputs[4][0])
    for c, name in enumerate(P.currents):
        assert np.array_equal(got[f"currents/{name}/error_code"][0], truth["expected_error"][c])
    chosen = got["chosen_current"][0]
    assert np.array_equal(chosen, truth["expected_chosen"])
    # every current is chosen on some ASIC, and the filled series (10) differ from their ASIC
    assert set(np.unique(chosen)) == {-1, 0, 1, 2}
    for blk in asic_blocks(AGIPD_FRAME, 0):  # series 10 (row 0, column 10 of the block)
        local = chosen[0][blk.rows, blk.cols]
        assert local[0, 10] >= 0 and local[0, 10] != local[0, 20]
    # merged values are those of the chosen current; where all failed, the ASIC's best
    # current's (merge_failures: block b -> (b - 1) mod 3)
    best = np.empty((128, 512), np.int64)
    for b, blk in enumerate(asic_blocks(AGIPD_FRAME, 0)):
        best[blk.rows, blk.cols] = (b - 1) % 3
    source = np.where(chosen >= 0, chosen, best[None])
    for k in FIELDS:
        per = np.stack([got[f"currents/{n}/{k}"] for n in P.currents])
        for c in range(3):
            sel = np.broadcast_to(source == c, got[k].shape[1:])
            assert np.array_equal(got[k][:, sel], per[c][:, sel], equal_nan=True), (k, c)
    assert np.all(got["error_code"][0][chosen >= 0] == 0)
    assert np.all(got["error_code"][0][chosen < 0] != 0)


def test_demo_check_reports_a_match(outputs, lab_drscs, tmp_path):
    """The comparison `make demo-drscs` prints says OK for a correct result, and MISMATCH
    when one chosen current is wrong."""
    lines = check_result(outputs[2][0], lab_drscs[1])
    assert lines[0].startswith("OK"), lines
    assert "chosen current as designed for 65536 of 65536" in "\n".join(lines)
    wrong = tmp_path / "wrong.h5"
    shutil.copy(outputs[2][0], wrong)
    with h5py.File(wrong, "r+") as f:
        f["chosen_current"][0, 0, 100, 100] = (f["chosen_current"][0, 0, 100, 100] + 1) % 3
    assert check_result(wrong, lab_drscs[1])[0].startswith("MISMATCH")


def test_against_generating_values(outputs, truth):
    got = _load(outputs[1][0])
    chosen = got["chosen_current"][0]
    ok = chosen >= 0
    assert ok.mean() > 0.99
    gen = {"slope": np.take_along_axis(
        truth["slope"], np.maximum(chosen, 0)[None, None].astype(np.int64), axis=0)[0],
        "offset": truth["offset"], "gain_level": truth["gain_level"]}
    limits = {"slope": (0.01, 0.01, 0.15), "offset": (0.01, 0.01, 0.03),
              "gain_level": (0.01, 0.01, 0.01)}
    for k, lim in limits.items():
        rel = np.abs(got[k] / gen[k] - 1)[:, ok]
        assert np.all(rel.max(axis=1) < lim), (k, rel.max(axis=1))
        assert np.all(np.median(rel, axis=1) < 0.01), (k, np.median(rel, axis=1))


def test_existing_result_is_kept_and_a_changed_one_refused(outputs, lab_drscs, tmp_path):
    """Resume over all currents: the same job again skips the module; a job with one current
    less would make a different result and is refused without overwrite."""
    raw, _ = lab_drscs
    out = outputs[1][0].parents[1]
    conf = write_drscs_config(tmp_path / "again.conf", raw, out, P, chunk_frames=1024)
    r = run_mpi(2, [conf], timeout=120)
    assert r.returncode == 0, r.output
    assert "nothing to do" in r.output
    conf = write_drscs_config(tmp_path / "fewer.conf", raw, out,
                              CfelDrscsSet(currents=P.currents[:2],
                                           current_values=P.current_values[:2]))
    r = run_mpi(2, [conf], timeout=120)
    assert r.returncode == 2, r.output
    assert "results exist already" in r.output and "current" in r.output


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_failure_in_one_rank_group_ends_the_job_everywhere(lab_drscs, tmp_path, mode):
    """4 ranks: current itestc70 is read by world ranks 0 and 3 (group ranks 0, 1), the other
    currents by ranks 1 and 2 alone. A read failure on group rank 1 (world rank 3) is an error
    of that group only; the other groups finish their currents and then every rank stops with
    the message (exit 2) instead of waiting in the merge. A rank that dies ends the job too.
    No result file is left under the final name."""
    raw, _ = lab_drscs
    out = tmp_path / "out"
    conf = write_drscs_config(tmp_path / "run.conf", raw, out, P, chunk_frames=64)
    r = run_mpi(4, [conf], timeout=120,
                env={"CALIB_MPI_TEST_FAIL_READ": f"rank=1,round=1,mode={mode}"})
    if mode == "raise":
        assert r.returncode == 2, r.output
        assert "error: current itestc70: injected read failure" in r.stderr, r.output
        assert "[rank 3]" in r.stderr, r.output
    else:
        assert r.returncode != 0, r.output
    assert not (out / "drscs/drscs_M304_cfel.h5").exists()
