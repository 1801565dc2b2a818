"""Gather: read whole frames in slabs, redistribute ASIC blocks to their owners, stream them.

Each round, every rank reads at most one slab (a contiguous range of whole frames of one file,
aligned with the file's HDF5 chunks, so each byte is read once), drops the frames that belong
to no used train, and sends each ASIC owner the ``(frame, 2, 64, 64)`` blocks of its ASICs with
one ``Alltoallv``. The frame metadata (cell, train position) and any read error travel in one
small ``alltoall`` first, so a failing read ends the job on every rank with the same message.
Memory per rank is bounded by ``chunk_frames``, never by the run length.

The same code serves CFEL lab runs: a slab is then a frame range of one part whose
analog/digital pairs the lab reader returns as ``(pair, 2, 128, 512)`` frames (halves in
another part are read through the same open handles), and the frame shape and ASIC blocks come
from :mod:`calib_mpi.facilities`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from . import faults
from .errors import CalibError
from .facilities import facility
from .geometry import AsicBlock
from .parallel import open_h5
from .plan import Plan, Slab
from .process.kernels import group_by_cell
from .progress import Progress
from .readers import cfel
from .readers.xfel import CELL_RANGE, FileIndex, add_counts, read_slab

log = logging.getLogger(__name__)

#: consume(unit, run_index, frames, r0, c0, cells, trains, group); see :func:`gather_run`
Consumer = Callable[..., None]


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

    def get(self, module: int, file_index: int, info: FileIndex | cfel.PartIndex):
        key = (module, file_index)
        if key not in self.handles:
            self.handles[key] = open_h5(info.path, "r", "posix", self.comm)
        return self.handles[key]

    def opener(self, plan: Plan, run_index: int, module: int):
        """CFEL: ``path -> open handle`` for the other parts of a run (pairs split across
        parts), from the same handles."""
        parts = plan.files[(run_index, module)]
        index = {str(p.path): i for i, p in enumerate(parts)}

        def open_part(path: str):
            i = index[str(path)]
            return self.get(module, i, parts[i])
        return open_part

    def close(self) -> None:
        for h in self.handles.values():
            h.close()
        self.handles = {}


def _read(f, info: FileIndex | cfel.PartIndex, slab: Slab, buf: np.ndarray,
          pair_buf: np.ndarray | None, train_axis: np.ndarray, n_cells: int,
          open_part: Callable | None = None):
    """Read one slab: ``(frames, cells, trains, left_out)`` with ``left_out`` a count of
    frames with cellId >= n_cells (XFEL) or ``{reason: frames}`` (CFEL)."""
    if isinstance(info, cfel.PartIndex):
        try:
            return cfel.read_slab(f, info, slab.start, slab.stop, buf, pair_buf,
                                  open_part=open_part)
        except Exception as e:
            raise CalibError(f"{info.path}: reading frames {slab.start}:{slab.stop} of "
                             f"{cfel.DATA} failed ({e}); truncated or corrupt file?") from e
    try:
        return read_slab(f, info, slab.start, slab.stop, buf, pair_buf, train_axis, n_cells)
    except Exception as e:
        raise CalibError(f"{info.path}: reading frames {slab.start}:{slab.stop} of "
                         f"INSTRUMENT/{info.source}/image failed ({e}); truncated or corrupt "
                         "file?") from e


_POOL: dict[str, np.ndarray] = {}


def _buffer(name: str, n_elements: int) -> np.ndarray:
    """A flat uint16 work buffer reused across rounds and runs (fresh pages cost page faults,
    which are as expensive as the work itself at these sizes)."""
    buf = _POOL.get(name)
    if buf is None or buf.size < n_elements:
        buf = _POOL[name] = np.empty(max(n_elements, 1), np.uint16)
    return buf[:n_elements]


@dataclass
class GatherStats:
    """What one rank did in :func:`gather_run`."""

    #: frames left out while reading, {(module, reason): n}
    rejected: dict
    #: bytes of raw frames read by this rank
    bytes_read: int
    #: wall time of the run's gather on this rank (s)
    seconds: float
    #: bytes of ASIC blocks this rank sent (``Alltoallv``) to ranks of its own node
    bytes_sent_same_node: int = 0
    #: bytes of ASIC blocks this rank sent to ranks on other nodes (the network's share)
    bytes_sent_other_nodes: int = 0
    #: seconds of this rank per phase: ``read`` (in the reader, overlapped with the rest when
    #: prefetching), ``read wait`` (waiting for it), ``exchange`` (metadata alltoall, pack,
    #: Alltoallv), ``process`` (the recipe's consume: the kernels)
    profile: dict = field(default_factory=dict)


class _Reader:
    """Reads this rank's slab of each round, optionally one round ahead in a thread.

    Two buffer sets alternate, so the frames returned for round k stay valid while round k+1
    is being read. Read errors are returned, not raised, to be shared with all ranks. The
    buffers come from ``alloc(name, n_elements)`` (flat uint16), by default the rank's pool;
    :class:`_NodeBuffers` puts them where the other ranks of the node can read them.
    """

    def __init__(self, plan: Plan, run_index: int, files: _Files, rank: int, prefetch: bool,
                 n_sets: int | None = None):
        self.plan, self.ri, self.files, self.rank = plan, run_index, files, rank
        rounds = plan.rounds[run_index]
        self.rounds = rounds
        max_n = max((s.n_frames for rnd in rounds for s in rnd if s is not None), default=0)
        fac = facility(plan.facility)
        self.shape = fac.pair_shape
        # CFEL frames are single analog or digital images, always paired by the reader
        inter = fac.name == "cfel" or any(
            fi.interleaved for m in plan.modules for fi in plan.files[(run_index, m)])
        self.n_sets = n_sets or (2 if prefetch else 1)
        fe = int(np.prod(self.shape))
        re_ = fac.read_frame_elements
        self.frame_bytes = fac.read_frame_bytes
        n = max(max_n, 1)
        # read buffers hold n raw frames; pair buffers (n + 1) // 2 (analog, digital) pairs
        # (CFEL: plus a few pairs whose other half is in another part; the reader allocates
        # a larger buffer itself in the rare case that is not enough)
        n_pairs = (n + 1) // 2 + (8 if fac.name == "cfel" else 0)
        self.sizes = (-(-n * re_ // fe) * fe, n_pairs * fe if inter else 0)
        self.bufs: list = []
        self.pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        self.pending = None
        self.bytes = 0
        self.seconds = 0.0

    @property
    def n_elements(self) -> int:
        """uint16 elements of all buffer sets."""
        return self.n_sets * sum(self.sizes)

    def allocate(self, alloc: Callable[[str, int], np.ndarray] | None = None) -> None:
        """Take the buffer sets from ``alloc(name, n_elements)`` (default: the pool)."""
        alloc = alloc or _buffer
        read_n, pair_n = self.sizes
        self.bufs = [(alloc(f"read{i}", read_n).reshape((-1,) + self.shape),
                      alloc(f"pair{i}", pair_n).reshape((-1,) + self.shape) if pair_n
                      else None)
                     for i in range(self.n_sets)]

    def _read(self, k: int):
        slab = self.rounds[k][self.rank]
        if slab is None:
            return None
        try:
            faults.read_fault(self.rank, k)
            info = self.plan.files[(self.ri, slab.module)][slab.file_index]
            f = self.files.get(slab.module, slab.file_index, info)
            buf, pair_buf = self.bufs[k % len(self.bufs)]
            opener = (self.files.opener(self.plan, self.ri, slab.module)
                      if isinstance(info, cfel.PartIndex) else None)
            t0 = time.monotonic()
            out = _read(f, info, slab, buf, pair_buf, self.plan.train_axis[self.ri],
                        self.plan.n_cells, opener)
            self.seconds += time.monotonic() - t0
            self.bytes += slab.n_frames * self.frame_bytes
            return out
        except Exception as e:  # reported to every rank by the caller
            return e

    def get(self, k: int):
        """``(frames, cells, trains, left_out)`` of round k, an exception, or None."""
        if self.pending is None:
            return self._read(k)
        result = self.pending.result()
        self.pending = None
        return result

    def ahead(self, k: int) -> None:
        """Start reading round k in the background (with prefetch). Its buffer set is the
        one of round k - 2 (two sets), so every rank must be done with round k - 2."""
        if self.pool is not None and k < len(self.rounds):
            self.pending = self.pool.submit(self._read, k)

    def close(self) -> None:
        if self.pool is not None:
            if self.pending is not None:
                self.pending.result()
            self.pool.shutdown()


class _NodeBuffers:
    """The read buffers of the ranks of one node in an MPI shared-memory window.

    A rank then consumes the ASIC blocks that a rank of its own node read straight from that
    rank's buffer, as it does with its own frames: no pack, no ``Alltoallv``, no copy. Ranks
    on other nodes still get their blocks by ``Alltoallv``. Collective over ``comm``.
    """

    def __init__(self, comm: MPI.Comm, node: MPI.Comm, n_elements: int):
        self.node = node  # the ranks of comm on this node (freed with the buffers)
        members = self.node.allgather(comm.rank)
        # each rank's part page-aligned, placed near the rank that reads into it
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")
        self.win = MPI.Win.Allocate_shared(max(n_elements, 1) * 2, 2, info=info,
                                           comm=self.node)
        info.Free()
        self.views = {}
        for i, r in enumerate(members):
            mem, _ = self.win.Shared_query(i)
            self.views[r] = np.frombuffer(mem, np.uint16)
        self.mine = self.views[comm.rank]
        self.capacity = n_elements
        self.used = 0

    def alloc(self, name: str, n_elements: int) -> np.ndarray:
        """The next ``n_elements`` of this rank's part of the window."""
        out = self.mine[self.used:self.used + n_elements]
        if len(out) != n_elements:
            raise RuntimeError(f"shared read buffer too small for {name}")
        self.used += n_elements
        return out

    def on_node(self, rank: int) -> bool:
        return rank in self.views

    def offset(self, frames: np.ndarray) -> int | None:
        """Element offset of ``frames`` in this rank's part of the window, or None when they
        are elsewhere (a compacted copy) or not contiguous."""
        if not frames.flags.c_contiguous or frames.dtype != np.uint16:
            return None
        start = frames.ctypes.data - self.mine.ctypes.data
        if start < 0 or start % 2 or start + frames.nbytes > self.mine.nbytes:
            return None
        return start // 2

    def frames(self, rank: int, offset: int, n: int, shape: tuple) -> np.ndarray:
        """n frames of ``shape`` read by ``rank`` (same node) at ``offset``."""
        return self.views[rank][offset:offset + n * int(np.prod(shape))].reshape(
            (n,) + tuple(shape))

    def sync(self) -> None:
        """Collective over the node: every rank is done with the frames of every round."""
        self.node.Barrier()

    def free(self) -> None:
        """Collective over the node."""
        self.sync()
        self.views, self.mine = {}, None
        self.win.Free()
        self.node.Free()


