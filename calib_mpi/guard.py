"""Output safety: checks before any data is read, output locks, per-job temporary names,
room for the results, and a clean end on write errors and signals.

- :func:`preflight` refuses, before reading, an output location that cannot be written and
  ``io_driver = posix`` with several ranks (one-line :class:`~calib_mpi.errors.CalibError`).
- :class:`OutputLocks` (rank 0) takes ``<result>.lock`` for every result a job will write,
  created atomically (``O_EXCL``) with the holder's host, pid and start time: a second job
  cannot take it and is refused with a message naming the holder. A lock of a dead process on
  this host is taken over with a warning. Locks are taken only after every check that can
  refuse the job (configuration, inputs, existing results); a refused or failed job removes
  its locks and the output directory it created, when that is empty.
- :func:`tmp_name` gives ``<result>.<host>-<pid>.tmp`` (rank 0's host and pid, the same on
  every rank), so two jobs never share a temporary file.
- :func:`check_free` (rank 0, before reading) and :func:`check_room` (rank 0, before each
  file: reserves its size with ``fallocate``, quota- and tmpfs-aware) refuse results that do
  not fit and say how much is missing.
- :func:`abort_write` ends the whole job with exit 2 after a write error on any rank: the
  temporary file and the locks are removed, the old result is untouched, no rank hangs in a
  collective HDF5 call.
- :func:`watch_signals`: SIGINT/SIGTERM print "interrupted", remove the job's temporary files
  and locks and end the process with 130/143, even while it waits in an MPI call.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from mpi4py import MPI

from . import faults
from .errors import ConfigError, OutputError

log = logging.getLogger("calib_mpi")

#: ``<host>-<pid>`` of the job's rank 0 (set for the whole job by :func:`share_job_tag`)
_JOB_TAG = f"{socket.gethostname()}-{os.getpid()}"
#: files removed when the job is interrupted or aborted (temporary files, own locks)
_CLEANUP: set[Path] = set()
_CLEANUP_LOCK = threading.Lock()


def share_job_tag(comm: MPI.Comm) -> str:
    """Collective: use rank 0's ``<host>-<pid>`` as this job's tag on every rank."""
    global _JOB_TAG
    _JOB_TAG = comm.bcast(_JOB_TAG, root=0)
    return _JOB_TAG


def tmp_name(path: Path) -> Path:
    """Temporary name of this job while ``path`` is written: ``<name>.<host>-<pid>.tmp``."""
    return path.with_name(f"{path.name}.{_JOB_TAG}.tmp")


def leftover_tmps(path: Path) -> list[Path]:
    """Temporary files of ``path`` left by other (finished or killed) jobs:
    ``<name>.tmp`` and ``<name>.<tag>.tmp`` other than this job's."""
    if not path.parent.is_dir():
        return []
    mine = tmp_name(path)
    return sorted(p for p in path.parent.iterdir()
                  if p != mine and p.name.endswith(".tmp")
                  and p.name.startswith(path.name + "."))


def add_cleanup(path: Path) -> None:
    """Remove ``path`` if the job is interrupted or aborted."""
    with _CLEANUP_LOCK:
        _CLEANUP.add(Path(path))


def drop_cleanup(path: Path) -> None:
    """``path`` is no longer the job's to remove (renamed into place, or released)."""
    with _CLEANUP_LOCK:
        _CLEANUP.discard(Path(path))


def cleanup() -> None:
    """Remove the job's temporary files and locks, then the directories it made for them
    if they are empty (any rank; errors ignored)."""
    with _CLEANUP_LOCK:
        paths = list(_CLEANUP)
        _CLEANUP.clear()
    dirs = sorted((p for p in paths if p.suffix == ".dir"), key=lambda p: -len(p.parts))
    for p in paths:
        try:
            if p.suffix == ".lock" and _lock_is_mine(p) or p.suffix == ".tmp":
                p.unlink()
        except OSError:
            pass
    for p in dirs:
        try:
            p.with_suffix("").rmdir()
        except OSError:
            pass


