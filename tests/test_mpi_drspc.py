"""End-to-end drspc (pulsed capacitor) calibration under the real ``mpirun``.

The synthetic set (:mod:`calib_mpi.synthetic.xfel_scans`): 8 runs, modules 0 and 9 (both
wings), 2 cells, 24 recorded scan steps per run (the other steps are trains lost in every
module, so train positions and scan steps differ), two single-module lost steps, three broken
pixels per ASIC. Tolerances:

- against the exact least-squares fit of the written integers (``sample_*``): the pipeline
  sums exact integers and rounds the result to float32 once, so the difference is at most one
  float32 rounding, relative 2**-24 = 6e-8 (asserted: 1.2e-7, plus 1e-6 absolute for zeros);
- against the generating parameters: z = (fit - truth) / standard error with the standard
  errors of a straight-line fit, ``se(slope) = s / sqrt(Sxx)``, ``se(offset) = s * sqrt(1/n +
  mean(x)^2 / Sxx)``, ``se(gain level) = s / sqrt(n)``, ``s^2 = noise^2 + 1/12`` (integer
  rounding); over the ~5e5 values per quantity |z| < 6 (false failure ~1e-3), the mean of z
  within 0.01 (7 standard errors of the mean) and its spread within 2 % of 1, so a tolerance
  too loose or an estimate biased by a tenth of its error would be seen.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from calib_mpi.badpixels import BadPixels
from calib_mpi.geometry import XFEL_FRAME, asic_blocks, xfel_to_agipd_frame
from calib_mpi.recipes.drspc import injection_masks
from calib_mpi.synthetic.xfel_scans import DrspcRunSet, write_drspc_runs, write_scan_config

from .calcat_check import CONDITIONS, check_export
from .conftest import run_jobs, run_mpi

pytestmark = pytest.mark.mpi

DATASETS = ("slope", "offset", "gain_level", "gain_level_std", "threshold", "ratio",
            "residual_rms", "n_points", "bad_pixels")
#: ranks -> chunk_frames: different rank counts and slab sizes change the arrival order
JOBS = {1: 1024, 2: 6, 4: 10}


@pytest.fixture(scope="module")
def drspc_set(tmp_path_factory):
    p = DrspcRunSet()
    raw = tmp_path_factory.mktemp("drspc") / "raw"
    write_drspc_runs(raw, p)
    return raw, p


@pytest.fixture(scope="module")
def outputs(drspc_set, tmp_path_factory):
    raw, p = drspc_set
    return run_jobs(tmp_path_factory.mktemp("drspc_out"), JOBS,
                    lambda conf, out, chunk: write_scan_config(conf, raw, out, p,
                                                               chunk_frames=chunk), "")


def _load(out, module):
    with h5py.File(out / "drspc" / f"drspc_AGIPD{module:02d}_xfel.h5", "r") as f:
        return {k: f[k][()] for k in DATASETS}


@pytest.mark.parametrize("n", [2, 4])
def test_identical_for_any_rank_count(outputs, drspc_set, n):
    for m in drspc_set[1].modules:
        a, b = _load(outputs[1][0], m), _load(outputs[n][0], m)
        for k in DATASETS:
            assert np.array_equal(a[k], b[k], equal_nan=True), (n, m, k)


def test_shapes_dtypes_and_metadata(outputs, drspc_set):
    p = drspc_set[1]
    c = p.n_cells
    with h5py.File(outputs[2][0] / "drspc" / "drspc_AGIPD00_xfel.h5", "r") as f:
        for k in ("slope", "offset", "gain_level", "gain_level_std", "residual_rms"):
            assert f[k].shape == (2, c, 512, 128) and f[k].dtype == np.float32, k
        for k in ("threshold", "ratio"):
            assert f[k].shape == (1, c, 512, 128) and f[k].dtype == np.float32, k
        assert f["bad_pixels"].shape == (2, c, 512, 128) and f["bad_pixels"].dtype == np.uint32
        assert f["n_points"].dtype == np.int32
        assert list(f["slope"].attrs["dims"]) == ["gain", "cell", "slow_scan", "fast_scan"]
        assert f["metadata/windows"][()].tolist() == [list(w) for w in p.windows]
        step0 = [p.first_train_id + 10_000 * k for k in range(8)]
        assert f["metadata/step0_train_id"][()].tolist() == step0
        assert f["metadata/runs"][()].tolist() == list(p.runs)
        assert json.loads(f.attrs["config"])["measurement"] == "drspc"


@pytest.mark.parametrize("module", [0, 9])
def test_fit_equals_exact_fit_of_written_values(outputs, drspc_set, module):
    got = _load(outputs[4][0], module)
    with h5py.File(drspc_set[0] / "truth.h5", "r") as t:
        g = t[f"module_{module:02d}"]
        for k in ("slope", "offset", "gain_level", "gain_level_std", "residual_rms"):
            np.testing.assert_allclose(got[k], g[f"sample_{k}"][()], rtol=1.2e-7, atol=1e-6,
                                       err_msg=k)
        n = g["n_points"][()]
        assert np.all(got["n_points"] == n[:, None, None, None])
        gl = g["sample_gain_level"][()]
        np.testing.assert_allclose(got["threshold"][0], (gl[0] + gl[1]) / 2, rtol=1.2e-7)


def _window_x(p: DrspcRunSet, mi: int) -> list[np.ndarray]:
    lost = set(p.lost_steps.get(mi, ()))
    steps = np.array([s for s in p.steps if s not in lost], np.float64)
    return [steps[(steps >= t0) & (steps < t1)] for t0, t1 in p.windows]


@pytest.mark.parametrize("mi", [0, 1])
def test_values_match_generating_parameters(outputs, drspc_set, mi):
    raw, p = drspc_set
    module = p.modules[mi]
    got = _load(outputs[2][0], module)
    s = np.sqrt(p.noise**2 + 1 / 12)
    with h5py.File(raw / "truth.h5", "r") as t:
        g = t[f"module_{module:02d}"]
        good = np.all(g["required_bits"][()] == 0, axis=0)
        z = {"slope": [], "offset": [], "gain_level": []}
        for w, x in enumerate(_window_x(p, mi)):
            n, sxx = len(x), ((x - x.mean()) ** 2).sum()
            se = {"slope": s / np.sqrt(sxx), "offset": s * np.sqrt(1 / n + x.mean() ** 2 / sxx),
                  "gain_level": s / np.sqrt(n)}
            for k in z:
                z[k].append(((got[k][w] - g[k][w]) / se[k])[good])
    for k, v in z.items():
        v = np.concatenate(v)
        assert np.abs(v).max() < 6, (k, np.abs(v).max())
        assert abs(v.mean()) < 0.01, (k, v.mean())
        assert 0.98 < v.std() < 1.02, (k, v.std())


def test_ratio_and_x_are_scan_steps(outputs, drspc_set):
    """x is the scan step (train ID - first ID), not the position among recorded trains: with
    positions the high-gain slope would be ~9x larger (about 8.8 steps between records)."""
    raw, p = drspc_set
    got = _load(outputs[1][0], 0)
    with h5py.File(raw / "truth.h5", "r") as t:
        g = t["module_00"]
        good = np.all(g["required_bits"][()] == 0, axis=0)
        true_ratio = g["slope"][0] / g["slope"][1]
    rel = (got["ratio"][0] - true_ratio) / true_ratio
    assert np.abs(np.median(rel[good])) < 0.01
    assert 19 < np.median(got["slope"][0][good]) < 21


def test_broken_pixels_flagged(outputs, drspc_set):
    raw, p = drspc_set
    for m in p.modules:
        bad = _load(outputs[4][0], m)["bad_pixels"]
        with h5py.File(raw / "truth.h5", "r") as t:
            req = t[f"module_{m:02d}/required_bits"][()]
            broken = t[f"module_{m:02d}/broken"][()]
        assert np.all((bad & req) == req), "a broken pixel lost its flag"
        kinds = {k: broken[broken[:, 0] == k, 1:] for k in range(3)}
        assert len(kinds[0]) == 16 * p.n_broken
        dead = bad[:, :, kinds[0][:, 0], kinds[0][:, 1]]
        assert np.all(dead & BadPixels.VALUE_IS_NAN)  # ratio 0/0
        no_switch = bad[0][:, kinds[1][:, 0], kinds[1][:, 1]]
        assert not np.any(no_switch & BadPixels.CI_GAIN_OF_OF_THRESHOLD)
        # false flags: only the medium slope limit can be crossed by noise, at >4.9 sigma
        # (slope ~0.57 +- 0.07 ADU/step, fit error 0.06, limit 0.12): < 1e-4 of the pixels
        false = (bad != 0) & (req == 0)
        assert false.mean() < 1e-4


def test_injection_masks_follow_the_spec():
    """formats.md 3.4: run k = 1 injects module rows 6, 14, ..., 62 (top ASICs) and 65, 73,
    ..., 121 (bottom ASICs) of the AGIPD frame, whole rows, for both wings."""
    for module in (0, 9):
        full = np.zeros((8,) + XFEL_FRAME, bool)
        for b, blk in enumerate(asic_blocks(XFEL_FRAME, module)):
            full[:, blk.rows, blk.cols] = injection_masks(module, b)
        agipd = xfel_to_agipd_frame(module, full)
        rows = np.flatnonzero(agipd[1].all(axis=1))
        assert rows.tolist() == list(range(6, 64, 8)) + list(range(65, 128, 8))
        assert np.array_equal(agipd[1].any(axis=1), agipd[1].all(axis=1))
        assert np.all(full.sum(axis=0) == 1)  # every pixel in exactly one run


def test_lost_steps_and_report(outputs, drspc_set):
    raw, p = drspc_set
    out, r = outputs[2]
    with h5py.File(out / "drspc" / "drspc_AGIPD09_xfel.h5", "r") as f:
        assert f["metadata/trains_used"][()].tolist() == [len(p.steps) - 2] * 8
        assert np.all(f["n_points"][0] == 9) and np.all(f["n_points"][1] == 11)
    assert "median slope" in r.stdout and "median ratio high/medium" in r.stdout
    assert "bad pixel-cells 96" in r.stdout  # 3 broken pixels x 16 ASICs x 2 cells


def test_wrong_number_of_runs(drspc_set, tmp_path):
    raw, p = drspc_set
    out = tmp_path / "out"
    conf = write_scan_config(tmp_path / "run.conf", raw, out, p)
    r = run_mpi(2, [conf, "--runs", *map(str, p.runs[:7])], timeout=60)
    assert r.returncode == 2
    assert "drspc needs exactly eight run(s) (row groups r1..r8), got 7" in r.stderr
    assert not out.exists() or not list(out.rglob("*.h5"))


def test_export_reads_back_as_calcat(outputs, tmp_path):
    """SlopesPC/BadPixelsPC with the conditions of the control files."""
    path = outputs[1][0] / "drspc" / "drspc_AGIPD00_xfel.h5"
    check_export(path, tmp_path, CONDITIONS)