#: communicator -> its node buffers, kept from run to run (fresh shared pages cost page faults
#: in the reader and in every rank that reads them, as much as the work itself)
_SHARED: dict[int, _NodeBuffers] = {}
#: communicators whose nodes have no room for shared read buffers
_NO_ROOM: set[int] = set()


def shared_memory_room(directory: str) -> int | None:
    """Bytes free for shared memory in ``directory`` (None: unknown; the test suite can
    pretend, ``faults.shm_free_override``)."""
    pretend = faults.shm_free_override()
    if pretend is not None:
        return pretend
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _room_on_nodes(comm: MPI.Comm, node: MPI.Comm, n_bytes: int) -> tuple[bool, str]:
    """Collective over ``comm``: whether every node (``node``: this rank's) has room for its
    ranks' shared read buffers (a full /dev/shm makes the first write to the window crash
    with SIGBUS), and why not."""
    need = node.allreduce(n_bytes)
    why = ""
    if node.rank == 0:
        where = os.environ.get("OMPI_MCA_osc_sm_backing_directory", "/dev/shm")
        room = shared_memory_room(where)
        if room is not None and room < need + (need >> 4) + (64 << 20):
            why = (f"{where} has {room / 2**20:.0f} MB free, the read buffers of this node's "
                   f"{node.size} rank(s) need {need / 2**20:.0f} MB")
    why = node.bcast(why)
    whys = [w for w in comm.allgather(why) if w]
    return not whys, whys[0] if whys else ""


