"""Gather: read whole frames in slabs, redistribute ASIC blocks to their owners, stream them.

Each round, every rank reads at most one slab (a contiguous range of whole frames of one file,
aligned with the file's HDF5 chunks, so each byte is read once), drops the frames that belong
to no used train, and sends each ASIC owner the ``(frame, 2, 64, 64)`` blocks of its ASICs with
one ``Alltoallv``. The frame metadata (cell, train position) and any read error travel in one
small ``alltoall`` first, so a failing read ends the job on every rank with the same message.
Memory per rank is bounded by ``chunk_frames``, never by the run length.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from .errors import CalibError
from .geometry import AsicBlock
from .parallel import open_h5
from .plan import Plan, Slab, Unit
from .readers.xfel import CELL_RANGE, FileIndex, read_slab

log = logging.getLogger(__name__)

#: consumer(unit, run_index, frames (frame, 2, 64, 64) uint16, cells (frame,), trains (frame,))
Consumer = Callable[[Unit, int, np.ndarray, np.ndarray, np.ndarray], None]


def _injected_fault(rank: int, round_index: int) -> None:
    """Testing aid: ``CALIB_MPI_TEST_FAIL_READ="rank=R,round=K[,mode=raise|exit]"`` makes rank
    R fail its read in round K, raising an error (``raise``) or dying at once (``exit``)."""
    spec = os.environ.get("CALIB_MPI_TEST_FAIL_READ")
    if not spec:
        return
    opts = dict(kv.split("=", 1) for kv in spec.split(","))
    if int(opts.get("rank", -1)) == rank and int(opts.get("round", -1)) == round_index:
        if opts.get("mode", "raise") == "exit":
            os._exit(3)
        raise CalibError(f"injected read failure (CALIB_MPI_TEST_FAIL_READ={spec})")


class _Files:
    """Open raw files of one run: all collectively (mpio) or lazily per rank (posix)."""

    def __init__(self, plan: Plan, run_index: int, driver: str, comm: MPI.Comm):
        self.driver, self.comm, self.handles = driver, comm, {}
        if driver == "mpio":
            err = None
            for m in plan.modules:
                for fi, info in enumerate(plan.files[(run_index, m)]):
                    try:
                        self.handles[(m, fi)] = open_h5(info.path, "r", driver, comm)
                    except Exception as e:  # opening is collective: every rank sees it
                        err = CalibError(f"{info.path}: cannot be opened with the mpio "
                                         f"driver ({e})")
                        break
                if err:
                    break
            from .parallel import agree
            agree(comm, err)

    def get(self, module: int, file_index: int, info: FileIndex):
        key = (module, file_index)
        if key not in self.handles:
            self.handles[key] = open_h5(info.path, "r", "posix", self.comm)
        return self.handles[key]

    def close(self) -> None:
        for h in self.handles.values():
            h.close()
        self.handles = {}


def _read(f, info: FileIndex, slab: Slab, buf: np.ndarray, pair_buf: np.ndarray | None,
          train_axis: np.ndarray, n_cells: int):
    try:
        return read_slab(f, info, slab.start, slab.stop, buf, pair_buf, train_axis, n_cells)
    except Exception as e:
        raise CalibError(f"{info.path}: reading frames {slab.start}:{slab.stop} of "
                         f"INSTRUMENT/{info.source}/image failed ({e}); truncated or corrupt "
                         "file?") from e


def gather_run(comm: MPI.Comm, plan: Plan, run_index: int, blocks: list[AsicBlock],
               consume: Consumer, driver: str, chunk_frames: int) -> dict:
    """Stream one run to the ASIC owners.

    Returns this rank's counts of frames left out while reading, ``{(module, reason): n}``.
    """
    rank, size = comm.rank, comm.size
    rounds = plan.rounds[run_index]
    max_n = max((s.n_frames for rnd in rounds for s in rnd if s is not None), default=0)
    frame_shape = (2, 512, 128)
    buf = np.empty((max(max_n, 1),) + frame_shape, np.uint16)
    interleaved = any(fi.interleaved for m in plan.modules for fi in plan.files[(run_index, m)])
    pair_buf = np.empty((max(max_n // 2, 1),) + frame_shape, np.uint16) if interleaved else None
    block_elems = 2 * 64 * 64
    rejected: dict[str, int] = {}
    files = _Files(plan, run_index, driver, comm)
    t0, last_log, bytes_read = time.monotonic(), time.monotonic(), 0
    try:
        for k, rnd in enumerate(rounds):
            slab = rnd[rank]
            err, frames, cells, trains = None, None, None, None
            if slab is not None:
                try:
                    _injected_fault(rank, k)
                    info = plan.files[(run_index, slab.module)][slab.file_index]
                    f = files.get(slab.module, slab.file_index, info)
                    frames, cells, trains, beyond = _read(
                        f, info, slab, buf, pair_buf, plan.train_axis[run_index], plan.n_cells)
                    if beyond:
                        key = (slab.module, CELL_RANGE)
                        rejected[key] = rejected.get(key, 0) + beyond
                    bytes_read += slab.n_frames * buf[0].nbytes
                except Exception as e:  # reported to every rank below
                    err = e
            msg = None if err is None else (str(err) if isinstance(err, CalibError)
                                            else f"{type(err).__name__}: {err}")
            dest_units = [plan.units_in_module(d, slab.module) if slab is not None else []
                          for d in range(size)]
            meta = [(msg, (cells, trains) if (err is None and dest_units[d]) else None)
                    for d in range(size)]
            received = comm.alltoall(meta)
            failed = [(r, m) for r, (m, _) in enumerate(received) if m is not None]
            if failed:
                r, m = failed[0]
                raise CalibError(f"{m} [rank {r}]")

            # send buffer: for each destination rank, its units' blocks of this slab
            scounts = np.zeros(size, np.int64)
            n_send = 0 if frames is None else len(frames)
            for d in range(size):
                scounts[d] = n_send * len(dest_units[d]) * block_elems
            sdispl = np.concatenate([[0], np.cumsum(scounts)[:-1]])
            sendbuf = np.empty(int(scounts.sum()), np.uint16)
            if n_send:
                for d in range(size):
                    off = int(sdispl[d])
                    for u in dest_units[d]:
                        b = blocks[u.block]
                        view = sendbuf[off:off + n_send * block_elems].reshape(n_send, 2, 64, 64)
                        np.copyto(view, frames[:, :, b.rows, b.cols])
                        off += n_send * block_elems
            # receive: from each source, my units in its slab's module
            rcounts = np.zeros(size, np.int64)
            src_units = []
            for s in range(size):
                sl = rnd[s]
                units = plan.units_in_module(rank, sl.module) if sl is not None else []
                n_s = len(received[s][1][0]) if received[s][1] is not None else 0
                src_units.append((units, n_s))
                rcounts[s] = n_s * len(units) * block_elems
            rdispl = np.concatenate([[0], np.cumsum(rcounts)[:-1]])
            if size == 1:
                recvbuf = sendbuf
            else:
                recvbuf = np.empty(int(rcounts.sum()), np.uint16)
                comm.Alltoallv([sendbuf, (scounts, sdispl), MPI.UNSIGNED_SHORT],
                               [recvbuf, (rcounts, rdispl), MPI.UNSIGNED_SHORT])
            for s in range(size):
                units, n_s = src_units[s]
                if not n_s or not units:
                    continue
                c_s, t_s = received[s][1]
                off = int(rdispl[s])
                for u in units:
                    view = recvbuf[off:off + n_s * block_elems].reshape(n_s, 2, 64, 64)
                    consume(u, run_index, view, c_s, t_s)
                    off += n_s * block_elems
            now = time.monotonic()
            if rank == 0 and (now - last_log > 5 or k == len(rounds) - 1):
                rate = bytes_read * size / max(now - t0, 1e-9) / 1e9
                log.info("run %s: round %d/%d, ~%.2f GB/s read (all ranks, estimated)",
                         plan.runs[run_index], k + 1, len(rounds), rate)
                last_log = now
    finally:
        files.close()
    return rejected
