"""Which compiled kernels a job uses: prebuilt, just-in-time compiled, or none (numpy).

A job should not pay for compiling, or even for importing numba (~0.5 s of CPU per rank):
``python -m calib_mpi.process.aot`` (run by ``scripts/setup-env.sh``) compiles the kernels of
:mod:`calib_mpi.process._kernels` ahead of time into an extension module whose name
carries the hash of that package's source files and a key of this CPU model, so a module built from
another version of the source, or on another kind of CPU, is never loaded. :func:`kernel`
then picks, once per process:

1. the prebuilt module, searched in :func:`search_dirs` (no numba import at all);
2. else numba's JIT of the same source (``cache=True``: compiled once per machine, then
   loaded from numba's cache, ~0.5-1 s of CPU per job for importing numba and loading);
3. else None: the caller falls back to its exact numpy version (numba not installed).

``CALIB_MPI_KERNELS=jit`` or ``=numpy`` forces 2. or 3. (tests, benchmarks).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ENV = "CALIB_MPI_KERNELS"
#: the numba source of the kernels (a package: one module per measurement)
SOURCE = Path(__file__).with_name("_kernels")
PREFIX = "_calib_kernels_"

_lock = threading.Lock()
_chosen: dict[str, tuple[str, ModuleType | None]] = {}


def source_hash() -> str:
    """First 12 hex digits of the SHA-256 of the kernels' numba source files (names and
    contents, in name order)."""
    h = hashlib.sha256()
    for path in sorted(SOURCE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def cpu_key() -> str:
    """8 hex digits naming this CPU model and its instruction-set flags (``/proc/cpuinfo``),
    the machine type where that is not readable."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    text += line
                if not line.strip() and text != platform.machine():
                    break  # the first processor is enough
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def module_name() -> str:
    """Name of the prebuilt module for this source and this CPU."""
    return f"{PREFIX}{source_hash()}_{cpu_key()}"


def search_dirs() -> list[Path]:
    """Where prebuilt modules are looked for, first match wins: the package directory
    (written by the set-up of a source or editable install), then the user's cache
    (``$XDG_CACHE_HOME/calib-mpi``, ``~/.cache/calib-mpi``) for read-only installs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "calib-mpi"
    return [Path(__file__).parent, cache]


def prebuilt_path(dirs: list[Path] | None = None) -> Path | None:
    """The prebuilt module of this source for this CPU, if one is in ``dirs`` (default
    :func:`search_dirs`)."""
    name = module_name()
    for d in search_dirs() if dirs is None else dirs:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if (d / (name + suffix)).is_file():
                return d / (name + suffix)
    return None


def _load_prebuilt(dirs: list[Path] | None) -> ModuleType | None:
    path = prebuilt_path(dirs)
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location(module_name(), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jit_module() -> ModuleType | None:
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - only without numba
        return None
    from . import _kernels as src

    mod = ModuleType("calib_kernels_jit")
    for name, (fn, _sig) in src.EXPORTS.items():
        setattr(mod, name, njit(nogil=True, cache=True)(fn))
    return mod


def _choose(dirs: list[Path] | None) -> tuple[str, ModuleType | None]:
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode not in ("auto", "jit", "numpy"):
        raise ValueError(f"{ENV}={mode!r}: expected auto, jit or numpy")
    if mode == "auto":
        mod = _load_prebuilt(dirs)
        if mod is not None:
            return "prebuilt", mod
    if mode in ("auto", "jit"):
        mod = _jit_module()
        if mod is not None:
            return "jit", mod
    return "numpy", None


def _get(dirs: list[Path] | None) -> tuple[str, ModuleType | None]:
    key = "default" if dirs is None else os.pathsep.join(map(str, dirs))
    with _lock:
        if key not in _chosen:
            _chosen[key] = _choose(dirs)
        return _chosen[key]


def backend(dirs: list[Path] | None = None) -> str:
    """``prebuilt``, ``jit`` or ``numpy``: the kernels this process uses (chosen on the first
    call, then kept; ``dirs`` replaces :func:`search_dirs`, for tests)."""
    return _get(dirs)[0]


def kernel(name: str, dirs: list[Path] | None = None) -> Callable | None:
    """The compiled kernel ``name`` (a key of ``_kernels.EXPORTS``), or None: use
    numpy. A prebuilt kernel accepts exactly the types of its signature there."""
    mod = _get(dirs)[1]
    return None if mod is None else getattr(mod, name)