def _node_buffers(comm: MPI.Comm, n_elements: int) -> _NodeBuffers | None:
    """Collective over ``comm``: its node buffers, with at least ``n_elements`` per rank, or
    None when some node has no room for them (blocks are then sent, as without sharing)."""
    key = comm.py2f()
    if key in _NO_ROOM:  # decided for this job (on every rank alike)
        return None
    nb = _SHARED.get(key)
    if comm.allreduce(nb is None or nb.capacity < n_elements, op=MPI.LOR):
        if nb is not None:
            nb.free()
            del _SHARED[key]
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        ok, why = _room_on_nodes(comm, node, 2 * n_elements)
        if not ok:
            node.Free()
            _NO_ROOM.add(key)
            if comm.rank == 0:
                log.warning("not sharing read buffers between the ranks of a node: %s; "
                            "ASIC blocks are sent instead (slower; a larger /dev/shm or a "
                            "smaller chunk_frames helps)", why)
            return None
        nb = _SHARED[key] = _NodeBuffers(comm, node, n_elements)
    nb.used = 0
    return nb


def release_node_buffers(comm: MPI.Comm) -> None:
    """Collective over ``comm``: free its node buffers (after its last run)."""
    _NO_ROOM.discard(comm.py2f())
    nb = _SHARED.pop(comm.py2f(), None)
    if nb is not None:
        nb.free()


