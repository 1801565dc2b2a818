"""The notebook peer of a dark job: what a user would otherwise write.

As pycalibration's dark notebooks do, per run (gain stage) and module: EXtra-data opens the run
directory, reads the module's whole ``image.data`` and ``image.cellId`` into memory, then numpy
computes the mean and standard deviation of the analog value of each memory cell (offset and
noise, float64). One process, no MPI. Usage::

    python benchmarks/peer.py RAW_DIR --runs 9001 9002 9003 --module 0 [--json FILE]

Prints, and writes as JSON: seconds, raw bytes read, GB/s, peak resident memory, and the
offset/noise arrays' checksums (to compare with a calib-mpi result).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def dark_run(run_dir: Path, module: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Offset and noise (cell, slow_scan, fast_scan) of one module in one run, the notebook
    way; returns them and the raw bytes read."""
    from extra_data import RunDirectory

    run = RunDirectory(str(run_dir))
    src = next(s for s in run.instrument_sources if s.endswith(f"/DET/{module}CH0:xtdf"))
    data = run[src, "image.data"].ndarray()  # (frame, 2, 512, 128) uint16: the whole run
    cells = run[src, "image.cellId"].ndarray().ravel()
    analog = data[:, 0]
    n_cells = int(cells.max()) + 1 if len(cells) else 0
    offset = np.zeros((n_cells,) + analog.shape[1:])
    noise = np.zeros_like(offset)
    for c in range(n_cells):
        frames = analog[cells == c]
        if len(frames):
            offset[c] = frames.mean(axis=0)
            noise[c] = frames.std(axis=0)
    return offset, noise, int(data.nbytes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="directory holding the run directories rNNNN")
    ap.add_argument("--runs", type=int, nargs="+", required=True)
    ap.add_argument("--module", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    total, sums = 0, []
    for r in a.runs:
        offset, noise, n = dark_run(a.raw / f"r{r:04d}", a.module)
        total += n
        sums.append({"run": r, "offset_sum": float(offset.sum()),
                     "noise_sum": float(noise.sum())})
    dt = time.perf_counter() - t0
    res = {"seconds": dt, "bytes_read": total, "GBps": total / dt / 1e9,
           "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "runs": sums}
    print(f"[peer] dark, module {a.module}, {len(a.runs)} run(s): {dt:.2f} s, "
          f"{res['GBps']:.2f} GB/s, peak RSS {res['peak_rss_MB']:.0f} MB")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
