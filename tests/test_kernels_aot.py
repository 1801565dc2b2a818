"""Prebuilt (ahead-of-time compiled) kernels: built by ``python -m calib_mpi.process.aot``,
exact and equal to the JIT and numpy versions, loaded without importing numba, and ignored
when built from another version of the source."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib_mpi.mpienv import clean_environ
from calib_mpi.process import _jit, kernels
from calib_mpi.process.drspc import DrspcAccumulator
from calib_mpi.process.xray import XrayAccumulator


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache directory holding the prebuilt module of the current source."""
    d = tmp_path_factory.mktemp("xdg") / "calib-mpi"
    p = subprocess.run([sys.executable, "-m", "calib_mpi.process.aot", "--dir", str(d)],
                       capture_output=True, text=True, timeout=300, env=clean_environ())
    assert p.returncode == 0, p.stdout + p.stderr
    path = Path(p.stdout.strip())
    assert path.parent == d and path.is_file() and path.name.startswith(_jit.module_name())
    return d


def _sums(fn, frames, r0, c0, group):
    out = [np.zeros((6, 64, 64), np.uint64) for _ in range(4)]
    fn(frames, r0, c0, *group, *out)
    return out


def test_prebuilt_equals_jit_and_numpy(built):
    """Cells with 0 to 31 frames (every set combination of the kernel), values up to 65535,
    a block inside a larger frame: prebuilt, JIT and numpy sums are identical (exact)."""
    rng = np.random.default_rng(3)
    cells = np.concatenate([np.full(n, c) for c, n in enumerate((1, 2, 3, 7, 8, 31))] + [[-1]])
    cells = cells[rng.permutation(len(cells))]
    frames = rng.integers(0, 65536, (len(cells), 2, 128, 128), dtype=np.uint16)
    frames[0] = 65535
    group = kernels.group_by_cell(cells, 6)
    assert _jit.backend([built]) == "prebuilt"
    pre = _sums(_jit.kernel("dark_sums", [built]), frames, 64, 64, group)
    jit = _sums(_jit._jit_module().dark_sums, frames, 64, 64, group)
    ref = _sums(kernels._dark_sums_numpy, frames, 64, 64, group)
    for a, b, c in zip(pre, jit, ref, strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, c)


def _histograms(fn, analog, cells, origin, dtype):
    order, starts, cells_u = kernels.group_by_cell(cells, len(origin))
    counts = np.zeros((len(origin) * 4096, 40), dtype)
    under, over = np.zeros(len(counts), np.int64), np.zeros(len(counts), np.int64)
    fn(analog, order, starts, cells_u, origin, counts, under, over)
    return counts, under, over


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16])
def test_xray_histogram_kernel_equals_numpy(built, dtype):
    """The xray histogram kernel (prebuilt, JIT) on an ASIC block inside larger frames (a
    strided view), invalid cells, values below, inside and above the 40 bins: the counts,
    underflow and overflow of the numpy path of ``XrayAccumulator.update``."""
    rng = np.random.default_rng(4)
    cells = rng.integers(-1, 3, 300)
    frames = rng.integers(960, 1060, (300, 128, 192), dtype=np.uint16)
    analog = frames[:, 64:, 64:128]
    origin = rng.integers(995, 1005, (3, 64, 64)).astype(np.int32)
    ref = XrayAccumulator(3, origin, 40, count_dtype=dtype, method="sort")
    ref.update(analog, cells)
    name = "xray_hist" if dtype == np.uint32 else "xray_hist_u16"
    assert _jit.backend([built]) == "prebuilt"
    for fn in (_jit.kernel(name, [built]), getattr(_jit._jit_module(), name)):
        counts, under, over = _histograms(fn, analog, cells, origin, dtype)
        assert np.array_equal(counts, ref.counts)
        assert np.array_equal(under, ref.underflow) and np.array_equal(over, ref.overflow)
    assert ref.underflow.sum() > 0 and ref.overflow.sum() > 0 and ref.counts.sum() > 0
    auto = XrayAccumulator(3, origin, 40, count_dtype=dtype)  # the kernel of this process
    auto.update(analog, cells)
    assert np.array_equal(auto.counts, ref.counts)
    assert np.array_equal(auto.frames_per_cell, ref.frames_per_cell)