def _node_ranks(comm: MPI.Comm, node: _NodeBuffers | None) -> frozenset[int]:
    """Collective over ``comm`` (unless ``node`` is given): the ranks of ``comm`` on this
    rank's node (``MPI_COMM_TYPE_SHARED``)."""
    if node is not None:
        return frozenset(node.views)
    if comm.size == 1:
        return frozenset({0})
    split = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return frozenset(split.allgather(comm.rank))
    finally:
        split.Free()


BLOCK_ELEMS = 2 * 64 * 64  # uint16 elements of one frame's ASIC block (analog, digital)


def count_rejected(rejected: dict, module: int, beyond: int | dict) -> None:
    """Add the frames the reader left out of a slab of ``module`` to ``rejected``
    ``{(module, reason): n}``: ``beyond`` is the XFEL count of cells >= n_cells, or the CFEL
    ``{reason: frames}``."""
    if isinstance(beyond, dict):
        for reason, v in add_counts({}, beyond).items():
            rejected[(module, reason)] = rejected.get((module, reason), 0) + v
    elif beyond:
        rejected[(module, CELL_RANGE)] = rejected.get((module, CELL_RANGE), 0) + beyond


def error_message(err: BaseException | None) -> str | None:
    """The message a failed read sends every rank (None: no error)."""
    if err is None:
        return None
    msg = str(err) if isinstance(err, CalibError) else f"{type(err).__name__}: {err}"
    return msg + f" [rank {MPI.COMM_WORLD.rank}]"


def send_counts(n_frames: int, dest_units: list[list], rank: int, in_place: list[bool]
                ) -> np.ndarray:
    """uint16 elements this rank sends each rank by ``Alltoallv``: ``n_frames`` ASIC blocks
    per unit of the destination in the slab's module, none to itself or to ranks that read
    the frames in place."""
    return np.array([n_frames * len(units) * BLOCK_ELEMS if d != rank and not in_place[d]
                     else 0 for d, units in enumerate(dest_units)], np.int64)


def recv_counts(received: list, my_units: list[int], rank: int) -> np.ndarray:
    """uint16 elements this rank receives from each rank: ``received[s]`` is rank s's
    metadata ``(cells, trains, offset)`` (None: nothing for us; offset not None: read in
    place), ``my_units[s]`` how many of our units are in rank s's slab's module."""
    out = np.zeros(len(received), np.int64)
    for s, meta in enumerate(received):
        if s != rank and meta is not None and meta[2] is None:
            out[s] = len(meta[0]) * my_units[s] * BLOCK_ELEMS
    return out


