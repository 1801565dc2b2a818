"""Fault injection for the test suite, in one place.

Every hook reads a ``CALIB_MPI_TEST_*`` environment variable and does nothing when it is not
set, so a production job never takes any of these paths. They let the tests break a real
``mpirun`` job at a chosen rank and moment (a read that fails, a full disk, a signal during the
write) and check that every rank ends with a clear message and a truthful exit code.

- ``CALIB_MPI_TEST_FAIL_READ="rank=R,round=K[,mode=raise|exit|stall[,file=PATH]]"``: rank R
  fails its read in gather round K (:func:`read_fault`);
- ``CALIB_MPI_TEST_FAIL_WRITE="rank=R[,errno=NAME]"``: rank R's first dataset write of a result
  fails with that error, default ENOSPC (:func:`write_fault`);
- ``CALIB_MPI_TEST_PAUSE_WRITE=<seconds>``: a pause inside the collective write, for signals
  (:func:`write_pause`);
- ``CALIB_MPI_TEST_SHM_FREE=<bytes>``: pretend that much room for shared memory
  (:func:`shm_free_override`);
- ``CALIB_MPI_TEST_NO_ROOM_CHECK=1``: skip the free-space checks of the output
  (:func:`room_check_disabled`).
"""

from __future__ import annotations

import errno
import os
import time

from calib_mpi.errors import CalibError

__all__ = ["read_fault", "room_check_disabled", "shm_free_override", "write_fault", "write_pause"]


def _options(name: str) -> dict[str, str] | None:
    spec = os.environ.get(name)
    if not spec:
        return None
    return dict(kv.split("=", 1) for kv in spec.split(","))


def read_fault(rank: int, round_index: int) -> None:
    """Rank ``rank``'s read of gather round ``round_index``: raise an error (``raise``), die
    at once (``exit``) or create ``file`` and wait up to 10 min (``stall``, for the test to
    break the job in the middle of the gather), as ``CALIB_MPI_TEST_FAIL_READ`` says."""
    opts = _options("CALIB_MPI_TEST_FAIL_READ")
    if opts is None:
        return
    if int(opts.get("rank", -1)) == rank and int(opts.get("round", -1)) == round_index:
        mode = opts.get("mode", "raise")
        if mode == "exit":
            os._exit(3)
        if mode == "stall":
            open(opts["file"], "w").close()
            time.sleep(600)
        raise CalibError("injected read failure (CALIB_MPI_TEST_FAIL_READ="
                         f"{os.environ['CALIB_MPI_TEST_FAIL_READ']})")


def write_fault(rank: int) -> None:
    """Raise the ``OSError`` that ``CALIB_MPI_TEST_FAIL_WRITE`` names on rank ``rank``."""
    opts = _options("CALIB_MPI_TEST_FAIL_WRITE")
    if opts is not None and int(opts.get("rank", 0)) == rank:
        code = getattr(errno, opts.get("errno", "ENOSPC"))
        raise OSError(code, f"{os.strerror(code)} (injected, CALIB_MPI_TEST_FAIL_WRITE)")


def write_pause() -> None:
    """Sleep ``CALIB_MPI_TEST_PAUSE_WRITE`` seconds (none when unset)."""
    time.sleep(float(os.environ.get("CALIB_MPI_TEST_PAUSE_WRITE", 0)))


def shm_free_override() -> int | None:
    """Bytes of shared-memory room to pretend (``CALIB_MPI_TEST_SHM_FREE``), None: measure."""
    value = os.environ.get("CALIB_MPI_TEST_SHM_FREE")
    return None if value is None else int(value)


def room_check_disabled() -> bool:
    """True when ``CALIB_MPI_TEST_NO_ROOM_CHECK`` turns the output's free-space checks off."""
    return bool(os.environ.get("CALIB_MPI_TEST_NO_ROOM_CHECK"))
