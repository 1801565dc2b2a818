"""MPI helpers: error agreement between ranks, HDF5 driver selection.

The rule that keeps every failure from hanging a job: a step that can fail on some ranks only
(reading a file) is followed by :func:`agree`, which exchanges the outcome so that either all
ranks go on or all raise the same :class:`~calib_mpi.errors.CalibError`. Anything unexpected
ends the whole job with ``MPI.COMM_WORLD.Abort`` in the command-line entry point.
"""

from __future__ import annotations

import os

import h5py
from mpi4py import MPI

from .errors import CalibError, ConfigError


def h5py_has_mpi() -> bool:
    """True when h5py was built against parallel HDF5."""
    return bool(h5py.get_config().mpi)


def resolve_driver(requested: str, comm: MPI.Comm) -> str:
    """Pick the HDF5 driver: ``mpio`` or ``posix``; explains what is missing when it must."""
    has_mpi = h5py_has_mpi()
    if requested == "mpio" and not has_mpi:
        raise ConfigError(
            "io_driver = mpio, but this h5py was built without MPI support "
            "(h5py.get_config().mpi is False); rebuild it against parallel HDF5 "
            "(make setup does) or use io_driver = posix with a single rank"
        )
    if requested == "auto":
        requested = "mpio" if has_mpi else "posix"
    if requested == "posix" and comm.size > 1 and not has_mpi:
        raise ConfigError(
            f"h5py has no MPI support, so the collective write of the results cannot run on "
            f"{comm.size} ranks; run with one rank or rebuild h5py against parallel HDF5"
        )
    return requested


def agree(comm: MPI.Comm, error: BaseException | None, name_rank: bool = True) -> None:
    """Collective: raise on every rank if ``error`` is set on any rank.

    The raised :class:`CalibError` carries the message of the lowest failing rank (and, with
    ``name_rank``, says which rank of ``MPI.COMM_WORLD`` that was and how many ranks failed),
    so every rank exits with the same message and nobody hangs.
    """
    msg = None
    if error is not None:
        msg = str(error) if isinstance(error, CalibError) else f"{type(error).__name__}: {error}"
    msgs = comm.allgather((MPI.COMM_WORLD.rank, msg))
    failed = [(r, m) for r, m in msgs if m is not None]
    if failed:
        r, m = failed[0]
        if not name_rank:
            raise CalibError(m)
        more = f" (and {len(failed) - 1} more rank(s) failed)" if len(failed) > 1 else ""
        raise CalibError(f"{m} [rank {r}{more}]")


def open_h5(path: str, mode: str, driver: str, comm: MPI.Comm) -> h5py.File:
    """Open an HDF5 file with the mpio driver (collective over ``comm``) or serially."""
    if driver == "mpio":
        return h5py.File(path, mode, driver="mpio", comm=comm)
    return h5py.File(path, mode)


_CORES_PER_RANK: int | None = None


def share_cores(comm: MPI.Comm) -> int:
    """Collective: the cores this rank may use, its share of the CPU set it has in common
    with other ranks of its node (ranks started unbound see the whole node: each then gets
    cores / ranks of the node, at least 1). Remembered for :func:`rank_threads`."""
    global _CORES_PER_RANK
    mine = frozenset(os.sched_getaffinity(0))
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        same = sum(a == mine for a in node.allgather(mine))
    finally:
        node.Free()
    _CORES_PER_RANK = max(1, len(mine) // same)
    return _CORES_PER_RANK


def rank_threads(configured: int = 0) -> int:
    """Threads a rank uses for work that can run in parallel: ``configured``, or (0) its
    share of cores (:func:`share_cores`; before that is known, the cores it may run on).
    ``mpirun`` binds each of one or two ranks to a single core by default; ``--bind-to
    none`` or SLURM ``--cpus-per-task`` give a rank more."""
    if configured:
        return configured
    return _CORES_PER_RANK or len(os.sched_getaffinity(0))