def displacements(counts: np.ndarray) -> np.ndarray:
    """Offsets of consecutive parts of the given sizes."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def pack_blocks(sendbuf: np.ndarray, frames: np.ndarray, dest_units: list[list],
                blocks: list[AsicBlock], scounts: np.ndarray, sdispl: np.ndarray) -> None:
    """Copy each destination's ASIC blocks ``(frame, 2, 64, 64)`` of ``frames`` (frame, 2, H,
    W) into ``sendbuf`` at its displacement, one unit after the other."""
    n = len(frames)
    for d in np.flatnonzero(scounts):
        off = int(sdispl[d])
        for u in dest_units[d]:
            b = blocks[u.block]
            view = sendbuf[off:off + n * BLOCK_ELEMS].reshape(n, 2, 64, 64)
            np.copyto(view, frames[:, :, b.rows, b.cols])
            off += n * BLOCK_ELEMS


def consume_all(consume: Consumer, run_index: int, tasks: list[tuple],
                pool: ThreadPoolExecutor | None) -> None:
    """Consume (unit, frames, r0, c0, cells, trains, group) blocks: each unit's in arrival
    order, different units in parallel when there is a pool."""
    by_unit: dict = {}
    for t in tasks:
        by_unit.setdefault(t[0], []).append(t)

    def one(ts: list[tuple]) -> None:
        for t in ts:
            consume(t[0], run_index, *t[1:])

    if pool is None or len(by_unit) < 2:
        for ts in by_unit.values():
            one(ts)
    else:
        for _ in pool.map(one, by_unit.values()):
            pass


@dataclass
class _Round:
    """One round of a run on this rank: its slab's frames and what the exchange found."""

    slab: Slab | None
    frames: np.ndarray | None = None
    cells: np.ndarray | None = None
    trains: np.ndarray | None = None
    #: units of each rank in this rank's slab's module
    dest_units: list = field(default_factory=list)
    #: metadata from each rank: (cells, trains, offset in its shared buffer) or None
    received: list = field(default_factory=list)
    recvbuf: np.ndarray | None = None
    rcounts: np.ndarray | None = None
    rdispl: np.ndarray | None = None