@pytest.mark.parametrize("rows", [None, [0, 5, 63]])
def test_drspc_sums_kernel_equals_numpy(built, rows):
    """The drspc fit-sum kernel (prebuilt, JIT) on ASIC blocks inside larger frames, invalid
    cells, steps inside both, one and none of the two overlapping windows, all rows or some:
    the exact int64 sums of the numpy path, values up to 65535."""
    rng = np.random.default_rng(5)
    n = 200
    cells = rng.integers(-1, 4, n)
    steps = rng.integers(0, 40, n)
    frames = rng.integers(0, 65536, (n, 2, 128, 96), dtype=np.uint16)
    analog, digital = frames[:, 0, 64:, 32:], frames[:, 1, 64:, 32:]
    windows = ((0, 25), (10, 35))
    ref = DrspcAccumulator(4, windows)
    r = None if rows is None else np.array(rows, np.int64)
    for g, (t0, t1) in enumerate(windows):
        sel = np.flatnonzero((cells >= 0) & (steps >= t0) & (steps < t1))
        ref._add_window_numpy(g, sel, analog, digital, cells, steps, r)
    assert _jit.backend([built]) == "prebuilt"
    all_rows = np.arange(64, dtype=np.int64) if r is None else r
    for fn in (_jit.kernel("drspc_sums", [built]), _jit._jit_module().drspc_sums):
        sums = np.zeros_like(ref._sums)
        fn(analog, digital, cells, steps, np.array(windows, np.int64), all_rows, sums)
        assert np.array_equal(sums, ref._sums)
    assert np.count_nonzero(ref._sums[0]) and np.count_nonzero(ref._sums[1])


def test_stale_module_is_ignored(built, tmp_path):
    """A module built from another source (other hash in its name) is not loaded."""
    (current,) = built.glob(_jit.module_name() + "*")
    stale = tmp_path / current.name.replace(_jit.source_hash(), "0" * 12)
    stale.write_bytes(current.read_bytes())
    assert _jit.backend([tmp_path]) == "jit"


SNIPPET = """
import json, sys
import numpy as np
from calib_mpi.process import _jit, kernels
from calib_mpi.process.drspc import DrspcAccumulator
from calib_mpi.process.xray import XrayAccumulator
frames = np.full((3, 2, 64, 64), 7, np.uint16)
sums = [np.zeros((1, 64, 64), np.uint64) for _ in range(4)]
kernels.dark_sums(frames, 0, 0, kernels.group_by_cell(np.zeros(3, np.int64), 1), sums)
print(json.dumps({"backend": _jit.backend(), "numba": "numba" in sys.modules,
                  "sum": int(sums[0][0, 5, 5]), "sq": int(sums[1][0, 5, 5])}))
"""


@pytest.mark.parametrize("mode", ["auto", "jit", "numpy"])
def test_job_process_picks_backend(built, mode):
    """A process finds the prebuilt module in the user cache (XDG_CACHE_HOME) and then never
    imports numba; CALIB_MPI_KERNELS forces JIT or numpy; the sums are the same."""
    env = clean_environ({"XDG_CACHE_HOME": str(built.parent), _jit.ENV: mode})
    p = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["sum"], r["sq"]) == (21, 147)
    want = {"auto": "prebuilt", "jit": "jit", "numpy": "numpy"}[mode]
    assert r["backend"] == want
    assert r["numba"] == (want == "jit")


def _xray_histograms():
    """Histograms (rows, 512) of xray runs at occupancies 0.1 and 2 and of a run with dead,
    photon-less and noisy pixels, their box sums (11 bins) and cumulative counts."""
    from calib_mpi.process.xray_peaks import box_sums, cumulative_counts
    from calib_mpi.synthetic.xray import make_xray_run, occupancy_run

    from .test_process_xray import accumulate

    runs = [occupancy_run(seed=3, occupancy=o, n_cells=1) for o in (0.1, 2.0)]
    runs.append(make_xray_run(seed=4, n_cells=2, n_trains=600, n_dead=4, n_no_photons=4,
                              n_noisy=4, empty_cells=(1,)))
    counts = np.concatenate([accumulate(run).counts for run in runs])
    return counts, box_sums(cumulative_counts(counts), 5)


