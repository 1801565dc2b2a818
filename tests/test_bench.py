"""The benchmark script runs end to end on tiny data and emits the JSON fields it promises
(no timing assertions: the numbers only have to exist). Budget: ~40 s on 2 quiet cores."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from calib_mpi.mpienv import clean_environ

pytestmark = pytest.mark.mpi

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--trains", "3", "--cells", "4",
                        "--ranks", "1", "2", "--dir", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, timeout=300, env=clean_environ())
    assert p.returncode == 0, p.stdout + p.stderr
    assert "e2e/read" in p.stdout and "gather/read" in p.stdout
    res = json.loads(out.read_text())
    assert res["read_GBps"] > 0
    for r in ("1", "2"):
        run = res["pipeline"][r]
        for key in ("end_to_end_over_read", "gather_over_read", "speedup_gather",
                    "end_to_end_GBps", "gather_GBps", "steady_GBps", "steady_over_read"):
            assert run[key] > 0, key
        assert len(run["peak_rss_MB_per_rank"]) == int(r)
    assert res["pipeline"]["1"]["speedup_gather"] == pytest.approx(1.0)
    assert res["one_core"]["gather_GBps"] > 0 and res["one_core"]["gather_over_read"] > 0
    assert res["pipeline"]["2"]["speedup_vs_one_core"] > 0
    assert "1 rank bound to one core" in p.stdout
    for r in ("1",):  # --quick: one rank only
        m = res["memory"][r]
        assert m["peak_rss_MB_N"] > 0 and m["ratio_4N_over_N"] > 0
    for k in ("drspc", "drscs", "xray"):
        assert res["processors"][f"{k}_pixel_cells_per_s"] > 0
    assert "skipped" in res["cold"]  # the disk measurements are not for the test suite
    phases = {"read", "read wait", "exchange", "kernel", "finalize", "write", "other"}
    assert set(res["pipeline"]["2"]["profile"]) == phases
    for m in ("drspc", "xray", "drscs"):
        scan = res["scans"][m]
        assert scan["read_GBps"] > 0 and scan["data_GB"] > 0
        run = scan["pipeline"]["1"]
        assert run["end_to_end_over_read"] > 0 and set(run["profile"]) == phases
        assert scan["memory"]["ratio_4N_over_N"] > 0
    assert "end to end per measurement" in p.stdout
    # the peer computes what calib-mpi computes: the offset of each gain stage
    peer = res["peer"]
    assert peer["GBps"] > 0 and peer["peak_rss_MB"] > 0
    with h5py.File(tmp_path / "big" / "out" / "dark" / "dark_AGIPD00_xfel.h5", "r") as f:
        offset = f["offset"][:].astype(np.float64)
    for g, run in enumerate(peer["runs"]):
        assert run["offset_sum"] == pytest.approx(offset[g].sum(), rel=1e-6)
    fc = res["fixed_cost"]
    assert fc["backend_auto"] in ("prebuilt", "jit")
    for k in ("auto", "jit", "floor"):
        assert fc[k]["cpu_seconds"] > 0


def test_read_rate_counts_only_agipd_files(tmp_path):
    """Control files next to the AGIPD files of a run (RAW-*-DA01-*.h5) are not read."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.remove(str(BENCH.parent))
    run = tmp_path / "r0001"
    run.mkdir()
    with h5py.File(run / "RAW-R0001-AGIPD00-S00000.h5", "w") as f:
        f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"] = np.ones((5, 2, 8, 8),
                                                                             np.uint16)
    with h5py.File(run / "RAW-R0001-DA01-S00000.h5", "w") as f:
        f["INSTRUMENT/SPB_IRU_CAM/CAM/image/data"] = np.ones((7, 8, 8), np.uint16)
        f["CONTROL/SPB_IRU_AGIPD1M/MDL/FPGA_COMP/gain/value"] = np.ones(3)
    assert [p.name for p in bench.agipd_files(tmp_path)] == ["RAW-R0001-AGIPD00-S00000.h5"]
    _, nbytes = bench.read_bandwidth(tmp_path, repeats=1)
    assert nbytes == 5 * 2 * 8 * 8 * 2