class _RunGather:
    """The state of :func:`gather_run` on one rank: reading, exchange and consumption of each
    round are separate methods."""

    def __init__(self, comm: MPI.Comm, plan: Plan, run_index: int, blocks: list[AsicBlock],
                 consume: Consumer, driver: str, prefetch: bool, threads: int,
                 node_sharing: bool):
        self.comm, self.plan, self.run_index = comm, plan, run_index
        self.blocks, self.consume = blocks, consume
        self.rejected: dict = {}
        self.files = _Files(plan, run_index, driver, comm)
        shared = node_sharing and comm.size > 1
        # shared buffers: always two sets, a round's frames stay put while others consume them
        self.reader = _Reader(plan, run_index, self.files, comm.rank, prefetch,
                              n_sets=2 if shared else None)
        self.node = _node_buffers(comm, self.reader.n_elements) if shared else None
        self.reader.allocate(self.node.alloc if self.node else None)
        self.near = _node_ranks(comm, self.node)
        self.sent = {"same node": 0, "other nodes": 0}
        self.prof = dict.fromkeys(("read wait", "alltoall", "pack", "Alltoallv", "process"),
                                  0.0)
        #: ASIC blocks of frames from other ranks: read in their buffers, or received
        self.moved = {"in place": 0, "received": 0}
        self.pool = ThreadPoolExecutor(threads, "calib-consume") if threads > 1 else None

    def _timed(self, phase: str, t0: float) -> None:
        self.prof[phase] += time.monotonic() - t0

    def read(self, k: int, slab: Slab | None) -> tuple[_Round, str | None]:
        """This rank's slab of round ``k`` (waiting for the reader) and its error message."""
        tw = time.monotonic()
        got = self.reader.get(k)
        self._timed("read wait", tw)
        rnd = _Round(slab)
        err = got if isinstance(got, BaseException) else None
        if got is not None and err is None:
            rnd.frames, rnd.cells, rnd.trains, beyond = got
            count_rejected(self.rejected, slab.module, beyond)
        size = self.comm.size
        rnd.dest_units = [self.plan.units_in_module(d, slab.module) if slab is not None
                          else [] for d in range(size)]
        return rnd, error_message(err)

    def exchange_meta(self, rnd: _Round, msg: str | None) -> list[bool]:
        """One ``alltoall`` of errors and frame metadata; raises the first rank's error on
        every rank. Returns which ranks read this rank's frames in place."""
        rank, size, node = self.comm.rank, self.comm.size, self.node
        here = node.offset(rnd.frames) if node is not None and rnd.frames is not None else None
        in_place = [here is not None and node.on_node(d) for d in range(size)]
        meta = [(msg, (rnd.cells, rnd.trains, here if in_place[d] else None)
                 if (msg is None and rnd.dest_units[d] and d != rank) else None)
                for d in range(size)]
        tw = time.monotonic()
        received = self.comm.alltoall(meta) if size > 1 else meta
        self._timed("alltoall", tw)
        failed = [m for m, _ in received if m is not None]
        if failed:
            raise CalibError(failed[0])
        rnd.received = [r for _, r in received]
        return in_place

    def exchange_blocks(self, rnd: _Round, rounds_k: list, in_place: list[bool]) -> None:
        """One ``Alltoallv``: each owner off this node gets (frame, 2, 64, 64) per ASIC."""
        comm, rank = self.comm, self.comm.rank
        n_send = 0 if rnd.frames is None else len(rnd.frames)
        scounts = send_counts(n_send, rnd.dest_units, rank, in_place)
        sdispl = displacements(scounts)
        mine = [len(self.plan.units_in_module(rank, sl.module)) if sl is not None else 0
                for sl in rounds_k]
        rnd.rcounts = recv_counts(rnd.received, mine, rank)
        rnd.rdispl = displacements(rnd.rcounts)
        if comm.size == 1:
            return
        tw = time.monotonic()
        sendbuf = _buffer("send", int(scounts.sum()))
        if n_send:
            pack_blocks(sendbuf, rnd.frames, rnd.dest_units, self.blocks, scounts, sdispl)
        rnd.recvbuf = _buffer("recv", int(rnd.rcounts.sum()))
        self._timed("pack", tw)
        tw = time.monotonic()
        comm.Alltoallv([sendbuf, (scounts, sdispl), MPI.UNSIGNED_SHORT],
                       [rnd.recvbuf, (rnd.rcounts, rnd.rdispl), MPI.UNSIGNED_SHORT])
        for d in np.flatnonzero(scounts):
            self.sent["same node" if int(d) in self.near else "other nodes"] += \
                int(scounts[d]) * 2
        self._timed("Alltoallv", tw)

    def tasks(self, rnd: _Round, rounds_k: list) -> list[tuple]:
        """(unit, frames, r0, c0, cells, trains, group) for every owned ASIC of the round:
        from this rank's buffer, in place from a node neighbour's, or received."""
        rank, plan, blocks = self.comm.rank, self.plan, self.blocks
        out = []
        for s, meta in enumerate(rnd.received):  # in rank order, this rank's frames included
            if s == rank:
                if rnd.frames is not None and len(rnd.frames) and rnd.dest_units[rank]:
                    group = group_by_cell(rnd.cells, plan.n_cells)
                    out += [(u, rnd.frames, blocks[u.block].rows.start,
                             blocks[u.block].cols.start, rnd.cells, rnd.trains, group)
                            for u in rnd.dest_units[rank]]
                continue
            if meta is None or (meta[2] is None and not rnd.rcounts[s]):
                continue
            c_s, t_s, at = meta
            n_s, group = len(c_s), group_by_cell(c_s, plan.n_cells)
            off = int(rnd.rdispl[s])
            for u in plan.units_in_module(rank, rounds_k[s].module):
                b = blocks[u.block]
                if at is not None:  # in place, in the buffer of rank s on this node
                    view = self.node.frames(s, at, n_s, self.reader.shape)
                    out.append((u, view, b.rows.start, b.cols.start, c_s, t_s, group))
                    self.moved["in place"] += n_s
                    continue
                view = rnd.recvbuf[off:off + n_s * BLOCK_ELEMS].reshape(n_s, 2, 64, 64)
                out.append((u, view, 0, 0, c_s, t_s, group))
                self.moved["received"] += n_s
                off += n_s * BLOCK_ELEMS
        return out

    def round(self, k: int, rounds_k: list) -> None:
        """Read, exchange and consume round ``k``."""
        rnd, msg = self.read(k, rounds_k[self.comm.rank])
        in_place = self.exchange_meta(rnd, msg)
        # every rank has entered this round, so is done with the previous one, whose
        # buffer set the next read reuses
        self.reader.ahead(k + 1)
        self.exchange_blocks(rnd, rounds_k, in_place)
        tw = time.monotonic()
        consume_all(self.consume, self.run_index, self.tasks(rnd, rounds_k), self.pool)
        self._timed("process", tw)

    def close(self) -> None:
        self.reader.close()
        self.files.close()
        if self.pool is not None:
            self.pool.shutdown()

    def stats(self, seconds: float, threads: int) -> GatherStats:
        """This rank's :class:`GatherStats` (and a debug line)."""
        prof, sent, moved = self.prof, self.sent, self.moved
        log.debug("gather run %s rank %d, %d consume thread(s): %s; ASIC blocks from other "
                  "ranks: %d in place, %d received; bytes sent to the same node %d, to other "
                  "nodes %d", self.plan.runs[self.run_index], self.comm.rank,
                  threads if self.pool is not None else 1,
                  ", ".join(f"{k} {v:.2f} s" for k, v in prof.items()), moved["in place"],
                  moved["received"], sent["same node"], sent["other nodes"])
        profile = {"read": self.reader.seconds, "read wait": prof["read wait"],
                   "exchange": prof["alltoall"] + prof["pack"] + prof["Alltoallv"],
                   "process": prof["process"]}
        return GatherStats(self.rejected, self.reader.bytes, seconds, sent["same node"],
                           sent["other nodes"], profile)