def add_cleanup_dir(directory: Path) -> None:
    """Remove ``directory`` if it is empty when the job is interrupted or aborted."""
    add_cleanup(Path(f"{directory}.dir"))


# ---------------------------------------------------------------- checks before reading

def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(directory: Path, key: str = "output_dir") -> None:
    """Raise :class:`OutputError` when ``directory`` cannot be created or written (nothing
    is created here)."""
    base = _nearest_existing(directory)
    if not base.is_dir():
        raise OutputError(f"{key} {directory} cannot be created: {base} is not a directory")
    read_only = os.statvfs(base).f_flag & os.ST_RDONLY
    if read_only or not os.access(base, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable"
        what = "" if base == directory else f" cannot be created: {base}"
        raise OutputError(f"{key} {directory}{what} {why}")


def preflight(cfg, comm: MPI.Comm, driver: str) -> None:
    """Checks that need no input data (every rank, same outcome): the output location can be
    written, and a serial HDF5 driver is not asked to write with several ranks."""
    if driver == "posix" and comm.size > 1 and "join" in cfg.steps and not cfg.dry_run:
        raise ConfigError(f"io_driver = posix writes the results from one process, but the job "
                          f"has {comm.size} ranks; use io_driver = mpio (or auto) or one rank")
    if cfg.dry_run:
        return
    err = None
    if comm.rank == 0:
        try:
            check_writable(cfg.output_dir / cfg.measurement)
            if cfg.report:
                check_writable(cfg.report.parent, "report")
        except OutputError as e:
            err = e
    err = comm.bcast(err, root=0)
    if err is not None:
        raise err


# ---------------------------------------------------------------- locks

def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": _JOB_TAG,
            "proc_start": _proc_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _lock_is_mine(path: Path) -> bool:
    info = _read_lock(path)
    return bool(info) and info.get("job") == _JOB_TAG


def _is_stale(info: dict | None) -> bool:
    """A lock whose holder is a process of this host that no longer runs."""
    if not info or info.get("host") != socket.gethostname():
        return False
    start = _proc_start(int(info.get("pid", -1)))
    return start is None or (info.get("proc_start") not in (None, start))


class OutputLocks:
    """Locks ``<result>.lock`` of the results a job writes (rank 0 takes and releases)."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.made_dirs: list[Path] = []

    def acquire(self, results: list[Path]) -> list[str]:
        """Take the lock of every result (all or none); returns warnings about stale locks
        taken over. Raises :class:`OutputError` naming the holder of a lock in use."""
        notes = []
        try:
            for result in results:
                self._mkdir(result.parent)
                notes += self._take(Path(f"{result}.lock"))
        except BaseException:
            self.release()
            raise
        return notes

    def _mkdir(self, d: Path) -> None:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        d.mkdir(parents=True, exist_ok=True)
        self.made_dirs += missing

    def _take(self, lock: Path) -> list[str]:
        me = json.dumps(_holder())
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read_lock(lock)
                if not _is_stale(info):
                    raise OutputError(_busy(lock, info)) from None
                if self._take_over(lock, info):
                    return [f"{lock}: taking over the lock of a job that no longer runs "
                            f"(pid {info.get('pid')} on {info.get('host')}, started "
                            f"{info.get('started')})"] + self._take(lock)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.paths.append(lock)
            add_cleanup(lock)
            return []
        raise OutputError(_busy(lock, _read_lock(lock)))

    @staticmethod
    def _take_over(lock: Path, info: dict) -> bool:
        """Move a stale lock away (atomic rename); False if someone else changed it."""
        aside = lock.with_name(f"{lock.name}.{_JOB_TAG}.stale")
        try:
            os.rename(lock, aside)
        except FileNotFoundError:
            return False
        if _read_lock(aside) != info:  # another job took it over in between: give it back
            try:
                os.link(aside, lock)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        """Remove this job's locks and the directories it made that are still empty."""
        for lock in self.paths:
            drop_cleanup(lock)
            if _lock_is_mine(lock):
                lock.unlink(missing_ok=True)
        self.paths = []
        for d in self.made_dirs:  # deepest first
            drop_cleanup(Path(f"{d}.dir"))
        for d in self.made_dirs:
            try:
                d.rmdir()
            except OSError:
                break
        self.made_dirs = []


def _busy(lock: Path, info: dict | None) -> str:
    who = (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
           if info else "unknown holder")
    return (f"{lock.with_suffix('')} is being written by another job ({who}; lock "
            f"{lock}); wait for it to finish, choose another output_dir, or remove the lock "
            "if that job no longer runs")


# ---------------------------------------------------------------- room and write errors

def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check_free(directory: Path, nbytes: int, n_files: int) -> None:
    """Before reading: raise :class:`OutputError` when the file system of ``directory`` has
    less than ``nbytes`` free for the job's ``n_files`` results (says how much is missing)."""
    if faults.room_check_disabled():
        return
    st = os.statvfs(_nearest_existing(directory))
    free = st.f_bavail * st.f_frsize
    if free < nbytes:
        raise OutputError(
            f"not enough room in {directory} for {n_files} result file(s): they need about "
            f"{_mb(nbytes)}, {_mb(free)} is free ({_mb(nbytes - free)} missing); free space "
            "or choose another output_dir")


def _fallocate(fd: int, nbytes: int) -> None:
    """Reserve ``nbytes`` for ``fd`` with Linux ``fallocate`` (file systems without it raise
    EOPNOTSUPP; unlike ``posix_fallocate`` it never falls back to writing zeros)."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "fallocate", None)
    if func is None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if func(fd, 0, 0, nbytes) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def check_room(path: Path, nbytes: int) -> None:
    """Rank 0: make sure ``nbytes`` can be written at ``path`` (its temporary file) by
    reserving them (``posix_fallocate``); raise :class:`OutputError` saying how much is
    missing. The reservation is given back when the file is opened for writing."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    if faults.room_check_disabled():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    add_cleanup(path)
    try:
        _fallocate(fd, max(nbytes, 1))
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"not enough room for {path.name} in {path.parent}: it needs about "
                f"{_mb(nbytes)}, {_mb(free)} is free ({_mb(max(nbytes - free, 0))} missing"
                f"{', or a quota is exceeded' if e.errno == errno.EDQUOT else ''}); free "
                "space or choose another output_dir") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise OutputError(f"{path}: cannot be written ({e.strerror})") from None
    else:
        os.close(fd)


