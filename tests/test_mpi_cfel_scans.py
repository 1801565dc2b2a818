"""End-to-end CFEL lab drspc (pulsed capacitor) calibration under the real ``mpirun``.

The synthetic set (:mod:`calib_mpi.synthetic.cfel_scans`): module M304, eight runs r1..r8 in
two parts each (one analog/digital pair split across the parts), 2 cells, 28 trains per run
(scan steps = train positions), one train lost in run r3 (step 4, high-gain window) and one in
run r6 (step 20, medium-gain window), three broken pixels per ASIC. Tolerances as in
``test_mpi_drspc``:

- against the exact least-squares fit of the written integers (``sample_*``): exact integer
  sums rounded once to float32, relative 2**-24 (asserted 1.2e-7, plus 1e-6 absolute);
- against the generating parameters: z = (fit - truth) / standard error of a straight-line fit
  (``se(slope) = s / sqrt(Sxx)``, ``se(offset) = s sqrt(1/n + mean(x)^2 / Sxx)``,
  ``se(gain level) = s / sqrt(n)``, ``s^2 = noise^2 + 1/12``) with the x of each pixel's run;
  over ~5e5 values per quantity |z| < 6 (false failure ~1e-3), mean within 0.01 and spread
  within 2 % of 1 (standard error of the spread ~0.1 %).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from calib_mpi.badpixels import BadPixels
from calib_mpi.synthetic.cfel_scans import CfelDrspcSet, write_config, write_drspc_runs

from .conftest import load_datasets, run_jobs, run_mpi

pytestmark = pytest.mark.mpi

DATASETS = ("slope", "offset", "gain_level", "gain_level_std", "threshold", "ratio",
            "residual_rms", "n_points", "bad_pixels", "metadata/trains_used")
#: ranks -> chunk_frames (several slabs per part with 2 ranks)
JOBS = {1: 1024, 2: 7}


@pytest.fixture(scope="module")
def lab_drspc(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cfel_drspc") / "raw"
    p = CfelDrspcSet()
    truth = write_drspc_runs(raw, p)
    return raw, truth, p


@pytest.fixture(scope="module")
def outputs(lab_drspc, tmp_path_factory):
    raw, _, p = lab_drspc
    return run_jobs(tmp_path_factory.mktemp("cfel_drspc_out"), JOBS,
                    lambda conf, out, chunk: write_config(conf, raw, out, p, chunk_frames=chunk),
                    "drspc/drspc_M304_cfel.h5")


def _load(path):
    return load_datasets(path, DATASETS)


def test_identical_for_1_and_2_ranks(outputs):
    a, b = _load(outputs[1][0]), _load(outputs[2][0])
    for k in DATASETS:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_layout_and_metadata(outputs, lab_drspc):
    _, _, p = lab_drspc
    c = p.n_cells
    with h5py.File(outputs[2][0], "r") as f:
        for k in ("slope", "offset", "gain_level", "gain_level_std", "residual_rms"):
            assert f[k].shape == (2, c, 128, 512) and f[k].dtype == np.float32, k
            assert list(f[k].attrs["dims"]) == ["gain", "cell", "row", "col"]
        assert f["ratio"].shape == (1, c, 128, 512)
        assert f.attrs["facility"] == "cfel" and f.attrs["module_serial"] == "M304"
        assert list(f.attrs["run_names"]) == list(p.run_names)
        assert f["metadata/runs"][()].tolist() == list(p.runs)  # found from the file names
        assert f["metadata/windows"][()].tolist() == [list(w) for w in p.windows]
        assert f["metadata/step0_train_id"][()].tolist() == [0] * 8  # positions from 0
        lost = [len(p.lost_trains.get(k, ())) for k in range(8)]
        assert f["metadata/trains_used"][()].tolist() == [p.n_trains - n for n in lost]


def test_fit_equals_exact_fit_of_written_values(outputs, lab_drspc):
    """Also checks the injection pattern and x = train position: every pixel is fitted from
    the run injecting its chip row, with the lost train leaving a hole (not a shift)."""
    _, truth, _ = lab_drspc
    got = _load(outputs[2][0])
    with h5py.File(truth, "r") as t:
        for k in ("slope", "offset", "gain_level", "gain_level_std", "residual_rms"):
            np.testing.assert_allclose(got[k], t[f"sample_{k}"][()], rtol=1.2e-7, atol=1e-6,
                                       err_msg=k)
        n = t["n_points"][()]
        assert np.all(got["n_points"] == n[:, None, :, None])
        gl = t["sample_gain_level"][()]
        np.testing.assert_allclose(got["threshold"][0], (gl[0] + gl[1]) / 2, rtol=1.2e-7)
        rows = np.flatnonzero(t["row_group"][()] == 2)  # r3: chip rows 2 + 8i
    # formats.md 3.4 in the AGIPD frame: r3 (k = 2) -> top rows 5, 13, ..., bottom 66, 74, ...
    assert rows.tolist() == list(range(5, 64, 8)) + list(range(66, 128, 8))
    assert np.all(got["n_points"][0][:, rows] == 7)  # step 4 lost in r3


def test_values_match_generating_parameters(outputs, lab_drspc):
    _, truth, p = lab_drspc
    got = _load(outputs[1][0])
    s = np.sqrt(p.noise**2 + 1 / 12)
    with h5py.File(truth, "r") as t:
        good = np.all(t["required_bits"][()] == 0, axis=0)
        group = t["row_group"][()]
        gen = {k: t[k][()] for k in ("slope", "offset", "gain_level")}
    z = {k: [] for k in gen}
    for k_run in range(8):
        lost = set(p.lost_trains.get(k_run, ()))
        sel = good & (group == k_run)[None, :, None]
        for w, (t0, t1) in enumerate(p.windows):
            x = np.array([t for t in range(t0, t1) if t not in lost], np.float64)
            n, sxx = len(x), ((x - x.mean()) ** 2).sum()
            se = {"slope": s / np.sqrt(sxx), "offset": s * np.sqrt(1 / n + x.mean() ** 2 / sxx),
                  "gain_level": s / np.sqrt(n)}
            for k in z:
                z[k].append(((got[k][w] - gen[k][w]) / se[k])[sel])
    for k, v in z.items():
        v = np.concatenate(v)
        assert np.abs(v).max() < 6, (k, np.abs(v).max())
        assert abs(v.mean()) < 0.01, (k, v.mean())
        assert 0.98 < v.std() < 1.02, (k, v.std())


def test_broken_pixels_flagged(outputs, lab_drspc):
    _, truth, p = lab_drspc
    bad = _load(outputs[2][0])["bad_pixels"]
    with h5py.File(truth, "r") as t:
        req = t["required_bits"][()]
        broken = t["broken"][()]
    assert np.all((bad & req) == req), "a broken pixel lost its flag"
    dead = broken[broken[:, 0] == 0, 1:]
    assert len(dead) == 16 * p.n_broken
    assert np.all(bad[:, :, dead[:, 0], dead[:, 1]] & BadPixels.VALUE_IS_NAN)
    assert not np.any((bad != 0) & (req == 0))
    assert "bad pixel-cells 96" in outputs[2][1].stdout  # 3 x 16 ASICs x 2 cells


@pytest.mark.parametrize("names,got", [("r1 r2 r3 r4 r5 r6 r7", 7),
                                       ("r1 r2 r3 r4 r5 r6 r7 r8 r9", 9)])
def test_wrong_number_of_run_names(lab_drspc, tmp_path, names, got):
    raw, _, p = lab_drspc
    out = tmp_path / "out"
    conf = write_config(tmp_path / "run.conf", raw, out, p)
    r = run_mpi(2, [conf, "--run_names", *names.split()], timeout=60)
    assert r.returncode == 2, r.output
    assert (f"run_names: drspc needs exactly eight run name(s) (row groups r1..r8), got {got}"
            in r.stderr)
    assert not out.exists() or not list(out.rglob("*.h5"))
