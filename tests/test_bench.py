"""The benchmark script runs end to end on tiny data and emits the JSON fields it promises."""

import json
import subprocess
import sys
from pathlib import Path

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
    for r in ("1", "2"):
        m = res["memory"][r]
        assert m["peak_rss_MB_N"] > 0 and m["ratio_4N_over_N"] > 0
    for k in ("drspc", "drscs", "xray"):
        assert res["processors"][f"{k}_pixel_cells_per_s"] > 0
    assert "skipped" in res["cold"]  # the disk measurements are not for the test suite