def test_xray_peak_and_refine_kernels_equal_numpy(built):
    """The xray finalize kernels (prebuilt, JIT) on ~16000 histograms: ``xray_peaks`` gives
    the numpy path's peak bins exactly (3 significance levels); ``xray_refine`` its results to
    1e-9 (relative; erfc against scipy's ndtr), with NaN in the same places, also on rows
    that make no sense (empty, zero spacing, at the histogram's end)."""
    from calib_mpi.process import xray_peaks, xray_refine

    counts, hs = _xray_histograms()
    fns = {"peaks": [_jit.kernel("xray_peaks", [built]), _jit._jit_module().xray_peaks],
           "refine": [_jit.kernel("xray_refine", [built]), _jit._jit_module().xray_refine]}
    for n_sigma in (0.0, 3.5, 5.0):
        ref = xray_peaks._find_peaks_numpy(hs, 5, 10.0, n_sigma, 30.0)
        assert (ref[:, 1] >= 0).sum() > 8000
        for fn in fns["peaks"]:
            out = np.empty_like(ref)
            fn(hs, 5, 10.0, n_sigma, 30.0, out)
            assert np.array_equal(out, ref), n_sigma
    peaks = xray_peaks._find_peaks_numpy(hs, 5, 10.0, 3.5, 30.0)
    sel = np.flatnonzero(peaks[:, 1] >= 0)
    h = np.concatenate([counts[sel], np.zeros((1, 512)), counts[:3]]).astype(np.float64)
    p = np.concatenate([peaks[sel], [[10, 50, -1], [100, 100, -1], [200, 505, -1],
                                     [500, 511, -1]]]).astype(np.float64)
    ref = xray_refine._refine_numpy(h, p[:, 0], p[:, 1], 2.5, 10, p[:, 2])
    assert np.isfinite(ref["mu2"]).sum() > 1000 and not ref["ok"][-4:].any()
    for fn in fns["refine"]:
        out = np.empty((len(h), len(xray_refine.REFINE_COLUMNS)))
        fn(h, p[:, 0].copy(), p[:, 1].copy(), p[:, 2].copy(), 2.5, 10, out)
        for c, name in enumerate(xray_refine.REFINE_COLUMNS):
            want = np.asarray(ref[name], np.float64)
            got = out[:, c]
            assert np.array_equal(np.isnan(got), np.isnan(want)), name
            fin = np.isfinite(want)
            np.testing.assert_allclose(got[fin], want[fin], rtol=1e-9, err_msg=name)


def test_drscs_scan_kernel_equals_numpy(built, monkeypatch):
    """The drscs kernel (prebuilt, JIT) gives every output of the numpy ``process_scan``
    exactly (integer sums, the same formulas): scans with lost samples, transition samples,
    each kind of failure, a failing current, default and other parameters (odd median
    windows, more sub-intervals, no transition exclusion, an even level window)."""
    from calib_mpi.process import drscs
    from calib_mpi.synthetic.drscs import make_drscs_scans

    scans = [make_drscs_scans(seed=2, shape=(1024,), loss_fraction=0.1),
             make_drscs_scans(seed=3, shape=(512,), n_steps=260, loss_fraction=0.3,
                              transition_fraction=0.6, extra_failures={20: 0, 30: 1})]
    params = [drscs.DrscsParams(),
              drscs.DrscsParams(flat_filter_window=1, n_intervals=(2, 3, 4),
                                transition_exclude=0, spike_window=7),
              drscs.DrscsParams(level_window=4, transition_exclude=3, drop_window=3,
                                fit_cutoff_left=0, skip_first=0)]
    fns = (_jit.kernel("drscs_scan", [built]), _jit._jit_module().drscs_scan)
    codes = set()
    for s in scans:
        for p in params:
            for c in range(s.analog.shape[0]):
                a, d, v = s.analog[c], s.digital[c], s.valid[c]
                with monkeypatch.context() as m:
                    m.setattr(drscs, "_compiled", lambda *args: None)
                    want = drscs.process_scan(a, d, v, p)
                codes |= set(np.unique(want["error_code"]).tolist())
                for fn in fns:
                    got = drscs._process_compiled(fn, a, d, v, p)
                    assert got.keys() == want.keys()
                    for k in want:
                        assert got[k].dtype == want[k].dtype, k
                        assert np.array_equal(got[k], want[k], equal_nan=True), k
    assert {0, 2, 3, 6, 8, 9, 10} <= codes, codes
