"""Run under mpirun by tests/test_mpi_merge.py: merge three currents held by the ranks.

Current c is processed by rank ``c % size`` (ranks beyond the third hold none); every rank
compares the collective merge with the serial choose_current/merge_results and exits 1 on a
mismatch (also for the Reduce variant with ``root``). Prints ``OK <rank> <n chosen per
current>`` on success.
"""

import sys

import numpy as np
from mpi4py import MPI

from calib_mpi.merge import merge_across_currents
from calib_mpi.process.drscs import choose_current, merge_results, process_scan
from calib_mpi.synthetic.drscs import make_drscs_scans

#: fraction of series whose error code is forced to 6 per current, so that every current is
#: chosen somewhere (the scans alone succeed almost everywhere in current 0)
FORCED_FAILURES = (0.5, 0.3, 0.4)


def scan(s, c: int) -> dict:
    """process_scan of current c, with deterministic forced failures."""
    r = process_scan(s.analog[c], s.digital[c], s.valid[c])
    flip = np.random.default_rng(c).random(r["error_code"].shape) < FORCED_FAILURES[c]
    r["error_code"] = np.where(flip & (r["error_code"] == 0), 6, r["error_code"]).astype(np.int16)
    return r


def main() -> int:
    comm = MPI.COMM_WORLD
    s = make_drscs_scans(seed=11, shape=(96,), currents=(60.0, 80.0, 100.0), fail_current=1,
                         loss_fraction=0.02)
    n_cur = len(s.truth.currents)
    mine = {c: scan(s, c) for c in range(n_cur) if c % comm.size == comm.rank}
    merged = merge_across_currents(comm, mine)
    serial = [scan(s, c) for c in range(n_cur)]
    chosen, _ = choose_current(np.stack([r["error_code"] for r in serial]))
    want = merge_results(serial, chosen)
    bad = [k for k in want if not (merged[k].dtype == want[k].dtype
                                   and np.array_equal(merged[k], want[k], equal_nan=True))]
    bad += sorted(set(merged) ^ set(want))
    root = comm.size - 1  # the Reduce variant: the result on one rank only
    at_root = merge_across_currents(comm, mine, root=root)
    if comm.rank != root and at_root is not None:
        bad.append("root=: result on a non-root rank")
    if comm.rank == root:
        bad += [k for k in want if not np.array_equal(at_root[k], want[k], equal_nan=True)]
    if bad:
        print(f"MISMATCH rank {comm.rank}: {bad}", flush=True)
        return 1
    counts = np.bincount(merged["chosen_current"][merged["chosen_current"] >= 0],
                         minlength=n_cur)
    print(f"<OK {comm.rank} {' '.join(map(str, counts))}>", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