def gather_run(comm: MPI.Comm, plan: Plan, run_index: int, blocks: list[AsicBlock],
               consume: Consumer, driver: str, prefetch: bool = True,
               show_progress: bool = False, threads: int = 1, node_sharing: bool = True
               ) -> GatherStats:
    """Stream one run to the ASIC owners.

    ``consume(unit, run_index, frames, r0, c0, cells, trains, group)`` receives, for each
    owned ASIC, frames (frame, 2, H, W) uint16 C-contiguous whose rows ``r0:r0+64`` and columns
    ``c0:c0+64`` are the ASIC (H = W = 64 for blocks from other ranks; the whole read buffer,
    without a copy, for frames this rank read itself), their cells and train positions, and
    ``group_by_cell`` of the cells. Returns this rank's :class:`GatherStats`.
    With ``threads > 1`` the ASICs of a round are consumed by that many threads at once
    (``consume`` must then be safe for different units in parallel). With ``node_sharing``
    the read buffers are in an MPI shared-memory window and ranks of one node consume each
    other's frames in place (:class:`_NodeBuffers`); only blocks for other nodes are sent.
    """
    rounds = plan.rounds[run_index]
    t0 = time.monotonic()
    g = _RunGather(comm, plan, run_index, blocks, consume, driver, prefetch, threads,
                   node_sharing)
    frame_bytes = facility(plan.facility).read_frame_bytes
    total = sum(sl.n_frames for rnd in rounds for sl in rnd if sl is not None) * frame_bytes
    n_trains = sum(plan.trains_used[(run_index, m)] for m in plan.modules)
    progress = Progress(f"run {plan.runs[run_index]}", total, n_trains, show_progress)
    done = 0
    try:
        for k, rounds_k in enumerate(rounds):
            g.round(k, rounds_k)
            done += sum(sl.n_frames for sl in rounds_k if sl is not None) * frame_bytes
            progress.update(done)
        if g.node is not None:
            # the next run reads into these buffers (not on errors: they end the job, and
            # sync waits for every rank)
            g.node.sync()
        progress.close()
    finally:
        g.close()
    return g.stats(time.monotonic() - t0, threads)