def abort_write(comm: MPI.Comm, tmp: Path, final: Path, exc: BaseException) -> None:
    """A write of ``tmp`` failed on this rank: remove the temporary file and the job's locks,
    say so, and end the whole job with exit 2 (no rank is left in a collective call)."""
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    tmp.unlink(missing_ok=True)
    cleanup()
    kept = f"; {final} is unchanged" if final.exists() else ""
    sys.stderr.write(f"calib-mpi: error: writing {tmp} failed on rank {MPI.COMM_WORLD.rank}: "
                     f"{cause}{kept}; job aborted\n")
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(2)


# ---------------------------------------------------------------- signals

def watch_signals() -> None:
    """Handle SIGINT/SIGTERM in a thread: print "interrupted", remove the job's temporary
    files and locks and end the process with 128 + signal (130/143). Works while the main
    thread waits in MPI (the signal wakes the thread through ``signal.set_wakeup_fd``).
    Main thread only."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)

    def wait() -> None:
        sig = os.read(r, 1)[0]
        cleanup()
        sys.stderr.write(f"calib-mpi: interrupted ({signal.Signals(sig).name}) on rank "
                         f"{MPI.COMM_WORLD.rank}; temporary files removed\n")
        sys.stderr.flush()
        os._exit(128 + sig)

    threading.Thread(target=wait, name="calib-mpi-signals", daemon=True).start()
